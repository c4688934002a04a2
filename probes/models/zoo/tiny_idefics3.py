"""Tiny Idefics3- and SmolVLM-shaped checkpoints: the native ``Idefics3ForConditionalGeneration``
/ ``SmolVLMForConditionalGeneration`` with a small SigLIP tower (32 px views, 4 px patches, pixel
shuffle by 2: 4x4 tokens per view), image splitting into up to 3x3 tiles plus the global view
(longest edge resized to 96 px), a small grouped-KV Llama, a word-level tokenizer carrying the
family's tile tags, and SmolVLM's chat template, saved in Hugging Face format so they load
through the code real checkpoints use.

SmolVLM's processor is fusionlens' image-only one (see :mod:`probes.models.adapters.idefics3`):
transformers' own needs torchvision for its video processor.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3Processor,
    LlamaConfig,
    SmolVLMConfig,
    SmolVLMForConditionalGeneration,
)
from transformers.models.idefics3.configuration_idefics3 import Idefics3VisionConfig
from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil
from transformers.models.smolvlm.configuration_smolvlm import SmolVLMVisionConfig
from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil
from transformers.models.smolvlm.processing_smolvlm import DEFAULT_CHAT_TEMPLATE

from probes.models.adapters.idefics3 import SmolVLMImageOnlyProcessor
from probes.models.zoo.checkpoint import greedy_generation_config, save
from probes.models.zoo.tiny_llava import BASIC_WORDS
from probes.models.zoo.vocab import word_tokenizer

IMAGE, FAKE, GLOBAL, END = "<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>"
TILE_TAGS = tuple(f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7))
# "\n" is a token of its own, as in the real tokenizers: the processor writes one after each
# row of tiles
SPECIAL_TOKENS = (IMAGE, FAKE, GLOBAL, END, "<|im_start|>", "<video>", "\n", *TILE_TAGS)
TEMPLATE_WORDS = ("user", "assistant", ":")
TILE, PATCH, SCALE = 32, 4, 2
TOKENS_PER_VIEW = (TILE // PATCH // SCALE) ** 2  # 16


def _tokenizer():
    return word_tokenizer([*BASIC_WORDS, *TEMPLATE_WORDS], special_tokens=SPECIAL_TOKENS,
                          named_tokens={"image_token": IMAGE, "fake_image_token": FAKE,
                                        "global_image_token": GLOBAL,
                                        "end_of_utterance_token": END})


def _image_settings() -> dict:
    return dict(size={"longest_edge": 3 * TILE}, max_image_size={"longest_edge": TILE},
                do_image_splitting=True)


def build_idefics3_processor() -> Idefics3Processor:
    return Idefics3Processor(image_processor=Idefics3ImageProcessorPil(**_image_settings()),
                             tokenizer=_tokenizer(), image_seq_len=TOKENS_PER_VIEW,
                             chat_template=DEFAULT_CHAT_TEMPLATE)


def build_smolvlm_processor() -> SmolVLMImageOnlyProcessor:
    return SmolVLMImageOnlyProcessor(
        image_processor=SmolVLMImageProcessorPil(**_image_settings()), tokenizer=_tokenizer(),
        image_seq_len=TOKENS_PER_VIEW, chat_template=DEFAULT_CHAT_TEMPLATE)


def _parts(processor, vision_class, text_width: int = 128, text_layers: int = 4) -> dict:
    """The config fields both families share, at tiny width; 4 query heads share 2 KV heads."""
    tokenizer = processor.tokenizer
    vision = vision_class(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=2, image_size=TILE, patch_size=PATCH)
    text = LlamaConfig(
        hidden_size=text_width, intermediate_size=2 * text_width, num_hidden_layers=text_layers,
        num_attention_heads=4, num_key_value_heads=2, vocab_size=len(tokenizer),
        max_position_embeddings=2048, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.convert_tokens_to_ids(END), pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    return dict(vision_config=vision, text_config=text, scale_factor=SCALE,
                image_token_id=tokenizer.convert_tokens_to_ids(IMAGE),
                pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)


def _build(model_class, config, processor, directory: Path, seed: int) -> None:
    torch.manual_seed(seed)
    model = model_class(config).eval()
    model.generation_config = greedy_generation_config(config.text_config)
    save(model, processor, directory)


def build_random_idefics3(directory: Path, seed: int = 0) -> None:
    """Save an untrained tiny Idefics3 (4 decoder layers, 16 tokens per 32 px view)."""
    processor = build_idefics3_processor()
    config = Idefics3Config(**_parts(processor, Idefics3VisionConfig))
    _build(Idefics3ForConditionalGeneration, config, processor, directory, seed)


def build_random_smolvlm(directory: Path, seed: int = 0) -> None:
    """Save an untrained tiny SmolVLM (4 decoder layers, 16 tokens per 32 px view).

    >>> import tempfile
    >>> from transformers import AutoConfig
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     build_random_smolvlm(Path(tmp))
    ...     AutoConfig.from_pretrained(tmp).model_type
    'smolvlm'
    """
    processor = build_smolvlm_processor()
    config = SmolVLMConfig(**_parts(processor, SmolVLMVisionConfig))
    _build(SmolVLMForConditionalGeneration, config, processor, directory, seed)
