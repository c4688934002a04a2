"""An attenuation run over a dataset: the per-sample curves, their means with bootstrap CIs for
all samples and for small vs large targets, and the result (``summary.json`` + ``arrays.npz``).

**Small vs large.** A target is *small* when its pixels cover less than ``small_cells`` patch
cells of the image's (first) patch grid, *large* otherwise; questions about nothing visible
(a count of zero) are in neither. On the tiny model (8x8 grid on a 128 px canvas) one cell is
256 px, about the median target of the fine-grained set.

**Attenuation, by a stated rule.** For each curve and subset: the layer where the mean peaks,
the peak, the last layer's mean, and ``retained`` = last / peak (1 = nothing lost after the
peak). Small vs large is compared per layer by the difference of means (small - large) with a
bootstrap CI of the difference (samples resampled within each group).

**Runner.** This is an analysis of the shared runner (:mod:`analyses.runner`): each sample's
curves depend only on (model, sample), so a resumed run, shards merged or a Ray run give the
files of an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from analyses.attenuation.measure import METRICS, measure_sample
from analyses.results import RunResult, provenance, skip
from analyses.runner import Analysis, LocalBackend, Pass, RunInfo, RunOptions, run
from analyses.runner.spec import Records
from analyses.stats import bootstrap_mean_ci, wilson_interval
from probes.errors import UserError
from probes.models.loading import LoadedModel

ANALYSIS = "attenuation"
SUBSETS = ("all", "small", "large")
CURVES = ("image_share(last)", "region_share(last)", "image_value_ratio(last)", "answer_prob")


@dataclass(frozen=True)
class AttenuationConfig:
    """What decides the numbers (all of it goes into ``summary.json``)."""

    small_cells: float = 1.0  # targets under this many patch cells of area are "small"
    seed: int = 0
    n_bootstrap: int = 2000

    def validate(self) -> None:
        if not self.small_cells > 0:
            raise UserError(f"--small-cells must be positive, not {self.small_cells}.")
        if self.n_bootstrap < 1:
            raise UserError(f"--bootstrap must be at least 1, not {self.n_bootstrap}.")


def grid_cells(loaded: LoadedModel, sample) -> int:
    """Cells of the first patch grid the sample's image becomes."""
    grid = loaded.adapter.image_layout(sample.image.size).grids[0]
    return grid.rows * grid.cols


class Attenuation(Analysis):
    """One clean forward per sample (its curves), then the means, subsets and findings."""

    name = ANALYSIS
    passes = (Pass("samples", description="attenuation"),)

    def __init__(self, config: AttenuationConfig = AttenuationConfig()) -> None:
        self.config = config

    @classmethod
    def from_recorded(cls, recorded: dict[str, Any]) -> Attenuation:
        return cls(AttenuationConfig(**recorded))

    def recorded(self) -> dict[str, Any]:
        return asdict(self.config)

    def validate(self, num_layers: int) -> None:
        self.config.validate()

    def measure(self, step, loaded, samples, indices, context) -> list[dict[str, Any]]:
        records = []
        for sample in samples:
            measured = measure_sample(loaded, sample)
            records.append({
                "curves": measured.values, "answer_token": measured.answer_token,
                "correct": measured.correct,
                "target_cells": measured.target_area * grid_cells(loaded, sample),
                "region_fraction": measured.region_fraction, "kind": sample.kind})
        return records

    def aggregate(self, records: Mapping[str, Records], info: RunInfo) -> RunResult:
        rows = list(records["samples"].values())
        arrays = {
            "curves": np.stack([row["curves"] for row in rows]),
            "answer_token": np.array([row["answer_token"] for row in rows], dtype=np.int64),
            "correct": np.array([row["correct"] for row in rows], dtype=bool),
            "target_cells": np.array([row["target_cells"] for row in rows], dtype=np.float64),
            "region_fraction": np.array([row["region_fraction"] for row in rows],
                                        dtype=np.float64),
            "kind": np.array([str(row["kind"]) for row in rows]),
        }
        return summarize(arrays, self.config, info.model, info.data, info.num_layers,
                         info.timing)

    def table(self, summary) -> str:
        from analyses.attenuation.table import format_table

        return format_table(summary)


def run_attenuation(loaded: LoadedModel, dataset, config: AttenuationConfig = AttenuationConfig(),
                    progress: bool = False, out: Path | None = None, resume: bool = False,
                    shard: tuple[int, int] = (0, 1),
                    on_sample: Callable[[int], None] | None = None) -> RunResult:
    """Measure every sample of ``dataset`` and summarise, in this process (see
    :mod:`analyses.runner` for what ``out``, ``resume``, ``shard`` and ``on_sample`` do; the
    caller saves the result)."""
    return run(Attenuation(config), LocalBackend(loaded), dataset,
               RunOptions(out=out, resume=resume, shard=shard, progress=progress,
                          on_sample=on_sample))


def subset_masks(target_cells: np.ndarray, small_cells: float) -> dict[str, np.ndarray]:
    visible = target_cells > 0
    return {"all": np.ones(target_cells.size, dtype=bool),
            "small": visible & (target_cells < small_cells),
            "large": visible & (target_cells >= small_cells)}


def _mean_ci(values: np.ndarray, n_bootstrap: int, seed: int):
    """Per layer: mean, CI and n over the samples with a finite value ([samples, layers])."""
    rows = []
    for layer in range(values.shape[1]):
        column = values[:, layer]
        column = column[np.isfinite(column)]
        mean, low, high = bootstrap_mean_ci(column, n_bootstrap, seed)
        rows.append((float(mean), float(low), float(high), int(column.size)))
    return rows


def difference_ci(first: np.ndarray, second: np.ndarray, n_bootstrap: int, seed: int,
                  level: float = 0.95) -> tuple[float, float, float]:
    """mean(first) - mean(second) of two independent samples, with a percentile-bootstrap CI
    (each group resampled within itself). NaN if either is empty.

    >>> round(difference_ci(np.array([2.0, 3.0, 4.0]), np.array([1.0, 1.0]), 500, 0)[0], 6)
    2.0
    """
    if first.size == 0 or second.size == 0:
        return (np.nan, np.nan, np.nan)
    rng = np.random.default_rng(seed)
    a = rng.multinomial(first.size, np.full(first.size, 1 / first.size), n_bootstrap) @ first
    b = rng.multinomial(second.size, np.full(second.size, 1 / second.size), n_bootstrap) @ second
    differences = a / first.size - b / second.size
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(differences, [tail, 100 - tail])
    return (float(first.mean() - second.mean()), float(low), float(high))


def attenuation_findings(per_layer: list[dict]) -> list[dict]:
    """Peak layer, peak, last and retained = last / peak, per (curve, subset)."""
    found = []
    for series in CURVES:
        for subset in SUBSETS:
            rows = sorted((r for r in per_layer if r["series"] == series and r["subset"] == subset
                           and np.isfinite(r["mean"])), key=lambda r: r["layer"])
            if not rows:
                continue
            means = np.array([r["mean"] for r in rows])
            peak = int(np.argmax(means))
            found.append({"series": series, "subset": subset, "peak_layer": rows[peak]["layer"],
                          "peak": float(means[peak]), "last": float(means[-1]),
                          "retained": float(means[-1] / means[peak]) if means[peak] > 0
                          else float("nan"), "n": rows[-1]["n"]})
    return found


def skipped_parts(masks: dict[str, np.ndarray], small_cells: float) -> list[tuple[str, str]]:
    """(part, reason) for each part of the analysis the data gives nothing to: the region
    shares without any visible target, a subset without a sample, the small - large
    comparison without both."""
    if not (masks["small"].any() or masks["large"].any()):
        none = "no sample has a visible target: a box or a mask"
        return [("region_share", f"{none}; its rows are NaN with n = 0"),
                ("small and large subsets", none), ("small_minus_large", none)]
    parts = [(f"{subset} subset", f"no target covers {relation} {small_cells:g} patch cells")
             for subset, relation in (("small", "fewer than"), ("large", "at least"))
             if not masks[subset].any()]
    if parts:
        parts.append(("small_minus_large", "it needs samples in both subsets"))
    return parts


def summarize(arrays: dict[str, np.ndarray], config: AttenuationConfig, model: dict, data: dict,
              num_layers: int, timing: dict[str, Any]) -> RunResult:
    curves = arrays["curves"]
    masks = subset_masks(arrays["target_cells"], config.small_cells)
    summary = provenance(ANALYSIS, model, data, int(curves.shape[0]), asdict(config), config.seed)
    per_layer, comparison, accuracy = [], [], []
    for part, reason in skipped_parts(masks, config.small_cells):
        skip(summary, part, reason)
    for subset, mask in masks.items():
        if not mask.any():
            continue
        hits = int(arrays["correct"][mask].sum())
        low, high = wilson_interval(hits, int(mask.sum()))
        accuracy.append({"subset": subset, "accuracy": hits / int(mask.sum()), "ci_low": low,
                         "ci_high": high, "n": int(mask.sum())})
        for m, metric in enumerate(METRICS):
            for layer, (mean, low, high, n) in enumerate(
                    _mean_ci(curves[mask, m], config.n_bootstrap, config.seed)):
                per_layer.append({"series": metric, "subset": subset, "layer": layer,
                                  "mean": mean, "ci_low": low, "ci_high": high, "n": n})
    if masks["small"].any() and masks["large"].any():
        for m, metric in enumerate(METRICS):
            for layer in range(num_layers):
                small, large = (curves[masks[s], m, layer] for s in ("small", "large"))
                difference, low, high = difference_ci(small[np.isfinite(small)],
                                                      large[np.isfinite(large)],
                                                      config.n_bootstrap, config.seed)
                comparison.append({"series": metric, "layer": layer, "difference": difference,
                                   "ci_low": low, "ci_high": high})
    summary.update({
        "axes": {"curves": ["sample", "metric", "layer"]},
        "metrics": list(METRICS),
        "num_layers": num_layers,
        "subsets": {name: int(mask.sum()) for name, mask in masks.items()},
        "accuracy": accuracy,
        "region_chance": {name: float(np.nanmean(arrays["region_fraction"][mask]))
                          if np.isfinite(arrays["region_fraction"][mask]).any() else None
                          for name, mask in masks.items()},
        "per_layer": per_layer,
        "small_minus_large": comparison,
        "attenuation": attenuation_findings(per_layer),
        "timing": timing,
    })
    return RunResult(summary, arrays)
