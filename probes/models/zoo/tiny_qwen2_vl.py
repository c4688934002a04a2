"""Tiny Qwen2-VL-shaped checkpoints: the native ``Qwen2VLForConditionalGeneration`` with a small
vision tower that attends globally (Qwen2-VL's tower has no windows) and a small Qwen2 decoder
with multimodal rotary positions, sharing the tiny Qwen2.5-VL's tokenizer, ChatML template and
image-only Qwen processor (Qwen2-VL's processor differs from Qwen2.5-VL's only in video timing).
"""

from __future__ import annotations

from pathlib import Path

from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

from probes.models.adapters.qwen2_5_vl import QwenImageOnlyProcessor
from probes.models.zoo.checkpoint import random_model, save
from probes.models.zoo.tiny_llava import BASIC_WORDS
from probes.models.zoo.tiny_qwen2_5_vl import (
    IM_END,
    IMAGE_PAD,
    MERGE,
    PATCH,
    SPECIAL_TOKENS,
    VIDEO_PAD,
    VISION_END,
    VISION_START,
    build_processor,
)


def build_config(
    processor: QwenImageOnlyProcessor, text_width: int = 128, text_layers: int = 4,
    heads: int = 4, kv_heads: int = 2,
) -> Qwen2VLConfig:
    """A Qwen2VLConfig of real classes at tiny width; ``mrope_section`` splits the rotary
    frequencies in the real model's 2:3:3 proportion (head_dim 128 -> [16, 24, 24])."""
    tokenizer = processor.tokenizer
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    unit = text_width // heads // 16
    return Qwen2VLConfig(
        vision_config={
            "depth": 2, "embed_dim": 32, "hidden_size": text_width, "num_heads": 2,
            "mlp_ratio": 2, "patch_size": PATCH, "spatial_merge_size": MERGE,
            "temporal_patch_size": 2,
        },
        text_config={
            "hidden_size": text_width, "intermediate_size": 2 * text_width,
            "num_hidden_layers": text_layers, "num_attention_heads": heads,
            "num_key_value_heads": kv_heads, "vocab_size": len(tokenizer),
            "max_position_embeddings": 1024,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0,
                                "mrope_section": [2 * unit, 3 * unit, 3 * unit]},
            "bos_token_id": tokenizer.bos_token_id, "eos_token_id": ids[IM_END],
            "pad_token_id": tokenizer.pad_token_id,
        },
        image_token_id=ids[IMAGE_PAD], video_token_id=ids[VIDEO_PAD],
        vision_start_token_id=ids[VISION_START], vision_end_token_id=ids[VISION_END],
        tie_word_embeddings=False,
    )


def build_random(directory: Path, seed: int = 0) -> None:
    """Save an untrained tiny Qwen2-VL (4 decoder layers, 4 to 64 image tokens per image) into
    ``directory`` (tests/test_adapter_qwen2_vl.py loads it through the registry)."""
    processor = build_processor(BASIC_WORDS)
    config = build_config(processor)
    save(random_model(Qwen2VLForConditionalGeneration, config, seed), processor, directory)
