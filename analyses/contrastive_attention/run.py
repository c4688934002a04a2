"""A contrastive-attention run: each sample's early, late and contrastive maps scored against
the relevant region, and the refinement (suppress the least-shifted image tokens, decode again)
against the clean answer and a random-suppression control of the same size.

Two passes over the data when the early layer is chosen automatically (the rule reads every
sample's maps first), one otherwise. Per sample the random control draws its patches from
``default_rng([seed, sample index])``, so a run is deterministic; a resumed run (both passes'
finished samples kept in ``out/.partial``, see :mod:`analyses.resume`) gives the files of an
uninterrupted one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from analyses.attention_evolution.maps import SERIES, record_sample
from analyses.attention_evolution.run import ExampleSamples, example_geometry, thumbnail
from analyses.attention_evolution.scores import auroc, pointing
from analyses.common import data_record, model_record
from analyses.contrastive_attention.contrast import (
    choose_early_layer,
    contrastive_map,
    early_candidates,
    last_quarter,
    least_shift,
)
from analyses.contrastive_attention.refine import MODES, Suppression, answer_text, refined_generate
from analyses.results import RunResult, provenance
from analyses.resume import SampleStore, run_key
from analyses.stats import bootstrap_mean_ci, mcnemar_exact, sign_flip_p_values, wilson_interval
from probes.errors import UserError
from probes.masking import check_layers
from probes.models.loading import LoadedModel

ANALYSIS = "contrastive_attention"
MAPS = ("late", "early", "contrastive")
LOCALISATION = ("auroc", "pointing")
METHODS = ("clean", "refined", "random_control")
EARLY_PASS = "early"  # the resume-state stage of the first pass (maps for the early-layer rule)


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


def run_contrastive_attention(loaded: LoadedModel, dataset,
                              config: ContrastiveConfig = ContrastiveConfig(),
                              layer_masking: str | Path | None = None,
                              progress: bool = False, out: Path | None = None,
                              resume: bool = False,
                              on_sample: Callable[[int], None] | None = None) -> RunResult:
    """Localisation of the contrastive map and, with ``config.refine``, the refinement's
    accuracy against clean and the random control (see the module docstring). With ``out``,
    the samples of both passes are kept there for ``resume`` (see :mod:`analyses.resume`; the
    caller saves the result); ``on_sample(done)`` is called after each sample of the main
    pass."""
    num_layers = loaded.adapter.num_layers
    config.validate(num_layers)
    masking = None if layer_masking is None else read_layer_masking(layer_masking, num_layers)
    layers = resolve_layers(config, num_layers, masking)
    if len(dataset) == 0:
        raise UserError(f"{dataset.name}/{dataset.split} holds no samples.")
    series = SERIES.index(config.series)
    model = model_record(loaded)
    recorded = {**asdict(config), "layer_masking": None if layer_masking is None
                else str(layer_masking)}
    store = SampleStore.open(out, run_key(ANALYSIS, loaded, dataset,
                                          {**recorded, "masking": masking}, model), resume)
    started, computed = time.perf_counter(), 0
    if layers["early"] is None:  # the rule reads every sample's maps: a first pass, kept too
        first = [values["maps"] for values in store.finished(EARLY_PASS)]
        for index in tqdm(range(len(first), len(dataset)), disable=not progress,
                          desc="maps (early layer rule)", unit="sample", initial=len(first),
                          total=len(dataset)):
            maps = record_sample(loaded, dataset[index], keep_clean=False)[0].maps[series]
            first.append(store.add({"maps": maps}, EARLY_PASS)["maps"])
        layers["early"], layers["early_distances"] = choose_early_layer(np.stack(first),
                                                                        layers["late"])
    rows: dict[str, list] = {name: [] for name in (
        "maps", "relevant", "localisation", "suppressed", "random", "correct", "answers",
        "cells")}
    examples = ExampleSamples()

    def take(index: int, values: dict[str, np.ndarray]) -> None:
        for name in rows:
            if name in values:
                rows[name].append(values[name])
        examples.take(index, values)

    for index, values in enumerate(store.finished()):
        take(index, values)
    start = len(rows["maps"])
    for index in tqdm(range(start, len(dataset)), disable=not progress,
                      desc="contrastive attention", unit="sample", initial=start,
                      total=len(dataset)):
        sample = dataset[index]
        sample_maps, clean, groups, inputs = record_sample(loaded, sample)
        maps = sample_maps.maps[series]  # [layers, patches]
        contrast = contrastive_map(maps[layers["late"]], maps[layers["early"]])
        relevant = sample_maps.relevant
        values = {"maps": maps, "relevant": relevant, "cells": sample_maps.cells,
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
                    groups.image_patches[patches], tuple(layers["refine"]), config.mode, config.bias)
                generation = refined_generate(loaded, inputs, suppression, clean, groups,
                                              config.max_new_tokens)
                answers.append(answer_text(loaded, generation))
            values["answers"] = answers
            values["correct"] = [a.lower() == sample.answer.strip().lower() for a in answers]
        if len(examples) < config.examples and relevant.any():
            values["example_image"] = thumbnail(sample.image)
            values["example_grid"] = example_geometry(groups)
        take(index, store.add(values))
        computed += 1
        if on_sample is not None:
            on_sample(index + 1)
    seconds = (time.perf_counter() - started) / max(1, computed)
    arrays = {
        "sample_index": np.arange(len(dataset), dtype=np.int64),
        "sample_id": np.array([dataset[i].id for i in range(len(dataset))]),
        "kind": np.array([dataset[i].kind for i in range(len(dataset))]),
        "maps": np.stack(rows["maps"]).astype(np.float32),
        "relevant": np.stack(rows["relevant"]),
        "localisation": np.array(rows["localisation"], dtype=np.float64),
        "suppressed": np.stack(rows["suppressed"]),
        "random_suppressed": np.stack(rows["random"]),
        "cells": rows["cells"][-1],
        **examples.arrays(),
    }
    if config.refine:
        arrays["correct"] = np.array(rows["correct"], dtype=bool)
        arrays["answers"] = np.array(rows["answers"])
    summary = provenance(ANALYSIS, model, data_record(dataset), len(dataset), recorded,
                         config.seed)
    summary.update(summarize(arrays, config, layers, masking, num_layers))
    summary["timing"] = {"seconds_per_sample": seconds, "device": str(loaded.device)}
    store.clear()
    return RunResult(summary, arrays)


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


def method_rows(correct: np.ndarray) -> list[dict]:
    """``{method, accuracy, ci_low, ci_high, n, p_value_vs_clean}``: Wilson CIs, exact McNemar
    p-values (two-sided, paired on the same samples) against the clean run."""
    rows = []
    for m, method in enumerate(METHODS):
        hits, n = int(correct[:, m].sum()), int(correct.shape[0])
        low, high = wilson_interval(hits, n)
        rows.append({"method": method, "accuracy": hits / n, "ci_low": low, "ci_high": high,
                     "n": n, "p_value_vs_clean": None if m == 0 else
                     mcnemar_exact(correct[:, m], correct[:, 0])})
    return rows


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
        summary["methods"] = method_rows(correct)
        summary["refined_vs_random_p"] = mcnemar_exact(correct[:, 1], correct[:, 2])
        summary["answers_changed"] = {method: int((arrays["answers"][:, m] != arrays["answers"][:, 0]).sum())
                                      for m, method in enumerate(METHODS) if m}
        summary["methods_by_kind"] = [
            {"kind": kind, **{method: float(correct[arrays["kind"] == kind, m].mean())
                              for m, method in enumerate(METHODS)},
             "n": int((arrays["kind"] == kind).sum())}
            for kind in sorted(set(arrays["kind"].tolist()))]
    return summary
