"""Tiny LLaVA-NeXT-shaped checkpoints: the native ``LlavaNextForConditionalGeneration`` with a
small CLIP tower (32 px input, 8 px patches: 4x4 cells per view), LLaVA-1.6's pinpoint layouts
scaled from 336 px tiles to 32 px, and a small grouped-KV Mistral, saved in Hugging Face format
with a locally configured processor so they load through the code real checkpoints use.

>>> import tempfile, pathlib, transformers
>>> with tempfile.TemporaryDirectory() as tmp:
...     build_random(pathlib.Path(tmp))
...     processor = transformers.AutoProcessor.from_pretrained(tmp)
>>> type(processor.image_processor).__name__  # no torchvision needed
'LlavaNextImageProcessorPil'
"""

from __future__ import annotations

from pathlib import Path

import torch
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

from probes.models.zoo.checkpoint import greedy_generation_config, save
from probes.models.zoo.tiny_llava import (
    BASIC_WORDS,
    CHAT_TEMPLATE,
    IMAGE_TOKEN,
    TEMPLATE_WORDS,
)
from probes.models.zoo.vocab import word_tokenizer

TILE = 32  # the tower's input: the base view and every tile
PATCH = 8
# llava-v1.6's [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]] in 32 px tiles:
# 1x2, 2x1, 2x2, 3x1 and 1x3 tiles, (height, width)
PINPOINTS = [[32, 64], [64, 32], [64, 64], [96, 32], [32, 96]]


def build_processor(tile: int = TILE, patch: int = PATCH) -> LlavaNextProcessor:
    """A LlavaNextProcessor: word tokenizer, LLaVA-1.5 chat template, PIL image processor."""
    tokenizer = word_tokenizer([*BASIC_WORDS, *TEMPLATE_WORDS], special_tokens=(IMAGE_TOKEN,))
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": tile},
        crop_size={"height": tile, "width": tile},
        image_grid_pinpoints=PINPOINTS,
    )
    return LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch,
        # "default" drops each view's CLS; the processor counts it, then takes it off again
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )


def build_config(
    processor: LlavaNextProcessor, text_layers: int = 4, text_width: int = 128
) -> LlavaNextConfig:
    """A LlavaNextConfig of real classes at tiny width; 4 query heads share 2 KV heads."""
    tokenizer = processor.tokenizer
    image_processor = processor.image_processor
    vision = CLIPVisionConfig(
        hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
        image_size=image_processor.crop_size["height"], patch_size=processor.patch_size,
    )
    text = MistralConfig(
        hidden_size=text_width, intermediate_size=4 * text_width,
        num_hidden_layers=text_layers, num_attention_heads=4, num_key_value_heads=2,
        head_dim=text_width // 4, sliding_window=None,
        vocab_size=len(tokenizer), max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )
    return LlavaNextConfig(
        vision_config=vision, text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_grid_pinpoints=image_processor.image_grid_pinpoints,
        # a tower trained from scratch has no reason to skip its last layer
        vision_feature_layer=-1, vision_feature_select_strategy="default",
    )


def build_model(config: LlavaNextConfig, seed: int) -> LlavaNextForConditionalGeneration:
    torch.manual_seed(seed)
    model = LlavaNextForConditionalGeneration(config).eval()
    text = config.text_config
    # untrained, seed 0 happens to rank </s> first and would answer nothing; a random model
    # that says random *words* exercises more of the answer path, so the special tokens'
    # output rows give logit 0 (answers then run to max_new_tokens)
    special = [text.pad_token_id, text.bos_token_id, text.eos_token_id, config.image_token_id]
    with torch.no_grad():
        model.lm_head.weight[special] = 0.0
    model.generation_config = greedy_generation_config(text)
    return model


def build_random(directory: Path, seed: int = 0) -> None:
    """Save an untrained tiny LLaVA-NeXT (32 px views, 4x4 cells, 4 layers) into ``directory``."""
    processor = build_processor()
    save(build_model(build_config(processor), seed), processor, directory)
