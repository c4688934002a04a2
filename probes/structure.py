"""What a model's own attention mask allows a query to read, beyond plain causality: the
sliding window of some layers, and bidirectional attention inside each image in prefill.

Gemma 3 has both: its sliding layers let a query at q read a key at k only when
``k > q - window`` (transformers' ``sliding_window_overlay``), and in prefill the tokens of one
image read each other in both directions (``token_type_ids`` -> block ids ->
``blockwise_overlay``), the window applied on top: ``AND(window, OR(causal, same block))``.
Generated tokens belong to no block, so decoding stays causal. An adapter says which layers
slide (:meth:`~probes.models.adapters.base.Adapter.sliding_windows`) and where the blocks of a
row are (:meth:`~probes.models.adapters.base.Adapter.image_blocks`); every other family has
neither, and its structure is plain causal.

The executor (:class:`probes.suffix.SuffixMasks`) builds its masks from :meth:`allowed`, and a
knockout is refused when it leaves a query nothing it may read (:class:`probes.masking.EdgeMaskPlan`).

>>> import numpy as np, torch
>>> blocks = np.array([-1, 0, 0, 0, -1, -1])  # one image at positions 1..3
>>> structure = AttentionStructure(windows=(None, 2), blocks=blocks)
>>> structure.allowed(0, torch.arange(6), 6).int()[1:4]  # full layer: image reads all of itself
tensor([[1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 0, 0]], dtype=torch.int32)
>>> structure.allowed(1, torch.arange(6), 6).int()[[3, 5]]  # sliding: one key back at most
tensor([[0, 0, 1, 1, 0, 0],
        [0, 0, 0, 0, 1, 1]], dtype=torch.int32)
>>> structure.shared_prefix(3), structure.shared_prefix(4)  # a block is shared whole or not at all
(1, 4)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class AttentionStructure:
    """The model's own mask of one input row: ``windows[layer]`` (None: the layer does not
    slide) and ``blocks`` (per prompt position, the id of the image block it belongs to, -1
    for none; None where the family attends causally inside images)."""

    windows: tuple[int | None, ...] = ()
    blocks: np.ndarray | None = None

    @classmethod
    def of(cls, adapter, inputs, row: int = 0) -> AttentionStructure:
        """The structure of row ``row`` of ``inputs`` for ``adapter``'s model."""
        return cls(tuple(adapter.sliding_windows()), adapter.image_blocks(inputs, row))

    def window(self, layer: int) -> int | None:
        return self.windows[layer] if layer < len(self.windows) else None

    def kind(self, layer: int) -> int | None:
        """Layers of one kind have the same mask (they share what is built from it)."""
        return self.window(layer)

    def allowed(self, layer: int, queries: torch.Tensor, kv_length: int) -> torch.Tensor:
        """bool [queries, kv_length]: which keys each query (absolute positions) may read at
        ``layer`` before any knockout, on the queries' device."""
        device = queries.device
        keys = torch.arange(kv_length, device=device)
        allowed = keys[None, :] <= queries[:, None]
        if self.blocks is not None and self.blocks.size:
            ids = torch.full((max(kv_length, int(queries.max()) + 1),), -1, dtype=torch.long)
            known = min(len(self.blocks), len(ids))
            ids[:known] = torch.from_numpy(np.asarray(self.blocks[:known], dtype=np.int64))
            ids = ids.to(device)
            query_ids, key_ids = ids[queries], ids[:kv_length]
            allowed |= (query_ids[:, None] == key_ids[None, :]) & (query_ids[:, None] >= 0)
        window = self.window(layer)
        if window is not None:
            allowed &= keys[None, :] > queries[:, None] - window
        return allowed

    def is_causal(self, layer: int, queries: torch.Tensor, kv_length: int) -> bool:
        """Whether these queries read exactly their causal keys at ``layer``."""
        keys = torch.arange(kv_length, device=queries.device)
        causal = keys[None, :] <= queries[:, None]
        return bool(torch.equal(self.allowed(layer, queries, kv_length), causal))

    def shared_prefix(self, position: int) -> int:
        """The largest prefix at or before ``position`` that no later position reaches back
        into: ``position`` itself, or the first token of the image block it lies inside (the
        block's earlier tokens read its later ones)."""
        if self.blocks is None or position >= len(self.blocks) or self.blocks[position] < 0:
            return position
        return int(np.flatnonzero(self.blocks == self.blocks[position])[0])


def plain(num_layers: int = 0) -> AttentionStructure:
    """Causal attention in every layer (what every family but Gemma 3 has)."""
    return AttentionStructure((None,) * num_layers)


def windows_from(layer_types: Sequence[str] | None, window: int | None,
                 num_layers: int) -> tuple[int | None, ...]:
    """Per layer, ``window`` where ``layer_types`` names a sliding layer, else None."""
    types = list(layer_types or ["full_attention"] * num_layers)
    return tuple(int(window) if kind == "sliding_attention" and window is not None else None
                 for kind in types)
