"""One sample's attention on its image, layer by layer: the question tokens' and ``last``'s
attention to the image tokens, recorded exactly during the clean forward (no eager, no
``output_attentions``), and the relevant region on the same patches.

The *question* series averages the attention rows of the question's tokens (each a
distribution over all keys); *last* is the row of the position that predicts the answer.
From each row: ``image_share`` = its attention on image tokens, and the *map* = its attention
on the image's patch tokens renormalised to sum 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from analyses.attention_evolution.scores import map_scores
from probes.engine import Engine, Prefill
from probes.engines import DEFAULT
from probes.errors import UserError
from probes.models.loading import LoadedModel
from probes.record import AttentionRecorder
from probes.tokens import TokenGroups, token_groups

SERIES = ("question", "last")


@dataclass(frozen=True)
class SampleMaps:
    """``maps`` [series, layers, patches] (each sums to 1), ``image_share`` [series, layers],
    ``head_maps`` [series, layers, heads, patches] or None, ``relevant`` [patches] (all False
    when the question is about nothing visible), ``cells`` [patches, 3] (grid, row, col)."""

    maps: np.ndarray
    image_share: np.ndarray
    head_maps: np.ndarray | None
    relevant: np.ndarray
    cells: np.ndarray

    def scores(self) -> np.ndarray:
        """[series, layers, SCORES] (image_share first, then :func:`map_scores`)."""
        series, layers = self.image_share.shape
        out = np.empty((series, layers, 5))
        out[..., 0] = self.image_share
        for s in range(series):
            for layer in range(layers):
                out[s, layer, 1:] = map_scores(self.maps[s, layer], self.relevant)
        return out


def relevant_patches(groups: TokenGroups, sample) -> np.ndarray:
    """bool [patches] over ``groups.image_patches``: the patches overlapping the sample's mask
    (easy-VQA: the shape's pixels) or, without a mask, its target boxes."""
    if not sample.has_region():
        return np.zeros(groups.image_patches.size, dtype=bool)
    region = sample.region()
    try:
        obj = groups.with_region(mask=region).object
    except UserError:  # the region falls where the processor cropped the image away
        return np.zeros(groups.image_patches.size, dtype=bool)
    return np.isin(groups.image_patches, obj)


def patch_cells(groups: TokenGroups) -> np.ndarray:
    """[patches, 3]: (grid index, row, col) of each patch token, in token order."""
    tokens = groups.image_tokens
    offsets = np.searchsorted(tokens.positions, groups.image_patches)
    return tokens.layout.token_cells[offsets]


def recorder_for(groups: TokenGroups, heads: bool = False) -> AttentionRecorder:
    """Records the question's and ``last``'s rows on the image tokens at every layer."""
    return AttentionRecorder(queries=groups.get("question,last"), keys=groups.image,
                             reduce="none" if heads else "mean_heads")


def maps_from_recording(recorded: dict[int, torch.Tensor], groups: TokenGroups, num_layers: int,
                        heads: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(maps, image_share, head_maps) from a :func:`recorder_for` recording of batch row 0."""
    rows = groups.get("question,last")
    question = np.isin(rows, groups.question)
    patches = np.isin(groups.image, groups.image_patches)
    stacked = torch.stack([recorded[layer][0] for layer in range(num_layers)]).double().cpu().numpy()
    # [layers, heads, rows, image tokens] -> per series [layers, heads, image tokens]
    per_series = np.stack([stacked[:, :, question].mean(2), stacked[:, :, ~question].mean(2)])
    mean_heads = per_series.mean(2)  # [series, layers, image tokens]
    image_share = mean_heads.sum(-1)
    maps = _normalise(mean_heads[..., patches])
    head_maps = _normalise(per_series[..., patches]) if heads else None
    return maps, image_share, head_maps


def _normalise(values: np.ndarray) -> np.ndarray:
    return values / np.maximum(values.sum(-1, keepdims=True), np.finfo(np.float64).tiny)


@torch.inference_mode()
def record_sample(loaded: LoadedModel, sample, heads: bool = False, keep_clean: bool = True,
                  engine: Engine = DEFAULT) -> tuple[SampleMaps, Prefill | None, TokenGroups, object]:
    """The sample's maps, recorded on ``engine`` during its clean pass; also returns that
    clean pass (it serves a second decoding pass; with ``keep_clean=False`` a forward that only
    records the maps and None is returned), the token groups and the model inputs."""
    inputs = loaded.adapter.build_inputs([sample.image], [sample.ask])
    inputs = inputs.to(loaded.device, loaded.dtype)
    groups = token_groups(loaded.adapter, inputs)
    recorder = recorder_for(groups, heads)
    clean = None
    if keep_clean:
        clean = engine.prefill(loaded, inputs, groups, record=recorder)
    else:
        engine.record(loaded, inputs, recorder)
    maps, image_share, head_maps = maps_from_recording(recorder.maps, groups,
                                                       loaded.adapter.num_layers, heads)
    result = SampleMaps(maps, image_share, head_maps, relevant_patches(groups, sample),
                        patch_cells(groups))
    return result, clean, groups, inputs
