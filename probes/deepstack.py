"""DeepStack as a condition: Qwen3-VL adds vision features to the residual stream at the image
positions after its first decoder layers (see :mod:`probes.models.adapters.qwen3_vl`), a path
from the image into the language model that no attention edge carries, so a knockout of
``image->X`` edges leaves it open. :class:`DeepStackOff` drops those additions (after every
DeepStack layer, or after chosen ones), alone or together with a knockout's edges; every
engine honours it (the executor adds only what a condition keeps; full forwards drop the rest
through :meth:`~probes.models.adapters.Adapter.deepstack`).

>>> from transformers import Qwen3VLConfig
>>> from probes.masking import Knockout
>>> from probes.models.adapters import adapter_for
>>> adapter = adapter_for(Qwen3VLConfig())
>>> off = DeepStackOff.of(adapter, knockout=Knockout.window("image->last", 5, 1, 36))
>>> sorted(off.removed), off.layers, str(off)
([0, 1, 2], (0, 1, 2, 5), 'image->last @5 + DeepStack off after layers 0,1,2')
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from probes.errors import UserError


@dataclass(frozen=True)
class DeepStackOff:
    """A condition: the DeepStack additions after the decoder layers ``removed`` are dropped,
    and ``knockout``'s edges (if any) are blocked. Knockout-like: ``layers`` (every layer it
    changes, the removed ones included: the executor starts it at the first) and ``edges``."""

    removed: frozenset[int]
    knockout: Any = None

    @classmethod
    def of(cls, adapter, layers: Iterable[int] | None = None, knockout: Any = None
           ) -> DeepStackOff:
        """DeepStack removed after ``layers`` (default: every DeepStack layer) of ``adapter``'s
        model; a UserError on a family without DeepStack or a layer without an addition."""
        available = adapter.deepstack_layers
        if not available:
            raise UserError(f"the {adapter.family} model has no DeepStack (only Qwen3-VL adds "
                            "vision features to the residual stream after its first layers), "
                            "so a DeepStack condition does not apply to it.")
        chosen = available if layers is None else tuple(int(layer) for layer in layers)
        outside = [layer for layer in chosen if layer not in available]
        if outside or not chosen:
            raise UserError(f"layer {outside[0] if outside else 'list'} names no DeepStack "
                            f"addition: this model adds them after decoder layers "
                            f"{available[0]}..{available[-1]}.")
        return cls(frozenset(chosen), knockout)

    @property
    def layers(self) -> tuple[int, ...]:
        blocked = () if self.knockout is None else tuple(self.knockout.layers)
        return tuple(sorted({*blocked, *self.removed}))

    def edges(self, groups, num_layers: int) -> list:
        return [] if self.knockout is None else self.knockout.edges(groups, num_layers)

    def __str__(self) -> str:
        layers = sorted(self.removed)
        removed = (f"DeepStack off after layer{'s' if len(layers) > 1 else ''} "
                   f"{','.join(map(str, layers))}")
        if self.knockout is None:
            return removed
        flows = ";".join(map(str, getattr(self.knockout, "flows", ()))) or "edges"
        span = (f"{self.knockout.layers[0]}" if len(self.knockout.layers) == 1
                else f"{self.knockout.layers[0]}-{self.knockout.layers[-1]}")
        return f"{flows} @{span} + {removed}"


def removed(condition) -> frozenset[int]:
    """The layers after which ``condition`` (any knockout-like object, or None) drops the
    DeepStack additions: none unless it is a :class:`DeepStackOff`."""
    return getattr(condition, "removed", frozenset()) if condition is not None else frozenset()


def first_position(groups, conditions: Sequence) -> list[int]:
    """The first image position where a condition drops DeepStack (nothing before it differs
    from the clean run), or nothing."""
    image = getattr(groups, "image", ())
    return [int(min(image))] if len(image) and any(removed(c) for c in conditions) else []


class Additions:
    """The clean pass's DeepStack additions ({layer: (positions, values)}, as
    :meth:`~probes.models.adapters.Adapter.deepstack` captures them) and which of them each
    condition row keeps, for the executor, which runs decoder layers itself."""

    def __init__(self, captured: dict, conditions: Sequence) -> None:
        self.captured = captured
        self.removed = [removed(condition) for condition in conditions]

    def entering(self, hidden_states: Sequence[torch.Tensor], prefix: int) -> list[torch.Tensor]:
        """The clean hidden states entering each layer at positions ``prefix..``: the model's
        reported states (a layer's output) plus the clean addition made after the layer
        before."""
        states = [state[:, prefix:] for state in hidden_states]
        for layer in self.captured:
            if layer + 1 < len(states) - 1:  # the last entry is already through the final norm
                states[layer + 1] = self._add(layer, states[layer + 1], prefix, [True])
        return states

    def after(self, layer: int, hidden: torch.Tensor, rows: Sequence[int], start: int,
              stop: int) -> torch.Tensor:
        """``hidden`` [rows, stop - start, hidden] leaving ``layer``, plus the additions the
        rows keep there (positions ``start..stop-1`` only; the rest are in the shared
        prefix or not image positions)."""
        if layer not in self.captured:
            return hidden
        keep = [layer not in self.removed[row] for row in rows[: hidden.shape[0]]]
        return self._add(layer, hidden, start, keep, stop)

    def _add(self, layer: int, hidden: torch.Tensor, start: int, keep: Sequence[bool],
             stop: int | None = None) -> torch.Tensor:
        positions, values = self.captured[layer]
        stop = start + hidden.shape[1] if stop is None else stop
        inside = (positions >= start) & (positions < stop)
        if not inside.any() or not any(keep):
            return hidden
        index = (positions[inside] - start).to(hidden.device)
        added = values[inside.to(values.device)].to(hidden.device, hidden.dtype)
        hidden = hidden.clone()
        rows = torch.tensor([row for row, kept in enumerate(keep) if kept], device=hidden.device)
        hidden[rows[:, None], index[None, :]] = hidden[rows[:, None], index[None, :]] + added
        return hidden
