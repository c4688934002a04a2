"""Scores of one attention map over an image's patches against the region a question is about,
and the persistent-noise (sink) detector over many maps. Pure numpy, no model.

A *map* is a vector over the image's patch tokens, normalised to sum 1 (attention on the image,
as a distribution over its patches). The *relevant region* is a boolean vector over the same
patches (the patches overlapping the object's pixels or the target boxes).

>>> import numpy as np
>>> attention = np.array([0.1, 0.4, 0.2, 0.3])
>>> relevant = np.array([False, True, False, True])
>>> float(region_share(attention, relevant)), float(auroc(attention, relevant)), pointing(attention, relevant)
(0.7, 1.0, 1.0)
>>> round(float(normalised_entropy(np.full(4, 0.25))), 6)
1.0
"""

from __future__ import annotations

import math

import numpy as np

TOP_SHARE = 0.05  # a patch is "high" in a map when it is among the top 5% of patches
SINK_THRESHOLD = 0.5  # a sink is high in at least half of the maps where it is not relevant
SCORES = ("image_share", "relevant_share", "auroc", "pointing", "entropy")


def region_share(attention: np.ndarray, relevant: np.ndarray) -> float:
    """The share of the map on the relevant patches (NaN without a relevant patch)."""
    return float(attention[relevant].sum()) if relevant.any() else math.nan


def auroc(attention: np.ndarray, relevant: np.ndarray) -> float:
    """Area under the ROC curve of the map as a detector of relevant patches: the probability
    that a random relevant patch outranks a random other one, ties counting one half (the
    Mann-Whitney U statistic / (positives x negatives)). NaN when either class is empty.

    >>> float(auroc(np.array([0.5, 0.5, 0.0]), np.array([True, False, False])))
    0.75
    """
    positives, negatives = attention[relevant], attention[~relevant]
    if positives.size == 0 or negatives.size == 0:
        return math.nan
    greater = (positives[:, None] > negatives[None, :]).sum()
    ties = (positives[:, None] == negatives[None, :]).sum()
    return float((greater + 0.5 * ties) / (positives.size * negatives.size))


def pointing(attention: np.ndarray, relevant: np.ndarray) -> float:
    """1.0 when the map's maximum lies on a relevant patch (ties: the first patch in token
    order), 0.0 otherwise, NaN without a relevant patch (the pointing game)."""
    return float(relevant[int(np.argmax(attention))]) if relevant.any() else math.nan


def normalised_entropy(attention: np.ndarray) -> float:
    """Shannon entropy of the map divided by log(patches): 1 = uniform, 0 = one patch."""
    p = attention[attention > 0]
    return float(-(p * np.log(p)).sum() / math.log(attention.size)) if attention.size > 1 else 0.0


def map_scores(attention: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """[relevant_share, auroc, pointing, entropy] of one map (``SCORES`` without image_share)."""
    return np.array([region_share(attention, relevant), auroc(attention, relevant),
                     pointing(attention, relevant), normalised_entropy(attention)])


def top_patches(maps: np.ndarray, share: float = TOP_SHARE) -> np.ndarray:
    """bool [..., patches]: the ``max(1, ceil(share * patches))`` highest patches of each map
    (ties broken by token order, stable)."""
    patches = maps.shape[-1]
    k = max(1, math.ceil(share * patches))
    order = np.argsort(-maps, axis=-1, kind="stable")[..., :k]
    high = np.zeros(maps.shape, dtype=bool)
    np.put_along_axis(high, order, True, axis=-1)
    return high


def sink_scores(maps: np.ndarray, relevant: np.ndarray, share: float = TOP_SHARE) -> np.ndarray:
    """Per patch, the share of maps in which it is among the top ``share`` of patches, over the
    maps of samples where it is *not* in the relevant region (so a patch that is high because
    questions are about it does not count). ``maps`` [samples, ..., patches] (every layer and
    query series of a sample), ``relevant`` [samples, patches]. NaN for a patch that is relevant
    in every sample.

    >>> maps = np.array([[[0.7, 0.1, 0.1, 0.1]], [[0.6, 0.3, 0.05, 0.05]]])
    >>> sink_scores(maps, np.array([[False, True, False, False]] * 2), share=0.25).tolist()
    [1.0, nan, 0.0, 0.0]
    """
    high = top_patches(maps, share).reshape(maps.shape[0], -1, maps.shape[-1])
    outside = ~relevant[:, None, :]  # [samples, 1, patches]
    counted = np.broadcast_to(outside, high.shape).sum((0, 1))
    hits = (high & outside).sum((0, 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counted > 0, hits / np.maximum(counted, 1), np.nan)


def sink_patches(scores: np.ndarray, threshold: float = SINK_THRESHOLD) -> np.ndarray:
    """Patches (indices) whose sink score is at least ``threshold``, highest score first."""
    found = np.flatnonzero(np.nan_to_num(scores, nan=0.0) >= threshold)
    return found[np.argsort(-scores[found], kind="stable")]
