"""AIF on a dataset: clean vs AIF vs the paper's ablations, object-token recall, overhead.

Per sample, one profiling pass (the clean prefill with the token dynamics recorded, see
:mod:`analyses.token_importance.aif`), then one masked greedy decode per method, all sharing
that pass's keys and values. Methods (``METHODS``; "the AIF count" = the tokens AIF masks at its
chosen ratio, so that the ablations differ from AIF only in *which* tokens they mask):

- ``clean``: no mask;
- ``aif``: the highest-entropy tokens masked at the adaptive ratio (or ``--ratio``);
- ``aif_normalized_s``: the same ranking, the ratio chosen with the normalised S
  (see :func:`~analyses.token_importance.dynamics.scan_ratios`);
- ``random``: the AIF count of image tokens drawn at random (seeded by run seed and sample);
- ``low_entropy_first``: the AIF count of the *lowest*-entropy tokens (the paper's ablation);
- ``keep_top_mu``: the AIF count of the least attended tokens (ranking by mu, not entropy);
- ``mask_top_mu``: the AIF count of the most attended tokens (highest-attention masking);
- ``fixed_0.3``, ``fixed_0.5``, ``fixed_0.7``: entropy ranking at fixed ratios.

Accuracy: exact match of the greedy answer (:func:`analyses.grading.is_correct`), 95% Wilson
intervals, two-sided exact McNemar p-values of each method against clean on the same samples
(:func:`analyses.stats.method_rows`).
Prompt token importance: each text token of the prompt with the answer position's attention to
it, averaged over layers (:mod:`analyses.token_importance.aif`), saved for all samples end to
end: ``prompt_importance`` (float32), ``prompt_tokens`` (each token's text), ``prompt_groups``
(int8, the index in :data:`~analyses.token_importance.aif.PROMPT_GROUPS`), sample s's at
``prompt_offsets[s]:prompt_offsets[s + 1]``.
Object-token recall: where a sample's target has pixels, the share of its object tokens among
the top ``top_fraction`` of the image tokens by low entropy vs by highest mu.

This is an analysis of the shared runner (:mod:`analyses.runner`): each sample's numbers depend
only on (model, sample, config, sample index), so a resumed run, shards merged or a Ray run give
the files of an uninterrupted one, timings aside.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from analyses.grading import is_correct
from analyses.results import RunResult, provenance
from analyses.runner import Analysis, LocalBackend, Pass, RunInfo, RunOptions, run
from analyses.runner.spec import Records, first_readable
from analyses.stats import bootstrap_mean_ci, method_rows, sign_flip_p_values
from analyses.token_importance.aif import (
    AIFConfig,
    Prepared,
    aif_generate,
    decode_all,
    prepare,
)
from analyses.token_importance.dynamics import (
    mask_count,
    object_recall,
    scan_ratios,
)
from probes import engines
from probes.engine import Engine
from probes.errors import UserError
from probes.models.answer import answer_text
from probes.models.loading import LoadedModel

ANALYSIS = "token_importance"
SMALL_OBJECT = 0.1  # an object is small when it covers at most this share of the image tokens


@dataclass(frozen=True)
class TokenImportanceConfig:
    """What decides the numbers (all of it goes into ``summary.json``)."""

    aif: AIFConfig = field(default_factory=AIFConfig)
    fixed_ratios: tuple[float, ...] = (0.3, 0.5, 0.7)
    top_fraction: float = 0.2  # object-token recall within this top share of the ranking
    timed_samples: int = 20  # samples on which plain generate and AIF are timed side by side
    seed: int = 0
    n_bootstrap: int = 2000
    engine: Engine = engines.DEFAULT  # any of probes.engines: the same answers

    def __post_init__(self) -> None:  # an engine's name (as recorded) is that engine
        object.__setattr__(self, "engine", engines.named(self.engine))

    def validate(self) -> None:
        self.aif.validate()
        if any(not 0.0 < r < 1.0 for r in self.fixed_ratios):
            raise UserError("--fixed-ratios must lie strictly between 0 and 1.")
        if not 0.0 < self.top_fraction <= 1.0:
            raise UserError(f"--top-fraction must lie in (0, 1], not {self.top_fraction}.")
        if self.timed_samples < 0:
            raise UserError(f"--timed-samples must be at least 0, not {self.timed_samples}.")

    @property
    def methods(self) -> list[str]:
        return ["clean", "aif", "aif_normalized_s", "random", "low_entropy_first",
                "keep_top_mu", "mask_top_mu", *(f"fixed_{r:g}" for r in self.fixed_ratios)]

    def recorded(self) -> dict[str, Any]:
        config = engines.recorded_config(self)
        config["aif"] = self.aif.recorded()
        config["methods"] = self.methods
        config["small_object"] = f"object tokens <= {SMALL_OBJECT:g} of the image tokens"
        return config


def method_masks(prepared: Prepared, config: TokenImportanceConfig,
                 rng: np.random.Generator) -> tuple[dict[str, np.ndarray], float, float]:
    """Masked image positions of every method for one prepared input, the adaptive ratio
    used and the normalised-S ratio."""
    importance = prepared.importance
    ratio = importance.scan.ratio if config.aif.ratio is None else config.aif.ratio
    normalized = scan_ratios(importance.mu, importance.order("entropy"), config.aif.ratios,
                             normalized=True).ratio
    count = mask_count(ratio, importance.positions.size)
    masks = {
        "clean": np.zeros(0, np.int64),
        "aif": importance.masked(ratio),
        "aif_normalized_s": importance.masked(normalized),
        "random": np.sort(rng.choice(importance.positions, size=count, replace=False)),
        "low_entropy_first": importance.masked(ratio, "low_entropy"),
        "keep_top_mu": importance.masked(ratio, "low_mu"),
        "mask_top_mu": importance.masked(ratio, "high_mu"),
    }
    for fixed in config.fixed_ratios:
        masks[f"fixed_{fixed:g}"] = importance.masked(fixed)
    return masks, ratio, normalized


def object_tokens(prepared: Prepared, sample) -> np.ndarray | None:
    """Boolean [tokens]: which image patches overlap the sample's target pixels (its mask, or
    its target boxes); None where the target has no pixels or covers no patch."""
    groups = prepared.groups
    if not sample.has_region():
        return None
    region = sample.region()
    try:
        positions = groups.with_region(mask=region).object
    except UserError:  # the region covers no patch (cropped away)
        return None
    return np.isin(prepared.importance.positions, positions)


def _timed(function: Callable[[], Any]) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def time_side_by_side(loaded: LoadedModel, sample, config: AIFConfig,
                      engine: Engine = engines.DEFAULT) -> tuple[float, float]:
    """Seconds of a plain greedy ``generate`` and of :func:`aif_generate`, each from the image
    and question, the faster of two alternating runs each."""

    def plain():
        inputs = loaded.adapter.build_inputs([sample.image], [sample.ask])
        inputs = inputs.to(loaded.device, loaded.dtype)
        with torch.inference_mode():
            loaded.model.generate(**inputs.batch, max_new_tokens=config.max_new_tokens,
                                  do_sample=False,
                                  pad_token_id=loaded.processor.tokenizer.pad_token_id)

    def aif():
        aif_generate(loaded, sample.image, sample.ask, config, engine)

    plains, aifs = [], []
    for _ in range(2):
        plains.append(_timed(plain))
        aifs.append(_timed(aif))
    return min(plains), min(aifs)


class TokenImportance(Analysis):
    """Per sample: the profiling pass, one masked decode per method, object-token recall and
    (for the first ``timed_samples``) plain generate and AIF timed side by side."""

    name = ANALYSIS
    passes = (Pass("samples", description="token importance"),)

    def __init__(self, config: TokenImportanceConfig = TokenImportanceConfig()) -> None:
        self.config = config

    @classmethod
    def from_recorded(cls, recorded: dict[str, Any]) -> TokenImportance:
        """The analysis of a recorded config (the descriptive keys ``recorded`` adds are
        dropped; lists become the config's tuples)."""
        def known(kind, values: dict[str, Any]) -> dict[str, Any]:
            names = {f.name for f in fields(kind)}
            return {k: tuple(v) if isinstance(v, list) else v
                    for k, v in values.items() if k in names}

        aif = AIFConfig(**known(AIFConfig, recorded["aif"]))
        return cls(TokenImportanceConfig(**{**known(TokenImportanceConfig, recorded),
                                            "aif": aif}))

    def recorded(self) -> dict[str, Any]:
        return self.config.recorded()

    def validate(self, num_layers: int) -> None:
        self.config.validate()

    def warm_up(self, loaded, dataset) -> None:
        sample = first_readable(dataset) if self.config.timed_samples > 0 else None
        if sample is not None:  # the first calls allocate: keep that out of timing
            time_side_by_side(loaded, sample, self.config.aif, self.config.engine)

    def measure(self, step, loaded, samples, indices, context) -> list[dict[str, Any]]:
        return [sample_values(loaded, sample, index, self.config)
                for sample, index in zip(samples, indices)]

    def aggregate(self, records: Mapping[str, Records], info: RunInfo) -> RunResult:
        rows: dict[str, list] = {}
        for record in records["samples"].values():
            for name, value in record.items():
                rows.setdefault(name, []).append(value)
        return summarize(_stack(rows), self.config, info.model, info.data, info.num_layers,
                         info.timing)

    def table(self, summary) -> str:
        from analyses.token_importance.table import format_table

        return format_table(summary)


def sample_values(loaded: LoadedModel, sample, index: int,
                  config: TokenImportanceConfig) -> dict[str, Any]:
    """One sample under every method: its per-sample values of ``arrays.npz``."""
    methods = config.methods
    values: dict[str, Any] = {}
    add = values.__setitem__
    prepared = prepare(loaded, sample.image, sample.ask, config.aif, engine=config.engine)
    importance = prepared.importance
    rng = np.random.default_rng([config.seed, index])
    masks, ratio, normalized = method_masks(prepared, config, rng)
    answers = [answer_text(loaded, generation.tokens)
               for generation in decode_all(loaded, prepared, [masks[m] for m in methods])]
    is_object = object_tokens(prepared, sample)
    if is_object is None:
        is_object = np.zeros(importance.positions.size, dtype=bool)
    add("sample_index", index)
    add("kind", sample.kind)
    add("reference", sample.answer)
    add("answers", answers)
    add("correct", [is_correct(a, sample) for a in answers])
    add("masked_count", [masks[m].size for m in methods])
    add("ratio", ratio)
    add("ratio_normalized_s", normalized)
    add("dynamics", importance.dynamics)
    add("entropy", importance.entropy)
    add("mu", importance.mu)
    add("cells", importance.cells)
    add("prompt_importance", importance.prompt_importance.astype(np.float32))
    add("prompt_groups", importance.prompt_groups)
    tokens = prepared.inputs.input_ids[0, importance.prompt].tolist()
    add("prompt_tokens", np.array([loaded.processor.tokenizer.decode([t]) for t in tokens]))
    add("s_curve", importance.scan.s)
    add("s0", importance.scan.s0)
    add("is_object", is_object)
    top = config.top_fraction
    add("recall_entropy", object_recall(importance.order("low_entropy"), is_object, top))
    add("recall_attention", object_recall(importance.order("high_mu"), is_object, top))
    kept = ~np.isin(importance.positions, masks["aif"])
    add("kept_curve", importance.dynamics[kept].mean(0) if kept.any()
        else np.full(importance.dynamics.shape[1], np.nan))
    add("masked_curve", importance.dynamics[~kept].mean(0) if (~kept).any()
        else np.full(importance.dynamics.shape[1], np.nan))
    seconds = (time_side_by_side(loaded, sample, config.aif, config.engine)
               if index < config.timed_samples
               else (np.nan, np.nan))
    add("plain_seconds", seconds[0])
    add("aif_seconds", seconds[1])
    return values


def run_token_importance(loaded: LoadedModel, dataset,
                         config: TokenImportanceConfig = TokenImportanceConfig(),
                         progress: bool = False, out: Path | None = None, resume: bool = False,
                         shard: tuple[int, int] = (0, 1),
                         on_sample: Callable[[int], None] | None = None) -> RunResult:
    """Every sample of ``dataset`` under every method, in this process; see the module
    docstring (and :mod:`analyses.runner` for what ``out``, ``resume``, ``shard`` and
    ``on_sample`` do; the caller saves the result)."""
    return run(TokenImportance(config), LocalBackend(loaded), dataset,
               RunOptions(out=out, resume=resume, shard=shard, progress=progress,
                          on_sample=on_sample))


def _pad(values: list[np.ndarray], fill) -> np.ndarray:
    """Stack arrays whose first axis may differ (images of different token counts)."""
    longest = max(v.shape[0] for v in values)
    out = np.full((len(values), longest, *values[0].shape[1:]), fill,
                  dtype=np.result_type(values[0].dtype, np.asarray(fill).dtype))
    for i, v in enumerate(values):
        out[i, : v.shape[0]] = v
    return out


CONCATENATED = ("prompt_importance", "prompt_tokens", "prompt_groups")  # + prompt_offsets


def _stack(rows: dict[str, list]) -> dict[str, np.ndarray]:
    ragged = {"dynamics": np.nan, "entropy": np.nan, "mu": np.nan, "cells": -1,
              "is_object": False}
    arrays = {}
    for name, values in rows.items():
        if name in CONCATENATED:
            arrays[name] = np.concatenate(values)
        else:
            arrays[name] = _pad(values, ragged[name]) if name in ragged else np.array(values)
    arrays["n_tokens"] = np.array([v.shape[0] for v in rows["entropy"]], dtype=np.int64)
    if "prompt_importance" in rows:
        counts = [v.shape[0] for v in rows["prompt_importance"]]
        arrays["prompt_offsets"] = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return arrays


def _mean_row(values: np.ndarray, n_bootstrap: int, seed: int) -> dict[str, float]:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return {"mean": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "n": 0}
    mean, low, high = bootstrap_mean_ci(values, n_bootstrap, seed)
    return {"mean": float(mean), "ci_low": float(low), "ci_high": float(high),
            "n": int(values.size)}


def recall_summary(arrays: dict[str, np.ndarray], config: TokenImportanceConfig) -> dict:
    has_object = arrays["is_object"].any(1)
    share = arrays["is_object"].sum(1) / arrays["n_tokens"]
    summary = {"top_fraction": config.top_fraction, "ranking": {
        "entropy": "ascending curve entropy (AIF's importance)",
        "attention": "descending mu (mean over layers of the max text->token attention)"}}
    for name, chosen in (("all", has_object), ("small", has_object & (share <= SMALL_OBJECT))):
        entropy = arrays["recall_entropy"][chosen]
        attention = arrays["recall_attention"][chosen]
        k = np.ceil(config.top_fraction * arrays["n_tokens"][chosen] - 1e-9)
        difference = entropy - attention
        summary[name] = {
            "n": int(chosen.sum()),
            "entropy": _mean_row(entropy, config.n_bootstrap, config.seed),
            "attention": _mean_row(attention, config.n_bootstrap, config.seed),
            "random": float((k / arrays["n_tokens"][chosen]).mean()) if chosen.any() else
            float("nan"),
            "difference": _mean_row(difference, config.n_bootstrap, config.seed),
            "p_entropy_above_attention": float(sign_flip_p_values(difference[:, None],
                                                                  seed=config.seed)[0])
            if chosen.any() else float("nan"),
        }
    return summary


def summarize(arrays: dict[str, np.ndarray], config: TokenImportanceConfig, model: dict,
              data: dict, num_layers: int, timing: dict[str, Any]) -> RunResult:
    """The result of a run (or of merged shards) from its per-sample arrays; ``timing``: the
    runner's (device, seconds per sample), to which the side-by-side timings are added."""
    methods = config.methods
    summary = provenance(ANALYSIS, model, data, int(arrays["sample_index"].size),
                         config.recorded(), config.seed)
    per_layer = []
    for series, name in (("kept tokens (AIF)", "kept_curve"),
                         ("masked tokens (AIF)", "masked_curve")):
        mean, low, high = bootstrap_mean_ci(arrays[name], config.n_bootstrap, config.seed)
        for layer in range(num_layers):
            per_layer.append({"series": series, "layer": layer, "mean": float(mean[layer]),
                              "ci_low": float(low[layer]), "ci_high": float(high[layer]),
                              "n": int(arrays[name].shape[0])})
    ratios = {f"{r:g}": int((np.isclose(arrays["ratio"], r)).sum()) for r in config.aif.ratios}
    normalized = {f"{r:g}": int((np.isclose(arrays["ratio_normalized_s"], r)).sum())
                  for r in config.aif.ratios}
    plain, aif = arrays["plain_seconds"], arrays["aif_seconds"]
    timed = np.isfinite(plain) & np.isfinite(aif)
    summary.update({
        "axes": {"correct": ["sample", "method"], "answers": ["sample", "method"],
                 "masked_count": ["sample", "method"], "dynamics": ["sample", "token", "layer"],
                 "entropy": ["sample", "token"], "mu": ["sample", "token"],
                 "cells": ["sample", "token", "grid_row_col"], "is_object": ["sample", "token"],
                 "s_curve": ["sample", "ratio"], "kept_curve": ["sample", "layer"],
                 "masked_curve": ["sample", "layer"]},
        "num_layers": num_layers,
        "method_names": methods,
        "methods": method_rows(arrays["correct"], methods),
        "methods_by_kind": method_rows(arrays["correct"], methods, arrays["kind"]),
        "per_layer": per_layer,
        "chosen_ratios": {"published_s": ratios, "normalized_s": normalized},
        "recall": recall_summary(arrays, config),
        "timing": {
            **timing, "n": int(timed.sum()),
            "plain_generate_seconds": float(np.median(plain[timed])) if timed.any() else None,
            "aif_seconds": float(np.median(aif[timed])) if timed.any() else None,
            "ratio_median": float(np.median(aif[timed] / plain[timed])) if timed.any() else None,
            "what": "per sample, from image and question to answer, the faster of two runs; "
                    "AIF = profiling prefill + mask + masked decode",
        },
    })
    return RunResult(summary, arrays)
