"""The InternVL adapter: the tiny random checkpoint through the registry; token counts and
positions against the processor; the box <-> token mapping against the processor's pixels of
every tile and the thumbnail, with the token order read off the model's own pixel shuffle; the
real InternVL3-8B-hf config on the meta device."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import image_with_box, red_cells, unnormalise
from PIL import Image
from transformers import InternVLConfig, InternVLForConditionalGeneration, Qwen2Config
from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil
from transformers.models.internvl.configuration_internvl import InternVLVisionConfig

from probes.errors import UserError
from probes.models.adapters import InternVLAdapter, adapter_for
from probes.models.adapters.grids import SEPARATOR
from probes.models.loading import load_model
from probes.models.zoo.tiny_internvl import CHAT_TEMPLATE, NAMED_TOKENS, SPECIAL_TOKENS
from probes.models.zoo.tiny_llava import BASIC_WORDS
from probes.models.zoo.vocab import word_tokenizer
from probes.tokens import token_groups

SIZES = [(32, 32), (64, 64), (70, 30), (30, 70), (33, 47), (200, 41), (96, 64)]


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-random-internvl")


@pytest.mark.parametrize("size", SIZES)
def test_positions_and_counts_match_processor(tiny, size):
    adapter, processor = tiny.adapter, tiny.processor
    images = [Image.new("RGB", size, (90, 30, 200)), Image.new("RGB", (40, 40))]
    inputs = adapter.build_inputs(images, ["what shape is in the image?", "what colour?"])
    ids = inputs.input_ids.numpy()
    for row, (image, tokens) in enumerate(zip(images, inputs.images)):
        layout = adapter.image_layout(image.size)
        counted = processor._get_num_multimodal_tokens(image_sizes=[image.size[::-1]])
        patches = layout.token_cells[:, 0] != SEPARATOR
        assert int(patches.sum()) == counted["num_image_tokens"][0]
        # the image is <img>, the context tokens, </img>: exactly the processor's run
        start, end = tokens.positions[0], tokens.positions[-1]
        assert ids[row, start] == processor.start_image_token_id
        assert ids[row, end] == processor.end_image_token_id
        np.testing.assert_array_equal(tokens.positions, np.arange(start, end + 1))
        np.testing.assert_array_equal(tokens.positions[patches],
                                      np.flatnonzero(ids[row] == adapter.image_token_id))
    groups = token_groups(adapter, inputs, 0)
    assert tiny.processor.tokenizer.decode(ids[0, groups.question]) == "what shape is in the image?"


def _token_sources(model, n_views: int, patches: int) -> np.ndarray:
    """(view, row, col) in tokens of each image token, in order, by running the model's own
    pixel shuffle on features that spell out their patch: a token reads patches (2r..2r+1,
    2c..2c+1); its first channels are those of patch (2r, 2c)."""
    view, row, col = torch.meshgrid(torch.arange(n_views), torch.arange(patches),
                                    torch.arange(patches), indexing="ij")
    codes = torch.stack([view, row, col], -1).float()
    shuffled = model.model.pixel_shuffle(codes, scale_factor=model.config.downsample_ratio)
    first = shuffled.reshape(n_views, -1, shuffled.shape[-1])[..., :3].reshape(-1, 3).long()
    return (first // torch.tensor([1, 2, 2])).numpy()


def _around(box, by):
    return (box[0] - by, box[1] - by, box[2] + by, box[3] + by)


def _overlaps(a, b) -> bool:
    return min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])


BOX_CASES = [
    ((64, 64), (12, 13, 29, 21)),  # 2x2 tiles (ties favour more tiles) + thumbnail
    ((70, 30), (14, 12, 23, 28)),  # wide: 2x1 tiles
    ((30, 70), (1, 11, 12, 38)),  # tall: 1x2 tiles
    ((33, 47), (15, 18, 31, 37)),  # 1 tile, no thumbnail
]


@pytest.mark.parametrize(("size", "box"), BOX_CASES)
def test_box_to_tokens_matches_processor_pixels(tiny, size, box):
    adapter, processor = tiny.adapter, tiny.processor
    pixels = processor(images=[image_with_box(size, box)], text=["<IMG_CONTEXT>"],
                       return_tensors="pt")["pixel_values"]
    vision = tiny.model.config.vision_config
    patch = vision.patch_size[0]
    cell = int(patch / tiny.model.config.downsample_ratio)
    seen = [red_cells(unnormalise(view, processor.image_processor), cell=cell) for view in pixels]
    sources = _token_sources(tiny.model, len(pixels), vision.image_size[0] // patch)
    red = {k for k, (v, r, c) in enumerate(sources) if (r, c) in seen[v]}
    layout = adapter.image_layout(size)
    patch_offsets = np.flatnonzero(layout.token_cells[:, 0] != SEPARATOR)
    assert len(patch_offsets) == len(sources)
    # resampling blurs edges by up to a pixel of the coarser of the image and the views
    inner, outer = set(), set()
    scale = max(1.0, max(size) / vision.image_size[0])
    for k, offset in enumerate(patch_offsets):
        cell_box = layout.token_box(offset)
        inner |= {k} if _overlaps(cell_box, _around(box, -scale)) else set()
        outer |= {k} if _overlaps(cell_box, _around(box, scale)) else set()
    assert inner == outer, "pick a box whose edges are a pixel away from the cell edges"
    assert red == inner
    assert red == {int(np.searchsorted(patch_offsets, o)) for o in layout.tokens_in_box(box)}
    if len(layout.grids) == 2:  # the box is seen in the tiles and in the thumbnail
        n_tiled = int((layout.token_cells[:, 0] == 0).sum())
        assert min(red) < n_tiled <= max(red)


# --------------------------------------------------------------------- the real checkpoint
def _real_config(**overrides) -> InternVLConfig:
    """OpenGVLab/InternVL3-8B-hf as published in its config.json (InternViT-300M + Qwen2.5-7B)."""
    settings = dict(
        vision_config=InternVLVisionConfig(
            hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
            num_attention_heads=16, image_size=448, patch_size=14, norm_type="layer_norm",
        ),
        text_config=Qwen2Config(
            hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
            num_attention_heads=28, num_key_value_heads=4, vocab_size=151674,
            max_position_embeddings=32768, rope_parameters={"rope_type": "default",
                                                            "rope_theta": 1000000.0},
        ),
        image_token_id=151667, image_seq_length=256, downsample_ratio=0.5,
        vision_feature_layer=-1, vision_feature_select_strategy="default",
        tie_word_embeddings=False,
    )
    return InternVLConfig(**{**settings, **overrides})


def _real_processor(**overrides):
    """The checkpoint's processor settings (448 px views, up to 12 tiles, 256 tokens each),
    with a local word tokenizer carrying InternVL's image tokens."""
    from probes.models.adapters.internvl import InternVLImageOnlyProcessor

    image_processor = GotOcr2ImageProcessorPil(**{
        "size": {"height": 448, "width": 448}, "crop_to_patches": False, "min_patches": 1,
        "max_patches": 12, **overrides})
    tokenizer = word_tokenizer(BASIC_WORDS, special_tokens=SPECIAL_TOKENS, named_tokens=NAMED_TOKENS)
    return InternVLImageOnlyProcessor(image_processor, tokenizer, image_seq_length=256,
                                      chat_template=CHAT_TEMPLATE)


def test_real_internvl3_8b_config_on_meta_device():
    with torch.device("meta"):
        model = InternVLForConditionalGeneration(_real_config())
    processor = _real_processor()
    adapter = adapter_for(model.config, processor)
    assert isinstance(adapter, InternVLAdapter) and adapter.image_token_id == 151667
    assert len(adapter.decoder_layers(model)) == adapter.num_layers == 28
    assert (adapter.num_kv_heads, adapter.head_dim, adapter.hidden_size) == (4, 128, 3584)
    # the layout reads the image tokens off the (here local) tokenizer's ids
    adapter = adapter_for(_real_config(image_token_id=processor.image_token_id), processor)
    # the processor turns crop_to_patches on over the image processor's False
    # 448x448: one tile, no thumbnail: <img> 256 </img>
    layout = adapter.image_layout((448, 448))
    assert layout.n_tokens == 258 and len(layout.grids) == 1
    assert layout.grids[0].cell_box(15, 15) == (420.0, 420.0, 448.0, 448.0)
    # 800x600 (4:3): 4x3 tiles (12) + thumbnail = 13 views of 256, plus <img> and </img>
    layout = adapter.image_layout((800, 600))
    canvas, thumbnail = layout.grids
    assert layout.n_tokens == 13 * 256 + 2
    assert (canvas.rows, canvas.cols) == (48, 64)
    assert (canvas.cell_width, canvas.cell_height) == pytest.approx((12.5, 12.5))
    assert (thumbnail.cell_width, thumbnail.cell_height) == pytest.approx((50.0, 37.5))
    counted = processor._get_num_multimodal_tokens(image_sizes=[(600, 800), (448, 448)])
    assert counted["num_image_tokens"] == [13 * 256, 256]


def test_real_config_refusals():
    with pytest.raises(UserError, match="'default'"):
        adapter_for(_real_config(vision_feature_select_strategy="full"),
                    _real_processor()).image_layout((100, 100))
    with pytest.raises(UserError, match="336x336 px views"):
        adapter_for(_real_config(), _real_processor(size={"height": 336, "width": 336})
                    ).image_layout((100, 100))
    with pytest.raises(UserError, match="inserts 64 tokens per view"):
        processor = _real_processor()
        processor.image_seq_length = 64
        adapter_for(_real_config(), processor).image_layout((100, 100))
    with pytest.raises(UserError, match="InternVL processor"):
        adapter_for(_real_config(), GotOcr2ImageProcessorPil()).image_layout((100, 100))
