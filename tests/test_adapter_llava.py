"""The LLaVA-1.5 adapter: tiny random checkpoint through the registry, token positions, the
patch grid against the processor's own pixels, and the real 7B config on the meta device."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import image_with_box, red_cells, shrink, unnormalise
from PIL import Image
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

from probes.models.adapters import LlavaAdapter, adapter_for
from probes.models.adapters.grids import SEPARATOR
from probes.models.answer import answer_questions

SIZES = [(64, 64), (100, 70), (70, 100), (33, 47)]


def test_loads_through_registry_and_answers(tiny_llava):
    assert isinstance(tiny_llava.adapter, LlavaAdapter)
    assert tiny_llava.source.kind == "builtin"
    assert len(tiny_llava.adapter.decoder_layers(tiny_llava.model)) == 6
    [answer] = answer_questions(tiny_llava, [Image.new("RGB", (64, 64))], ["what shape?"], 3)
    assert len(answer.token_ids) == len(answer.token_probabilities) <= 3
    assert 0.0 <= answer.probability <= 1.0


@pytest.mark.parametrize("size", SIZES)
def test_image_positions_match_input_ids(tiny_llava, size):
    adapter = tiny_llava.adapter
    inputs = adapter.build_inputs([Image.new("RGB", size), Image.new("RGB", (64, 64))],
                                  ["what shape is in the image?", "what colour?"])
    for row, image in enumerate(inputs.images):
        expected = torch.nonzero(inputs.input_ids[row] == adapter.image_token_id)[:, 0]
        np.testing.assert_array_equal(image.positions, expected.numpy())
        grid = image.layout.grids[0]
        height, width = inputs.batch["pixel_values"].shape[-2:]
        assert (grid.rows, grid.cols) == (height // 8, width // 8) == (8, 8)
    # left padding: both rows end on the same prompt suffix
    assert inputs.attention_mask[:, -1].all()


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("box", [(5, 9, 20, 30), (30, 2, 33, 31)])
def test_box_to_patches_matches_processor_pixels(tiny_llava, size, box):
    adapter = tiny_llava.adapter
    box = (box[0], box[1], min(box[2], size[0]), min(box[3], size[1]))
    image = image_with_box(size, box)
    pixels = adapter.processor.image_processor(image, return_tensors="pt")["pixel_values"][0]
    seen = red_cells(unnormalise(pixels, adapter.image_processor), cell=8)
    grid = adapter.image_layout(size).grids[0]
    # resampling blurs edges by about a resized pixel: the box shrunk by one original pixel must
    # land only in red cells, and every red cell must overlap the box grown by one pixel
    assert set(grid.cells_overlapping(shrink(box, 1.0))) <= seen
    assert seen <= set(grid.cells_overlapping(shrink(box, -1.0)))
    assert seen, "the painted box must be visible after preprocessing"


def test_box_mapping_with_pad_to_square():
    """LlavaImageProcessor(do_pad=True) pads to a square before resizing: cells move."""
    processor = LlavaImageProcessorPil(
        do_pad=True, size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}
    )
    adapter = LlavaAdapter(_llava_config(image_size=64, patch=8), processor)
    size, box = (120, 60), (10, 10, 40, 50)
    pixels = processor(image_with_box(size, box), return_tensors="pt")["pixel_values"][0]
    seen = red_cells(unnormalise(pixels, processor), cell=8)
    grid = adapter.image_layout(size).grids[0]
    assert grid.origin_y < 0  # padding above the image
    assert set(grid.cells_overlapping(shrink(box, 1.0))) <= seen <= set(
        grid.cells_overlapping(shrink(box, -1.0))
    )


def test_tokens_in_box_round_trip(tiny_llava):
    layout = tiny_llava.adapter.image_layout((64, 64))
    for k in (0, 9, 63):
        box = layout.token_box(k)
        assert list(layout.tokens_in_box(shrink(box, 0.5))) == [k]


def _llava_config(image_size=336, patch=14, strategy="default", layers=32, hidden=4096):
    """LLaVA-1.5-7B as published in llava-hf/llava-1.5-7b-hf's config.json (the facts)."""
    return LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
            num_attention_heads=16, image_size=image_size, patch_size=patch, projection_dim=768,
        ),
        text_config=LlamaConfig(
            hidden_size=hidden, intermediate_size=11008, num_hidden_layers=layers,
            num_attention_heads=32, num_key_value_heads=32, vocab_size=32064,
            max_position_embeddings=4096,
        ),
        image_token_id=32000, vision_feature_layer=-2,
        vision_feature_select_strategy=strategy, projector_hidden_act="gelu",
    )


def _llava_processor():
    """The image processor settings of llava-hf/llava-1.5-7b-hf (CLIP, 336 px)."""
    return CLIPImageProcessorPil(
        size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}
    )


def test_real_llava_config_on_meta_device():
    config = _llava_config()
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    adapter = adapter_for(model.config, _llava_processor())
    assert adapter.family == "llava"
    assert len(adapter.decoder_layers(model)) == adapter.num_layers == 32
    assert adapter.hidden_size == 4096 and adapter.image_token_id == 32000
    assert len(adapter.attention_modules(model)) == 32
    for size in [(336, 336), (644, 476)]:
        layout = adapter.image_layout(size)
        grid = layout.grids[0]
        assert (grid.rows, grid.cols, layout.n_tokens) == (24, 24, 576)
    # 644x476: shortest edge 476 -> 336, width int(336*644/476) = 454; centre crop cuts
    # (454-336)//2 = 59 resized px on the left, i.e. 59*644/454 = 83.69 original px
    grid = adapter.image_layout((644, 476)).grids[0]
    assert grid.origin_x == pytest.approx(59 * 644 / 454)
    assert grid.cell_width == pytest.approx(14 * 644 / 454)
    assert grid.cell_height == pytest.approx(14 * 476 / 336)


def test_full_strategy_puts_cls_first():
    adapter = LlavaAdapter(_llava_config(strategy="full"), _llava_processor())
    layout = adapter.image_layout((336, 336))
    assert layout.n_tokens == 577
    assert layout.token_cells[0, 0] == SEPARATOR and layout.token_box(0) is None
    assert layout.token_box(1) == (0.0, 0.0, 14.0, 14.0)
