"""The models the check runs: the real 7B architectures with random bfloat16 weights built on
the device (nothing downloaded), or the tiny zoo models (``--tiny``) in float32."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import transformers

from probes.errors import UserError
from probes.models.adapters import adapter_class
from probes.models.loading import LoadedModel, load_model
from probes.models.registry import ModelSource
from probes.models.zoo.checkpoint import greedy_generation_config

TINY = {"llava": "tiny-random-llava", "llava_next": "tiny-random-llava-next",
        "qwen2_5_vl": "tiny-random-qwen2.5-vl", "internvl": "tiny-random-internvl",
        "idefics3": "tiny-random-idefics3", "smolvlm": "tiny-random-smolvlm",
        "gemma3": "tiny-random-gemma3", "qwen3_vl": "tiny-random-qwen3-vl",
        "qwen2_vl": "tiny-random-qwen2-vl", "llava_onevision": "tiny-random-llava-onevision",
        "mistral3": "tiny-random-mistral3"}


@dataclass(frozen=True)
class Shapes:
    """The images each part runs on: the checks, the sweep / AIF benchmarks, the recording
    benchmark."""

    check: tuple[int, int]
    bench: tuple[int, int]
    record: tuple[int, int]
    steps: int = 8  # tokens decoded by the generate check and the AIF benchmark


@dataclass(frozen=True)
class RealModel:
    label: str
    hub_id: str
    shapes: Shapes


REAL = {
    "llava": RealModel("LLaVA-1.5-7B", "llava-hf/llava-1.5-7b-hf",
                       Shapes((336, 336), (336, 336), (336, 336))),
    "llava_next": RealModel("LLaVA-NeXT-7B", "llava-hf/llava-v1.6-mistral-7b-hf",
                            Shapes((644, 476), (644, 476), (644, 476))),
    "qwen2_5_vl": RealModel("Qwen2.5-VL-7B", "Qwen/Qwen2.5-VL-7B-Instruct",
                            Shapes((644, 476), (644, 476), (1764, 1764))),
    # 644x476: 4x3 tiles + thumbnail / global view, 13 views (InternVL: 3,330 tokens)
    "internvl": RealModel("InternVL3-8B", "OpenGVLab/InternVL3-8B-hf",
                          Shapes((644, 476), (644, 476), (644, 476))),
    "idefics3": RealModel("Idefics3-8B", "HuggingFaceM4/Idefics3-8B-Llama3",
                          Shapes((644, 476), (644, 476), (644, 476))),
    "smolvlm": RealModel("SmolVLM2-2.2B", "HuggingFaceTB/SmolVLM2-2.2B-Instruct",
                         Shapes((644, 476), (644, 476), (644, 476))),
    # every image is resized to 896 x 896 (256 soft tokens): the shapes only vary the content
    "gemma3": RealModel("Gemma-3-4B-it", "google/gemma-3-4b-it",
                        Shapes((644, 476), (644, 476), (896, 896))),
    "qwen3_vl": RealModel("Qwen3-VL-8B", "Qwen/Qwen3-VL-8B-Instruct",
                          Shapes((644, 476), (644, 476), (1764, 1764))),
    "qwen2_vl": RealModel("Qwen2-VL-7B", "Qwen/Qwen2-VL-7B-Instruct",
                          Shapes((644, 476), (644, 476), (1764, 1764))),
    "llava_onevision": RealModel("LLaVA-OneVision-7B", "llava-hf/llava-onevision-qwen2-7b-ov-hf",
                                 Shapes((644, 476), (644, 476), (644, 476))),
    # Mistral-Small-3.1-24B's config with 20 of its 40 decoder layers: 24 B parameters in bf16
    # (48 GB) leave too little of an 80 GB GPU for the checks' reference runs
    "mistral3": RealModel("Mistral-Small-3.1-24B (20 of 40 layers)",
                          "mistralai/Mistral-Small-3.1-24B-Instruct-2503",
                          Shapes((644, 476), (644, 476), (644, 476))),
}


def real_config_and_processor(family: str):
    """The published config (the adapter tests' facts) and a zoo processor with the real image
    settings; the config's special token ids become the processor's tokenizer's."""
    from probes.models.zoo import tiny_llava, tiny_qwen2_5_vl, tiny_qwen3_vl
    from probes.models.zoo.tiny_llava import BASIC_WORDS

    if family == "llava":
        from test_adapter_llava import _llava_config

        config = _llava_config()
        processor = tiny_llava.build_processor(BASIC_WORDS, image_size=336, patch_size=14)
        special = {"image_token_id": tiny_llava.IMAGE_TOKEN}
    elif family == "llava_next":
        from test_adapter_llava_next import _real_config, _real_image_processor
        from transformers import LlavaNextProcessor

        from probes.models.zoo.vocab import word_tokenizer

        config = _real_config()
        tokenizer = word_tokenizer([*BASIC_WORDS, *tiny_llava.TEMPLATE_WORDS],
                                   special_tokens=(tiny_llava.IMAGE_TOKEN,))
        processor = LlavaNextProcessor(
            image_processor=_real_image_processor(), tokenizer=tokenizer, patch_size=14,
            vision_feature_select_strategy="default", num_additional_image_tokens=1,
            chat_template=tiny_llava.CHAT_TEMPLATE)
        special = {"image_token_id": tiny_llava.IMAGE_TOKEN}
    elif family in ("qwen2_5_vl", "qwen2_vl"):
        from test_adapter_qwen2_5_vl import _qwen2_5_vl_7b_config
        from test_adapter_qwen2_vl import qwen2_vl_7b_config

        config = _qwen2_5_vl_7b_config() if family == "qwen2_5_vl" else qwen2_vl_7b_config()
        # Qwen/Qwen2.5-VL-7B-Instruct's preprocessor_config.json: 56 x 56 to 3584 x 3584 pixels
        processor = tiny_qwen2_5_vl.build_processor(BASIC_WORDS, min_pixels=3136,
                                                    max_pixels=12845056)
        q = tiny_qwen2_5_vl
        special = {"image_token_id": q.IMAGE_PAD, "video_token_id": q.VIDEO_PAD,
                   "vision_start_token_id": q.VISION_START, "vision_end_token_id": q.VISION_END}
    elif family == "internvl":
        from test_adapter_internvl import _real_config, _real_processor

        from probes.models.zoo import tiny_internvl

        config, processor = _real_config(), _real_processor()
        special = {"image_token_id": tiny_internvl.CONTEXT}
    elif family in ("idefics3", "smolvlm"):
        from test_adapter_idefics3 import _idefics3_8b, _processor, _smolvlm2_2b

        from probes.models.zoo import tiny_idefics3

        config = _idefics3_8b() if family == "idefics3" else _smolvlm2_2b()
        processor = (_processor("idefics3", 364, 169) if family == "idefics3"
                     else _processor("smolvlm", 384, 81))
        special = {"image_token_id": tiny_idefics3.IMAGE}
    elif family == "gemma3":
        from test_adapter_gemma3 import _gemma3_4b_config

        from probes.models.zoo import tiny_gemma3 as g

        config = _gemma3_4b_config()
        # google/gemma-3-4b-it's processor: 896 x 896 images, 256 soft tokens
        processor = g.build_processor(BASIC_WORDS, image_size=896, tokens_per_image=256)
        special = {"image_token_id": g.IMAGE, "boi_token_id": g.BOI, "eoi_token_id": g.EOI}
    elif family == "qwen3_vl":
        from test_adapter_qwen3_vl import _qwen3_vl_8b_config

        config = _qwen3_vl_8b_config()
        # Qwen/Qwen3-VL-8B-Instruct's preprocessor_config.json: 256 x 256 to 4096 x 4096 pixels
        processor = tiny_qwen3_vl.build_processor(BASIC_WORDS, min_pixels=65536,
                                                  max_pixels=16777216)
        q = tiny_qwen2_5_vl
        special = {"image_token_id": q.IMAGE_PAD, "video_token_id": q.VIDEO_PAD,
                   "vision_start_token_id": q.VISION_START, "vision_end_token_id": q.VISION_END}
    elif family == "llava_onevision":
        from test_adapter_llava_onevision import real_config

        from probes.models.zoo import tiny_llava_onevision as ov

        config, processor = real_config(), ov.build_processor(tile=384, patch=14)
        special = {"image_token_id": ov.IMAGE_TOKEN, "video_token_id": ov.VIDEO_TOKEN}
    elif family == "mistral3":
        from test_adapter_mistral3 import real_config

        from probes.models.zoo import tiny_mistral3

        config = real_config(num_hidden_layers=20)
        processor = tiny_mistral3.build_processor(patch=14, merge=2, longest=1540)
        special = {"image_token_id": tiny_mistral3.IMAGE_TOKEN}
    else:
        raise UserError(f"unknown family {family!r}; use {', '.join(REAL)}.")
    tokenizer = processor.tokenizer
    for name, token in special.items():
        setattr(config, name, tokenizer.convert_tokens_to_ids(token))
    text = config.text_config
    text.bos_token_id, text.pad_token_id = tokenizer.bos_token_id, tokenizer.pad_token_id
    eos = {"qwen2_5_vl": tiny_qwen2_5_vl.IM_END, "qwen3_vl": tiny_qwen2_5_vl.IM_END,
           "qwen2_vl": tiny_qwen2_5_vl.IM_END, "internvl": tiny_qwen2_5_vl.IM_END,
           "idefics3": "<end_of_utterance>", "smolvlm": "<end_of_utterance>",
           "gemma3": "<end_of_turn>"}.get(family)
    text.eos_token_id = tokenizer.eos_token_id if eos is None else tokenizer.convert_tokens_to_ids(eos)
    return config, processor


def build_real(family: str, device: torch.device | str, dtype: torch.dtype = torch.bfloat16,
               seed: int = 0) -> LoadedModel:
    """The real 7B architecture of ``family`` with random weights, built on ``device`` (no
    weights anywhere else; ``"meta"`` builds the architecture without a byte of weights)."""
    config, processor = real_config_and_processor(family)
    adapter_type = adapter_class(config.model_type)
    model_class = getattr(transformers, adapter_type.model_class_name)
    torch.manual_seed(seed)
    with torch.device(device):
        model = model_class._from_config(config, dtype=dtype, attn_implementation="sdpa")
    model.eval().requires_grad_(False)
    model.generation_config = greedy_generation_config(model.config.text_config)
    adapter = adapter_type(model.config, processor)
    spec = REAL[family]
    source = ModelSource(f"{spec.label} (random weights)", "builtin", spec.hub_id,
                         f"{spec.hub_id}'s config, random {dtype} weights")
    return silence_placeholders(LoadedModel(model=model, processor=processor, adapter=adapter,
                                            source=source))


PLACEHOLDERS = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")


def silence_placeholders(loaded: LoadedModel) -> LoadedModel:
    """A random model that emitted an image placeholder would make the no-cache reference read
    an image token where the engine decodes text: those tokens' logits become 0 (never the
    argmax of a random model's logits)."""
    config = loaded.model.config
    ids = [getattr(config, name) for name in PLACEHOLDERS if getattr(config, name, None) is not None]
    with torch.no_grad():
        loaded.adapter.lm_head(loaded.model).weight[ids] = 0.0
    return loaded


# the tiny models' shapes: small images, a few decoded tokens
TINY_SHAPES = Shapes((90, 60), (64, 64), (90, 60), steps=3)


def load_family(family: str, device: torch.device, tiny: bool) -> tuple[LoadedModel, str, Shapes]:
    """The model of ``family`` on ``device``, its label and its shapes."""
    if tiny:
        loaded = silence_placeholders(load_model(TINY[family], device=str(device), dtype="float32"))
        return loaded, f"tiny {family}", TINY_SHAPES
    spec = REAL[family]
    return build_real(family, device), spec.label, spec.shapes
