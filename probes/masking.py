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
from dataclasses import dataclass, field, replace

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
    ``paired=True`` blocks only the pairs ``(queries[i], keys[i])``: an arbitrary edge set.
    ``heads``: the (query) heads of the ``num_heads`` the edges are blocked in; None: all."""

    queries: np.ndarray
    keys: np.ndarray
    layers: frozenset[int]
    queries_from: int | None = None
    paired: bool = False
    heads: tuple[int, ...] | None = None
    num_heads: int = 0

    def __post_init__(self) -> None:
        if self.paired and (self.queries.shape != self.keys.shape or self.queries_from is not None):
            raise ValueError("paired edges need queries and keys of one length and no queries_from")
        if self.heads is not None and not all(0 <= h < self.num_heads for h in self.heads):
            raise ValueError(f"heads {self.heads} are not among the {self.num_heads} heads")


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


@dataclass(frozen=True)
class HeadKnockout:
    """Another knockout (:class:`Knockout`, :class:`SetKnockout`, :class:`EdgeKnockout`) in
    some attention heads only: its edges are blocked in the query heads ``heads`` of the
    ``num_heads`` a layer has (with grouped KV heads, per query head), the other heads read
    them as in the clean run.

    >>> ko = HeadKnockout(EdgeKnockout(np.array([5]), np.array([1]), (2,)), (1,), 4)
    >>> ko.layers, [(e.heads, e.num_heads) for e in ko.edges(None, 6)]
    ((2,), [((1,), 4)])
    """

    knockout: object
    heads: tuple[int, ...]
    num_heads: int

    def __post_init__(self) -> None:
        check_heads(self.heads, self.num_heads)

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(self.knockout.layers)

    def edges(self, groups, num_layers: int) -> list[Edges]:
        heads = tuple(sorted(set(self.heads)))
        return [replace(e, heads=heads, num_heads=self.num_heads)
                for e in self.knockout.edges(groups, num_layers)]


def check_heads(heads: Iterable[int], num_heads: int) -> None:
    for head in heads:
        if not 0 <= head < num_heads:
            raise UserError(f"head {head} is out of range: the layers have heads 0..{num_heads - 1}.")


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

    def heads(self, layer: int) -> int:
        """The number of heads a per-head mask of this layer has (0: every edge here is
        blocked in all heads, and the mask is shared by the heads)."""
        return max((e.num_heads for row in self.rows for e in row
                    if layer in e.layers and e.heads is not None), default=0)

    def blocked(self, layer: int, query_positions: torch.Tensor, kv_length: int) -> torch.Tensor | None:
        """bool [batch, queries, keys] for this layer ([batch, heads, queries, keys] where some
        edges are blocked in some heads only), or None when nothing is blocked here."""
        if layer not in self._layers:
            return None
        positions = query_positions.cpu().numpy()
        heads = self.heads(layer)
        blocked = np.zeros((len(self.rows), *((heads,) if heads else ()), len(positions),
                            kv_length), dtype=bool)
        for b, row in enumerate(self.rows):
            for edges in row:
                if layer not in edges.layers:
                    continue
                if not heads:  # written in place: the all-heads mask as it always was
                    _block(blocked[b], edges, positions, kv_length)
                    continue
                one = np.zeros(blocked.shape[2:], dtype=bool)
                _block(one, edges, positions, kv_length)
                blocked[b, list(edges.heads) if edges.heads is not None else slice(None)] |= one
        self._check_rows_keep_a_key(blocked, positions, layer)
        return torch.from_numpy(blocked).to(query_positions.device)

    def _check_rows_keep_a_key(self, blocked: np.ndarray, positions: np.ndarray, layer: int) -> None:
        causal = np.arange(blocked.shape[-1])[None, :] <= positions[:, None]  # [Q, K]
        for b, pad in enumerate(self.padding):
            allowed = causal
            if b < len(self.structures):
                allowed = self.structures[b].allowed(
                    layer, torch.from_numpy(positions), blocked.shape[-1]).numpy()
            readable = allowed & ~blocked[b]  # [(heads,) Q, K]
            readable[..., :pad] = False
            real = positions >= pad
            empty = real & ~readable.any(axis=-1)
            if empty.any():
                raise UserError(
                    f"the mask leaves query position {int(positions[np.nonzero(empty)[-1][0]])} "
                    "with no key to attend to; a row needs at least one readable key (e.g. do "
                    "not block a token from itself)."
                )

    def for_layer(self, layer: int, query_positions: torch.Tensor, kv_length: int) -> LayerEdit | None:
        blocked = self.blocked(layer, query_positions, kv_length)
        return None if blocked is None else LayerEdit(blocked=blocked)


def _block(blocked: np.ndarray, edges: Edges, positions: np.ndarray, kv_length: int) -> None:
    """Set ``blocked`` [queries at ``positions``, keys] where ``edges`` block (in place)."""
    if edges.paired:
        rows = np.searchsorted(positions, edges.queries)
        hit = (rows < len(positions)) & (edges.keys < kv_length)
        hit[hit] &= positions[rows[hit]] == edges.queries[hit]
        blocked[rows[hit], edges.keys[hit]] = True
        return
    is_query = np.isin(positions, edges.queries)
    if edges.queries_from is not None:
        is_query |= positions >= edges.queries_from
    keys = edges.keys[edges.keys < kv_length]
    blocked[np.ix_(np.flatnonzero(is_query), keys)] = True
