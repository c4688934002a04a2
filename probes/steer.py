"""Attention steering beyond hard cuts: an additive bias on the attention logits, or a mixing
of the attention probabilities with a given distribution over keys, for chosen query rows x key
columns at chosen layers, per batch row (contrastive refinement and VIF build on this).

>>> import numpy as np
>>> steer = Steering(layers=frozenset({3}), queries=np.array([70, 71]), keys=np.arange(3, 67),
...                  values=np.full(64, -2.0), mode="bias")
>>> steer.mode, steer.values.shape
('bias', (64,))
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from probes.attention import LayerEdit

MODES = ("bias", "mix")


@dataclass(frozen=True)
class Steering:
    """At ``layers``, queries ``queries`` (and every query at or after ``queries_from``, for
    generated tokens) get ``values`` on ``keys``: added to their logits (``bias``), or used as
    the distribution mixed into their probabilities with weight ``alpha`` (``mix``; the values
    are renormalised over the keys the row may read)."""

    layers: frozenset[int]
    queries: np.ndarray
    keys: np.ndarray
    values: np.ndarray  # [len(keys)]
    mode: str = "bias"
    alpha: float = 0.5
    queries_from: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"steering mode must be one of {MODES}, not {self.mode!r}")
        if self.values.shape != self.keys.shape:
            raise ValueError("steering needs one value per key")
        if self.mode == "mix" and (self.values < 0).any():
            raise ValueError("a mixing distribution cannot have negative values")


@dataclass
class SteeringPlan:
    """One list of :class:`Steering` per batch row."""

    rows: list[list[Steering]]

    def for_layer(self, layer: int, query_positions: torch.Tensor, kv_length: int) -> LayerEdit | None:
        active = [(b, s) for b, row in enumerate(self.rows) for s in row if layer in s.layers]
        if not active:
            return None
        positions = query_positions.cpu().numpy()
        shape = (len(self.rows), len(positions), kv_length)
        bias = np.zeros(shape, dtype=np.float32) if any(s.mode == "bias" for _, s in active) else None
        mix = np.zeros(shape, dtype=np.float32) if any(s.mode == "mix" for _, s in active) else None
        alphas = {s.alpha for _, s in active if s.mode == "mix"}
        if len(alphas) > 1:
            raise ValueError("one mixing weight per layer: steerings in a layer disagree on alpha")
        for b, steering in active:
            is_query = np.isin(positions, steering.queries)
            if steering.queries_from is not None:
                is_query |= positions >= steering.queries_from
            keep = steering.keys < kv_length
            rows, keys = np.flatnonzero(is_query), steering.keys[keep]
            target = bias if steering.mode == "bias" else mix
            target[b][np.ix_(rows, keys)] += steering.values[keep][None, :]
        device = query_positions.device
        return LayerEdit(
            bias=None if bias is None else torch.from_numpy(bias).to(device),
            mix=None if mix is None else torch.from_numpy(mix).to(device),
            mix_alpha=alphas.pop() if alphas else 0.0,
        )
