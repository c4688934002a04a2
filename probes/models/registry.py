"""``--model`` resolution: an alias, a hub id, or a local directory -> where to load from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from probes.errors import UserError
from probes.models.zoo import BUILTIN_MODELS

HUB_ALIASES: dict[str, str] = {
    "llava": "llava-hf/llava-1.5-7b-hf",
    "llava-13b": "llava-hf/llava-1.5-13b-hf",
    "llava-next": "llava-hf/llava-v1.6-mistral-7b-hf",
    "qwen2.5-vl": "Qwen/Qwen2.5-VL-7B-Instruct",
    "qwen2.5-vl-3b": "Qwen/Qwen2.5-VL-3B-Instruct",
    "internvl": "OpenGVLab/InternVL3-8B-hf",
    "smolvlm": "HuggingFaceTB/SmolVLM2-2.2B-Instruct",
    "idefics3": "HuggingFaceM4/Idefics3-8B-Llama3",
    "gemma3": "google/gemma-3-4b-it",
    "qwen3-vl": "Qwen/Qwen3-VL-8B-Instruct",
    "qwen2-vl": "Qwen/Qwen2-VL-7B-Instruct",
    "llava-onevision": "llava-hf/llava-onevision-qwen2-7b-ov-hf",
    "mistral3": "mistralai/Mistral-Small-3.1-24B-Instruct-2503",
}
DEFAULT_MODEL = "tiny-llava"


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from. ``kind``: "builtin", "local" or "hub"."""

    name: str  # what the user asked for
    kind: str
    location: str  # a directory (builtin, local) or a hub repo id
    description: str = ""


def known_models() -> dict[str, str]:
    """Alias -> what it is, for listings and error messages."""
    listing = {name: model.description for name, model in BUILTIN_MODELS.items()}
    listing.update(HUB_ALIASES)
    return listing


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1


def resolve(name: str) -> ModelSource:
    """Resolve ``--model``: built-in alias, hub alias, existing directory, else a hub id.

    >>> resolve("llava").location
    'llava-hf/llava-1.5-7b-hf'
    """
    if name in BUILTIN_MODELS:
        builtin = BUILTIN_MODELS[name]
        return ModelSource(name, "builtin", str(builtin.directory()), builtin.description)
    if name in HUB_ALIASES:
        return ModelSource(name, "hub", HUB_ALIASES[name])
    path = Path(name).expanduser()
    if path.is_dir():
        return ModelSource(name, "local", str(path.resolve()))
    if path.exists():
        raise UserError(f"--model {name!r} is a file; pass the checkpoint's directory instead.")
    if _looks_like_path(name):
        raise UserError(f"model directory {name!r} does not exist.")
    if name.count("/") == 1:
        return ModelSource(name, "hub", name)
    raise UserError(
        f"unknown model {name!r}; known aliases: {', '.join(known_models())} "
        "(or pass a hub id like org/name, or a local directory)."
    )
