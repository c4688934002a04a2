"""The numbers of an evaluation from its per-sample records: per benchmark, per method, the
headline score with a 95% CI, the change from clean with a paired 95% CI and an exact paired
test, the per-category scores and the benchmark's extra metrics (POPE's precision, recall,
F1 and yes share; RefCOCO's mean IoU).

Intervals: a headline that is the plain mean of 0/1 scores gets the Wilson interval and its
row is exactly :func:`analyses.stats.method_rows`'s; every other headline (MMStar's macro
mean, POPE's F1, TextVQA's fractional VQA accuracy, RefCOCO's mean over splits) a percentile
bootstrap over samples. The change from clean is bootstrapped with the same resamples for
both methods (paired). Its p-value is the exact McNemar test of full credit for 0/1 scores,
else a two-sided sign-flip test of the per-sample score differences. ``oracle`` is compared on
the samples that have a region only; the others are counted in ``excluded``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from analyses import scoring
from analyses.evaluate import stats
from analyses.evaluate.config import EvaluateConfig, unstub
from analyses.results import RunResult
from analyses.runner.spec import Records
from analyses.stats import method_rows

PER_SAMPLE = ("replies", "predictions", "scores", "excluded", "iou")  # [sample, method]


def stack(rows: Records) -> tuple[dict[str, np.ndarray], np.ndarray]:
    values = list(rows.values())
    arrays = {"sample_index": np.array(list(rows), dtype=np.int64)}
    for name in ("benchmark", "sample_id", "kind", "stub"):
        arrays[name] = np.array([str(row[name]) for row in values])
    arrays["max_new_tokens"] = np.array([int(row["max_new_tokens"]) for row in values])
    for name in PER_SAMPLE:
        arrays[name] = np.array([row[name] for row in values])
    # wall times go into the summary's timing only: the arrays of a resumed, sharded or Ray
    # run equal an uninterrupted one's
    seconds = np.array([row["seconds"] for row in values], dtype=np.float64)
    arrays["scores"] = arrays["scores"].astype(np.float64)
    arrays["excluded"] = arrays["excluded"].astype(bool)
    return arrays, seconds


def benchmark_summary(arrays: dict[str, np.ndarray], chosen: np.ndarray,
                      methods: tuple[str, ...], config: EvaluateConfig) -> dict[str, Any]:
    """One benchmark's methods rows, metrics, per-category scores and exclusions."""
    samples = [unstub(text) for text in arrays["stub"][chosen]]
    scores, excluded = arrays["scores"][chosen], arrays["excluded"][chosen]
    predictions, ious = arrays["predictions"][chosen], arrays["iou"][chosen]

    def verdicts(k: int, rows: np.ndarray) -> list:
        return [scoring.Verdict(float(scores[i, k]), str(predictions[i, k]),
                                None if np.isnan(ious[i, k]) else float(ious[i, k]))
                for i in rows]

    rows, metrics, per_category, excluded_count = [], {}, [], {}
    for k, method in enumerate(methods):
        valid = np.flatnonzero(~excluded[:, k])
        excluded_count[method] = int(excluded[:, k].sum())
        if valid.size == 0:
            rows.append({"method": method, "accuracy": float("nan"), "ci_low": float("nan"),
                         "ci_high": float("nan"), "n": 0, "p_value_vs_clean": None,
                         "excluded": excluded_count[method]})
            continue
        subset = [samples[i] for i in valid]
        # own data may mix rules (letters and words): its headline is the plain mean score
        how = "mean" if len({s.scorer for s in subset}) > 1 else None
        summary = scoring.summarize(subset, verdicts(k, valid), how)
        clean_summary = scoring.summarize(subset, verdicts(0, valid), how)
        metrics[method] = {key: value for key, value in summary.items() if key != "per_kind"}
        for kind, values in summary["per_kind"].items():
            score = values.get("score", values.get("f1"))
            per_category.append({"method": method, "kind": kind, "score": score,
                                 "n": values["n"], **{key: value for key, value in
                                                      values.items()
                                                      if key not in ("score", "n")}})
        rows.append(method_row(method, summary, clean_summary, subset, verdicts(k, valid),
                               verdicts(0, valid), config, excluded_count[method]))
    return {"n": int(chosen.size), "summary": rows[0].get("summary"), "methods": rows,
            "metrics": metrics, "per_category": per_category, "excluded": excluded_count}


def method_row(method: str, summary: dict, clean_summary: dict, samples, verdicts,
               clean_verdicts, config: EvaluateConfig, excluded: int) -> dict[str, Any]:
    """One ``methods`` row (DESIGN.md's contract) with the paired change from clean."""
    how = summary["summary"]
    headline = stats.Headline.of(how, samples, verdicts)
    clean = stats.Headline.of(how, samples, clean_verdicts)
    ones = np.ones((1, len(samples)))
    for h, s in ((headline, summary), (clean, clean_summary)):  # the vectorised rule is summarize's
        if not np.isclose(h.value(ones)[0], s["score"], rtol=1e-9, atol=1e-12):
            raise AssertionError(f"the {how} headline disagrees with analyses.scoring.summarize")
    (_, ci), (_, delta) = stats.compare([clean, headline], config.n_bootstrap, config.seed)
    p, test = stats.paired_p(clean.scores, headline.scores, config.seed)
    row = {"method": method, "accuracy": float(summary["score"]), "ci_low": ci[0],
           "ci_high": ci[1], "n": len(samples), "p_value_vs_clean": None if method == "clean"
           else p, "summary": how, "ci": "bootstrap"}
    if how == "mean" and stats.binary(headline.scores) and stats.binary(clean.scores):
        correct = np.stack([clean.scores == 1.0, headline.scores == 1.0], axis=1)
        reference = method_rows(correct, ["clean", method])[1 if method != "clean" else 0]
        row.update({key: reference[key] for key in ("accuracy", "ci_low", "ci_high", "n",
                                                    "correct")}, ci="wilson")
        if method != "clean":
            row["p_value_vs_clean"] = reference["p_value_vs_clean"]
    clean_score = float(clean_summary["score"])
    row.update({"delta": float(summary["score"]) - clean_score,
                "delta_ci_low": None if method == "clean" else delta[0],
                "delta_ci_high": None if method == "clean" else delta[1],
                "clean_on_same_samples": clean_score, "test": None if method == "clean"
                else test, "excluded": excluded})
    return row


def summarize_run(rows: Records, config: EvaluateConfig, summary: dict[str, Any]) -> RunResult:
    """The run's result (``summary``: the provenance keys, completed here)."""
    arrays, seconds = stack(rows)
    methods = tuple(config.methods)
    benchmarks = list(dict.fromkeys(arrays["benchmark"].tolist()))
    results = {name: benchmark_summary(arrays, np.flatnonzero(arrays["benchmark"] == name),
                                       methods, config)
               for name in benchmarks}
    summary.update({
        "axes": {name: ["sample", "method"] for name in PER_SAMPLE},
        "method_names": list(methods),
        "benchmarks": benchmarks,
        "results": results,
        "methods": [{"benchmark": name, **row} for name in benchmarks
                    for row in results[name]["methods"]],
        "prompts": summary["data"].get("prompt"),
        "pixel_budget": summary["model"].get("pixels"),
        "timing": {"seconds_per_sample_by_method": {
            method: float(seconds[:, k].mean()) for k, method in enumerate(methods)}},
    })
    return RunResult(summary, arrays)


def headline_table(summary: Mapping[str, Any]) -> dict[str, dict[str, dict]]:
    """method -> benchmark -> its ``methods`` row (what the tables show)."""
    table: dict[str, dict[str, dict]] = {method: {} for method in summary["method_names"]}
    for name in summary["benchmarks"]:
        for row in summary["results"][name]["methods"]:
            table[row["method"]][name] = row
    return table
