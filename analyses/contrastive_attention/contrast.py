"""The contrastive map and the choices around it, each by a stated rule. Pure numpy.

- **Contrastive map** of a sample: ``late - early``, both maps normalised over the image's
  patches (so it sums to 0): positive where attention moved onto a patch between the early
  fusion layer and the late layer, negative where it moved away.
- **Early layer**: the first fusion layer of a layer-masking run that lies before the late
  layer; without one, chosen automatically among the *early candidates* (the layers before the
  late layer in the first half of the model, ``l < ceil(L / 2)``) as the one whose map differs
  most from the late one: the largest mean total-variation distance ``0.5 * sum |late - early|``
  over the run's samples. The rule reads only attention, never answers or regions.
- **Refinement layers**: the user's, else the review layers of a layer-masking run, else the
  last quarter of the model (``l >= L - ceil(L / 4)``, where a review would sit).
- **Suppressed patches**: the ``round(ratio * patches)`` patches with the lowest contrastive
  value (the least shift onto them), or, with a threshold, those whose value is below
  ``threshold / patches`` (a threshold of -0.5 = lost at least half a uniform patch's share).

>>> import numpy as np
>>> late, early = np.array([[0.1, 0.6, 0.3]]), np.array([[0.3, 0.3, 0.4]])
>>> contrastive_map(late, early).round(2).tolist()
[[-0.2, 0.3, -0.1]]
>>> least_shift(np.array([-0.2, 0.3, -0.1]), ratio=0.34).tolist()
[0]
>>> early_candidates(late_layer=5, num_layers=6), last_quarter(6)
([0, 1, 2], [4, 5])
"""

from __future__ import annotations

import math

import numpy as np


def contrastive_map(late: np.ndarray, early: np.ndarray) -> np.ndarray:
    """``late - early`` of maps normalised over the last axis."""
    return _normalise(late) - _normalise(early)


def _normalise(maps: np.ndarray) -> np.ndarray:
    return maps / np.maximum(maps.sum(-1, keepdims=True), np.finfo(np.float64).tiny)


def early_candidates(late_layer: int, num_layers: int) -> list[int]:
    return [layer for layer in range(math.ceil(num_layers / 2)) if layer < late_layer]


def last_quarter(num_layers: int) -> list[int]:
    return list(range(num_layers - math.ceil(num_layers / 4), num_layers))


def total_variation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return 0.5 * np.abs(_normalise(a) - _normalise(b)).sum(-1)


def choose_early_layer(maps: np.ndarray, late_layer: int) -> tuple[int, dict[int, float]]:
    """The early candidate whose maps differ most from the late layer's (mean total-variation
    distance over samples). ``maps`` [samples, layers, patches]. Returns (layer, distances)."""
    candidates = early_candidates(late_layer, maps.shape[1])
    if not candidates:
        raise ValueError(f"no early candidate before layer {late_layer}")
    distances = {layer: float(total_variation(maps[:, late_layer], maps[:, layer]).mean())
                 for layer in candidates}
    return max(candidates, key=lambda layer: (distances[layer], -layer)), distances


def least_shift(contrast: np.ndarray, ratio: float | None = None,
                threshold: float | None = None) -> np.ndarray:
    """Indices (ascending) of the patches to suppress: the ``round(ratio * patches)`` lowest
    contrastive values (ties by patch order), or those below ``threshold / patches``."""
    patches = contrast.size
    if (ratio is None) == (threshold is None):
        raise ValueError("give either a ratio or a threshold")
    if ratio is not None:
        count = int(round(ratio * patches))
        return np.sort(np.argsort(contrast, kind="stable")[:count])
    return np.flatnonzero(contrast < threshold / patches)
