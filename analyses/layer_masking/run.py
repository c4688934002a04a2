"""A layer-masking run over a dataset: grading, the per-sample sweeps (each kept as it finishes,
for ``--resume``), shards and their merge, and the result (``summary.json`` + ``arrays.npz``).

Every sample's sweep depends only on (model, sample, config, sample index), so a resumed run,
or shards merged, give exactly the arrays and summary of one uninterrupted run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from analyses.common import data_record, model_record
from analyses.layer_masking.findings import findings, series_names, significance
from analyses.layer_masking.sweep import METRICS, has_region, needs_region, sweep_sample
from analyses.results import RunResult, provenance
from analyses.resume import SampleStore, run_key
from analyses.vqa_accuracy import grade
from probes.errors import UserError
from probes.masking import Knockout, parse_flows
from probes.models.loading import LoadedModel
from probes.tokens import GROUPS

ANALYSIS = "layer_masking"
DEFAULT_FLOWS = ("image->question,last",)
GRADED = "graded"  # the resume stage holding which samples the model answers correctly
MIN_KIND_SAMPLES = 20
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

    def recorded(self) -> dict[str, Any]:
        return asdict(self)


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> (i, n) with 0 <= i < n."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise UserError(f"--shard takes i/n, e.g. 0/4, not {text!r}.") from None
    if not 0 <= index < count:
        raise UserError(f"--shard {text}: need 0 <= i < n.")
    return index, count


def shard_indices(length: int, shard: tuple[int, int]) -> list[int]:
    """Samples of shard (i, n): every n-th from i, so shards see alike mixes of the data."""
    return list(range(shard[0], length, shard[1]))


def run_layer_masking(
    loaded: LoadedModel, dataset, config: LayerMaskingConfig = LayerMaskingConfig(),
    out: Path | None = None, resume: bool = False, shard: tuple[int, int] = (0, 1),
    progress: bool = False, on_sample: Callable[[int], None] | None = None,
) -> RunResult:
    """Sweep every selected sample of ``dataset`` and summarise. With ``out``, each finished
    sample is kept there (``analyses.resume``) until the run is summarised, so ``resume=True``
    goes on after an interruption (the caller saves the result). ``on_sample(done)`` is called
    after each sample (tests interrupt runs with it)."""
    num_layers = loaded.adapter.num_layers
    config.validate(num_layers)
    model = model_record(loaded)
    key = {**run_key(ANALYSIS, loaded, dataset, config.recorded(), model), "shard": list(shard)}
    store = SampleStore.open(out, key, resume)
    indices = shard_indices(len(dataset), shard)
    graded = store.finished(GRADED)
    graded = graded[0] if graded else store.add(_grade(loaded, dataset, indices, config,
                                                      progress), GRADED)
    selected = graded["graded_index"][graded["graded_correct"]].tolist()
    if needs_region(config.flows):  # e.g. "how many circles?" with none: no object to block
        selected = [i for i in selected if has_region(dataset[i])]
    if not selected:
        raise UserError(f"{loaded.model_id} answers none of the {len(indices)} samples of "
                        f"{dataset.name}/{dataset.split} correctly; use --all-samples to sweep "
                        "them anyway, or more samples.")
    rows = store.finished()
    started = time.perf_counter()
    todo = selected[len(rows):]
    for index in tqdm(todo, disable=not progress, desc="layer masking", unit="sample",
                      initial=len(rows), total=len(selected)):
        rows.append(store.add(_sample_values(loaded, dataset, config, index)))
        if on_sample is not None:
            on_sample(len(rows))
    seconds = (time.perf_counter() - started) / max(1, len(todo))
    arrays = {name: np.stack([row[name] for row in rows]) for name in PER_SAMPLE}
    arrays.update({name: graded[name] for name in ("graded_index", "graded_correct")})
    result = summarize(arrays, config, model, data_record(dataset), num_layers,
                       {"seconds_per_sample": seconds, "device": str(loaded.device)})
    if shard != (0, 1):
        result.summary["shard"] = f"{shard[0]}/{shard[1]}"
    store.clear()
    return result


def _sample_values(loaded, dataset, config: LayerMaskingConfig, index: int) -> dict[str, Any]:
    """One sample's sweep as the per-sample values of ``arrays.npz``."""
    sample = dataset[index]
    sweep = sweep_sample(loaded, sample, config.flows, config.window, config.seed, index,
                         config.batch_size)
    values = {"sample_index": index, "sample_id": sample.id, "kind": sample.kind,
              "answer_token": sweep.answer_token, "clean_probability": sweep.clean_probability,
              "flow_edges": sweep.flow_edges, "control_edges": sweep.control_edges}
    values.update({metric: sweep.metrics[..., i] for i, metric in enumerate(METRICS)})
    return values


def _grade(loaded, dataset, indices, config, progress) -> dict[str, np.ndarray]:
    index = np.array(indices, dtype=np.int64)
    if config.samples == "all":
        return {"graded_index": index, "graded_correct": np.ones(index.size, dtype=bool)}
    samples = [dataset[i] for i in indices]
    correct = grade(loaded, samples, batch_size=64, progress=progress)
    return {"graded_index": index, "graded_correct": np.array(correct, dtype=bool)}


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
        "timing": timing,
    })
    return RunResult(summary, arrays)


def _fusion_by_kind(arrays, config: LayerMaskingConfig, num_layers: int) -> dict[str, Any]:
    """The fusion rule applied to each question kind's samples alone (kinds with at least
    ``MIN_KIND_SAMPLES`` samples): kinds may read the image at different layers."""
    kinds = np.asarray(arrays["kind"]).astype(str)
    result = {}
    for kind in sorted(set(kinds.tolist())):
        rows = kinds == kind
        if rows.sum() < MIN_KIND_SAMPLES:
            continue
        subset = {name: arrays[name][rows] for name in METRICS}
        tests = significance(subset, list(config.flows), config.n_bootstrap, config.seed,
                             config.alpha, config.min_effect)
        result[kind] = {"n": int(rows.sum()),
                        "fusion_layers": [r["layer"] for r in tests
                                          if r["flow"] == config.flows[0] and r["significant"]],
                        "effect": [r["effect"] for r in tests if r["flow"] == config.flows[0]]}
    return result


def merge(directories: Sequence[Path]) -> RunResult:
    """Merge shard runs of one configuration into the result of the whole run."""
    parts = [RunResult.load(directory) for directory in directories]
    first = parts[0].summary
    for part, directory in zip(parts, directories):
        for key in ("analysis", "model", "data", "config"):
            if part.summary[key] != first[key]:
                raise UserError(f"{directory} differs from {directories[0]} in its {key}; only "
                                "shards of one run can be merged.")
    shards = sorted(part.summary.get("shard", "0/1") for part in parts)
    count = int(shards[0].split("/")[1])
    if shards != [f"{i}/{count}" for i in range(count)]:
        raise UserError(f"merge needs every shard 0/{count}..{count - 1}/{count} once; got "
                        f"{', '.join(shards)}.")
    arrays = _concatenate([part.arrays for part in parts])
    config = LayerMaskingConfig(**{k: tuple(v) if k == "flows" else v
                                   for k, v in first["config"].items()})
    samples = [part.summary["n_samples"] for part in parts]
    seconds = sum(p.summary["timing"]["seconds_per_sample"] * n for p, n in zip(parts, samples))
    timing = {"seconds_per_sample": seconds / max(1, sum(samples)),
              "device": first["timing"]["device"]}
    return summarize(arrays, config, first["model"], first["data"], first["num_layers"], timing)


def _concatenate(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    merged = {}
    for order_key, names in (("sample_index", PER_SAMPLE),
                             ("graded_index", ("graded_index", "graded_correct"))):
        order = np.argsort(np.concatenate([p[order_key] for p in parts]), kind="stable")
        for name in names:
            merged[name] = np.concatenate([p[name] for p in parts])[order]
    return merged
