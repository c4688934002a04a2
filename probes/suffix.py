"""What a run of the decoder layers over a prompt's suffix reads at every layer, built once per
input and handed to each layer on its own device: the attention masks of every condition
(:class:`SuffixMasks`), the rotary tables (:class:`RotaryTables`) and the layers with their
devices (:class:`Placement`). The executor (:mod:`probes.run`) and activation patching
(:mod:`probes.patching`) run layers with them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from probes.devices import OnDevices, module_device
from probes.masking import EdgeMaskPlan
from probes.models.loading import LoadedModel
from probes.structure import AttentionStructure, plain


class SuffixMasks:
    """Additive attention masks for queries at positions ``prefix..length-1``: what the model's
    own mask allows at that layer (causal; Gemma 3's sliding windows and bidirectional image
    blocks: ``structure``, :mod:`probes.structure`), plus the edges each row blocks there. A
    row's mask is built once per distinct set of edges and kind of layer (by
    :class:`EdgeMaskPlan`, which also refuses a query left without keys) for every query
    position the run will have, generated ones included, and sliced per call: a layer or a
    decoding step never builds a mask again. Masks are made on the device of the layer that
    reads them (each device gets its own copy, once).
    """

    def __init__(self, rows: Sequence[Sequence], prefix: int, length: int,
                 dtype: torch.dtype, device: torch.device,
                 structure: AttentionStructure | None = None) -> None:
        self.rows, self.prefix, self.length = rows, prefix, length
        self.structure = structure or plain()
        self.positions = torch.arange(prefix, length, device=device)
        self.dtype, self.low = dtype, torch.finfo(dtype).min
        self._bases: dict = {}  # per kind of layer: (OnDevices mask [1, 1, Q, K], causal rows)
        self._built: dict[tuple, torch.Tensor] = {}
        # (layer, row, device) -> (the row's full mask, causal rows where it blocks nothing)
        self._single: dict[tuple, tuple[torch.Tensor, torch.Tensor | None]] = {}

    def _base(self, layer: int) -> tuple[OnDevices, torch.Tensor]:
        """The model's own mask at ``layer``, and which of its rows are plain causal ones."""
        kind = self.structure.kind(layer)
        if kind not in self._bases:
            allowed = self.structure.allowed(layer, self.positions, self.length)
            causal = torch.arange(self.length, device=allowed.device)[None, :] <= self.positions[:, None]
            mask = torch.where(allowed, 0.0, self.low).to(self.dtype)[None, None]  # [1, 1, Q, K]
            self._bases[kind] = (OnDevices(mask), (allowed == causal).all(-1).cpu())
        return self._bases[kind]

    def _row(self, row: int, layer: int, device: torch.device) -> torch.Tensor | None:
        edges = [edges for edges in self.rows[row] if layer in edges.layers]
        if not edges:
            return None
        # layers of one kind with the same edges share one mask
        key = (row, self.structure.kind(layer), tuple(map(id, edges)), device)
        if key not in self._built:
            plan = EdgeMaskPlan([edges], structures=[self.structure])
            blocked = plan.blocked(layer, self.positions, self.length)
            base = self._base(layer)[0].on(device)
            per_head = blocked if blocked.dim() == 4 else blocked[:, None]  # [1, heads or 1, Q, K]
            self._built[key] = base.masked_fill(per_head.to(device), self.low)
        return self._built[key]

    def for_call(self, layer: int, rows: Sequence[int], start: int, stop: int,
                 device: torch.device) -> torch.Tensor | None:
        """[len(rows) or 1, 1 (or heads, where a row blocks edges per head), stop - start, stop]
        on ``device`` for queries ``start..stop-1`` reading keys ``0..stop-1``, or None where
        plain attention is exact (one query, reading its causal keys, nothing blocked)."""
        if len(rows) == 1:  # a decode: the same row at every step, its mask looked up once
            key = (layer, rows[0], device)
            if key not in self._single:
                mask = self._row(rows[0], layer, device)
                base, causal_rows = self._base(layer)
                self._single[key] = (base.on(device) if mask is None else mask,
                                     causal_rows if mask is None else None)
            full, causal_rows = self._single[key]
            if causal_rows is not None and stop - start == 1 and bool(causal_rows[start - self.prefix]):
                return None
            return full[:, :, start - self.prefix : stop - self.prefix, :stop]
        masks = [self._row(row, layer, device) for row in rows]
        base, causal_rows = self._base(layer)
        if all(mask is None for mask in masks):
            if stop - start == 1 and bool(causal_rows[start - self.prefix]):
                return None
            full = base.on(device)
        else:
            base = base.on(device)
            full = [base if mask is None else mask for mask in masks]
            heads = max(mask.shape[1] for mask in full)  # rows masked per head: every row so
            full = torch.cat([mask.expand(-1, heads, -1, -1) for mask in full])
        return full[:, :, start - self.prefix : stop - self.prefix, :stop]


class RotaryTables:
    """(cos, sin) of the positions from ``first`` on, computed once on the rotary embedding's
    device (once per rotary type where layers differ: Gemma 3's local and global tables,
    :meth:`~probes.models.adapters.base.Adapter.rotary_type`) and copied once to each device a
    layer reads them on; :meth:`rows` slices a call's query positions out of the copy of that
    layer's table on that layer's device."""

    def __init__(self, loaded: LoadedModel, like: torch.Tensor, positions: torch.Tensor,
                 first: int) -> None:
        embedding = loaded.adapter.language_model(loaded.model).rotary_emb
        device = module_device(embedding)
        # ``like`` (hidden states) only tells the embedding the dtype of the tables
        like = like[:, :1].to(device)
        self.first, self.adapter = first, loaded.adapter
        self.tables: dict[str | None, OnDevices] = {}
        for kind in {loaded.adapter.rotary_type(layer) for layer in range(loaded.adapter.num_layers)}:
            extra = () if kind is None else (kind,)
            self.tables[kind] = OnDevices(tuple(embedding(like, positions.to(device), *extra)))

    def rows(self, device: torch.device, start: int, stop: int,
             layer: int = 0) -> tuple[torch.Tensor, ...]:
        """The (cos, sin) rows of query positions ``start..stop-1`` for ``layer``, on ``device``."""
        tables = self.tables[self.adapter.rotary_type(layer)]
        return tuple(table[..., start - self.first : stop - self.first, :]
                     for table in tables.on(device))


@dataclass(frozen=True)
class Placement:
    """The decoder layers and the final norm with the device each computes on, looked up once
    per run: a decoding step runs every layer again, and finding a layer's device walks its
    parameters (:func:`~probes.devices.module_device`)."""

    layers: tuple[tuple[torch.nn.Module, torch.device], ...]
    norm: torch.nn.Module
    norm_device: torch.device

    @classmethod
    def of(cls, loaded: LoadedModel) -> Placement:
        model, adapter = loaded.model, loaded.adapter
        norm = adapter.final_norm(model)
        return cls(tuple((layer, module_device(layer)) for layer in adapter.decoder_layers(model)),
                   norm, module_device(norm))
