"""A benchmark's headline score under resampling, and the intervals and paired tests of the
evaluation (every headline :func:`analyses.scoring.summarize` computes, vectorised).

A headline is a function of per-sample multiplicities ``weights`` (1 each for the data as
measured, a multinomial draw for a bootstrap resample): the weighted mean score (``mean``);
the mean over kinds, present in the resample, of each kind's weighted mean (``macro``,
``refcoco``); the mean over kinds of the F1 of "yes" (``pope``). Each equals ``summarize`` on
the resampled samples, which :func:`headline` checks on the data itself.

>>> import numpy as np
>>> from types import SimpleNamespace as S
>>> from analyses.scoring import Verdict
>>> samples = [S(kind="a", answer="yes"), S(kind="a", answer="no"), S(kind="b", answer="yes")]
>>> verdicts = [Verdict(1.0, "yes"), Verdict(0.0, "yes"), Verdict(1.0, "yes")]
>>> h = Headline.of("macro", samples, verdicts)
>>> float(h.value(np.ones((1, 3)))[0]), float(h.value(np.array([[2.0, 0.0, 1.0]]))[0])
(0.75, 1.0)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from analyses.stats import mcnemar_exact, sign_flip_p_values, wilson_interval

CHUNK = 250  # resamples per vectorised block (memory: CHUNK x samples weights)


@dataclass(frozen=True)
class Headline:
    """The headline of one summary kind (``how``) over fixed samples and verdicts."""

    how: str
    scores: np.ndarray  # [n]
    kinds: np.ndarray  # [n] int codes
    gold_yes: np.ndarray  # [n] bool (pope)
    said_yes: np.ndarray  # [n] bool (pope)

    @classmethod
    def of(cls, how: str, samples: Sequence, verdicts: Sequence) -> Headline:
        kinds = np.unique([str(getattr(s, "kind", "")) for s in samples], return_inverse=True)[1]
        return cls(how, np.array([v.score for v in verdicts], dtype=np.float64),
                   np.asarray(kinds, dtype=np.int64).reshape(-1),
                   np.array([str(s.answer).strip().lower() == "yes" for s in samples]),
                   np.array([v.prediction == "yes" for v in verdicts]))

    def value(self, weights: np.ndarray) -> np.ndarray:
        """The headline per row of ``weights`` [resamples, n]."""
        weights = np.asarray(weights, dtype=np.float64)
        if self.how == "mean":
            return weights @ self.scores / weights.sum(1)
        per_kind = []
        for kind in range(int(self.kinds.max()) + 1 if self.kinds.size else 0):
            w = weights[:, self.kinds == kind]
            total = w.sum(1)
            if self.how == "pope":
                g, p = self.gold_yes[self.kinds == kind], self.said_yes[self.kinds == kind]
                tp, fp, fn = w @ (g & p), w @ (~g & p), w @ (g & ~p)
                with np.errstate(invalid="ignore", divide="ignore"):
                    precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
                    recall = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
                    f1 = np.where(precision + recall > 0,
                                  2 * precision * recall / (precision + recall), 0.0)
                value = f1
            else:  # macro, refcoco: the kind's mean score
                with np.errstate(invalid="ignore", divide="ignore"):
                    value = w @ self.scores[self.kinds == kind] / total
            per_kind.append(np.where(total > 0, value, np.nan))
        return np.nanmean(np.stack(per_kind, axis=1), axis=1)


VECTORISED = ("mean", "macro", "refcoco", "pope")


def resample_weights(n: int, n_resamples: int, seed: int):
    """Blocks of multinomial resample counts [block, n], the same for every method."""
    rng = np.random.default_rng(seed)
    for start in range(0, n_resamples, CHUNK):
        size = min(CHUNK, n_resamples - start)
        yield rng.multinomial(n, np.full(n, 1.0 / n), size=size)


def percentile_ci(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return (float("nan"), float("nan"))
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def binary(scores: np.ndarray) -> bool:
    return bool(np.isin(scores, (0.0, 1.0)).all())


def paired_p(clean: np.ndarray, other: np.ndarray, seed: int) -> tuple[float, str]:
    """Two-sided exact paired test of ``other`` against ``clean`` on the same samples: exact
    McNemar for 0/1 scores, else a sign-flip permutation test of the mean difference."""
    if binary(clean) and binary(other):
        return mcnemar_exact(clean == 1.0, other == 1.0), "mcnemar_exact"
    difference = (other - clean)[:, None]
    one_sided = [float(sign_flip_p_values(sign * difference, seed=seed)[0]) for sign in (1, -1)]
    return min(1.0, 2 * min(one_sided)), "sign_flip"


def compare(headlines: Sequence[Headline], n_resamples: int, seed: int
            ) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """Bootstrap 95% CIs of each headline and of each one's difference from the first, all
    from the same resamples of the (shared) samples."""
    n = headlines[0].scores.size
    values: list[list[np.ndarray]] = [[] for _ in headlines]
    for weights in resample_weights(n, n_resamples, seed):
        for k, headline in enumerate(headlines):
            values[k].append(headline.value(weights))
    stacked = [np.concatenate(v) for v in values]
    cis = [percentile_ci(v) for v in stacked]
    deltas = [percentile_ci(v - stacked[0]) for v in stacked]
    return cis, deltas


def wilson(scores: np.ndarray) -> tuple[float, float]:
    return wilson_interval(int((scores == 1.0).sum()), int(scores.size))
