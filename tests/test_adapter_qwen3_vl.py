"""The Qwen3-VL adapter: the tiny random checkpoint through the registry, its 16 px merged-patch
grid against the processor's own pixels, multimodal positions as the model computes them, the
real 8B config on the meta device (DeepStack after layers 0-2), Qwen3-VL-MoE through the same
adapter, and the refusal of hybrid linear-attention models naming their layers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import image_with_box, red_cells, unnormalise
from PIL import Image
from test_adapter_qwen2_5_vl import (
    _forward_positions,
    _margin_in_resized_pixels,
    _resized_image,
    check_positions_and_grid,
)
from transformers import (
    AutoProcessor,
    Qwen3_5Config,
    Qwen3NextConfig,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLMoeConfig,
    Qwen3VLMoeForConditionalGeneration,
)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from probes.errors import UserError
from probes.models.adapters import Qwen3VLAdapter, Qwen3VLMoeAdapter, adapter_for
from probes.models.adapters.qwen3_vl import Qwen3VLImageOnlyProcessor
from probes.models.answer import answer_questions
from probes.models.zoo.tiny_qwen3_vl import FACTOR, PATCH, build_config

QUESTIONS = ["what shape is in the image?", "what colour is the object?"]


@pytest.fixture(scope="module")
def tiny():
    from probes.models.loading import load_model

    return load_model("tiny-random-qwen3-vl")


def test_loads_through_registry_and_answers(tiny):
    assert isinstance(tiny.adapter, Qwen3VLAdapter) and tiny.source.kind == "builtin"
    assert type(tiny.processor) is Qwen3VLImageOnlyProcessor
    assert type(AutoProcessor.from_pretrained(tiny.source.location)) is Qwen3VLImageOnlyProcessor
    assert (PATCH, tiny.model.config.vision_config.patch_size) == (16, 16)
    assert tiny.adapter.deepstack_layers == (0, 1)
    # Qwen3-VL's template adds no system message of its own
    assert tiny.adapter.prompt("what shape?").startswith("<|im_start|>user\n<|vision_start|>")
    answers = answer_questions(tiny, [Image.new("RGB", (84, 84), "red")], QUESTIONS[:1], 3)
    assert 0.0 <= answers[0].probability <= 1.0


@pytest.mark.parametrize("size", [(96, 96), (150, 60), (50, 130), (300, 260)])
def test_image_positions_and_grid_match_processor(tiny, size):
    check_positions_and_grid(tiny.adapter, [Image.new("RGB", size), Image.new("RGB", (64, 64))])


@pytest.mark.parametrize(("size", "box", "n_cells"), [
    ((96, 96), (10, 40, 70, 52), 3),
    ((150, 60), (40, 8, 100, 50), 6),
    ((300, 260), (50, 60, 200, 140), 15),
])
def test_box_to_cells_matches_processor_pixels(tiny, size, box, n_cells):
    adapter = tiny.adapter
    out = adapter.image_processor(image_with_box(size, box), return_tensors="pt")
    pixels = _resized_image(out["pixel_values"], out["image_grid_thw"][0], patch=PATCH)
    seen = red_cells(unnormalise(pixels, adapter.image_processor), cell=FACTOR)
    grid = adapter.image_layout(size).grids[0]
    assert _margin_in_resized_pixels(grid, box, FACTOR) >= 3  # no resampling blur at a boundary
    assert seen == set(grid.cells_overlapping(box))
    assert len(seen) == n_cells


def test_position_ids_are_the_models_own(tiny):
    adapter, model = tiny.adapter, tiny.model
    inputs = adapter.build_inputs([Image.new("RGB", (150, 60)), Image.new("RGB", (64, 64))],
                                  QUESTIONS)
    assert not inputs.attention_mask[1].all()  # row 1 is left-padded
    positions = adapter.position_ids(model, inputs.batch)
    rotary = model.model.language_model.rotary_emb
    assert torch.equal(positions, _forward_positions(model, inputs.batch, rotary))
    image = inputs.images[0]  # rows and columns of the grid on the height and width axes
    start = int(positions[0, 0, image.positions[0]])
    cells = image.layout.token_cells
    np.testing.assert_array_equal(positions[1, 0, image.positions].numpy(), start + cells[:, 1])
    np.testing.assert_array_equal(positions[2, 0, image.positions].numpy(), start + cells[:, 2])


def _qwen3_vl_8b_config() -> Qwen3VLConfig:
    """Qwen/Qwen3-VL-8B-Instruct as published in its config.json (the facts)."""
    return Qwen3VLConfig(
        text_config={
            "num_hidden_layers": 36, "hidden_size": 4096, "num_attention_heads": 32,
            "num_key_value_heads": 8, "head_dim": 128, "intermediate_size": 12288,
            "vocab_size": 151936, "max_position_embeddings": 262144, "rms_norm_eps": 1e-6,
            "rope_parameters": {"rope_type": "default", "rope_theta": 5_000_000.0,
                                "mrope_section": [24, 20, 20], "mrope_interleaved": True},
        },
        vision_config={
            "depth": 27, "hidden_size": 1152, "intermediate_size": 4304, "num_heads": 16,
            "out_hidden_size": 4096, "patch_size": 16, "spatial_merge_size": 2,
            "temporal_patch_size": 2, "num_position_embeddings": 2304,
            "deepstack_visual_indexes": [8, 16, 24],
        },
        image_token_id=151655, video_token_id=151656, vision_start_token_id=151652,
        vision_end_token_id=151653, tie_word_embeddings=False,
    )


def _qwen3_vl_processor() -> Qwen2VLImageProcessorPil:
    """Qwen/Qwen3-VL-8B-Instruct's preprocessor_config.json: 256x256 to 4096x4096 pixels."""
    return Qwen2VLImageProcessorPil(min_pixels=65536, max_pixels=16777216, patch_size=16,
                                    merge_size=2, temporal_patch_size=2,
                                    image_mean=[0.5] * 3, image_std=[0.5] * 3)


def test_real_qwen3_vl_config_on_meta_device():
    with torch.device("meta"):
        model = Qwen3VLForConditionalGeneration(_qwen3_vl_8b_config())
    processor = _qwen3_vl_processor()
    adapter = adapter_for(model.config, processor)
    assert adapter.family == "qwen3_vl" and adapter.image_token_id == 151655
    assert len(adapter.decoder_layers(model)) == adapter.num_layers == 36
    assert (adapter.num_heads, adapter.num_kv_heads, adapter.head_dim) == (32, 8, 128)
    assert adapter.deepstack_layers == (0, 1, 2)  # three maps: after decoder layers 0, 1, 2
    # sides round to multiples of 32: 644x476 -> 640x480 (15 x 20 tokens), 336 -> 320
    expected = {(644, 476): (15, 20, [1, 30, 40]), (336, 336): (10, 10, [1, 20, 20])}
    for size, (rows, cols, grid_thw) in expected.items():
        grid = adapter.image_layout(size).grids[0]
        assert (grid.rows, grid.cols) == (rows, cols)
        out = processor(images=Image.new("RGB", size), return_tensors="pt")
        assert out["image_grid_thw"][0].tolist() == grid_thw


def test_moe_variant_uses_the_same_adapter_and_deepstack(tiny):
    """Qwen3-VL-MoE: the adapter is Qwen3-VL's (same layout, positions, DeepStack hook); a tiny
    MoE model's DeepStack removal equals its own forward with the additions dropped."""
    from probes.deepstack import DeepStackOff
    from probes.models.loading import LoadedModel
    from probes.run import run_knockouts

    dense = build_config(tiny.processor)
    config = Qwen3VLMoeConfig(
        text_config={**dense.text_config.to_dict(), "num_hidden_layers": 2, "num_experts": 4,
                     "num_experts_per_tok": 2, "moe_intermediate_size": 64,
                     "decoder_sparse_step": 1},
        vision_config=dense.vision_config.to_dict(), image_token_id=dense.image_token_id,
        video_token_id=dense.video_token_id, vision_start_token_id=dense.vision_start_token_id,
        vision_end_token_id=dense.vision_end_token_id)
    torch.manual_seed(0)
    model = Qwen3VLMoeForConditionalGeneration(config).eval()
    adapter = adapter_for(model.config, tiny.processor)
    assert type(adapter) is Qwen3VLMoeAdapter and adapter.deepstack_layers == (0, 1)
    loaded = LoadedModel(model=model, processor=tiny.processor, adapter=adapter,
                         source=tiny.source)
    inputs = adapter.build_inputs([Image.new("RGB", (90, 60), (200, 30, 30))], QUESTIONS[:1])
    result = run_knockouts(loaded, inputs, [DeepStackOff.of(adapter)])
    language = model.model.language_model
    original = type(language)._deepstack_process
    try:
        type(language)._deepstack_process = lambda self, hidden, masks, embeds: hidden
        with torch.no_grad():
            reference = model(**inputs.batch).logits[0, -1]
    finally:
        type(language)._deepstack_process = original
    torch.testing.assert_close(result.logits[0], reference, atol=1e-5, rtol=0)
    assert (result.logits[0] - result.clean_logits).abs().max() > 1e-3


@pytest.mark.parametrize("config_class", [Qwen3NextConfig, Qwen3_5Config])
def test_hybrid_linear_attention_models_are_refused_naming_the_layers(tmp_path, config_class):
    """No adapter handles Qwen3.5 or Qwen3-Next; loading one says why in one sentence: which
    layers have no attention matrix (the CLI prints it and exits 2, as every UserError)."""
    from probes.models.loading import load_model

    text = {"num_hidden_layers": 8}
    config = config_class(text_config=text) if config_class is Qwen3_5Config \
        else config_class(**text)
    config.save_pretrained(tmp_path)
    with pytest.raises(UserError) as refused:
        load_model(str(tmp_path))
    message = str(refused.value)
    assert "its layers 0-2, 4-6 are linear-attention layers" in message
    assert "only layers 3, 7 attend" in message and message.count(".") == 1
