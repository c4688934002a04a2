"""A VIF run: train (or load) the module, evaluate it, and summarise into a
:class:`~analyses.results.RunResult` (``methods`` rows as every method comparison)."""

from __future__ import annotations

import time
from dataclasses import asdict, replace

import numpy as np
import torch

from analyses.common import data_record, model_record
from analyses.results import RunResult, provenance
from analyses.stats import bootstrap_mean_ci, mcnemar_exact, wilson_interval
from analyses.train_vif.train import TrainConfig, evaluate, freeze, train_vif
from probes.models.loading import LoadedModel
from probes.vif import VIF

ANALYSIS = "train_vif"
EXAMPLES = 8  # heatmaps kept for the figure


def method_rows(clean: np.ndarray, vif: np.ndarray) -> list[dict]:
    """``{method, accuracy, ci_low, ci_high, n, p_value_vs_clean}``: Wilson CIs, exact
    McNemar of VIF vs clean on the same samples."""
    rows = []
    for method, correct in (("clean", clean), ("vif", vif)):
        low, high = wilson_interval(int(correct.sum()), int(correct.size))
        rows.append({"method": method, "accuracy": float(correct.mean()) if correct.size else
                     float("nan"), "ci_low": low, "ci_high": high, "n": int(correct.size),
                     "p_value_vs_clean": None if method == "clean" else
                     mcnemar_exact(vif, clean)})
    return rows


def run_train_vif(loaded: LoadedModel, easy_train, fine_train, test, config: TrainConfig,
                  module: VIF | None = None, batch_size: int = 64,
                  progress: bool = False) -> tuple[RunResult, VIF]:
    """Train a fresh module (or evaluate ``module`` as given when ``config.steps`` is 0 and a
    module is passed) and evaluate it on ``test``. Returns the result and the module."""
    config.validate(loaded.adapter.num_layers)
    torch.manual_seed(config.seed)
    freeze(loaded)
    trained_here = module is None
    if module is None:
        module = VIF.for_model(loaded, config.vif, seed=config.seed)
    started = time.perf_counter()
    history = train_vif(loaded, module, easy_train, fine_train, config, progress) \
        if trained_here else {name: np.zeros(0) for name in ("loss", "nll", "kl", "sparsity")}
    train_seconds = time.perf_counter() - started
    evaluation = evaluate(loaded, module, test, batch_size, progress=progress)
    arrays = {f"history_{name}": values for name, values in history.items()}
    arrays.update({"clean_correct": evaluation.clean, "vif_correct": evaluation.vif,
                   "kind": evaluation.kind, "target_mass": evaluation.target_mass,
                   "uniform_mass": evaluation.uniform_mass, "pointing": evaluation.pointing})
    shown = list(range(min(EXAMPLES, len(test))))
    if shown:
        width = max(evaluation.heatmaps[i].size for i in shown)
        heat = np.full((len(shown), width), np.nan)
        coords = np.full((len(shown), width, 2), np.nan)
        for k, i in enumerate(shown):
            heat[k, :evaluation.heatmaps[i].size] = evaluation.heatmaps[i]
            coords[k, :len(evaluation.coords[i])] = evaluation.coords[i]
        arrays.update({"example_heatmaps": heat, "example_coords": coords,
                       "example_images": np.stack([np.asarray(test[i].image.convert("RGB"))
                                                   for i in shown]),
                       "example_questions": np.array([test[i].question for i in shown]),
                       "example_answers": np.array([test[i].answer for i in shown])})
    summary = provenance(ANALYSIS, model_record(loaded), data_record(test), len(test),
                         asdict(replace(config, vif=module.config)), config.seed)
    summary.update(_summary(loaded, module, evaluation, history, config, train_seconds,
                            trained_here, easy_train, fine_train))
    return RunResult(summary, arrays), module


def _summary(loaded, module, evaluation, history, config, train_seconds, trained_here,
             easy_train, fine_train) -> dict:
    visible = np.isfinite(evaluation.target_mass)
    mass, mass_low, mass_high = bootstrap_mean_ci(evaluation.target_mass[visible], 2000,
                                                  config.seed)
    hits = int(np.nansum(evaluation.pointing))
    point_low, point_high = wilson_interval(hits, int(visible.sum()))
    by_kind = []
    for kind in sorted(set(evaluation.kind.tolist())):
        chosen = evaluation.kind == kind
        for row in method_rows(evaluation.clean[chosen], evaluation.vif[chosen]):
            by_kind.append({"kind": kind, **row})
    window = max(1, min(20, history["loss"].size))
    return {
        "base_model": "frozen: only the VIF module is trained",
        "vif": {"learn_layers": list(module.learn_layers),
                "apply_layers": list(module.apply_layers),
                "parameters": int(sum(p.numel() for p in module.parameters())),
                "alpha": module.config.alpha, "rows": module.config.rows},
        "training": {"trained_here": trained_here, "steps": int(history["loss"].size),
                     "seconds": train_seconds,
                     "data": [data_record(easy_train), data_record(fine_train)],
                     **{f"{name}_first": float(values[:window].mean()) if values.size else None
                        for name, values in history.items()},
                     **{f"{name}_last": float(values[-window:].mean()) if values.size else None
                        for name, values in history.items()}},
        "methods": method_rows(evaluation.clean, evaluation.vif),
        "methods_by_kind": by_kind,
        "localisation": {
            "n": int(visible.sum()), "target_mass": float(mass), "ci_low": float(mass_low),
            "ci_high": float(mass_high),
            "uniform_mass": float(np.nanmean(evaluation.uniform_mass)) if visible.any()
            else None,
            "pointing": hits / max(1, int(visible.sum())), "pointing_ci_low": point_low,
            "pointing_ci_high": point_high},
        "timing": {"evaluation_seconds": evaluation.seconds, "device": str(loaded.device)},
    }
