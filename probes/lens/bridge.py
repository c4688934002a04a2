"""A TransformerBridge booted on a deep copy of a loaded model, sealed off from the user's.

Booting a bridge on a model object edits that object: it switches the attention to eager and
swaps modules for hooked ones. It configures the tokenizer it is given, loads a processor by
the model's name, and, when that fails, may ``pip install torchvision`` at run time. So the
bridge gets a deep copy of the model and of the tokenizer, and while it boots the Hugging Face
hub is offline and no subprocess can start (:func:`sealed`); everything is restored afterwards.

The one TransformerLens check bypassed is the Qwen2.5-VL adapter's demand for torchvision: TL
wants it for the video processor, which the bridge never uses here (inputs come from the
adapter's own processor), and torchvision cannot be installed beside every torch build.
"""

from __future__ import annotations

import contextlib
import copy
import os
import subprocess
from collections.abc import Iterator
from typing import Any

from huggingface_hub import constants as hub_constants

from probes.errors import UserError
from probes.lens.extra import require_transformer_lens
from probes.models.loading import LoadedModel

OFFLINE_ENVIRONMENT = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PIP_NO_INDEX": "1"}
UNNEEDED_LIBRARIES = frozenset({"torchvision"})  # see the module docstring


class SubprocessRefused(OSError):
    """Raised instead of starting a process while a bridge boots."""


def _refuse(*args: Any, **kwargs: Any) -> Any:
    raise SubprocessRefused("fusionlens does not let TransformerLens start a process (such as a "
                            "pip install) while it boots a bridge")


@contextlib.contextmanager
def _patched(target: Any, name: str, value: Any) -> Iterator[None]:
    previous = getattr(target, name)
    setattr(target, name, value)
    try:
        yield
    finally:
        setattr(target, name, previous)


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    previous = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _without_unneeded_libraries(check):
    """TL's required-library check, minus :data:`UNNEEDED_LIBRARIES`."""

    def checked(adapter) -> None:
        wanted = adapter.required_libraries
        adapter.required_libraries = [name for name in wanted if name not in UNNEEDED_LIBRARIES]
        try:
            check(adapter)
        finally:
            adapter.required_libraries = wanted

    return checked


@contextlib.contextmanager
def sealed() -> Iterator[None]:
    """While the block runs: the hub offline (environment and huggingface_hub's flag), pip
    pointed at no index, no subprocess or shell started, TL's torchvision demand waived."""
    from transformer_lens.model_bridge.architecture_adapter import ArchitectureAdapter

    with contextlib.ExitStack() as stack:
        stack.enter_context(_environment(OFFLINE_ENVIRONMENT))
        stack.enter_context(_patched(hub_constants, "HF_HUB_OFFLINE", True))
        stack.enter_context(_patched(subprocess, "Popen", _refuse))
        stack.enter_context(_patched(os, "system", _refuse))
        for spawn in ("posix_spawn", "posix_spawnp"):
            if hasattr(os, spawn):
                stack.enter_context(_patched(os, spawn, _refuse))
        check = getattr(ArchitectureAdapter, "_check_required_libraries", None)
        if check is not None:
            stack.enter_context(_patched(ArchitectureAdapter, "_check_required_libraries",
                                         _without_unneeded_libraries(check)))
        yield


def boot_bridge(loaded: LoadedModel):
    """A TransformerBridge on deep copies of ``loaded``'s model and tokenizer (twice the
    model's memory while it lives); ``loaded`` is left as it was."""
    require_transformer_lens()
    from transformer_lens.model_bridge import TransformerBridge

    model = copy.deepcopy(loaded.model)
    tokenizer = copy.deepcopy(getattr(loaded.processor, "tokenizer", loaded.processor))
    with sealed():
        try:
            bridge = TransformerBridge.boot_transformers(
                loaded.source.location, hf_model=model, tokenizer=tokenizer, dtype=loaded.dtype)
        except (ImportError, ValueError, NotImplementedError) as err:
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            # an unsupported class: TransformerLens appends every architecture it knows
            reason = reason.split(". Available architectures")[0]
            raise UserError(f"TransformerLens cannot bridge {loaded.model_id} "
                            f"({type(loaded.model).__name__}): {reason}") from err
    return bridge
