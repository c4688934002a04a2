"""A benchmark's numbers from its per-sample verdicts: the headline ``score``, ``n``, and the
scores per ``kind`` (the category a benchmark is broken down by).

Which summary applies: :data:`SUMMARY_OF_DATASET` first (MMStar's headline is the macro mean
over its l2 categories, though it is graded by the plain "choice" rule), else
:data:`SUMMARY_OF_SCORER` by the samples' rule.

>>> from types import SimpleNamespace as S
>>> from analyses.scoring.base import Verdict
>>> samples = [S(kind="a"), S(kind="a"), S(kind="b")]
>>> verdicts = [Verdict(1.0, "A"), Verdict(0.0, "B"), Verdict(1.0, "C")]
>>> summary = macro_summary(samples, verdicts)
>>> summary["score"], summary["accuracy"], summary["per_kind"]["a"]
(0.75, 0.6666666666666666, {'score': 0.5, 'n': 2})
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from statistics import fmean

from analyses.scoring.base import Verdict

Summary = Callable[[Sequence, Sequence[Verdict]], dict]


def _by_kind(samples: Sequence, verdicts: Sequence[Verdict]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for i, sample in enumerate(samples):
        groups.setdefault(str(getattr(sample, "kind", "")), []).append(i)
    return dict(sorted(groups.items()))


def _means(samples, verdicts) -> tuple[float, dict]:
    per_kind = {
        kind: {"score": fmean(verdicts[i].score for i in rows), "n": len(rows)}
        for kind, rows in _by_kind(samples, verdicts).items()
    }
    return fmean(v.score for v in verdicts), per_kind


def mean_summary(samples: Sequence, verdicts: Sequence[Verdict]) -> dict:
    """Headline = the mean score over all samples."""
    accuracy, per_kind = _means(samples, verdicts)
    return {"summary": "mean", "score": accuracy, "accuracy": accuracy, "n": len(verdicts),
            "per_kind": per_kind}


def macro_summary(samples: Sequence, verdicts: Sequence[Verdict]) -> dict:
    """Headline = the mean over kinds of each kind's mean score (MMStar)."""
    accuracy, per_kind = _means(samples, verdicts)
    return {"summary": "macro", "score": fmean(k["score"] for k in per_kind.values()),
            "accuracy": accuracy, "n": len(verdicts), "per_kind": per_kind}


def pope_metrics(gold: Sequence[str], predicted: Sequence[str]) -> dict:
    """Accuracy, precision, recall, F1 (yes = positive; 0 where a ratio has nothing to count)
    and the share of predicted yes."""
    pairs = list(zip(gold, predicted))
    tp = sum(g == "yes" and p == "yes" for g, p in pairs)
    fp = sum(g != "yes" and p == "yes" for g, p in pairs)
    fn = sum(g == "yes" and p != "yes" for g, p in pairs)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": fmean(g == p for g, p in pairs), "precision": precision,
            "recall": recall, "f1": f1, "yes_share": (tp + fp) / len(pairs), "n": len(pairs)}


def pope_summary(samples: Sequence, verdicts: Sequence[Verdict]) -> dict:
    """Per split (kind) :func:`pope_metrics`; headline = the mean F1 over splits (as LLaVA-1.5
    reports POPE); the same metrics over all samples alongside."""
    gold = [str(s.answer).strip().lower() for s in samples]
    said = [v.prediction for v in verdicts]
    per_kind = {
        kind: pope_metrics([gold[i] for i in rows], [said[i] for i in rows])
        for kind, rows in _by_kind(samples, verdicts).items()
    }
    overall = pope_metrics(gold, said)
    return {"summary": "pope", "score": fmean(k["f1"] for k in per_kind.values()),
            **overall, "per_kind": per_kind}


def box_summary(samples: Sequence, verdicts: Sequence[Verdict]) -> dict:
    """Per split (kind) the accuracy at IoU 0.5 and the mean IoU; headline = the mean accuracy
    over splits (as the grounding tables average them)."""
    per_kind = {
        kind: {"score": fmean(verdicts[i].score for i in rows),
               "mean_iou": fmean(verdicts[i].iou or 0.0 for i in rows), "n": len(rows)}
        for kind, rows in _by_kind(samples, verdicts).items()
    }
    return {"summary": "refcoco", "score": fmean(k["score"] for k in per_kind.values()),
            "accuracy": fmean(v.score for v in verdicts),
            "mean_iou": fmean(v.iou or 0.0 for v in verdicts), "n": len(verdicts),
            "per_kind": per_kind}


SUMMARIES: dict[str, Summary] = {
    "mean": mean_summary, "macro": macro_summary, "pope": pope_summary, "refcoco": box_summary,
}
SUMMARY_OF_SCORER = {
    "exact": "mean", "choice": "mean", "realworldqa": "mean", "vqa": "mean", "count": "mean",
    "gqa": "mean", "pope": "pope", "refcoco": "refcoco",
}
SUMMARY_OF_DATASET = {"mmstar": "macro"}
