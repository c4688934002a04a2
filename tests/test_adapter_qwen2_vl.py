"""Qwen2-VL: the tiny random checkpoint through the registry (its layout and multimodal position
ids are Qwen2.5-VL's, tested in test_adapter_qwen2_5_vl.py; the engine suite runs on it through
helpers.TINY_FAMILIES), the published 7B config on the meta device, and TransformerLens'
refusal in one sentence."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from probes.errors import UserError
from probes.models.adapters import Qwen2VLAdapter, adapter_for
from probes.models.adapters.qwen2_5_vl import QwenImageOnlyProcessor
from probes.models.loading import load_model
from probes.models.registry import resolve


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-random-qwen2-vl")


def qwen2_vl_7b_config() -> Qwen2VLConfig:
    """Qwen/Qwen2-VL-7B-Instruct as published in its config.json (the facts; its vision
    ``hidden_size`` is the merger's output, the LM's width)."""
    return Qwen2VLConfig(
        text_config={
            "num_hidden_layers": 28, "hidden_size": 3584, "num_attention_heads": 28,
            "num_key_value_heads": 4, "intermediate_size": 18944, "vocab_size": 152064,
            "max_position_embeddings": 32768, "rms_norm_eps": 1e-6,
            "use_sliding_window": False, "sliding_window": 32768, "max_window_layers": 28,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0,
                                "mrope_section": [16, 24, 24]},
        },
        vision_config={
            "depth": 32, "embed_dim": 1280, "hidden_size": 3584, "mlp_ratio": 4, "num_heads": 16,
            "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2,
        },
        image_token_id=151655, video_token_id=151656,
        vision_start_token_id=151652, vision_end_token_id=151653,
    )


def test_alias_and_tiny_checkpoint_load_as_qwen2_vl(tiny):
    assert resolve("qwen2-vl").location == "Qwen/Qwen2-VL-7B-Instruct"
    assert isinstance(tiny.adapter, Qwen2VLAdapter)
    assert type(tiny.model) is Qwen2VLForConditionalGeneration
    assert type(tiny.processor) is QwenImageOnlyProcessor
    assert (tiny.adapter.num_layers, tiny.adapter.num_heads, tiny.adapter.num_kv_heads) == (4, 4, 2)
    inputs = tiny.adapter.build_inputs([Image.new("RGB", (150, 60))], ["what shape ?"])
    grid = inputs.images[0].layout.grids[0]
    _, rows, cols = inputs.batch["image_grid_thw"][0].tolist()
    assert (grid.rows, grid.cols) == (rows // 2, cols // 2)
    expected = np.flatnonzero(inputs.input_ids[0].numpy() == tiny.adapter.image_token_id)
    np.testing.assert_array_equal(inputs.images[0].positions, expected)


def test_real_qwen2_vl_config_on_meta_device():
    with torch.device("meta"):
        model = Qwen2VLForConditionalGeneration(qwen2_vl_7b_config())
    processor = Qwen2VLImageProcessorPil(min_pixels=3136, max_pixels=12845056, patch_size=14,
                                         merge_size=2)
    adapter = adapter_for(model.config, processor)
    assert adapter.family == "qwen2_vl" and adapter.image_token_id == 151655
    assert len(adapter.decoder_layers(model)) == adapter.num_layers == 28
    assert (adapter.num_heads, adapter.num_kv_heads, adapter.head_dim) == (28, 4, 128)
    layout = adapter.image_layout((644, 476))
    assert (layout.grids[0].rows, layout.grids[0].cols, layout.n_tokens) == (17, 23, 391)


def test_transformer_lens_refusal_is_one_sentence_naming_the_class(tiny):
    from probes.lens import crosscheck

    with pytest.raises(UserError) as caught:
        crosscheck(tiny, Image.new("RGB", (64, 64)), "what shape ?")
    message = str(caught.value)
    assert "Qwen2VLForConditionalGeneration" in message and "\n" not in message
    assert "supported architecture" in message and len(message) < 300
