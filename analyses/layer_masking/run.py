"""Layer masking as an analysis of the shared runner (:mod:`analyses.runner`): a grading pass,
the per-sample sweeps of the samples answered correctly, and the result (``summary.json`` +
``arrays.npz``).

Every sample's sweep depends only on (model, sample, config, sample index), so a resumed run,
shards merged, or a Ray run give exactly the arrays and summary of one uninterrupted run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from analyses.grading import grade
from analyses.layer_masking.findings import findings, series_names, significance
from analyses.layer_masking.sweep import (
    METRICS,
    deepstack_conditions,
    deepstack_names,
    has_region,
    needs_region,
    region_groups,
    sweep_sample,
)
from analyses.results import RunResult, provenance, skip
from analyses.runner import Analysis, LocalBackend, Pass, Plan, RunInfo, RunOptions, run
from analyses.runner.spec import Records
from probes import engines
from probes.engine import Engine
from probes.errors import UserError
from probes.masking import Knockout, parse_flows
from probes.models.loading import LoadedModel
from probes.tokens import GROUPS

ANALYSIS = "layer_masking"
DEFAULT_FLOWS = ("image->question,last",)
GRADED = "graded"  # the first pass: which samples the model answers correctly
SAMPLES = "samples"  # the second: the sweeps
GRADE_BATCH = 1  # one sample per unit: shards and Ray workers split the data finely, exactly
MIN_KIND_SAMPLES = 20  # the default of --min-kind-samples
PER_SAMPLE = ("sample_index", "sample_id", "kind", "answer_token", "clean_probability",
              "flow_edges", "control_edges", *METRICS)


@dataclass(frozen=True)
class LayerMaskingConfig:
    """What decides the numbers (all of it goes into ``summary.json``)."""

    flows: tuple[str, ...] = DEFAULT_FLOWS
    window: int = 1  # layers blocked around each centre layer
    samples: str = "correct"  # "correct": only samples the model answers right; "all"
    batch_size: int = 32  # conditions per forward (float rounding may depend on it)
    seed: int = 0
    n_bootstrap: int = 2000
    alpha: float = 0.05
    min_effect: float = 2.0  # smallest mean drop of p(answer), in %, that makes a fusion layer
    engine: Engine = engines.DEFAULT  # any of probes.engines: the same numbers
    min_kind_samples: int = MIN_KIND_SAMPLES  # a kind's fusion layers need this many samples
    deepstack: bool = False  # also remove Qwen3-VL's DeepStack additions (sweep.deepstack_conditions)

    def __post_init__(self) -> None:  # an engine's name (as recorded) is that engine
        object.__setattr__(self, "engine", engines.named(self.engine))

    def validate(self, num_layers: int) -> None:
        if self.samples not in ("correct", "all"):
            raise UserError(f"samples must be 'correct' or 'all', not {self.samples!r}.")
        if not self.flows:
            raise UserError("give at least one flow, e.g. --flows 'image->question,last'.")
        for flow in parse_flows(self.flows):
            for name in (*flow.source.split(","), *flow.target.split(",")):
                if name not in GROUPS:
                    raise UserError(f"unknown token group {name!r} in the flow {flow}; valid "
                                    f"groups are {', '.join(GROUPS)}.")
        Knockout.window(self.flows[0], 0, self.window, num_layers)  # the window must fit
        if self.batch_size < 1:
            raise UserError(f"--batch-size must be at least 1, not {self.batch_size}.")
        if self.min_kind_samples < 1:
            raise UserError(f"--min-kind-samples must be at least 1, not "
                            f"{self.min_kind_samples}.")

    def recorded(self) -> dict[str, Any]:
        recorded = engines.recorded_config(self)
        if not self.deepstack:  # runs made before the option keep their key
            del recorded["deepstack"]
        return recorded


class LayerMasking(Analysis):
    """Grade every sample (answer generation in batches of 64), then sweep the selected ones."""

    name = ANALYSIS
    passes = (Pass(GRADED, batch=GRADE_BATCH, description="answering"),
              Pass(SAMPLES, description="layer masking"))

    def __init__(self, config: LayerMaskingConfig = LayerMaskingConfig()) -> None:
        self.config = config

    @classmethod
    def from_recorded(cls, recorded: dict[str, Any]) -> LayerMasking:
        return cls(LayerMaskingConfig(**{k: tuple(v) if k == "flows" else v
                                         for k, v in recorded.items()}))

    def recorded(self) -> dict[str, Any]:
        return self.config.recorded()

    def validate(self, num_layers: int) -> None:
        self.config.validate(num_layers)

    def warm_up(self, loaded, dataset) -> None:
        if self.config.deepstack:  # a model without DeepStack: refused before any sample
            deepstack_conditions(loaded.adapter, self.config.flows, loaded.adapter.num_layers)

    def plan(self, step: str, candidates: list[int], earlier: Mapping[str, Records]) -> Plan:
        if step == GRADED:
            return Plan(candidates)
        graded = earlier[GRADED]
        selected = [i for i in candidates if graded[i]["correct"]]
        if needs_region(self.config.flows):  # "how many circles?" with none: nothing to block
            with_region = [i for i in candidates if graded[i]["has_region"]]
            if not with_region:
                raise no_region_error(self.config.flows, len(graded))
            selected = [i for i in selected if graded[i]["has_region"]]
        return Plan(selected)  # none: the sweep is skipped (see nothing_swept)

    def measure(self, step, loaded, samples, indices, context) -> list[dict[str, Any]]:
        if step == GRADED:
            correct = ([True] * len(samples) if self.config.samples == "all"
                       else grade(loaded, samples, batch_size=GRADE_BATCH))
            return [{"correct": c, "has_region": has_region(s)}
                    for c, s in zip(correct, samples)]
        return [_sample_values(loaded, sample, self.config, index)
                for sample, index in zip(samples, indices)]

    def aggregate(self, records: Mapping[str, Records], info: RunInfo) -> RunResult:
        rows = list(records[SAMPLES].values())
        series, layers = 2 * len(self.config.flows), info.num_layers
        empty = {"sample_index": (0,), "sample_id": (0,), "kind": (0,), "answer_token": (0,),
                 "clean_probability": (0,), "flow_edges": (0, series // 2),
                 "control_edges": (0, series // 2), **{m: (0, series, layers) for m in METRICS}}
        arrays = {name: np.stack([row[name] for row in rows]) if rows
                  else np.zeros(empty[name], dtype=str if name in ("sample_id", "kind")
                                else np.float64) for name in PER_SAMPLE}
        if self.config.deepstack and rows:
            arrays["deepstack"] = np.stack([row["deepstack"] for row in rows])
        graded = records[GRADED]
        arrays["graded_index"] = np.array(list(graded), dtype=np.int64)
        arrays["graded_correct"] = np.array([bool(r["correct"]) for r in graded.values()],
                                            dtype=bool)
        result = summarize(arrays, self.config, info.model, info.data, info.num_layers,
                           info.timing)
        if not rows:
            skip(result.summary, "sweep", nothing_swept(graded, self.config))
        return result

    def table(self, summary) -> str:
        from analyses.layer_masking.table import format_table

        return format_table(summary)


def nothing_swept(graded: Records, config: LayerMaskingConfig) -> str:
    """Why no sample was swept: none answered correctly, or none of those has a region."""
    correct = [r for r in graded.values() if r["correct"]]
    if not correct:
        return (f"the model answers none of the {len(graded)} samples correctly; use "
                "--all-samples to sweep them anyway, or more samples")
    return (f"none of the {len(correct)} samples answered correctly has a box or mask, which "
            f"the flows {', '.join(f for f in config.flows if needs_region((f,)))} need")


def run_layer_masking(
    loaded: LoadedModel, dataset, config: LayerMaskingConfig = LayerMaskingConfig(),
    out: Path | None = None, resume: bool = False, shard: tuple[int, int] = (0, 1),
    progress: bool = False, on_sample: Callable[[int], None] | None = None,
) -> RunResult:
    """Sweep every selected sample of ``dataset`` and summarise, in this process (see
    :mod:`analyses.runner` for what ``out``, ``resume``, ``shard`` and ``on_sample`` do; the
    caller saves the result)."""
    return run(LayerMasking(config), LocalBackend(loaded), dataset,
               RunOptions(out=out, resume=resume, shard=shard, progress=progress,
                          on_sample=on_sample))


def no_region_error(flows, count: int) -> UserError:
    """The flows block region tokens, and none of the ``count`` samples marks a region."""
    used = " and ".join(f"'{group}'" for group in region_groups(flows))
    return UserError(f"--flows {';'.join(flows)!r} blocks the {used} tokens, but none of the "
                     f"{count} samples marks a region (boxes or a mask) to find them in; give "
                     f"data with boxes, or flows without {used}.")


def check_regions(dataset, flows) -> None:
    """Before any model work: refuse flows that block a region when no sample marks one
    (stops at the first sample that does; samples that cannot be read are passed over)."""
    if not needs_region(flows):
        return
    for index in range(len(dataset)):
        try:
            if has_region(dataset[index]):
                return
        except Exception:  # noqa: BLE001 - an unreadable sample is the runner's to report
            continue
    raise no_region_error(flows, len(dataset))


def _sample_values(loaded, sample, config: LayerMaskingConfig, index: int) -> dict[str, Any]:
    """One sample's sweep as the per-sample values of ``arrays.npz``."""
    sweep = sweep_sample(loaded, sample, config.flows, config.window, config.seed, index,
                         config.batch_size, config.engine, config.deepstack)
    values = {"sample_index": index, "sample_id": sample.id, "kind": sample.kind,
              "answer_token": sweep.answer_token, "clean_probability": sweep.clean_probability,
              "flow_edges": sweep.flow_edges, "control_edges": sweep.control_edges}
    values.update({metric: sweep.metrics[..., i] for i, metric in enumerate(METRICS)})
    if sweep.deepstack is not None:
        values["deepstack"] = sweep.deepstack
    return values


def summarize(arrays: dict[str, np.ndarray], config: LayerMaskingConfig, model: dict,
              data: dict, num_layers: int, timing: dict) -> RunResult:
    """The result of a run (or of merged shards) from its per-sample arrays."""
    flows = list(config.flows)
    summary = provenance(ANALYSIS, model, data, int(arrays["sample_index"].size),
                         config.recorded(), config.seed)
    graded = arrays["graded_correct"]
    summary.update({
        "axes": {metric: ["sample", "series", "layer"] for metric in METRICS},
        "series": series_names(flows),
        "flows": flows,
        "num_layers": num_layers,
        "graded": {"n": int(graded.size), "correct": int(graded.sum()),
                   "selected": config.samples},
        **findings(arrays, flows, num_layers, config.n_bootstrap, config.seed, config.alpha,
                    config.min_effect),
        "fusion_layers_by_kind": _fusion_by_kind(arrays, config, num_layers),
        "kinds_below_minimum": kinds_below_minimum(arrays, config.min_kind_samples),
        "timing": timing,
    })
    if "deepstack" in arrays:
        summary["deepstack"] = deepstack_summary(arrays["deepstack"], flows)
        summary["axes"]["deepstack"] = ["sample", "condition", "metric"]
    return RunResult(summary, arrays)


def deepstack_summary(values: np.ndarray, flows: list[str]) -> dict[str, Any]:
    """``--deepstack``: per condition (:func:`~analyses.layer_masking.sweep.deepstack_names`),
    the mean over samples of each metric; the drop of p(answer) in % is minus the mean
    ``prob_change_pct``, as the flows' effects are reported."""
    names = deepstack_names(flows, values.shape[1] - 1 - 2 * len(flows))
    means = values.mean(axis=0)
    return {"conditions": names, "metrics": list(METRICS),
            "mean": {metric: means[:, i].tolist() for i, metric in enumerate(METRICS)},
            "drop_pct": (-means[:, 0]).tolist()}


def _fusion_by_kind(arrays, config: LayerMaskingConfig, num_layers: int) -> dict[str, Any]:
    """The fusion rule applied to each question kind's samples alone (kinds with at least
    ``config.min_kind_samples`` samples): kinds may read the image at different layers."""
    kinds = np.asarray(arrays["kind"]).astype(str)
    result = {}
    for kind in sorted(set(kinds.tolist())):
        rows = kinds == kind
        if rows.sum() < config.min_kind_samples:
            continue
        subset = {name: arrays[name][rows] for name in METRICS}
        tests = significance(subset, list(config.flows), config.n_bootstrap, config.seed,
                             config.alpha, config.min_effect)
        result[kind] = {"n": int(rows.sum()),
                        "fusion_layers": [r["layer"] for r in tests
                                          if r["flow"] == config.flows[0] and r["significant"]],
                        "effect": [r["effect"] for r in tests if r["flow"] == config.flows[0]]}
    return result


def kinds_below_minimum(arrays, minimum: int) -> dict[str, int]:
    """The question kinds with too few samples for their own fusion layers, with their n."""
    kinds, counts = np.unique(np.asarray(arrays["kind"]).astype(str), return_counts=True)
    return {str(k): int(n) for k, n in zip(kinds, counts) if n < minimum}
