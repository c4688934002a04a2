"""The LLaVA-OneVision adapter: the tiny random checkpoint through the registry; token counts and
positions against the processor's own count and the model's packing; every token's cell against
the model's own ``pack_image_features`` fed with the pixel coordinates each patch reads (base
view, tiles, the patch-less seams between tiles, unpadding and the bilinear downsampling);
boxes against the processor's pixels; the published 7B config on the meta device; refusals."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from helpers import check_tiny_family, image_with_box, red_cells, unnormalise
from PIL import Image
from transformers import (
    CLIPVisionConfig,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
)
from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
    LlavaOnevisionImageProcessorPil,
)
from transformers.models.llava_onevision.modeling_llava_onevision import (
    get_anyres_image_grid_shape,
)

from probes.errors import UserError
from probes.models.adapters import LlavaOnevisionAdapter, adapter_for
from probes.models.adapters.grids import SEPARATOR
from probes.models.adapters.llava_onevision import OnevisionImageOnlyProcessor
from probes.models.loading import load_model
from probes.models.registry import resolve
from probes.models.zoo.tiny_llava import BASIC_WORDS
from probes.models.zoo.tiny_llava_onevision import CELLS, PATCH, TILE
from probes.models.zoo.vocab import word_tokenizer

# square, wide, tall, odd, and three whose unpadded tiles hold more than 1.1^2 * 9 tiles' worth
# of cells (4x4 each), so the model downsamples them: 200x200 (6x6 tiles, 24x24 cells -> 12x12),
# 300x100 (8x24 -> 6x20), 150x140 (16x18 -> 11x12)
DOWNSAMPLED = [(200, 200), (300, 100), (150, 140)]
SIZES = [(36, 36), (90, 60), (60, 150), (33, 47), (37, 211), *DOWNSAMPLED]
QUESTIONS = ["what shape is in the image?", "what colour?"]


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-random-llava-onevision")


def test_loads_through_registry_and_answers(tiny):
    assert resolve("llava-onevision").location == "llava-hf/llava-onevision-qwen2-7b-ov-hf"
    check_tiny_family(tiny, LlavaOnevisionAdapter, OnevisionImageOnlyProcessor, LlavaOnevisionImageProcessorPil)


@pytest.mark.parametrize("size", SIZES)
def test_positions_and_counts_match_processor_and_model(tiny, size):
    adapter, processor = tiny.adapter, tiny.processor
    images = [Image.new("RGB", size, (90, 30, 200)), Image.new("RGB", (64, 64))]
    inputs = adapter.build_inputs(images, QUESTIONS)
    with torch.inference_mode():
        packed = tiny.model.model.get_image_features(
            inputs.batch["pixel_values"], inputs.batch["image_sizes"], return_dict=True
        ).pooler_output
    newline = tiny.model.model.image_newline
    for row, (image, tokens) in enumerate(zip(images, inputs.images, strict=True)):
        expected = torch.nonzero(inputs.input_ids[row] == adapter.image_token_id)[:, 0]
        np.testing.assert_array_equal(tokens.positions, expected.numpy())
        layout = adapter.image_layout(image.size)
        counted = processor._get_num_multimodal_tokens(image_sizes=[image.size[::-1]])
        assert layout.n_tokens == counted["num_image_tokens"][0] == len(tokens.positions)
        assert packed[row].shape[0] == layout.n_tokens
        is_newline = (packed[row] == newline).all(-1).numpy()
        np.testing.assert_array_equal(is_newline, layout.token_cells[:, 0] == SEPARATOR)


def test_checkpoint_in_hub_layout_loads_without_torchvision(tiny, tmp_path):
    """llava-hf's checkpoints name the stock LlavaOnevisionProcessor (whose video processor
    needs torchvision) in processor_config.json and keep the image processor in
    preprocessor_config.json: loading must still work, with the same settings."""
    checkpoint = tmp_path / "onevision-hub-layout"
    shutil.copytree(tiny.source.location, checkpoint)
    saved = json.loads((checkpoint / "processor_config.json").read_text())
    image_processor = {**saved.pop("image_processor"), "processor_class": "LlavaOnevisionProcessor"}
    (checkpoint / "preprocessor_config.json").write_text(json.dumps(image_processor))
    saved["processor_class"] = "LlavaOnevisionProcessor"
    (checkpoint / "processor_config.json").write_text(json.dumps(saved))
    loaded = load_model(str(checkpoint))
    assert type(loaded.processor) is OnevisionImageOnlyProcessor
    assert (loaded.processor.num_image_tokens, loaded.processor.chat_template) == (
        tiny.processor.num_image_tokens, tiny.processor.chat_template)
    image = Image.new("RGB", (200, 200), "blue")
    ours, theirs = (model.adapter.build_inputs([image], QUESTIONS[:1]) for model in (loaded, tiny))
    assert torch.equal(ours.input_ids, theirs.input_ids)
    assert torch.equal(ours.batch["pixel_values"], theirs.batch["pixel_values"])


# ----------------------------------------------------------- each token's cell, from pixels
def _content_box(model, pixel_values: torch.Tensor, size) -> tuple[np.ndarray, int, int]:
    """(x0, y0, x1, y1) of a white image inside the tiles' canvas, read from the processor's
    pixels (padding is black), and the canvas' tiles per row and column."""
    side = model.config.vision_config.image_size
    tiles_h, tiles_w = get_anyres_image_grid_shape(
        [size[1], size[0]], model.config.image_grid_pinpoints, side)
    tiles = pixel_values[1:1 + tiles_h * tiles_w].view(tiles_h, tiles_w, 3, side, side)
    canvas = tiles.permute(2, 0, 3, 1, 4).reshape(3, tiles_h * side, tiles_w * side)
    white = (canvas > 0.9).all(0).numpy()
    ys, xs = np.nonzero(white)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]), tiles_h, tiles_w


def _read_centres(model, processor, size) -> np.ndarray:
    """The original-image (x, y) each token reads, by the model's own ``pack_image_features``
    on features that are the pixel centres each patch sees; NaN for newlines.

    A base-view patch (r, c) sees resized pixels ``patch * (r, c) + patch / 2`` of the squashed
    image; a tile patch the canvas pixels of its tile, the tile at ``side * (tile row, col)``.
    The canvas maps back to the image through the content box read from the pixels."""
    vision = model.config.vision_config
    side, patch = vision.image_size, vision.patch_size
    cells = side // patch
    pixels = processor(Image.new("RGB", size, "white"), return_tensors="pt")["pixel_values"][0]
    box, tiles_h, tiles_w = _content_box(model, pixels, size)
    centre = (torch.arange(cells, dtype=torch.float64) + 0.5) * patch
    y, x = torch.meshgrid(centre, centre, indexing="ij")
    width, height = size
    base = torch.stack([x * width / side, y * height / side], -1).reshape(1, cells * cells, 2)
    tile = torch.arange(tiles_h * tiles_w)
    tx = (tile % tiles_w * side)[:, None, None] + x
    ty = (tile // tiles_w * side)[:, None, None] + y
    tx = (tx - box[0]) * width / (box[2] - box[0])
    ty = (ty - box[1]) * height / (box[3] - box[1])
    tiles = torch.stack([tx, ty], -1).reshape(tiles_h * tiles_w, cells * cells, 2)
    packed, _ = model.model.pack_image_features(
        [torch.cat([base, tiles])], torch.tensor([[height, width]]),
        image_newline=torch.full((2,), float("nan"), dtype=torch.float64),
        vision_aspect_ratio=model.config.vision_aspect_ratio,
    )
    return packed[0].numpy()


def _assert_cells_hold_what_tokens_read(adapter, centres, size, exact_tiles: bool):
    layout = adapter.image_layout(size)
    assert len(centres) == layout.n_tokens
    n_base = layout.grids[0].rows * layout.grids[0].cols
    for k, (x, y) in enumerate(centres):
        grid_index, row, col = layout.token_cells[k]
        assert (grid_index == SEPARATOR) == np.isnan(x)
        if grid_index == SEPARATOR:
            continue
        box = _unclipped_box(layout.grids[grid_index], row, col)
        middle = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
        if k < n_base or exact_tiles:  # one patch per token: the cell's centre exactly
            assert (x, y) == pytest.approx(middle, abs=1e-6), k
        else:  # a bilinear blend of patches around the cell's middle, inside the cell
            assert box[0] < x < box[2] and box[1] < y < box[3], (k, (x, y), box)


def _unclipped_box(grid, row: int, col: int):
    """A cell's box before clipping to the image (a tile cell may reach into the padding)."""
    if hasattr(grid, "col_spans"):
        (x0, x1), (y0, y1) = grid.col_spans[col], grid.row_spans[row]
        return x0, y0, x1, y1
    x0, y0 = grid.origin_x + col * grid.cell_width, grid.origin_y + row * grid.cell_height
    return x0, y0, x0 + grid.cell_width, y0 + grid.cell_height


@pytest.mark.parametrize("size", SIZES)
def test_every_token_cell_holds_the_pixels_the_model_packs_there(tiny, size):
    centres = _read_centres(tiny.model, tiny.processor.image_processor, size)
    _assert_cells_hold_what_tokens_read(tiny.adapter, centres, size,
                                        exact_tiles=size not in DOWNSAMPLED)


def test_large_images_are_downsampled_and_seams_are_skipped(tiny):
    """200x200 fills 6x6 tiles: 24x24 cells, ratio sqrt(576 / 144) = 2 -> 12x12 tokens, each
    two patches wide; the seam (the 4 px of each 36 px tile no patch sees) follows every other
    token. 150x140 (16x18 cells -> 11x12) puts seams inside tokens."""
    scale = 200 / 216  # the 216 px canvas holds the image
    grid = tiny.adapter.image_layout((200, 200)).grids[1]
    assert (grid.rows, grid.cols) == (12, 12)
    np.testing.assert_allclose([x1 - x0 for x0, x1 in grid.col_spans], 16 * scale)
    gaps = [grid.col_spans[i + 1][0] - grid.col_spans[i][1] for i in range(11)]
    np.testing.assert_allclose(gaps, [0, 4 * scale] * 5 + [0], atol=1e-9)
    grid = tiny.adapter.image_layout((150, 140)).grids[1]
    # 18 cells -> 12 tokens of 1.5 cells: 12 resized px, or 16 with a 4 px seam inside
    widths = sorted({round(x1 - x0, 6) for x0, x1 in grid.col_spans})
    assert len(widths) == 2 and widths[1] / widths[0] == pytest.approx(16 / 12)
    small = tiny.adapter.image_layout((90, 60)).grids[1]  # 3x2 tiles of 4x4: kept as is
    assert (small.rows, small.cols) == (8, 12)
    assert small.col_spans[3][1] + 4 * 90 / 108 == pytest.approx(small.col_spans[4][0])


# boxes whose edges lie more than a resampled pixel from every cell edge (checked below)
BOX_CASES = [
    ((72, 72), (29, 34, 69, 69)),  # 2x2 tiles, nothing to unpad
    ((100, 40), (37, 5, 77, 14)),  # wide: padding rows cut
    ((40, 100), (13, 33, 36, 62)),  # tall
    ((90, 60), (30, 24, 76, 47)),
    ((131, 77), (33, 23, 128, 74)),
]


@pytest.mark.parametrize(("size", "box"), BOX_CASES)
def test_box_to_tokens_matches_processor_pixels(tiny, size, box):
    adapter, image_processor = tiny.adapter, tiny.processor.image_processor
    pixels = image_processor(image_with_box(size, box), return_tensors="pt")["pixel_values"][0]
    # which patches (r, c < CELLS: the rest of a view is seen by no patch) hold clearly red pixels
    seen = [{(r, c) for r, c in red_cells(unnormalise(view, image_processor), cell=PATCH)
             if r < CELLS and c < CELLS} for view in pixels]
    sources = _token_sources(tiny.model, len(pixels), (size[1], size[0]))
    layout = adapter.image_layout(size)
    red = {k for k, (v, r, c) in enumerate(sources) if v >= 0 and (r, c) in seen[v]}
    by = max(1.0, max(size) / TILE)  # a resampled pixel, in original pixels, or one pixel
    inner = set(layout.tokens_in_box((box[0] + by, box[1] + by, box[2] - by, box[3] - by)))
    outer = set(layout.tokens_in_box((box[0] - by, box[1] - by, box[2] + by, box[3] + by)))
    assert inner == outer, "pick a box whose edges are a pixel away from the cell edges"
    assert red == inner == set(layout.tokens_in_box(box).tolist())
    n_base = layout.grids[0].rows * layout.grids[0].cols
    assert min(red) < n_base <= max(red)  # seen in the base view and in the tiles


def _token_sources(model, n_views: int, image_hw) -> np.ndarray:
    """(view, row, col) that each token reads (no downsampling at these sizes); newlines -1."""
    view, row, col = torch.meshgrid(torch.arange(n_views), torch.arange(CELLS),
                                    torch.arange(CELLS), indexing="ij")
    codes = torch.stack([view, row, col], -1).reshape(n_views, CELLS * CELLS, 3).float()
    packed, _ = model.model.pack_image_features(
        [codes], torch.tensor([image_hw]), image_newline=torch.full((3,), -1.0))
    return packed[0].long().numpy()


# --------------------------------------------------------------------- the real checkpoint
def real_config(strategy: str = "full", vision: dict | None = None,
                aspect: str = "anyres_max_9") -> LlavaOnevisionConfig:
    """llava-hf/llava-onevision-qwen2-7b-ov-hf as published in its config.json (the facts)."""
    return LlavaOnevisionConfig(
        vision_config=vision or {
            "model_type": "siglip_vision_model", "hidden_size": 1152, "image_size": 384,
            "intermediate_size": 4304, "num_attention_heads": 16, "num_hidden_layers": 26,
            "patch_size": 14, "vision_use_head": False,
        },
        text_config={
            "model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944,
            "num_attention_heads": 28, "num_hidden_layers": 28, "num_key_value_heads": 4,
            "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "vocab_size": 152128,
            "rope_theta": 1_000_000.0, "sliding_window": 131072, "use_sliding_window": False,
            "max_window_layers": 28, "tie_word_embeddings": False,
        },
        image_token_index=151646, video_token_index=151647, projector_hidden_act="gelu",
        vision_feature_layer=-1, vision_feature_select_strategy=strategy,
        vision_aspect_ratio=aspect,
        image_grid_pinpoints=[[384 * r, 384 * c] for r in range(1, 7) for c in range(1, 7)],
    )


def real_image_processor(**overrides) -> LlavaOnevisionImageProcessorPil:
    """The checkpoint's preprocessor_config.json: SigLIP 384, mean and std 0.5, bicubic."""
    settings = dict(size={"height": 384, "width": 384}, image_mean=[0.5] * 3,
                    image_std=[0.5] * 3)
    return LlavaOnevisionImageProcessorPil(**{**settings, **overrides})


def real_processor(image_processor=None, **overrides) -> OnevisionImageOnlyProcessor:
    """The checkpoint's processor_config.json settings, with a local word tokenizer."""
    settings = dict(num_image_tokens=729, vision_feature_select_strategy="full",
                    vision_aspect_ratio="anyres_max_9")
    return OnevisionImageOnlyProcessor(
        image_processor=image_processor or real_image_processor(),
        tokenizer=word_tokenizer(BASIC_WORDS, special_tokens=("<image>", "<video>")),
        **{**settings, **overrides})


@pytest.fixture(scope="module")
def real_meta_model():
    with torch.device("meta"):
        return LlavaOnevisionForConditionalGeneration(real_config())


def test_real_llava_onevision_config_on_meta_device(real_meta_model):
    adapter = adapter_for(real_meta_model.config, real_processor())
    assert isinstance(adapter, LlavaOnevisionAdapter) and adapter.image_token_id == 151646
    assert len(adapter.decoder_layers(real_meta_model)) == adapter.num_layers == 28
    assert (adapter.num_heads, adapter.num_kv_heads, adapter.head_dim) == (28, 4, 128)
    # 384x384: one tile; 27x27 base + 27 rows of 27 and a newline = 1485.
    # 644x476: 768x768 (2x2), resized 768x568, 54x54 cells, 40 rows kept: 729 + 40*55 = 2929.
    # 2000x1500: 4x6 tiles (1536x2304), 108x162 cells, 144 columns kept (cut 9 each side),
    # ratio sqrt(108*144 / (9*729)) = 1.54 -> 70x93 tokens: 729 + 70*94 = 7309.
    sizes = [(384, 384), (644, 476), (2000, 1500)]
    layouts = [adapter.image_layout(size) for size in sizes]
    assert [layout.n_tokens for layout in layouts] == [1485, 2929, 7309]
    assert real_processor()._get_num_multimodal_tokens(
        image_sizes=[size[::-1] for size in sizes])["num_image_tokens"] == [1485, 2929, 7309]
    assert (layouts[2].grids[1].rows, layouts[2].grids[1].cols) == (70, 93)
    base, tiled = layouts[0].grids
    # 27 patches of 14 px cover 378 of the 384 px: the last 6 px of every view are unseen
    assert base.cell_box(26, 26) == (364.0, 364.0, 378.0, 378.0)
    assert tiled.col_spans[-1] == (364.0, 378.0)


@pytest.mark.parametrize("size", [(644, 476), (1000, 300), (300, 1000), (2000, 1500)])
def test_real_layout_holds_what_the_models_packing_reads(real_meta_model, size):
    """The real config drives pack_image_features on CPU coordinates, tiles of 384 px."""
    adapter = LlavaOnevisionAdapter(real_meta_model.config, real_processor())
    centres = _read_centres(real_meta_model, real_image_processor(), size)
    # only 2000x1500 is downsampled (108x144 cells, see above); the others keep 25x81 at most
    _assert_cells_hold_what_tokens_read(adapter, centres, size, exact_tiles=size != (2000, 1500))


@pytest.mark.parametrize(
    ("config", "processor", "message"),
    [
        (real_config("default"), real_processor(), "strategy 'full'"),
        (real_config(vision=CLIPVisionConfig(image_size=336, patch_size=14).to_dict()),
         real_processor(), "SigLIP"),
        (real_config(aspect="anyres"), real_processor(), "anyres_max_<n>"),
        (real_config(), real_processor(num_image_tokens=576), "count"),
        (real_config(), real_processor(vision_aspect_ratio="anyres_max_4"), "count"),
        (real_config(), real_image_processor(image_grid_pinpoints=[[384, 768]]), "pinpoints"),
        (real_config(), real_image_processor(size={"height": 336, "width": 336}), "size"),
    ],
)
def test_refuses_settings_it_does_not_understand(config, processor, message):
    with pytest.raises(UserError, match=message):
        LlavaOnevisionAdapter(config, processor).image_layout((384, 384))
