"""Contrastive attention as an analysis of the shared runner (:mod:`analyses.runner`): each
sample's early, late and contrastive maps scored against the relevant region, and the
refinement (suppress the least-shifted image tokens, decode again) against the clean answer
and a random-suppression control of the same size.

Two passes over the data when the early layer is chosen automatically: the rule reads every
sample's maps first (the ``early`` pass, measured whole by every shard so that shards agree on
the layer), then the main pass measures with the chosen layers, which each worker gets in the
plan's context. Per sample the random control draws its patches from
``default_rng([seed, sample index])``, so a record depends only on (model, sample, layers), and
a resumed run, shards merged, or a Ray run give the files of one uninterrupted run.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from analyses.attention_evolution.maps import SERIES, record_sample
from analyses.attention_evolution.run import ExampleSamples, example_geometry
from analyses.attention_evolution.scores import auroc, pointing
from analyses.contrastive_attention.contrast import (
    choose_early_layer,
    contrastive_map,
    early_candidates,
    last_quarter,
    least_shift,
)
from analyses.contrastive_attention.refine import MODES, Suppression, refined_generate
from analyses.grading import is_correct
from analyses.results import RunResult, provenance
from analyses.runner import Analysis, LocalBackend, Pass, Plan, RunInfo, RunOptions, run
from analyses.runner.spec import Records
from analyses.stats import bootstrap_mean_ci, mcnemar_exact, method_rows, sign_flip_p_values
from probes.errors import UserError
from probes.masking import check_layers
from probes.models.answer import answer_text
from probes.models.loading import LoadedModel

ANALYSIS = "contrastive_attention"
MAPS = ("late", "early", "contrastive")
LOCALISATION = ("auroc", "pointing")
METHODS = ("clean", "refined", "random_control")
EARLY_PASS = "early"  # the first pass: every sample's maps, for the early-layer rule
SAMPLES = "samples"  # the main pass: maps, localisation, refinement


@dataclass(frozen=True)
class ContrastiveConfig:
    """What decides the numbers (all of it goes into ``summary.json``)."""

    series: str = "last"  # whose attention: "last" (the answer position) or "question"
    late_layer: int | None = None  # None: the model's last layer
    early_layer: int | None = None  # None: a layer-masking run's, else the automatic rule
    refine_layers: tuple[int, ...] | None = None  # None: review layers, else the last quarter
    mode: str = "soft"  # "soft": bias the logits; "hard": cut image_subset->text
    bias: float = -2.0  # soft mode's logit bias on the suppressed tokens
    ratio: float | None = 0.5  # share of the image patches to suppress
    threshold: float | None = None  # or: suppress contrast < threshold / patches
    refine: bool = True  # decode again (False: localisation only)
    max_new_tokens: int = 4
    examples: int = 4
    n_bootstrap: int = 2000
    seed: int = 0

    def validate(self, num_layers: int) -> None:
        if self.series not in SERIES:
            raise UserError(f"--series must be one of {', '.join(SERIES)}, not {self.series!r}.")
        if self.mode not in MODES:
            raise UserError(f"--mode must be one of {', '.join(MODES)}, not {self.mode!r}.")
        if (self.ratio is None) == (self.threshold is None):
            raise UserError("give either --ratio or --threshold for the suppressed tokens.")
        if self.ratio is not None and not 0 <= self.ratio < 1:
            raise UserError(f"--ratio must lie in [0, 1), not {self.ratio}.")
        if self.mode == "soft" and self.bias > 0:
            raise UserError(f"--bias must be 0 or negative to suppress, not {self.bias}.")
        if self.max_new_tokens < 1:
            raise UserError("--max-new-tokens must be at least 1.")
        for layers in ([self.late_layer], [self.early_layer], self.refine_layers or ()):
            check_layers([layer for layer in layers if layer is not None], num_layers)
        late = num_layers - 1 if self.late_layer is None else self.late_layer
        if self.early_layer is not None and self.early_layer >= late:
            raise UserError(f"the early layer ({self.early_layer}) must come before the late "
                            f"layer ({late}).")
        if self.early_layer is None and not early_candidates(late, num_layers):
            raise UserError(f"no early layer can precede late layer {late}; choose a later "
                            "--late-layer.")


def read_layer_masking(directory: str | Path, num_layers: int) -> dict[str, Any]:
    """The fusion layers and review of a saved layer-masking run of a model of this depth."""
    path = Path(directory) / "summary.json"
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read a layer-masking result at {path}: run "
                        "`python -m analyses.layer_masking --out DIR` first.") from err
    if summary.get("analysis") != "layer_masking" or "fusion_layers" not in summary:
        raise UserError(f"{path} is not a layer-masking result (its analysis is "
                        f"{summary.get('analysis')!r}).")
    if summary.get("num_layers") != num_layers:
        raise UserError(f"the layer-masking run at {directory} is of a model with "
                        f"{summary.get('num_layers')} layers, this model has {num_layers}.")
    return {"directory": str(directory), "model": summary["model"]["id"],
            "fusion_layers": list(summary["fusion_layers"]),
            "review": dict(summary.get("review", {"detected": False, "layers": []}))}


def resolve_layers(config: ContrastiveConfig, num_layers: int,
                   masking: dict[str, Any] | None) -> dict[str, Any]:
    """Late layer, early layer (or None: chosen later from the maps) and refinement layers,
    each with the rule that gave it."""
    late = num_layers - 1 if config.late_layer is None else config.late_layer
    early, early_rule = config.early_layer, "given (--early-layer)"
    if early is None and masking is not None:
        before = [layer for layer in masking["fusion_layers"] if layer < late]
        if before:
            early, early_rule = min(before), "first fusion layer of the layer-masking run"
    if early is None:
        early_rule = ("automatic: among layers < ceil(L/2) before the late layer, the largest "
                      "mean total-variation distance from the late layer's map")
    if config.refine_layers is not None:
        refine, refine_rule = sorted(set(config.refine_layers)), "given (--refine-layers)"
    elif masking is not None and masking["review"].get("detected"):
        refine, refine_rule = list(masking["review"]["layers"]), "review layers of the layer-masking run"
    else:
        refine, refine_rule = last_quarter(num_layers), "last quarter of the layers (L - ceil(L/4) on)"
    return {"late": late, "early": early, "early_rule": early_rule, "refine": refine,
            "refine_rule": refine_rule, "early_distances": {}}


class ContrastiveAttention(Analysis):
    """The ``early`` pass (when the early layer is left to the automatic rule), then the main
    pass with the late, early and refinement layers in the plan's context."""

    name = ANALYSIS

    def __init__(self, config: ContrastiveConfig = ContrastiveConfig(),
                 layer_masking: str | Path | None = None,
                 masking: dict[str, Any] | None = None) -> None:
        self.config = config
        self.layer_masking = None if layer_masking is None else str(layer_masking)
        self.masking = masking  # the layer-masking run's layers (read by validate)
        self.num_layers: int | None = None  # the model's (set by validate, for the plan)
        main = Pass(SAMPLES, description="contrastive attention")
        self.passes = (main,) if config.early_layer is not None else (
            Pass(EARLY_PASS, scope="all", description="maps (early layer rule)"), main)

    @classmethod
    def from_recorded(cls, recorded: dict[str, Any]) -> ContrastiveAttention:
        values = dict(recorded)
        layer_masking, masking = values.pop("layer_masking", None), values.pop("masking", None)
        if values.get("refine_layers") is not None:
            values["refine_layers"] = tuple(values["refine_layers"])
        return cls(ContrastiveConfig(**values), layer_masking, masking)

    def config_record(self) -> dict[str, Any]:
        """The config as ``summary.json`` shows it."""
        return {**asdict(self.config), "layer_masking": self.layer_masking}

    def recorded(self) -> dict[str, Any]:
        # the layer-masking run's layers too: they decide the numbers, and a merge needs them
        return {**self.config_record(), "masking": self.masking}

    def validate(self, num_layers: int) -> None:
        self.config.validate(num_layers)
        if self.layer_masking is not None and self.masking is None:
            self.masking = read_layer_masking(self.layer_masking, num_layers)
        self.num_layers = num_layers

    def layers(self, num_layers: int, early_maps: Records) -> dict[str, Any]:
        """:func:`resolve_layers`, with the automatic early layer chosen from the ``early``
        pass's maps where no other rule gave one."""
        layers = resolve_layers(self.config, num_layers, self.masking)
        if layers["early"] is None:
            if not early_maps:
                raise UserError("no sample's maps could be recorded for the early-layer rule; "
                                "give --early-layer or check the failed samples.")
            layers["early"], layers["early_distances"] = choose_early_layer(
                np.stack([row["maps"] for row in early_maps.values()]), layers["late"])
        return layers

    def plan(self, step: str, candidates: list[int], earlier: Mapping[str, Records]) -> Plan:
        if self.num_layers is None:
            raise RuntimeError("validate(num_layers) comes before the plan")
        if step == EARLY_PASS:  # needed only when neither the config nor layer masking gives it
            needed = resolve_layers(self.config, self.num_layers, self.masking)["early"] is None
            return Plan(list(candidates) if needed else [])
        layers = self.layers(self.num_layers, earlier.get(EARLY_PASS, {}))
        return Plan(list(candidates), {"late": int(layers["late"]), "early": int(layers["early"]),
                                       "refine": [int(layer) for layer in layers["refine"]]})

    def measure(self, step, loaded, samples, indices, context) -> list[dict[str, Any]]:
        series = SERIES.index(self.config.series)
        if step == EARLY_PASS:
            return [{"maps": record_sample(loaded, sample, keep_clean=False)[0].maps[series]}
                    for sample in samples]
        return [self._sample_values(loaded, sample, index, series, context)
                for sample, index in zip(samples, indices)]

    def _sample_values(self, loaded, sample, index: int, series: int,
                       layers: Mapping[str, Any]) -> dict[str, Any]:
        config = self.config
        sample_maps, clean, groups, inputs = record_sample(loaded, sample)
        maps = sample_maps.maps[series]  # [layers, patches]
        contrast = contrastive_map(maps[layers["late"]], maps[layers["early"]])
        relevant = sample_maps.relevant
        values = {"sample_id": sample.id, "kind": sample.kind, "maps": maps,
                  "relevant": relevant, "cells": sample_maps.cells,
                  "example_grid": example_geometry(groups),
                  "localisation": [[score(m, relevant) for score in (auroc, pointing)]
                                   for m in (maps[layers["late"]], maps[layers["early"]],
                                             contrast)]}
        chosen = least_shift(contrast, config.ratio, config.threshold)
        rng = np.random.default_rng([config.seed, index])
        drawn = np.sort(rng.choice(contrast.size, size=chosen.size, replace=False))
        values["suppressed"] = np.isin(np.arange(contrast.size), chosen)
        values["random"] = np.isin(np.arange(contrast.size), drawn)
        if config.refine:
            answers = []
            for patches in (None, chosen, drawn):
                suppression = None if patches is None else Suppression(
                    groups.image_patches[patches], tuple(layers["refine"]), config.mode,
                    config.bias)
                generation = refined_generate(loaded, inputs, suppression, clean, groups,
                                              config.max_new_tokens)
                answers.append(answer_text(loaded, generation.tokens))
            values["answers"] = answers
            values["correct"] = [is_correct(answer, sample) for answer in answers]
        return values

    def aggregate(self, records: Mapping[str, Records], info: RunInfo) -> RunResult:
        config, rows = self.config, records[SAMPLES]
        layers = self.layers(info.num_layers, records.get(EARLY_PASS, {}))
        values = list(rows.values())
        arrays = {
            "sample_index": np.array(list(rows), dtype=np.int64),
            "sample_id": np.array([str(row["sample_id"]) for row in values]),
            "kind": np.array([str(row["kind"]) for row in values]),
            "maps": np.stack([row["maps"] for row in values]).astype(np.float32),
            "relevant": np.stack([row["relevant"] for row in values]),
            "localisation": np.array([row["localisation"] for row in values], dtype=np.float64),
            "suppressed": np.stack([row["suppressed"] for row in values]),
            "random_suppressed": np.stack([row["random"] for row in values]),
            "cells": values[-1]["cells"],
            **ExampleSamples.choose(rows, info.dataset, config.examples).arrays(),
        }
        if config.refine:
            arrays["correct"] = np.array([row["correct"] for row in values], dtype=bool)
            arrays["answers"] = np.array([row["answers"] for row in values])
        summary = provenance(ANALYSIS, info.model, info.data, len(rows), self.config_record(),
                             config.seed)
        summary.update(summarize(arrays, config, layers, self.masking, info.num_layers))
        summary["timing"] = info.timing
        return RunResult(summary, arrays)

    def table(self, summary) -> str:
        from analyses.contrastive_attention.table import format_table

        return format_table(summary)


def run_contrastive_attention(loaded: LoadedModel, dataset,
                              config: ContrastiveConfig = ContrastiveConfig(),
                              layer_masking: str | Path | None = None,
                              progress: bool = False, out: Path | None = None,
                              resume: bool = False, shard: tuple[int, int] = (0, 1),
                              on_sample: Callable[[int], None] | None = None) -> RunResult:
    """Localisation of the contrastive map and, with ``config.refine``, the refinement's
    accuracy against clean and the random control (see the module docstring), in this process
    (see :mod:`analyses.runner` for what ``out``, ``resume``, ``shard`` and ``on_sample`` do:
    ``on_sample`` counts the main pass's samples; the caller saves the result)."""
    return run(ContrastiveAttention(config, layer_masking), LocalBackend(loaded), dataset,
               RunOptions(out=out, resume=resume, shard=shard, progress=progress,
                          on_sample=on_sample))


def localisation_rows(arrays: dict[str, np.ndarray], n_bootstrap: int, seed: int) -> tuple[list, list]:
    """Per map and score: mean with 95% bootstrap CI over samples with a region; and the
    paired comparisons contrastive - late and contrastive - early (bootstrap CI of the mean
    difference, one-sided sign-flip p of "contrastive is better")."""
    values = arrays["localisation"]  # [samples, maps, scores]
    defined = np.isfinite(values).all((1, 2))
    rows, comparisons = [], []
    if not defined.any():
        return rows, comparisons
    values = values[defined]
    mean, low, high = bootstrap_mean_ci(values, n_bootstrap, seed)
    for m, name in enumerate(MAPS):
        for s, score in enumerate(LOCALISATION):
            rows.append({"map": name, "metric": score, "mean": float(mean[m, s]),
                         "ci_low": float(low[m, s]), "ci_high": float(high[m, s]),
                         "n": int(defined.sum())})
    for other in ("late", "early"):
        difference = values[:, 2] - values[:, MAPS.index(other)]
        d_mean, d_low, d_high = bootstrap_mean_ci(difference, n_bootstrap, seed)
        p = sign_flip_p_values(difference, seed=seed)
        for s, score in enumerate(LOCALISATION):
            comparisons.append({"metric": score, "map": "contrastive", "versus": other,
                                "difference": float(d_mean[s]), "ci_low": float(d_low[s]),
                                "ci_high": float(d_high[s]), "p_one_sided": float(p[s]),
                                "n": int(defined.sum())})
    return rows, comparisons


def summarize(arrays: dict[str, np.ndarray], config: ContrastiveConfig, layers: dict[str, Any],
              masking: dict[str, Any] | None, num_layers: int) -> dict[str, Any]:
    localisation, comparisons = localisation_rows(arrays, config.n_bootstrap, config.seed)
    relevant = arrays["relevant"]
    per_layer = []
    maps = arrays["maps"].astype(np.float64)
    with_region = relevant.any(1) & ~relevant.all(1)
    if with_region.any():
        scores = np.array([[auroc(maps[i, layer], relevant[i]) for layer in range(num_layers)]
                           for i in np.flatnonzero(with_region)])
        mean, low, high = bootstrap_mean_ci(scores, config.n_bootstrap, config.seed)
        per_layer = [{"series": config.series, "metric": "auroc", "layer": layer,
                      "mean": float(mean[layer]), "ci_low": float(low[layer]),
                      "ci_high": float(high[layer]), "n": int(with_region.sum())}
                     for layer in range(num_layers)]
    summary: dict[str, Any] = {
        "axes": {"maps": ["sample", "layer", "patch"], "relevant": ["sample", "patch"],
                 "localisation": ["sample", "map", "metric"], "suppressed": ["sample", "patch"],
                 "random_suppressed": ["sample", "patch"], "correct": ["sample", "method"],
                 "answers": ["sample", "method"]},
        "num_layers": num_layers,
        "layers": layers,
        "layer_masking": masking,
        "maps": list(MAPS),
        "per_layer": per_layer,
        "localisation": localisation,
        "comparisons": comparisons,
        "suppressed_per_sample": float(arrays["suppressed"].sum(1).mean()),
        "rules": {
            "contrastive": "late map - early map, each normalised over the image patches",
            "early": layers["early_rule"],
            "refine_layers": layers["refine_rule"],
            "suppressed": (f"the round({config.ratio} x patches) patches with the lowest "
                           "contrastive value" if config.ratio is not None else
                           f"patches with contrastive value < {config.threshold} / patches"),
            "suppression": ("hard: edges image_subset->text cut (question, last, generated)"
                            if config.mode == "hard" else
                            f"soft: logit bias {config.bias} on image_subset for the text "
                            "(question, last, generated)"),
            "control": "the same number of image patches drawn uniformly per sample, same "
                       "layers and suppression",
            "tests": "accuracy: Wilson 95% CIs, exact two-sided McNemar p vs clean; "
                     "localisation: bootstrap 95% CIs, one-sided paired sign-flip p",
        },
    }
    if "correct" in arrays:
        correct = arrays["correct"]
        summary["methods"] = method_rows(correct, METHODS)
        summary["refined_vs_random_p"] = mcnemar_exact(correct[:, 1], correct[:, 2])
        summary["answers_changed"] = {method: int((arrays["answers"][:, m] != arrays["answers"][:, 0]).sum())
                                      for m, method in enumerate(METHODS) if m}
        summary["methods_by_kind"] = [
            {"kind": kind, **{method: float(correct[arrays["kind"] == kind, m].mean())
                              for m, method in enumerate(METHODS)},
             "n": int((arrays["kind"] == kind).sum())}
            for kind in sorted(set(arrays["kind"].tolist()))]
    return summary
