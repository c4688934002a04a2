"""Tiny LLaVA-OneVision-shaped checkpoints: the native ``LlavaOnevisionForConditionalGeneration``
with a small SigLIP tower whose input is no multiple of its patch, as the real one's (36 px
views, 8 px patches: 4x4 cells over 32 px, 4 px of every tile seen by no patch; real: 27 x 14 px
over 384), OneVision's 1x1 .. 6x6 tile pinpoints scaled to 36 px tiles (so large images trigger
the bilinear downsampling of "anyres_max_9"), a small grouped-KV Qwen2 decoder, a ChatML
template, and the image-only OneVision processor (PIL backend), saved in Hugging Face format.
"""

from __future__ import annotations

from pathlib import Path

from transformers import (
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    Qwen2Config,
    SiglipVisionConfig,
)
from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
    LlavaOnevisionImageProcessorPil,
)

from probes.models.adapters.llava_onevision import OnevisionImageOnlyProcessor
from probes.models.zoo.checkpoint import random_model, save
from probes.models.zoo.tiny_llava import BASIC_WORDS
from probes.models.zoo.vocab import word_tokenizer

TILE, PATCH = 36, 8
CELLS = TILE // PATCH
IMAGE_TOKEN, VIDEO_TOKEN, IM_START, IM_END = "<image>", "<video>", "<|im_start|>", "<|im_end|>"
# llava-hf/llava-onevision-qwen2-7b-ov-hf's template, reduced to images and text
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + ' ' }}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>{% endif %}"
    "{% endfor %}{% for part in message['content'] %}{% if part['type'] == 'text' %}"
    "{{ '\\n' + part['text'] }}{% endif %}{% endfor %}<|im_end|>{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
TEMPLATE_WORDS = ("user", "assistant")


def pinpoints(tile: int) -> list[list[int]]:
    """OneVision's canvases: 1x1 to 6x6 tiles, (height, width), rows first."""
    return [[tile * rows, tile * cols] for rows in range(1, 7) for cols in range(1, 7)]


def build_processor(tile: int = TILE, patch: int = PATCH) -> OnevisionImageOnlyProcessor:
    """Word tokenizer with OneVision's special tokens, the PIL image processor at ``tile`` px
    (384 and 14: the real checkpoint's settings)."""
    tokenizer = word_tokenizer(
        [*BASIC_WORDS, *TEMPLATE_WORDS], special_tokens=(IMAGE_TOKEN, VIDEO_TOKEN, IM_START, IM_END)
    )
    image_processor = LlavaOnevisionImageProcessorPil(
        size={"height": tile, "width": tile}, image_grid_pinpoints=pinpoints(tile),
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
    )
    return OnevisionImageOnlyProcessor(
        image_processor=image_processor, tokenizer=tokenizer,
        num_image_tokens=(tile // patch) ** 2,
        vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9",
        chat_template=CHAT_TEMPLATE,
    )


def build_config(processor: OnevisionImageOnlyProcessor, text_layers: int = 4,
                 text_width: int = 128) -> LlavaOnevisionConfig:
    """A LlavaOnevisionConfig of real classes at tiny width; 4 query heads share 2 KV heads."""
    tokenizer = processor.tokenizer
    vision = SiglipVisionConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
        image_size=TILE, patch_size=PATCH, vision_use_head=False,
    )
    text = Qwen2Config(
        hidden_size=text_width, intermediate_size=2 * text_width, num_hidden_layers=text_layers,
        num_attention_heads=4, num_key_value_heads=2, vocab_size=len(tokenizer),
        max_position_embeddings=1024, use_sliding_window=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.convert_tokens_to_ids(IM_END),
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )
    return LlavaOnevisionConfig(
        vision_config=vision, text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        video_token_index=tokenizer.convert_tokens_to_ids(VIDEO_TOKEN),
        image_grid_pinpoints=pinpoints(TILE), vision_feature_layer=-1,
        vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9",
    )


def build_random(directory: Path, seed: int = 0) -> None:
    """Save an untrained tiny LLaVA-OneVision (36 px views, 4x4 cells, 4 layers)."""
    processor = build_processor()
    config = build_config(processor)
    text = config.text_config
    special = [text.pad_token_id, text.bos_token_id, text.eos_token_id, config.image_token_id,
               config.video_token_id]
    save(random_model(LlavaOnevisionForConditionalGeneration, config, seed, special), processor,
         directory)
