"""Attention recording: probabilities from chosen query rows to chosen keys, per layer and head,
computed from each layer's queries and keys (see :func:`probes.attention.row_probabilities`),
so the model keeps sdpa and memory grows with rows x keys, never with the square of the input.
Each layer's map moves to the CPU as soon as it is made: on a model spread over several devices
nothing recorded piles up on one of them, and every map is on the same device.

>>> recorder = AttentionRecorder(queries=[5, 6], layers=[0, 1], reduce="mean_heads")
>>> recorder.reduce
'mean_heads'
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch

from probes.attention import LayerEdit

REDUCTIONS = ("none", "mean_heads", "max_heads")


@dataclass
class AttentionRecorder:
    """Records attention of query positions ``queries`` (absolute, shared by all batch rows) to
    ``keys`` (absolute positions, or None for all keys) at ``layers`` (None = all).

    After a forward, ``maps[layer]`` is a float32 CPU tensor [batch, heads (1 if reduced),
    queries, keys]; ``max_queries=True`` further takes the max over the query rows (a [.., 1, keys] map).
    Only rows that are queries of a call are recorded (prefill or a decoding step).
    """

    queries: Iterable[int]
    keys: Iterable[int] | None = None
    layers: Iterable[int] | None = None
    reduce: str = "none"
    max_queries: bool = False
    maps: dict[int, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.reduce not in REDUCTIONS:
            raise ValueError(f"reduce must be one of {REDUCTIONS}, not {self.reduce!r}")
        self.queries = np.array(sorted(set(self.queries)), dtype=np.int64)
        self.keys = None if self.keys is None else np.array(sorted(set(self.keys)), dtype=np.int64)
        self.layers = None if self.layers is None else frozenset(self.layers)

    def for_layer(self, layer: int, query_positions: torch.Tensor, kv_length: int) -> LayerEdit | None:
        if self.layers is not None and layer not in self.layers:
            return None
        # queries are always the last len(query_positions) of kv_length positions (see
        # probes.attention), so one edit serves every layer of a forward
        edits = self.__dict__.setdefault("_edits", {})
        key = (query_positions.device, len(query_positions), kv_length)
        if key not in edits:
            if len(edits) > 64:  # decoding makes a new key per step
                edits.clear()
            wanted = self._on(query_positions.device, "queries")
            rows = torch.nonzero(torch.isin(query_positions, wanted))[:, 0]
            edits[key] = None if rows.numel() == 0 else LayerEdit(record_rows=rows,
                                                                 record=self._store)
        return edits[key]

    def _on(self, device: torch.device, name: str) -> torch.Tensor:
        """``queries`` or ``keys`` as a tensor on ``device``, made once per device."""
        cache = self.__dict__.setdefault("_tensors", {})
        if (name, device) not in cache:
            cache[(name, device)] = torch.from_numpy(getattr(self, name)).to(device)
        return cache[(name, device)]

    def _key_span(self) -> tuple[int, int] | None:
        """(first, end) when ``keys`` is one contiguous run of positions (an image's patches
        usually are): a slice is a view, where an index would gather a copy."""
        if "_span" not in self.__dict__:
            keys = self.keys
            contiguous = keys.size > 0 and int(keys[-1]) - int(keys[0]) + 1 == keys.size
            self.__dict__["_span"] = (int(keys[0]), int(keys[-1]) + 1) if contiguous else None
        return self.__dict__["_span"]

    def _store(self, layer: int, probabilities: torch.Tensor) -> None:
        if self.keys is not None:
            span = self._key_span()
            probabilities = (probabilities[..., span[0] : span[1]] if span is not None
                             else probabilities[..., self._on(probabilities.device, "keys")])
        if self.reduce == "mean_heads":
            probabilities = probabilities.mean(1, keepdim=True)
        elif self.reduce == "max_heads":
            probabilities = probabilities.amax(1, keepdim=True)
        if self.max_queries:
            probabilities = probabilities.amax(2, keepdim=True)
        # on the CPU as it is made, and never a view of all keys
        self.maps[layer] = probabilities.detach().to("cpu").contiguous()
