"""Tiny InternVL-shaped checkpoints: the native ``InternVLForConditionalGeneration`` with a
small InternViT tower (32 px views, 4 px patches, pixel shuffle 0.5: 4x4 tokens per view), the
GOT-OCR2 tiling of InternVL3 (up to 6 tiles plus a thumbnail) and a small grouped-KV Qwen2
decoder, a word-level tokenizer carrying InternVL's image tokens and the ``-hf`` checkpoints'
ChatML template, saved in Hugging Face format so they load through the code real checkpoints
use.

The processor is fusionlens' image-only InternVL processor (see
:mod:`probes.models.adapters.internvl`): transformers' own needs torchvision for its video
processor.
"""

from __future__ import annotations

from pathlib import Path

from transformers import InternVLConfig, InternVLForConditionalGeneration, Qwen2Config
from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil
from transformers.models.internvl.configuration_internvl import InternVLVisionConfig

from probes.models.adapters.internvl import InternVLImageOnlyProcessor
from probes.models.zoo.checkpoint import random_model, save
from probes.models.zoo.tiny_llava import BASIC_WORDS
from probes.models.zoo.vocab import word_tokenizer

START, END, CONTEXT, VIDEO = "<img>", "</img>", "<IMG_CONTEXT>", "<video>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = (START, END, CONTEXT, VIDEO, IM_START, IM_END)
NAMED_TOKENS = {"start_image_token": START, "end_image_token": END,
                "context_image_token": CONTEXT, "video_token": VIDEO}
# the template transformers' conversion script gives the InternVL -hf checkpoints, to images
# and text
CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}"
    "{{ '<IMG_CONTEXT>\n' }}{% elif content['type'] == 'text' %}{{ content['text'] }}"
    "{% endif %}{% endfor %}{% endif %}{{'<|im_end|>\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{'<|im_start|>assistant\n' }}{% endif %}"
)
TEMPLATE_WORDS = ("user", "assistant")
SIDE, PATCH, MAX_TILES = 32, 4, 6
TOKENS_PER_VIEW = (SIDE // PATCH // 2) ** 2  # pixel shuffle 0.5: 16


def build_processor() -> InternVLImageOnlyProcessor:
    tokenizer = word_tokenizer([*BASIC_WORDS, *TEMPLATE_WORDS], special_tokens=SPECIAL_TOKENS,
                               named_tokens=NAMED_TOKENS)
    image_processor = GotOcr2ImageProcessorPil(
        size={"height": SIDE, "width": SIDE}, crop_to_patches=True, min_patches=1,
        max_patches=MAX_TILES,
    )
    return InternVLImageOnlyProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                      image_seq_length=TOKENS_PER_VIEW,
                                      chat_template=CHAT_TEMPLATE)


def build_config(processor: InternVLImageOnlyProcessor, text_width: int = 128,
                 text_layers: int = 4) -> InternVLConfig:
    """An InternVLConfig of real classes at tiny width; 4 query heads share 2 KV heads."""
    tokenizer = processor.tokenizer
    vision = InternVLVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        image_size=SIDE, patch_size=PATCH,
    )
    text = Qwen2Config(
        hidden_size=text_width, intermediate_size=2 * text_width, num_hidden_layers=text_layers,
        num_attention_heads=4, num_key_value_heads=2, vocab_size=len(tokenizer),
        max_position_embeddings=1024, rope_parameters={"rope_type": "default",
                                                       "rope_theta": 1_000_000.0},
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.convert_tokens_to_ids(IM_END),
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )
    return InternVLConfig(
        vision_config=vision, text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids(CONTEXT),
        image_seq_length=TOKENS_PER_VIEW, downsample_ratio=0.5,
        vision_feature_layer=-1, vision_feature_select_strategy="default",
        tie_word_embeddings=False,
    )


def build_model(config: InternVLConfig, seed: int) -> InternVLForConditionalGeneration:
    return random_model(InternVLForConditionalGeneration, config, seed)


def build_random(directory: Path, seed: int = 0) -> None:
    """Save an untrained tiny InternVL (4 decoder layers, 16 tokens per 32 px view) into
    ``directory``.

    >>> import tempfile
    >>> from transformers import AutoConfig
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     build_random(Path(tmp))
    ...     AutoConfig.from_pretrained(tmp).model_type
    'internvl'
    """
    processor = build_processor()
    save(build_model(build_config(processor), seed), processor, directory)
