"""Tiny Gemma-3-shaped checkpoints: the native ``Gemma3ForConditionalGeneration`` with a small
SigLIP tower, average pooling to a 4x4 grid of soft tokens, and a small Gemma 3 decoder that
keeps every feature of the real one the engine must reproduce: sliding-window layers (a window
of 12 positions, shorter than any prompt, so it cuts) between full ones, their two rotary
tables (local base 10k; global base 1M with the real checkpoints' linear scaling), QK-norm, a
``query_pre_attn_scalar`` other than the head size, embeddings scaled by sqrt(hidden), tied
embeddings and bidirectional attention inside each image in prefill. A word-level tokenizer
carrying Gemma's image and turn tokens, Gemma's chat template (reduced to images and text) and
the real ``Gemma3Processor`` with the PIL image processor, saved in Hugging Face format.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from transformers import (
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3Processor,
    Gemma3TextConfig,
    SiglipVisionConfig,
)
from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

from probes.models.zoo.checkpoint import random_model, save
from probes.models.zoo.tiny_llava import BASIC_WORDS
from probes.models.zoo.vocab import word_tokenizer

BOI, EOI, IMAGE = "<start_of_image>", "<end_of_image>", "<image_soft_token>"
START_TURN, END_TURN = "<start_of_turn>", "<end_of_turn>"
SPECIAL_TOKENS = (BOI, EOI, IMAGE, START_TURN, END_TURN)
# Gemma 3's template, reduced to images and text (the tokenizer adds the leading <s> itself)
CHAT_TEMPLATE = (
    "{% for message in messages %}<start_of_turn>"
    "{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<start_of_image>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
TEMPLATE_WORDS = ("user", "model")
IMAGE_SIZE, PATCH, TOKENS_PER_IMAGE = 32, 4, 16  # 8x8 patches, pooled 2x2 -> 4x4 soft tokens
WINDOW = 12  # positions a sliding layer's query reads back (itself included)
LAYER_TYPES = ("sliding_attention", "sliding_attention", "full_attention") * 2


def build_processor(words: Iterable[str], image_size: int = IMAGE_SIZE,
                    tokens_per_image: int = TOKENS_PER_IMAGE) -> Gemma3Processor:
    """Gemma3Processor: word tokenizer over ``words`` with Gemma's image and turn tokens (named
    as the real tokenizer names them), the PIL image processor resizing to ``image_size``."""
    tokenizer = word_tokenizer([*words, *TEMPLATE_WORDS], special_tokens=SPECIAL_TOKENS)
    # the names Gemma3Processor reads (tokenizer.boi_token, .image_token_id, ...), saved in
    # tokenizer_config.json as the real tokenizer's are
    tokenizer._set_model_specific_special_tokens(
        {"boi_token": BOI, "eoi_token": EOI, "image_token": IMAGE})
    image_processor = Gemma3ImageProcessorPil(
        size={"height": image_size, "width": image_size}, image_mean=[0.5] * 3,
        image_std=[0.5] * 3, do_pan_and_scan=False)
    return Gemma3Processor(image_processor=image_processor, tokenizer=tokenizer,
                           chat_template=CHAT_TEMPLATE, image_seq_length=tokens_per_image)


def build_config(processor: Gemma3Processor, text_width: int = 64, text_layers: int = 6,
                 heads: int = 4, kv_heads: int = 2) -> Gemma3Config:
    """A Gemma3Config of real classes at tiny width (see the module docstring)."""
    tokenizer = processor.tokenizer
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    vision = SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        image_size=IMAGE_SIZE, patch_size=PATCH, vision_use_head=False)
    head_dim = text_width // heads
    text = Gemma3TextConfig(
        vocab_size=len(tokenizer), hidden_size=text_width, intermediate_size=2 * text_width,
        num_hidden_layers=text_layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        head_dim=head_dim, query_pre_attn_scalar=24, max_position_embeddings=1024,
        sliding_window=WINDOW, layer_types=list(LAYER_TYPES[:text_layers]),
        rope_parameters={
            "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1_000_000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
        },
        # Gemma3ForConditionalGeneration computes its logits without this cap (only the
        # text-only Gemma3ForCausalLM applies it): set, it proves the engine does the same
        final_logit_softcapping=30.0,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=ids[END_TURN],
        pad_token_id=tokenizer.pad_token_id)
    return Gemma3Config(
        vision_config=vision, text_config=text, mm_tokens_per_image=TOKENS_PER_IMAGE,
        boi_token_index=ids[BOI], eoi_token_index=ids[EOI], image_token_index=ids[IMAGE])


def build_model(config: Gemma3Config, seed: int) -> Gemma3ForConditionalGeneration:
    model = random_model(Gemma3ForConditionalGeneration, config, seed)
    # transformers initialises the projector and the (1 + weight) RMSNorms at zero: random
    # values instead, so that every part carries signal in a test
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name or "mm_input_projection" in name:
                parameter.normal_(0.0, 0.2)
    return model


def build_random(directory: Path, seed: int = 0) -> None:
    """Save an untrained tiny Gemma 3 (6 decoder layers, 16 soft tokens per image) into
    ``directory``.

    >>> import tempfile
    >>> from transformers import AutoConfig
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     build_random(Path(tmp))
    ...     AutoConfig.from_pretrained(tmp).text_config.layer_types[:3]
    ['sliding_attention', 'sliding_attention', 'full_attention']
    """
    processor = build_processor(BASIC_WORDS)
    save(build_model(build_config(processor), seed), processor, directory)
