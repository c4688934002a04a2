"""The LLaVA-NeXT adapter: tiny random checkpoint through the registry, token positions and
counts against the processor and the model's own packing, the box <-> token mapping against the
processor's pixels of the base view and of every tile, and the real 7B config on the meta device.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import image_with_box, red_cells, unnormalise
from PIL import Image
from transformers import (
    CLIPVisionConfig,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextProcessor,
    MistralConfig,
)
from transformers.models.llava_next.image_processing_pil_llava_next import (
    LlavaNextImageProcessorPil,
)
from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape

from probes.errors import UserError
from probes.models.adapters import LlavaNextAdapter, adapter_for
from probes.models.adapters.grids import SEPARATOR
from probes.models.answer import answer_questions
from probes.models.loading import load_model
from probes.models.zoo.tiny_llava import BASIC_WORDS
from probes.models.zoo.vocab import word_tokenizer

PATCH = 8  # the tiny tower: 32 px views, 8 px patches, 4x4 cells per view
# square, wide, tall, odd, extreme (downscaled and upscaled onto the pinpoint canvas)
SIZES = [(32, 32), (64, 64), (100, 40), (40, 100), (33, 47), (97, 31), (131, 77)]


@pytest.fixture(scope="module")
def tiny_next():
    return load_model("tiny-random-llava-next")


def test_loads_through_registry_and_answers(tiny_next):
    adapter = tiny_next.adapter
    assert isinstance(adapter, LlavaNextAdapter) and tiny_next.source.kind == "builtin"
    assert type(tiny_next.processor.image_processor) is LlavaNextImageProcessorPil
    assert len(adapter.decoder_layers(tiny_next.model)) == adapter.num_layers == 4
    assert (adapter.num_heads, adapter.num_kv_heads) == (4, 2)
    answers = answer_questions(
        tiny_next, [Image.new("RGB", (50, 30)), Image.new("RGB", (64, 64))],
        ["what shape is in the image?", "what colour?"], max_new_tokens=3,
    )
    for answer in answers:
        assert 0 < len(answer.token_ids) == len(answer.token_probabilities) <= 3
        assert answer.text and 0.0 <= answer.probability <= 1.0


def _image_features(loaded, batch) -> list[torch.Tensor]:
    """The model's own image path: tower, projector, pack_image_features (with newlines)."""
    with torch.inference_mode():
        out = loaded.model.model.get_image_features(
            batch["pixel_values"], batch["image_sizes"], return_dict=True
        )
    return list(out.pooler_output)


@pytest.mark.parametrize("size", SIZES)
def test_positions_and_counts_match_processor_and_model(tiny_next, size):
    adapter, processor = tiny_next.adapter, tiny_next.processor
    images = [Image.new("RGB", size, (90, 30, 200)), Image.new("RGB", (64, 64))]
    inputs = adapter.build_inputs(images, ["what shape is in the image?", "what colour?"])
    packed = _image_features(tiny_next, inputs.batch)
    newline = tiny_next.model.model.image_newline
    for row, (image, tokens) in enumerate(zip(images, inputs.images, strict=True)):
        expected = torch.nonzero(inputs.input_ids[row] == adapter.image_token_id)[:, 0]
        np.testing.assert_array_equal(tokens.positions, expected.numpy())
        layout = adapter.image_layout(image.size)
        width, height = image.size
        # the processor's own count, from its (height, width) image_sizes
        assert inputs.batch["image_sizes"][row].tolist() == [height, width]
        counted = processor._get_num_multimodal_tokens(image_sizes=[(height, width)])
        assert layout.n_tokens == counted["num_image_tokens"][0] == len(tokens.positions)
        # the model's packed features: same length, and newlines exactly where we say
        assert packed[row].shape[0] == layout.n_tokens
        is_newline = (packed[row] == newline).all(-1).numpy()
        np.testing.assert_array_equal(is_newline, layout.token_cells[:, 0] == SEPARATOR)
    base, tiled = adapter.image_layout(size).grids
    view = inputs.batch["pixel_values"].shape[-1]
    assert (base.rows, base.cols) == (view // PATCH, view // PATCH) == (4, 4)
    # the processor's unpadded-feature arithmetic, given the tile layout the model infers
    best_h, best_w = _best_canvas(size, tiny_next.model.config.image_grid_pinpoints)
    unpadded, newlines = processor._get_unpadded_features(
        size[1], size[0], 4, 4, best_h // view, best_w // view
    )
    assert (tiled.rows * tiled.cols, tiled.rows) == (unpadded, newlines)


def _best_canvas(size, pinpoints) -> tuple[int, int]:
    """The pinpoint canvas (height, width) the model infers for an image of ``size``."""
    return get_anyres_image_grid_shape([size[1], size[0]], pinpoints, 1)  # patch 1: pixels


def _token_sources(model, n_views: int, cells: int, image_hw: tuple[int, int]) -> np.ndarray:
    """(view, row, col) that each image token of the sequence reads, by running the model's own
    ``pack_image_features`` on features that spell out their source; newlines read (-1, -1, -1).
    """
    view, row, col = torch.meshgrid(
        torch.arange(n_views), torch.arange(cells), torch.arange(cells), indexing="ij"
    )
    codes = torch.stack([view, row, col], -1).reshape(n_views, cells * cells, 3).float()
    packed, _ = model.model.pack_image_features(
        [codes], torch.tensor([image_hw]), "default", image_newline=torch.full((3,), -1.0)
    )
    return packed[0].long().numpy()


def _around(box, grid, by: float):
    """``box`` grown by ``by`` pixels of whichever is coarser on each axis, the original image
    or the grid's resized view (one resampled pixel covers cell/PATCH original pixels)."""
    dx, dy = by * max(1.0, grid.cell_width / PATCH), by * max(1.0, grid.cell_height / PATCH)
    return (box[0] - dx, box[1] - dy, box[2] + dx, box[3] + dy)


# boxes whose edges lie more than a pixel (see _around) from every cell edge of both grids, so
# the one-pixel resampling tolerance decides nothing and the token set is pinned exactly
BOX_CASES = [
    ((64, 64), (6, 20, 23, 36)),  # square: 2x2 tiles, nothing to unpad
    ((100, 40), (17, 5, 54, 22)),  # wide: 1x3 canvas, columns of padding cut
    ((40, 100), (15, 36, 32, 92)),  # tall: 3x1 canvas
    ((33, 47), (14, 2, 27, 33)),  # odd, upscaled: the tiled grid starts 0.7 px left of the image
    ((131, 77), (39, 25, 108, 64)),  # the unpad cuts 6 px of image above and below
    ((120, 45), (53, 13, 86, 32)),  # the tiled grid starts 4.2 px right of the image's edge
    ((50, 30), (19, 2, 47, 18)),
]


@pytest.mark.parametrize(("size", "box"), BOX_CASES)
def test_box_to_tokens_matches_processor_pixels(tiny_next, size, box):
    adapter, image_processor = tiny_next.adapter, tiny_next.processor.image_processor
    pixels = image_processor(image_with_box(size, box), return_tensors="pt")["pixel_values"][0]
    # which 8x8 cells of which view (0: base, 1..: tiles row by row) hold clearly red pixels
    seen = [red_cells(unnormalise(view, image_processor), cell=PATCH) for view in pixels]
    sources = _token_sources(tiny_next.model, len(pixels), 4, (size[1], size[0]))
    layout = adapter.image_layout(size)
    red = {k for k, (v, r, c) in enumerate(sources) if v >= 0 and (r, c) in seen[v]}
    # resampling blurs edges by up to a pixel (of the coarser of original and resized pixels):
    # the tokens overlapping the box shrunk by one and grown by one pixel must agree
    inner, outer = set(), set()
    for k, (grid_index, r, c) in enumerate(layout.token_cells):
        assert (grid_index == SEPARATOR) == (sources[k, 0] == -1)
        if grid_index == SEPARATOR:
            continue
        grid = layout.grids[grid_index]
        cell = grid.cell_box(r, c)
        if _overlaps(cell, _around(box, grid, -1.0)):
            inner.add(k)
        if _overlaps(cell, _around(box, grid, 1.0)):
            outer.add(k)
    assert inner == outer, "pick a box whose edges are a pixel away from the cell edges"
    assert red == inner
    assert red == set(layout.tokens_in_box(box).tolist())
    # the box is visible in both the base view and the tiles
    n_base = layout.grids[0].rows * layout.grids[0].cols
    assert min(red) < n_base <= max(red)


def _overlaps(a, b) -> bool:
    return min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])


# --------------------------------------------------------------------- the real checkpoint
PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]


def _real_config(strategy: str = "default") -> LlavaNextConfig:
    """llava-hf/llava-v1.6-mistral-7b-hf as published in its config.json (the facts)."""
    return LlavaNextConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
            num_attention_heads=16, image_size=336, patch_size=14, projection_dim=768,
        ),
        text_config=MistralConfig(
            hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
            num_attention_heads=32, num_key_value_heads=8, vocab_size=32064,
            max_position_embeddings=32768, rope_theta=1000000.0, sliding_window=None,
        ),
        image_token_id=32000, image_grid_pinpoints=PINPOINTS, vision_feature_layer=-2,
        vision_feature_select_strategy=strategy, projector_hidden_act="gelu",
    )


def _real_image_processor(**overrides) -> LlavaNextImageProcessorPil:
    """The checkpoint's preprocessor_config.json: CLIP 336, shortest edge 336, 336x336 crop."""
    settings = dict(
        size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
        image_grid_pinpoints=PINPOINTS,
    )
    return LlavaNextImageProcessorPil(**{**settings, **overrides})


def _real_processor(image_processor=None, **overrides) -> LlavaNextProcessor:
    """The checkpoint's processor_config.json settings, with a local word tokenizer."""
    settings = dict(patch_size=14, vision_feature_select_strategy="default",
                    num_additional_image_tokens=1)
    return LlavaNextProcessor(
        image_processor=image_processor or _real_image_processor(),
        tokenizer=word_tokenizer(BASIC_WORDS), **{**settings, **overrides},
    )


@pytest.fixture(scope="module")
def real_meta_model():
    with torch.device("meta"):  # the architecture without a byte of weights
        return LlavaNextForConditionalGeneration(_real_config())


def test_real_llava_next_config_on_meta_device(real_meta_model):
    model = real_meta_model
    adapter = adapter_for(model.config, _real_processor())
    assert isinstance(adapter, LlavaNextAdapter) and adapter.image_token_id == 32000
    assert len(adapter.decoder_layers(model)) == adapter.num_layers == 32
    assert len(adapter.attention_modules(model)) == 32
    assert (adapter.num_kv_heads, adapter.head_dim, adapter.hidden_size) == (8, 128, 4096)

    # 336x336: best pinpoint (h, w) = 336x672 (first of the ties with 672x336, least waste);
    # the image stays 336x336, padded by 168 px left and right. Features: 24 x 48 cells;
    # unpad keeps 24 columns (cut (48-24)//2 = 12 each side). 576 + 24*24 + 24 newlines = 1176.
    base, tiled = (layout := adapter.image_layout((336, 336))).grids
    assert layout.n_tokens == 1176
    assert (base.rows, base.cols, base.cell_width) == (24, 24, 14.0)
    assert (tiled.rows, tiled.cols, tiled.origin_x, tiled.origin_y) == (24, 24, 0.0, 0.0)
    assert tiled.cell_box(23, 23) == (322.0, 322.0, 336.0, 336.0)

    # 644x476: 672x672 keeps all 644*476 pixels with the least waste (336x1008 and 336x672
    # keep 454*336); resized to 672 x ceil(476*672/644) = 672x497, padded by 87 px on top.
    # Features: 48 x 48; unpad: int(476*48/644) = 35 rows of image, cut (48-35)//2 = 6 rows
    # each side, keeping 36. 576 + 36*48 + 36 newlines = 2340.
    base, tiled = (layout := adapter.image_layout((644, 476))).grids
    assert layout.n_tokens == 2340
    assert (base.cell_width, base.cell_height) == pytest.approx((14 * 644 / 336, 14 * 476 / 336))
    assert (tiled.rows, tiled.cols) == (36, 48)
    assert (tiled.cell_width, tiled.cell_height) == pytest.approx((14 * 644 / 672, 14 * 476 / 497))
    # the first kept row starts 6*14 = 84 canvas px down, 3 px above the image (pad 87)
    assert (tiled.origin_x, tiled.origin_y) == pytest.approx((0.0, -3 * 476 / 497))
    assert int((layout.token_cells[:, 0] == SEPARATOR).sum()) == 36
    assert _real_processor()._get_num_multimodal_tokens(
        image_sizes=[(336, 336), (476, 644)])["num_image_tokens"] == [1176, 2340]


@pytest.mark.parametrize("size", [(336, 336), (644, 476), (1000, 300), (250, 900)])
def test_real_layout_matches_the_models_packing(real_meta_model, size):
    """The real config drives pack_image_features on CPU codes: same count, same order."""
    layout = LlavaNextAdapter(real_meta_model.config, _real_processor()).image_layout(size)
    height, width = _best_canvas(size, PINPOINTS)
    n_views = 1 + (height // 336) * (width // 336)
    sources = _token_sources(real_meta_model, n_views, 24, (size[1], size[0]))
    assert len(sources) == layout.n_tokens
    base = layout.token_cells[:, 0] == 0
    np.testing.assert_array_equal(sources[base], np.c_[np.zeros(576), layout.token_cells[base, 1:]])
    tiled = layout.token_cells[:, 0] == 1
    # the canvas cell each tiled token reads (tiles are cut row by row from the canvas)
    tile = sources[tiled, 0] - 1
    canvas_r = tile // (width // 336) * 24 + sources[tiled, 1]
    canvas_c = tile % (width // 336) * 24 + sources[tiled, 2]
    shift_r = set(canvas_r - layout.token_cells[tiled, 1])
    shift_c = set(canvas_c - layout.token_cells[tiled, 2])
    assert len(shift_r) == len(shift_c) == 1  # one constant offset: the same row-major order
    # the offset is the unpadding cut: 12 columns for 336x336, 6 rows for 644x476 (see above)
    expected = {(336, 336): ({0}, {12}), (644, 476): ({6}, {0})}.get(size, (shift_r, shift_c))
    assert (shift_r, shift_c) == expected


@pytest.mark.parametrize(
    ("config", "processor", "message"),
    [
        (_real_config("full"), _real_processor(), "strategy 'default'"),
        (_real_config(), _real_image_processor(crop_size={"height": 224, "width": 224}), "size"),
        (_real_config(), _real_image_processor(image_grid_pinpoints=[[336, 672]]), "pinpoints"),
        (_real_config(), _real_processor(num_additional_image_tokens=0), "count"),
        (_real_config(), _real_processor(patch_size=16), "count"),
    ],
)
def test_refuses_settings_it_does_not_understand(config, processor, message):
    with pytest.raises(UserError, match=message):
        LlavaNextAdapter(config, processor).image_layout((336, 336))
