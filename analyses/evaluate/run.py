"""Every benchmark of a run under every method, on the same samples, graded by
:func:`analyses.scoring.judge`: an analysis of the shared runner (:mod:`analyses.runner`), so
``--resume``, ``--shard`` + merge and ``--backend ray`` work as for every analysis.

Passes: ``early`` (only with ``contrastive``: every sample's distances from the late layer's
map, for the automatic early-layer rule; measured whole by every shard so shards agree), then
``samples``: per sample, one reply per method, each graded. A reply's token budget is the
benchmark's (:func:`max_new_tokens`). Box replies (RefCOCO) are read in the frame of the
model's input (:func:`analyses.scoring.frame_for`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from analyses import scoring
from analyses.contrastive_attention.contrast import early_candidates, last_quarter
from analyses.data import Sample
from analyses.data.suite import benchmark_of
from analyses.evaluate import methods as m
from analyses.evaluate.config import EvaluateConfig, max_new_tokens, stub
from analyses.grading import replies as greedy_replies
from analyses.results import RunResult, provenance
from analyses.runner import Analysis, Pass, Plan, RunInfo
from analyses.runner.spec import Records, first_readable
from probes.errors import UserError

ANALYSIS = "evaluate"
EARLY_PASS, SAMPLES = "early", "samples"
BOX_SCORERS = ("refcoco",)  # replies that are boxes: graded in the model's frame


def grade(reply: str | None, sample: Sample, loaded) -> tuple[float, str, float]:
    """(score, prediction, IoU or NaN) of one reply; NaN score for no reply (excluded)."""
    if reply is None:
        return float("nan"), "", float("nan")
    frame = (scoring.frame_for(loaded.adapter, sample.image.size)
             if sample.scorer in BOX_SCORERS else None)
    verdict = scoring.judge(reply, sample, frame)
    return verdict.score, verdict.prediction, (float("nan") if verdict.iou is None
                                               else verdict.iou)


class Evaluate(Analysis):
    """See the module docstring."""

    name = ANALYSIS

    def __init__(self, config: EvaluateConfig | None = None) -> None:
        self.config = config or EvaluateConfig()
        self.num_layers: int | None = None
        main = Pass(SAMPLES, batch=config.batch_size, description="evaluate")
        self.passes = ((Pass(EARLY_PASS, scope="all", description="maps (early layer rule)"),
                        main) if "contrastive" in config.methods else (main,))

    @classmethod
    def from_recorded(cls, recorded: dict[str, Any]) -> Evaluate:
        return cls(EvaluateConfig(methods=tuple(recorded["methods"]),
                                  max_new_tokens=recorded["max_new_tokens"],
                                  batch_size=recorded["batch_size"],
                                  n_bootstrap=recorded["n_bootstrap"], seed=recorded["seed"],
                                  vif_sha256=dict(recorded.get("vif_sha256", {}))))

    def recorded(self) -> dict[str, Any]:
        return self.config.recorded()

    def validate(self, num_layers: int) -> None:
        self.config.validate()
        self.num_layers = num_layers
        if "contrastive" in self.config.methods and not early_candidates(num_layers - 1,
                                                                          num_layers):
            raise UserError(f"contrastive needs an early layer before the last; this model has "
                            f"{num_layers} layer(s).")

    def warm_up(self, loaded, dataset) -> None:
        """Refuse box benchmarks for a family whose box replies fusionlens cannot read, once,
        before any sample (from the first sample of each benchmark)."""
        for part in getattr(dataset, "parts", [dataset]):
            first = first_readable(part)
            if first is not None and first.scorer in BOX_SCORERS:
                scoring.frame_for(loaded.adapter, first.image.size)

    def late_layer(self) -> int:
        if self.num_layers is None:
            raise RuntimeError("validate(num_layers) comes before the plan")
        return self.num_layers - 1

    def plan(self, step: str, candidates: list[int], earlier: Mapping[str, Records]) -> Plan:
        if step == EARLY_PASS:
            return Plan(list(candidates))
        return Plan(list(candidates), self.contrastive_layers(earlier.get(EARLY_PASS, {})))

    def contrastive_layers(self, early: Records) -> dict[str, Any]:
        """The refinement's layers: late = last, refine = the last quarter, early = the
        candidate whose maps lie farthest (mean total variation) from the late layer's."""
        if "contrastive" not in self.config.methods:
            return {}
        late = self.late_layer()
        if not early:
            raise UserError("no sample's maps could be recorded for contrastive's early-layer "
                            "rule; check the failed samples.")
        distances = np.stack([row["distances"] for row in early.values()]).mean(0)
        candidates = early_candidates(late, late + 1)
        chosen = max(candidates, key=lambda layer: (distances[layer], -layer))
        return {"late": late, "early": int(chosen),
                "refine": [int(layer) for layer in last_quarter(late + 1)],
                "early_distances": {int(layer): float(distances[layer])
                                    for layer in candidates}}

    def measure(self, step, loaded, samples, indices, context) -> list[dict[str, Any]]:
        if step == EARLY_PASS:
            return [{"distances": m.early_distances(loaded, sample, self.late_layer())}
                    for sample in samples]
        return self._replies(loaded, samples, context)

    def _replies(self, loaded, samples, context) -> list[dict[str, Any]]:
        methods = self.config.methods
        budgets = [max_new_tokens(s, self.config.max_new_tokens) for s in samples]
        started = time.perf_counter()
        clean = greedy_replies(loaded, samples, budgets)
        clean_seconds = (time.perf_counter() - started) / len(samples)
        layers = (m.ContrastiveLayers(context["late"], context["early"],
                                      tuple(context["refine"])) if context else None)
        records = []
        for sample, budget, clean_reply in zip(samples, budgets, clean):
            replies, seconds = [clean_reply], [clean_seconds]
            for method in methods[1:]:
                started = time.perf_counter()
                if method == "aif":
                    reply = m.aif_reply(loaded, sample, budget)
                elif method == "contrastive":
                    reply = m.contrastive_reply(loaded, sample, layers, budget)
                elif method == "oracle":
                    reply = m.oracle_reply(loaded, sample, budget)
                else:  # vif:PATH
                    reply = m.vif_reply(loaded, sample, method[4:], budget)
                replies.append(reply)
                seconds.append(time.perf_counter() - started)
            graded = [grade(reply, sample, loaded) for reply in replies]
            records.append({
                "benchmark": benchmark_of(sample), "sample_id": sample.id, "kind": sample.kind,
                "stub": stub(sample), "max_new_tokens": budget,
                "replies": [reply or "" for reply in replies],
                "excluded": [reply is None for reply in replies],
                "scores": [g[0] for g in graded], "predictions": [g[1] for g in graded],
                "iou": [g[2] for g in graded], "seconds": seconds})
        return records

    def aggregate(self, records: Mapping[str, Records], info: RunInfo) -> RunResult:
        from analyses.evaluate.summary import summarize_run

        rows = records[SAMPLES]
        self.num_layers = info.num_layers  # a merge aggregates without validating first
        layers = self.contrastive_layers(records.get(EARLY_PASS, {}))
        summary = provenance(ANALYSIS, info.model, info.data, len(rows), self.recorded(),
                             self.config.seed)
        result = summarize_run(rows, self.config, summary)
        result.summary["contrastive_layers"] = layers or None
        result.summary["timing"] = {**info.timing, **result.summary["timing"]}
        return result

    def table(self, summary) -> str:
        from analyses.evaluate.table import text_table

        return text_table(summary)
