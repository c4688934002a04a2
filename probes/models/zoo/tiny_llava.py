"""Tiny LLaVA-1.5-shaped checkpoints: the native ``LlavaForConditionalGeneration`` with a small
CLIP tower and a small Llama, a word-level tokenizer and a locally configured CLIP processor,
saved in Hugging Face format so they load through exactly the code real checkpoints use.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from probes.models.zoo.checkpoint import greedy_generation_config, save
from probes.models.zoo.vocab import word_tokenizer

IMAGE_TOKEN = "<image>"
# LLaVA-1.5's own template, with the image placed before the question
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}USER: "
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>\n"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %} "
    "{% else %}ASSISTANT: {% for part in message['content'] %}{{ part['text'] }}{% endfor %}"
    "</s>{% endif %}{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
TEMPLATE_WORDS = ("user", "assistant", ":")
# enough words for easy-VQA-style questions, for the random model
BASIC_WORDS = (
    "what", "shape", "color", "colour", "is", "in", "the", "image", "does", "contain", "a", "an",
    "there", "not", "?", "yes", "no", "circle", "rectangle", "triangle", "red", "green", "blue",
    "black", "gray", "teal", "brown", "yellow", "object", "of", "this", "how", "many",
)


def build_processor(words: Iterable[str], image_size: int, patch_size: int) -> LlavaProcessor:
    """A LlavaProcessor: word tokenizer over ``words``, CLIP resize + centre crop to ``image_size``."""
    tokenizer = word_tokenizer([*words, *TEMPLATE_WORDS], special_tokens=(IMAGE_TOKEN,))
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        # the "default" strategy drops CLS; the processor must count it to insert the right number
        num_additional_image_tokens=1,
        vision_feature_select_strategy="default",
        chat_template=CHAT_TEMPLATE,
    )


def build_config(
    processor: LlavaProcessor,
    image_size: int = 64,
    patch_size: int = 8,
    vision_width: int = 64,
    vision_layers: int = 2,
    text_width: int = 128,
    text_layers: int = 6,
    heads: int = 4,
    kv_heads: int = 2,
) -> LlavaConfig:
    """A LlavaConfig of real classes at tiny width; grouped KV heads as in recent Llamas."""
    tokenizer = processor.tokenizer
    vision = CLIPVisionConfig(
        hidden_size=vision_width, intermediate_size=4 * vision_width,
        num_hidden_layers=vision_layers, num_attention_heads=max(1, vision_width // 32),
        image_size=image_size, patch_size=patch_size,
    )
    text = LlamaConfig(
        hidden_size=text_width, intermediate_size=4 * text_width,
        num_hidden_layers=text_layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        vocab_size=len(tokenizer), max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )
    return LlavaConfig(
        vision_config=vision, text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        # a tower trained from scratch has no reason to skip its last layer
        vision_feature_layer=-1, vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )


def build_model(config: LlavaConfig, seed: int) -> LlavaForConditionalGeneration:
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    model.generation_config = greedy_generation_config(config.text_config)
    return model


def build_random(directory: Path, seed: int = 0) -> None:
    """Save an untrained twin of the embedded ``tiny-llava`` into ``directory``: its exact
    config, tokenizer and image processor, fresh random weights (for tests that need a model
    with no learned structure)."""
    from transformers import AutoProcessor

    from probes.models.zoo import CHECKPOINTS

    embedded = CHECKPOINTS / "tiny-llava"
    processor = AutoProcessor.from_pretrained(embedded)
    save(build_model(LlavaConfig.from_pretrained(embedded), seed), processor, directory)
