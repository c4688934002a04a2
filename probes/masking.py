"""Edge masks: which query tokens may not read which key tokens, at which layers.

A flow ``SRC->DST`` is information flowing from SRC tokens into DST tokens; blocking it forbids
DST queries to attend to SRC keys. A :class:`Knockout` is a set of flows at a set of layers;
an explicit (queries, keys, layers) triple is the same thing with positions instead of names.
:class:`EdgeMaskPlan` turns one knockout per batch row into the exact ``blocked`` tensors the
attention function (:mod:`probes.attention`) applies, in a forward or in ``generate``.

>>> Flow.parse("image->question,last")
Flow(source='image', target='question,last')
>>> [str(f) for f in parse_flows("image->last; question->last")]
['image->last', 'question->last']
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from probes.attention import LayerEdit
from probes.errors import UserError

OPEN_ENDED = "generated"  # a group that grows while decoding: every position from the prompt on


@dataclass(frozen=True)
class Flow:
    source: str  # key group(s), comma-separated
    target: str  # query group(s), comma-separated

    @classmethod
    def parse(cls, text: str) -> Flow:
        source, arrow, target = text.replace(" ", "").partition("->")
        if not arrow or not source or not target:
            raise UserError(f"flow {text!r} is not of the form SRC->DST, e.g. image->question,last.")
        return cls(source, target)

    def __str__(self) -> str:
        return f"{self.source}->{self.target}"


def parse_flows(text: str | Iterable[str]) -> tuple[Flow, ...]:
    """Flows from ``"a->b; c->d"`` or a list of ``"a->b"`` strings."""
    parts = text.split(";") if isinstance(text, str) else list(text)
    return tuple(Flow.parse(part) for part in parts if part.strip())


@dataclass(frozen=True)
class Edges:
    """Blocked edges of one row: these query positions may not read these key positions at
    these layers (every query with every key). ``queries_from`` additionally blocks every query
    at or after that position (generated tokens, which do not exist yet when the plan is made).
    ``paired=True`` blocks only the pairs ``(queries[i], keys[i])``: an arbitrary edge set."""

    queries: np.ndarray
    keys: np.ndarray
    layers: frozenset[int]
    queries_from: int | None = None
    paired: bool = False

    def __post_init__(self) -> None:
        if self.paired and (self.queries.shape != self.keys.shape or self.queries_from is not None):
            raise ValueError("paired edges need queries and keys of one length and no queries_from")


@dataclass(frozen=True)
class Knockout:
    """Flows blocked at layers (indices into the decoder layers)."""

    flows: tuple[Flow, ...]
    layers: tuple[int, ...]

    @classmethod
    def window(cls, flows: str | Sequence[Flow], centre: int, size: int, num_layers: int) -> Knockout:
        """Flows blocked in a window of ``size`` layers centred on ``centre``, clipped to the
        model (``size`` 1 is the layer alone; even sizes lean towards later layers)."""
        if size < 1 or size > num_layers:
            raise UserError(f"a window of {size} layers does not fit a model with {num_layers} layers.")
        check_layers([centre], num_layers)
        start = max(0, min(centre - (size - 1) // 2, num_layers - size))
        flows = parse_flows(flows) if isinstance(flows, str) else tuple(flows)
        return cls(flows, tuple(range(start, start + size)))

    def edges(self, groups, num_layers: int) -> list[Edges]:
        """The knockout as blocked edges of one row, given that row's :class:`TokenGroups`."""
        check_layers(self.layers, num_layers)
        result = []
        for flow in self.flows:
            keys = groups.get(flow.source)
            targets = flow.target.split(",")
            fixed = [name for name in targets if name != OPEN_ENDED]
            queries = groups.get(",".join(fixed)) if fixed else np.zeros(0, dtype=np.int64)
            queries_from = groups.length if OPEN_ENDED in targets else None
            result.append(Edges(queries, keys, frozenset(self.layers), queries_from))
        return result


@dataclass(frozen=True)
class SetKnockout:
    """An explicit (query set, key set, layers) triple: these query positions may not read
    these key positions at these layers; ``generated=True`` makes every generated token a
    query too (an asymmetric mask over a subset of image tokens, as AIF uses, is
    ``SetKnockout(text_positions, image_subset, all_layers, generated=True)``).

    >>> from types import SimpleNamespace
    >>> ko = SetKnockout(np.array([70, 71]), np.array([5, 9]), (0, 1), generated=True)
    >>> prompt = SimpleNamespace(length=72)  # token groups: generated tokens start at 72
    >>> [(e.queries.tolist(), e.keys.tolist(), e.queries_from) for e in ko.edges(prompt, 6)]
    [([70, 71], [5, 9], 72)]
    """

    queries: np.ndarray
    keys: np.ndarray
    layers: tuple[int, ...]
    generated: bool = False

    def edges(self, groups, num_layers: int) -> list[Edges]:
        check_layers(self.layers, num_layers)
        start = groups.length if self.generated else None  # the first generated position
        return [Edges(np.asarray(self.queries, dtype=np.int64),
                      np.asarray(self.keys, dtype=np.int64), frozenset(self.layers), start)]


@dataclass(frozen=True)
class EdgeKnockout:
    """An explicit set of (query position, key position) edges blocked at layers: the same
    mechanism as a :class:`Knockout`, for edge sets no flow names (random controls).

    >>> ko = EdgeKnockout(np.array([5, 6]), np.array([1, 2]), (3,))
    >>> [e.queries.tolist() for e in ko.edges(None, 6)], ko.edge_count
    ([[5, 6]], 2)
    """

    queries: np.ndarray
    keys: np.ndarray
    layers: tuple[int, ...]

    @property
    def edge_count(self) -> int:
        return int(self.queries.size)

    def edges(self, groups, num_layers: int) -> list[Edges]:
        check_layers(self.layers, num_layers)
        queries = np.asarray(self.queries, dtype=np.int64)
        keys = np.asarray(self.keys, dtype=np.int64)
        return [Edges(queries, keys, frozenset(self.layers), paired=True)]


def check_layers(layers: Iterable[int], num_layers: int) -> None:
    for layer in layers:
        if not 0 <= layer < num_layers:
            raise UserError(f"layer {layer} is out of range: the model has layers 0..{num_layers - 1}.")


@dataclass
class EdgeMaskPlan:
    """One list of :class:`Edges` per batch row; rows of the batch may differ (one condition
    per row). ``padding[b]`` = number of left-padding tokens of row b (keys no one reads).
    ``structures[b]``: row b's :class:`~probes.structure.AttentionStructure` (sliding windows,
    bidirectional image blocks), which the check that every query keeps a key reads (default:
    causal)."""

    rows: list[list[Edges]]
    padding: Sequence[int] = ()
    structures: Sequence = ()
    _layers: frozenset[int] = field(init=False)

    def __post_init__(self) -> None:
        self._layers = frozenset(layer for row in self.rows for e in row for layer in e.layers)
        if not self.padding:
            self.padding = [0] * len(self.rows)

    def blocked(self, layer: int, query_positions: torch.Tensor, kv_length: int) -> torch.Tensor | None:
        """bool [batch, queries, keys] for this layer, or None when nothing is blocked here."""
        if layer not in self._layers:
            return None
        positions = query_positions.cpu().numpy()
        blocked = np.zeros((len(self.rows), len(positions), kv_length), dtype=bool)
        for b, row in enumerate(self.rows):
            for edges in row:
                if layer not in edges.layers:
                    continue
                if edges.paired:
                    rows = np.searchsorted(positions, edges.queries)
                    hit = (rows < len(positions)) & (edges.keys < kv_length)
                    hit[hit] &= positions[rows[hit]] == edges.queries[hit]
                    blocked[b, rows[hit], edges.keys[hit]] = True
                    continue
                is_query = np.isin(positions, edges.queries)
                if edges.queries_from is not None:
                    is_query |= positions >= edges.queries_from
                keys = edges.keys[edges.keys < kv_length]
                blocked[b][np.ix_(np.flatnonzero(is_query), keys)] = True
        self._check_rows_keep_a_key(blocked, positions, layer)
        return torch.from_numpy(blocked).to(query_positions.device)

    def _check_rows_keep_a_key(self, blocked: np.ndarray, positions: np.ndarray, layer: int) -> None:
        causal = np.arange(blocked.shape[2])[None, :] <= positions[:, None]  # [Q, K]
        for b, pad in enumerate(self.padding):
            allowed = causal
            if b < len(self.structures):
                allowed = self.structures[b].allowed(
                    layer, torch.from_numpy(positions), blocked.shape[2]).numpy()
            readable = allowed & ~blocked[b]
            readable[:, :pad] = False
            real = positions >= pad
            empty = real & ~readable.any(axis=1)
            if empty.any():
                raise UserError(
                    f"the mask leaves query position {int(positions[empty][0])} with no key to "
                    "attend to; a row needs at least one readable key (e.g. do not block a "
                    "token from itself)."
                )

    def for_layer(self, layer: int, query_positions: torch.Tensor, kv_length: int) -> LayerEdit | None:
        blocked = self.blocked(layer, query_positions, kv_length)
        return None if blocked is None else LayerEdit(blocked=blocked)
