"""Tiny Mistral-3-shaped checkpoints: the native ``Mistral3ForConditionalGeneration`` with a
small Pixtral tower (2-D rotary positions, 8 px patches merged 2x2: one token per 16 px, images
up to 128 px on their longest edge, so up to 8x8 tokens and their row breaks), a small grouped-KV
Mistral decoder without a sliding window (as Mistral-Small-3.1's), Mistral's [INST] template,
and the torchvision-free Pixtral processor (PIL backend), saved in Hugging Face format.
"""

from __future__ import annotations

from pathlib import Path

from transformers import Mistral3Config, Mistral3ForConditionalGeneration
from transformers.models.pixtral.image_processing_pil_pixtral import PixtralImageProcessorPil

from probes.models.adapters.mistral3 import PixtralImageOnlyProcessor
from probes.models.zoo.checkpoint import random_model, save
from probes.models.zoo.tiny_llava import BASIC_WORDS
from probes.models.zoo.vocab import word_tokenizer

PATCH, MERGE, LONGEST = 8, 2, 128
IMAGE_TOKEN, BREAK_TOKEN, END_TOKEN = "[IMG]", "[IMG_BREAK]", "[IMG_END]"
SPECIAL_TOKENS = (IMAGE_TOKEN, BREAK_TOKEN, END_TOKEN, "[INST]", "[/INST]")
# Mistral-Small-3.1's template, reduced to one user turn of images and text
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}[INST]"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}[IMG]"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}[/INST]"
    "{% else %}{% for part in message['content'] %}{{ part['text'] }}{% endfor %}</s>"
    "{% endif %}{% endfor %}"
)


def build_processor(patch: int = PATCH, merge: int = MERGE,
                    longest: int = LONGEST) -> PixtralImageOnlyProcessor:
    """Word tokenizer with Pixtral's image tokens, the PIL Pixtral image processor (``patch``
    px patches, ``longest`` px at most; 14 and 1540 are Mistral-Small-3.1's)."""
    tokenizer = word_tokenizer(BASIC_WORDS, special_tokens=SPECIAL_TOKENS)
    image_processor = PixtralImageProcessorPil(
        size={"longest_edge": longest}, patch_size={"height": patch, "width": patch})
    return PixtralImageOnlyProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=patch,
        spatial_merge_size=merge, chat_template=CHAT_TEMPLATE)


def build_config(processor: PixtralImageOnlyProcessor, text_layers: int = 4,
                 text_width: int = 128) -> Mistral3Config:
    """A Mistral3Config of real classes at tiny width; 4 query heads share 2 KV heads."""
    tokenizer = processor.tokenizer
    return Mistral3Config(
        vision_config={
            "model_type": "pixtral", "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 2, "head_dim": 32,
            "patch_size": PATCH, "image_size": LONGEST, "hidden_act": "silu",
        },
        text_config={
            "model_type": "mistral", "hidden_size": text_width,
            "intermediate_size": 2 * text_width, "num_hidden_layers": text_layers,
            "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": text_width // 4,
            "vocab_size": len(tokenizer), "max_position_embeddings": 1024,
            "sliding_window": None, "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id,
        },
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        spatial_merge_size=MERGE, vision_feature_layer=-1, multimodal_projector_bias=False,
        tie_word_embeddings=False,
    )


def build_random(directory: Path, seed: int = 0) -> None:
    """Save an untrained tiny Mistral 3 (4 decoder layers, up to 8x8 image tokens)."""
    processor = build_processor()
    config = build_config(processor)
    text = config.text_config
    special = [text.pad_token_id, text.bos_token_id, text.eos_token_id,
               *processor.tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS))]
    save(random_model(Mistral3ForConditionalGeneration, config, seed, special), processor,
         directory)
