"""Tiny Qwen3-VL-shaped checkpoints: the native ``Qwen3VLForConditionalGeneration`` with a
small vision tower (16 px patches merged 2x2, learned position embeddings, DeepStack feature
maps taken from two of its three blocks) and a small Qwen3 decoder (q/k norms, grouped KV
heads, interleaved multimodal rotary positions), a word-level tokenizer carrying Qwen's special
tokens, Qwen3-VL's chat template (no default system message) and a locally configured image
processor, saved in Hugging Face format so they load through the code real checkpoints use.

The processor is fusionlens' image-only Qwen3-VL processor (see
:mod:`probes.models.adapters.qwen3_vl`): transformers' own cannot be built without torchvision.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.qwen3_vl.configuration_qwen3_vl import (
    Qwen3VLTextConfig,
    Qwen3VLVisionConfig,
)

from probes.models.adapters.qwen3_vl import Qwen3VLImageOnlyProcessor
from probes.models.zoo.checkpoint import greedy_generation_config, save
from probes.models.zoo.tiny_llava import BASIC_WORDS
from probes.models.zoo.tiny_qwen2_5_vl import (
    IM_END,
    IMAGE_PAD,
    MESSAGES_TEMPLATE,
    SPECIAL_TOKENS,
    TEMPLATE_WORDS,
    VIDEO_PAD,
    VISION_END,
    VISION_START,
)
from probes.models.zoo.vocab import word_tokenizer

# Qwen3-VL's ChatML template, reduced to images and text: unlike Qwen2.5-VL's it adds no
# system message of its own
CHAT_TEMPLATE = MESSAGES_TEMPLATE
PATCH, MERGE = 16, 2  # Qwen3-VL's (Qwen2.5-VL: 14)
FACTOR = PATCH * MERGE  # one image token covers FACTOR x FACTOR resized pixels
MIN_PIXELS, MAX_PIXELS = 4 * FACTOR * FACTOR, 64 * FACTOR * FACTOR  # 4 to 64 image tokens
HALF = [0.5, 0.5, 0.5]  # Qwen3-VL normalises with mean 0.5, std 0.5


def build_processor(words: Iterable[str], min_pixels: int = MIN_PIXELS,
                    max_pixels: int = MAX_PIXELS) -> Qwen3VLImageOnlyProcessor:
    """Word tokenizer over ``words`` with Qwen's special tokens, Qwen's dynamic-resolution image
    processor (PIL backend, 16 px patches) limited to ``min_pixels``..``max_pixels``."""
    tokenizer = word_tokenizer([*words, *TEMPLATE_WORDS], special_tokens=SPECIAL_TOKENS)
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=min_pixels, max_pixels=max_pixels, patch_size=PATCH, merge_size=MERGE,
        temporal_patch_size=2, image_mean=HALF, image_std=HALF,
    )
    return Qwen3VLImageOnlyProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                     chat_template=CHAT_TEMPLATE)


def build_config(processor: Qwen3VLImageOnlyProcessor, text_layers: int = 4,
                 text_width: int = 128) -> Qwen3VLConfig:
    """A Qwen3VLConfig of real classes at tiny width: DeepStack maps from vision blocks 0 and
    1, so the decoder adds them after its layers 0 and 1 (of 4); ``mrope_section`` in the real
    model's 24:20:20 proportion (head_dim 32: [6, 5, 5]), interleaved."""
    tokenizer = processor.tokenizer
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    vision = Qwen3VLVisionConfig(
        depth=3, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=PATCH,
        spatial_merge_size=MERGE, temporal_patch_size=2, out_hidden_size=text_width,
        num_position_embeddings=64, deepstack_visual_indexes=[0, 1],
    )
    text = Qwen3VLTextConfig(
        hidden_size=text_width, intermediate_size=2 * text_width, num_hidden_layers=text_layers,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, vocab_size=len(tokenizer),
        max_position_embeddings=1024,
        rope_parameters={"rope_type": "default", "rope_theta": 5_000_000.0,
                         "mrope_section": [6, 5, 5], "mrope_interleaved": True},
        pad_token_id=tokenizer.pad_token_id,
    )
    config = Qwen3VLConfig(
        vision_config=vision, text_config=text, image_token_id=ids[IMAGE_PAD],
        video_token_id=ids[VIDEO_PAD], vision_start_token_id=ids[VISION_START],
        vision_end_token_id=ids[VISION_END], tie_word_embeddings=False,
    )
    config.text_config.bos_token_id = tokenizer.bos_token_id
    config.text_config.eos_token_id = ids[IM_END]
    return config


def build_random(directory: Path, seed: int = 0) -> None:
    """Save an untrained tiny Qwen3-VL (4 decoder layers, DeepStack after layers 0 and 1, 4
    to 64 image tokens per image) into ``directory`` (tests/test_adapter_qwen3_vl.py loads it
    through the registry)."""
    processor = build_processor(BASIC_WORDS)
    config = build_config(processor)
    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(config).eval()
    model.generation_config = greedy_generation_config(config.text_config)
    save(model, processor, directory)
