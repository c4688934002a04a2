"""One adapter per model family, looked up by ``config.model_type``.

Adding a family = one new adapter file, one line in ``ADAPTERS``, one test.
"""

from __future__ import annotations

from typing import Any

from probes.errors import UserError
from probes.models.adapters.base import Adapter, VLInputs
from probes.models.adapters.gemma3 import Gemma3Adapter
from probes.models.adapters.grids import ImageLayout, ImageTokens, PatchGrid
from probes.models.adapters.idefics3 import Idefics3Adapter, SmolVLMAdapter
from probes.models.adapters.internvl import InternVLAdapter
from probes.models.adapters.llava import LlavaAdapter
from probes.models.adapters.llava_next import LlavaNextAdapter
from probes.models.adapters.llava_onevision import LlavaOnevisionAdapter
from probes.models.adapters.mistral3 import Mistral3Adapter
from probes.models.adapters.qwen2_5_vl import Qwen2_5_VLAdapter, Qwen2VLAdapter
from probes.models.adapters.qwen3_vl import Qwen3VLAdapter, Qwen3VLMoeAdapter

ADAPTERS: tuple[type[Adapter], ...] = (
    LlavaAdapter, LlavaNextAdapter, Qwen2_5_VLAdapter, Qwen2VLAdapter,
    InternVLAdapter, Idefics3Adapter, SmolVLMAdapter, Gemma3Adapter, Qwen3VLAdapter,
    Qwen3VLMoeAdapter, LlavaOnevisionAdapter, Mistral3Adapter,
)


def supported_model_types() -> list[str]:
    return sorted(model_type for adapter in ADAPTERS for model_type in adapter.model_types)


def adapter_class(model_type: str) -> type[Adapter]:
    """The adapter class for a ``config.model_type``, or a UserError naming the supported ones."""
    for adapter in ADAPTERS:
        if model_type in adapter.model_types:
            return adapter
    raise UserError(
        f"fusionlens has no adapter for model type {model_type!r}; "
        f"supported: {', '.join(supported_model_types())}."
    )


def adapter_for(config: Any, processor: Any = None) -> Adapter:
    """The adapter for a model config (and its processor, for image and prompt handling)."""
    return adapter_class(config.model_type)(config, processor)


__all__ = [
    "ADAPTERS", "Adapter", "ImageLayout", "ImageTokens", "LlavaOnevisionAdapter",
    "Mistral3Adapter", "PatchGrid", "VLInputs",
    "adapter_class", "adapter_for", "supported_model_types",
]
