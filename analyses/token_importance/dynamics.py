"""Token dynamics and the adaptive mask ratio of AIF (arXiv 2604.15809), as pure numpy.

For image token i and layer l, ``d[i, l]`` is the largest attention any chosen text row pays
to token i at layer l (recorded by :mod:`analyses.token_importance.aif`). From that curve:

- ``Ent_i = -sum_l p_l log p_l`` with ``p_l = d[i, l] / sum_l d[i, l]`` (natural log):
  low entropy = attention concentrated in a few layers = an important token;
- ``mu_i = mean_l d[i, l]``;
- tokens are masked in order of *decreasing* entropy (background first); for each candidate
  ratio r the first ``mask_count(r, N)`` of that order are masked and ``S(r)`` is the entropy of
  mu over the kept tokens, normalised to sum 1; ``S0`` is the same over all tokens; the chosen
  ratio maximises ``|S(r) - S0|`` (the first such ratio on ties, within 1e-12).

>>> d = np.array([[0.9, 0.05, 0.05], [0.3, 0.3, 0.4], [0.2, 0.4, 0.4], [0.33, 0.33, 0.34]])
>>> np.round(curve_entropy(d), 3).tolist()
[0.394, 1.089, 1.055, 1.099]
>>> mask_order(curve_entropy(d)).tolist()  # background (high entropy) first
[3, 1, 2, 0]
>>> mu = np.array([0.5, 0.1, 0.2, 0.3])
>>> scan = scan_ratios(mu, mask_order(curve_entropy(d)), (0.25, 0.5, 0.75))
>>> scan.counts.tolist(), np.round(scan.s, 3).tolist(), round(scan.s0, 3), scan.ratio
([1, 2, 3], [0.9, 0.598, 0.0], 1.241, 0.75)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def distribution_entropy(values: np.ndarray, axis: int = -1) -> np.ndarray:
    """Entropy (nats) of non-negative ``values`` normalised to sum 1 along ``axis``;
    ``0 log 0 = 0``; an all-zero vector counts as uniform (it carries no preference).

    >>> round(float(distribution_entropy(np.array([1.0, 1.0, 0.0]))), 6)  # log 2
    0.693147
    """
    values = np.asarray(values, dtype=np.float64)
    total = values.sum(axis=axis, keepdims=True)
    n = values.shape[axis]
    p = np.where(total > 0, values / np.where(total > 0, total, 1.0), 1.0 / n)
    logs = np.log(np.where(p > 0, p, 1.0))
    return 0.0 - (p * logs).sum(axis=axis)  # 0.0 - x: no -0.0 for a single token


def curve_entropy(dynamics: np.ndarray) -> np.ndarray:
    """Ent_i of each token's curve: ``dynamics`` [tokens, layers] -> [tokens]."""
    return distribution_entropy(dynamics, axis=-1)


def mean_attention(dynamics: np.ndarray) -> np.ndarray:
    """mu_i, the mean of each token's curve over layers: [tokens, layers] -> [tokens]."""
    return np.asarray(dynamics, dtype=np.float64).mean(-1)


def mask_count(ratio: float, n: int) -> int:
    """How many of ``n`` tokens a mask ratio masks: the nearest integer (halves up), so
    ``mask_count(0.3, 64) == 19`` and ``mask_count(0.7, 64) == 45``.

    >>> [mask_count(r, 64) for r in (0.0, 0.1, 0.5, 0.9, 1.0)]
    [0, 6, 32, 58, 64]
    """
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"a mask ratio lies in [0, 1], not {ratio}")
    return int(np.floor(ratio * n + 0.5 + 1e-9))


def mask_order(scores: np.ndarray, descending: bool = True) -> np.ndarray:
    """Token indices in the order they are masked: by ``scores`` (highest first when
    ``descending``), ties broken by the lower index, so the order is deterministic."""
    scores = np.asarray(scores, dtype=np.float64)
    key = -scores if descending else scores
    return np.lexsort((np.arange(scores.size), key))


@dataclass(frozen=True)
class RatioScan:
    """The S-curve: ``s[k]`` is the entropy of mu over the tokens kept at ``ratios[k]``
    (``counts[k]`` masked); ``s0`` over all tokens; ``ratio`` the chosen one (``index``)."""

    ratios: np.ndarray
    counts: np.ndarray
    s: np.ndarray
    s0: float
    index: int

    @property
    def ratio(self) -> float:
        return float(self.ratios[self.index])


def _entropy(values: np.ndarray, normalized: bool) -> float:
    if not normalized:
        return float(distribution_entropy(values)) if values.size else np.nan
    return float(distribution_entropy(values) / np.log(values.size)) if values.size > 1 else np.nan


def scan_ratios(mu: np.ndarray, order: np.ndarray, ratios=DEFAULT_RATIOS,
                normalized: bool = False) -> RatioScan:
    """Mask ``order``'s first tokens at each ratio and keep the ratio maximising |S - S0|.

    ``normalized=False`` is the published rule. An entropy over fewer tokens is smaller by
    about the log of the count, so that S falls with the ratio almost whatever mu is, and the
    largest ratio tends to win; ``normalized=True`` divides each entropy by the log of its
    token count (1 = uniform), which compares how focused mu is, not how many tokens are left.
    """
    mu = np.asarray(mu, dtype=np.float64)
    ratios = np.asarray(ratios, dtype=np.float64)
    counts = np.array([mask_count(r, mu.size) for r in ratios], dtype=np.int64)
    s0 = _entropy(mu, normalized)
    s = np.array([_entropy(mu[order[c:]], normalized) for c in counts])
    shift = np.abs(s - s0)
    if not np.isfinite(shift).any():
        return RatioScan(ratios, counts, s, s0, 0)
    # the first ratio within float rounding of the largest shift: equal S values computed over
    # different token sets may differ in the last bits, and the rule must not depend on that
    index = int(np.flatnonzero(shift >= np.nanmax(shift) - 1e-12)[0])
    return RatioScan(ratios, counts, s, s0, index)


def object_recall(ranking: np.ndarray, is_object: np.ndarray, fraction: float = 0.2) -> float:
    """Share of the object tokens among the first ``ceil(fraction * N)`` of ``ranking``
    (token indices, most important first); NaN when there is no object token.

    >>> object_recall(np.array([3, 0, 1, 2, 4]), np.array([1, 0, 0, 1, 0], bool), 0.4)
    1.0
    """
    is_object = np.asarray(is_object, dtype=bool)
    if not is_object.any():
        return float("nan")
    top = ranking[: int(np.ceil(fraction * ranking.size - 1e-9))]
    return float(is_object[top].sum() / is_object.sum())
