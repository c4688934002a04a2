"""Low-rank adapters (LoRA) on a model's linear layers, and their merge into plain weights.

A target ``nn.Linear`` of weight ``W`` (out x in) gains two parameters, ``lora_A`` (rank x in,
seeded small random) and ``lora_B`` (out x rank, zeros), and computes
``y = W x + scale * B (A x)`` with ``scale = alpha / rank``: with ``B = 0`` the model is exactly
the one without adapters. The parameters live on the linear module itself, so the state dict
names them ``<module>.lora_A`` / ``<module>.lora_B`` beside ``<module>.weight``, and
:func:`merge_into` folds them into a plain state dict (``W + scale * B @ A``) for a checkpoint
that needs no adapter code at all.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from probes.errors import UserError

A, B = "lora_A", "lora_B"
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")


def is_adapter_key(name: str) -> bool:
    return name.endswith(("." + A, "." + B))


def target_modules(root: torch.nn.Module, targets: Sequence[str]) -> list[tuple[str, torch.nn.Linear]]:
    """``root``'s linear modules whose last name is one of ``targets``, in module order; a
    target that names no linear module is refused in one sentence."""
    found = [(name, module) for name, module in root.named_modules()
             if isinstance(module, torch.nn.Linear) and name.rpartition(".")[2] in targets]
    missing = sorted(set(targets) - {name.rpartition(".")[2] for name, _ in found})
    if missing:
        raise UserError(f"--lora-targets names no linear layer of the language model: "
                        f"{', '.join(missing)} (e.g. {', '.join(ATTENTION)}).")
    return found


def _adapt(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
    down = torch.nn.functional.linear(inputs[0], module.lora_A)
    return output + module.lora_scale * torch.nn.functional.linear(down, module.lora_B)


def add_adapters(root: torch.nn.Module, targets: Sequence[str], rank: int, alpha: float,
                 generator: torch.Generator) -> list[torch.nn.Parameter]:
    """Put an adapter of ``rank`` on each of ``root``'s linear modules named in ``targets``
    (A: Kaiming-uniform as ``nn.Linear`` initialises, drawn from ``generator`` in module order;
    B: zeros); return the new parameters, A and B of each module in turn."""
    modules = target_modules(root, targets)
    widest = min(min(module.weight.shape) for _, module in modules)
    if rank > widest:
        raise UserError(f"--lora-rank {rank} exceeds the rank of a target's weight; use at "
                        f"most {widest}.")
    parameters = []
    for _, module in modules:
        out_features, in_features = module.weight.shape
        bound = 1 / math.sqrt(in_features)
        down = (torch.rand(rank, in_features, generator=generator) * 2 - 1) * bound
        module.register_parameter(A, torch.nn.Parameter(down.to(module.weight)))
        module.register_parameter(B, torch.nn.Parameter(module.weight.new_zeros(out_features, rank)))
        module.lora_scale = alpha / rank
        module.register_forward_hook(_adapt)
        parameters += [module.lora_A, module.lora_B]
    return parameters


def merge_into(state: dict[str, torch.Tensor], adapters: dict[str, torch.Tensor], scale: float,
               source: object, under: str = "") -> None:
    """Fold ``adapters`` (``<module>.lora_A`` / ``.lora_B`` tensors) into ``state``'s
    ``<module>.weight`` in place: ``W + scale * B @ A``. Adapters that name no weight of
    ``state`` under ``under``, come without their other half, or whose shapes do not fit the
    weight are refused in one sentence naming ``source``."""
    modules = {}
    for name, tensor in adapters.items():
        module, _, half = name.rpartition(".")
        if half not in (A, B) or not module.startswith(under) or f"{module}.weight" not in state:
            raise UserError(f"{source} holds an adapter for no layer of the language model "
                            f"({name}).")
        modules.setdefault(module, {})[half] = tensor
    for module, halves in modules.items():
        weight = state[f"{module}.weight"]
        if set(halves) != {A, B}:
            raise UserError(f"{source} holds {module}.{next(iter(halves))} without its "
                            f"{({A, B} - set(halves)).pop()}.")
        down, up = halves[A], halves[B]
        if not (down.dim() == up.dim() == 2 and down.shape[1] == weight.shape[1]
                and up.shape[0] == weight.shape[0] and up.shape[1] == down.shape[0] > 0):
            raise UserError(f"{source}'s adapter of {module} has shapes A {tuple(down.shape)} "
                            f"and B {tuple(up.shape)}, which do not fit its weight "
                            f"{tuple(weight.shape)} (A: rank x {weight.shape[1]}, "
                            f"B: {weight.shape[0]} x rank).")
    for module, halves in modules.items():
        weight = state[f"{module}.weight"]
        delta = halves[B].to(torch.float32) @ halves[A].to(torch.float32)
        state[f"{module}.weight"] = (weight.to(torch.float32) + scale * delta).to(weight.dtype)


def read_scale(metadata: dict[str, str] | None, source: object) -> float:
    """The adapters' scale (``alpha / rank``) a safetensors file records as ``lora_scale``."""
    try:
        scale = float((metadata or {})["lora_scale"])
    except (KeyError, ValueError):
        scale = math.nan
    if not math.isfinite(scale):
        raise UserError(f"{source} holds LoRA adapters but no finite lora_scale in its "
                        f"metadata.")
    return scale
