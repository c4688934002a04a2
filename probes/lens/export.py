"""A fusionlens attention recording as a TransformerLens ``ActivationCache``.

TransformerLens names a layer's attention probabilities ``blocks.{l}.attn.hook_pattern``, a
[batch, head, query position, key position] tensor over the whole sequence; the pre-softmax
scores are ``blocks.{l}.attn.hook_attn_scores``. Those names live here and nowhere else.

>>> pattern_hook(3), scores_hook(3)
('blocks.3.attn.hook_pattern', 'blocks.3.attn.hook_attn_scores')
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from probes.errors import UserError
from probes.lens.extra import require_transformer_lens
from probes.record import AttentionRecorder
from probes.tokens import GROUPS, TokenGroups

if TYPE_CHECKING:
    from transformer_lens import ActivationCache


def pattern_hook(layer: int) -> str:
    """TransformerLens's name for the attention probabilities of decoder layer ``layer``."""
    return f"blocks.{layer}.attn.hook_pattern"


def scores_hook(layer: int) -> str:
    """TransformerLens's name for the attention scores (before the softmax) of ``layer``."""
    return f"blocks.{layer}.attn.hook_attn_scores"


@dataclass(frozen=True, eq=False)
class LensRecording:
    """A recording in TransformerLens's terms.

    ``cache``: ``hook_pattern`` per recorded layer, float32 [batch, head, seq, seq]; entries
    that were not recorded (query rows or keys left out of the recorder) are NaN.
    ``positions``: each token group's positions (``image``, ``question``, ``last``, ...; empty
    arrays for groups this input does not have). ``query_positions`` / ``key_positions``: the
    rows and columns that hold recorded values.
    """

    cache: ActivationCache
    positions: dict[str, np.ndarray]
    query_positions: np.ndarray
    key_positions: np.ndarray


def to_activation_cache(recorder: AttentionRecorder, groups: TokenGroups, *,
                        maps: Mapping[int, torch.Tensor] | None = None,
                        model: Any = None) -> LensRecording:
    """Export what ``recorder`` recorded (or ``maps`` recorded with it as the template, e.g.
    ``run_knockouts(..., record=recorder).attentions``: one batch row per condition) under
    TransformerLens hook names, the input's token groups ``groups`` alongside.

    ``model``: handed to the ``ActivationCache`` (a TransformerBridge for TL's helpers that
    need one, such as ``cache.accumulated_resid``); plain indexing needs none.
    """
    transformer_lens = require_transformer_lens()
    maps = recorder.maps if maps is None else maps
    if recorder.reduce != "none" or recorder.max_queries:
        raise UserError("TransformerLens's hook_pattern keeps every head and every query row; "
                        "record with reduce='none' and max_queries=False to export it.")
    if not maps:
        raise UserError("the recorder holds no attention: run a forward with it attached "
                        "(probes.attention.attach) before exporting.")
    first = next(iter(maps.values()))
    keys = (np.arange(first.shape[-1]) if recorder.keys is None
            else np.asarray(recorder.keys, dtype=np.int64))
    length = max(groups.length + groups.n_generated, int(keys[-1]) + 1 if keys.size else 0)
    queries = np.asarray(recorder.queries, dtype=np.int64)
    queries = queries[queries < length]
    if first.shape[-2] != queries.size or first.shape[-1] != keys.size:
        raise UserError(
            f"the recording holds {first.shape[-2]} query rows x {first.shape[-1]} keys but the "
            f"recorder asks for {queries.size} x {keys.size} in a {length}-token input: export "
            "a recording of one prefill forward (a decoding step records only its own rows)."
        )
    rows, columns = torch.from_numpy(queries)[:, None], torch.from_numpy(keys)[None, :]
    cache = {}
    for layer in sorted(maps):
        recorded = maps[layer].float()
        pattern = recorded.new_full((*recorded.shape[:2], length, length), float("nan"))
        pattern[:, :, rows, columns] = recorded
        cache[pattern_hook(layer)] = pattern
    positions = {name: getattr(groups, name).copy() for name in GROUPS}
    return LensRecording(transformer_lens.ActivationCache(cache, model), positions, queries, keys)
