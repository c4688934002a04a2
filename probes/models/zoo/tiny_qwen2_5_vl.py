"""Tiny Qwen2.5-VL-shaped checkpoints: the native ``Qwen2_5_VLForConditionalGeneration`` with a
small windowed vision tower and a small Qwen2 decoder (grouped KV heads, multimodal rotary
positions), a word-level tokenizer carrying Qwen's special tokens, a ChatML chat template and a
locally configured image processor, saved in Hugging Face format so they load through exactly
the code real checkpoints use.

The processor is fusionlens' image-only Qwen processor (see
:mod:`probes.models.adapters.qwen2_5_vl`): transformers' own Qwen processor cannot be built
without torchvision, which only its video processor needs.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
)
from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import (
    Qwen2_5_VLTextConfig,
    Qwen2_5_VLVisionConfig,
)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from probes.models.adapters.qwen2_5_vl import QwenImageOnlyProcessor
from probes.models.zoo.checkpoint import greedy_generation_config, save
from probes.models.zoo.tiny_llava import BASIC_WORDS
from probes.models.zoo.vocab import word_tokenizer

VISION_START, IMAGE_PAD, VISION_END = "<|vision_start|>", "<|image_pad|>", "<|vision_end|>"
VIDEO_PAD, IM_START, IM_END = "<|video_pad|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = (VISION_START, IMAGE_PAD, VISION_END, VIDEO_PAD, IM_START, IM_END)
SYSTEM_PROMPT = "You are a helpful assistant."
# ChatML over the messages (images and text); Qwen2.5-VL's template puts its default system
# message first, Qwen3-VL's (tiny_qwen3_vl) does not
MESSAGES_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CHAT_TEMPLATE = ("{% if messages[0]['role'] != 'system' %}<|im_start|>system\n" + SYSTEM_PROMPT
                 + "<|im_end|>\n{% endif %}" + MESSAGES_TEMPLATE)
TEMPLATE_WORDS = ("system", "user", "assistant", "you", "are", "helpful", ".")
PATCH, MERGE = 14, 2
FACTOR = PATCH * MERGE  # one image token covers FACTOR x FACTOR resized pixels
MIN_PIXELS, MAX_PIXELS = 4 * FACTOR * FACTOR, 64 * FACTOR * FACTOR  # 4 to 64 image tokens


def build_processor(
    words: Iterable[str], min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS
) -> QwenImageOnlyProcessor:
    """Word tokenizer over ``words`` with Qwen's special tokens, Qwen's dynamic-resolution
    image processor (PIL backend) limited to ``min_pixels``..``max_pixels`` resized pixels."""
    tokenizer = word_tokenizer([*words, *TEMPLATE_WORDS], special_tokens=SPECIAL_TOKENS)
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=min_pixels, max_pixels=max_pixels, patch_size=PATCH, merge_size=MERGE,
        temporal_patch_size=2,
    )
    return QwenImageOnlyProcessor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE
    )


def build_config(
    processor: QwenImageOnlyProcessor,
    vision_width: int = 32,
    vision_layers: int = 2,
    text_width: int = 128,
    text_layers: int = 4,
    heads: int = 4,
    kv_heads: int = 2,
) -> Qwen2_5_VLConfig:
    """A Qwen2_5_VLConfig of real classes at tiny width.

    The vision tower attends in windows of 2x2 merged tokens except in its last block (full
    attention), as the real tower alternates; the decoder's ``mrope_section`` splits the
    rotary frequencies (head_dim / 2 of them) into temporal, height and width parts in the
    real model's 2:3:3 proportion.
    """
    tokenizer = processor.tokenizer
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    head_dim = text_width // heads
    unit = head_dim // 16  # the sections sum to head_dim / 2; real: head_dim 128 -> [16, 24, 24]
    vision = Qwen2_5_VLVisionConfig(
        depth=vision_layers, hidden_size=vision_width, intermediate_size=2 * vision_width,
        num_heads=2, patch_size=PATCH, spatial_merge_size=MERGE, temporal_patch_size=2,
        window_size=2 * FACTOR, fullatt_block_indexes=[vision_layers - 1],
        out_hidden_size=text_width, tokens_per_second=2,
    )
    text = Qwen2_5_VLTextConfig(
        hidden_size=text_width, intermediate_size=2 * text_width, num_hidden_layers=text_layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, vocab_size=len(tokenizer),
        max_position_embeddings=1024,
        rope_parameters={
            "rope_type": "default", "rope_theta": 1_000_000.0,
            "mrope_section": [2 * unit, 3 * unit, 3 * unit],
        },
        bos_token_id=tokenizer.bos_token_id, eos_token_id=ids[IM_END],
        pad_token_id=tokenizer.pad_token_id,
    )
    return Qwen2_5_VLConfig(
        vision_config=vision, text_config=text, image_token_id=ids[IMAGE_PAD],
        video_token_id=ids[VIDEO_PAD], vision_start_token_id=ids[VISION_START],
        vision_end_token_id=ids[VISION_END], tie_word_embeddings=False,
    )


def build_model(config: Qwen2_5_VLConfig, seed: int) -> Qwen2_5_VLForConditionalGeneration:
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    model.generation_config = greedy_generation_config(config.text_config)
    return model


def build_random(directory: Path, seed: int = 0) -> None:
    """Save an untrained tiny Qwen2.5-VL (4 decoder layers, 4 to 64 image tokens per image)
    into ``directory``.

    >>> import tempfile
    >>> from transformers import AutoConfig
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     build_random(Path(tmp))
    ...     AutoConfig.from_pretrained(tmp).model_type
    'qwen2_5_vl'
    """
    processor = build_processor(BASIC_WORDS)
    save(build_model(build_config(processor), seed), processor, directory)
