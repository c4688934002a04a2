"""A layer-masking run over a dataset: grading, the per-sample sweeps, periodic state for
``--resume``, shards and their merge, and the result (``summary.json`` + ``arrays.npz``).

Every sample's sweep depends only on (model, sample, config, sample index), so a resumed run,
or shards merged, give exactly the arrays and summary of one uninterrupted run.
"""

from __future__ import annotations

import json
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
from analyses.results import RunResult, load_arrays, provenance, save_arrays, to_json, write_atomic
from analyses.vqa_accuracy import grade
from probes.errors import UserError
from probes.masking import Knockout, parse_flows
from probes.models.loading import LoadedModel
from probes.tokens import GROUPS

ANALYSIS = "layer_masking"
DEFAULT_FLOWS = ("image->question,last",)
STATE_ARRAYS, STATE_JSON = ".partial.npz", ".partial.json"
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
    checkpoint_every: int = 8  # samples between two writes of the resume state

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
        config = asdict(self)
        config.pop("checkpoint_every")  # when state is written does not change the numbers
        return config


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


def _state_key(loaded: LoadedModel, dataset, config: LayerMaskingConfig,
               shard: tuple[int, int]) -> str:
    return json.dumps({"model": model_record(loaded), "data": data_record(dataset),
                       "config": config.recorded(), "shard": list(shard)}, sort_keys=True)


class _State:
    """The resume state of a run in ``out``: graded samples and finished sweeps."""

    def __init__(self, out: Path | None, key: str) -> None:
        self.out, self.key = out, key
        self.graded: dict[str, np.ndarray] | None = None
        self.rows: dict[str, list] = {name: [] for name in PER_SAMPLE}

    @classmethod
    def resume(cls, out: Path, key: str) -> _State:
        state = cls(out, key)
        if not (out / STATE_JSON).is_file():
            if (out / "summary.json").is_file():
                raise UserError(f"{out} holds a finished run; nothing to resume (drop --resume "
                                "to run again).")
            return state
        saved = json.loads((out / STATE_JSON).read_text())
        if saved["key"] != key:
            raise UserError(f"the unfinished run in {out} used another model, data or settings; "
                            "resume with the same options or choose another --out.")
        arrays = load_arrays(out / STATE_ARRAYS)
        if "graded_index" in arrays:
            state.graded = {"graded_index": arrays["graded_index"],
                            "graded_correct": arrays["graded_correct"]}
        for name in PER_SAMPLE:
            if name in arrays:
                state.rows[name] = list(arrays[name])
        return state

    @property
    def done(self) -> int:
        return len(self.rows["sample_index"])

    def write(self) -> None:
        if self.out is None:
            return
        complete = min(len(values) for values in self.rows.values())  # an interrupted append
        for values in self.rows.values():
            del values[complete:]
        arrays = dict(self.graded or {})
        if self.done:
            arrays.update({name: np.stack(values) if np.ndim(values[0]) else np.array(values)
                           for name, values in self.rows.items()})
        save_arrays(self.out / STATE_ARRAYS, arrays)
        write_atomic(self.out / STATE_JSON, to_json({"key": self.key, "done": self.done}).encode())

    def clear(self) -> None:
        if self.out is not None:
            for name in (STATE_ARRAYS, STATE_JSON):
                (self.out / name).unlink(missing_ok=True)


def run_layer_masking(
    loaded: LoadedModel, dataset, config: LayerMaskingConfig = LayerMaskingConfig(),
    out: Path | None = None, resume: bool = False, shard: tuple[int, int] = (0, 1),
    progress: bool = False, on_sample: Callable[[int], None] | None = None,
) -> RunResult:
    """Sweep every selected sample of ``dataset`` and summarise. With ``out``, the resume
    state is kept there while running (the caller saves the result). ``on_sample(done)`` is
    called after each sample (tests interrupt runs with it)."""
    num_layers = loaded.adapter.num_layers
    config.validate(num_layers)
    key = _state_key(loaded, dataset, config, shard)
    state = _State.resume(Path(out), key) if resume and out is not None else _State(
        None if out is None else Path(out), key)
    indices = shard_indices(len(dataset), shard)
    if state.graded is None:
        state.graded = _grade(loaded, dataset, indices, config, progress)
        state.write()
    graded = state.graded
    selected = graded["graded_index"][graded["graded_correct"]].tolist()
    if needs_region(config.flows):  # e.g. "how many circles?" with none: no object to block
        selected = [i for i in selected if has_region(dataset[i])]
    if not selected:
        raise UserError(f"{loaded.model_id} answers none of the {len(indices)} samples of "
                        f"{dataset.name}/{dataset.split} correctly; use --all-samples to sweep "
                        "them anyway, or more samples.")
    started = time.perf_counter()
    todo = selected[state.done:]
    try:
        _sweep_all(loaded, dataset, config, state, todo, len(selected), progress, on_sample)
    except KeyboardInterrupt:
        state.write()  # what is done stays done; --resume goes on from here
        raise
    seconds = (time.perf_counter() - started) / max(1, len(todo))
    arrays = {name: np.stack(values) if np.ndim(values[0]) else np.array(values)
              for name, values in state.rows.items()}
    arrays.update(graded)
    result = summarize(arrays, config, model_record(loaded), data_record(dataset), num_layers,
                       {"seconds_per_sample": seconds, "device": str(loaded.device)})
    if shard != (0, 1):
        result.summary["shard"] = f"{shard[0]}/{shard[1]}"
    state.clear()
    return result


def _sweep_all(loaded, dataset, config, state, todo, total, progress, on_sample) -> None:
    for index in tqdm(todo, disable=not progress, desc="layer masking", unit="sample",
                      initial=state.done, total=total):
        sample = dataset[index]
        sweep = sweep_sample(loaded, sample, config.flows, config.window, config.seed, index,
                             config.batch_size)
        values = {"sample_index": index, "sample_id": sample.id, "kind": sample.kind,
                  "answer_token": sweep.answer_token,
                  "clean_probability": sweep.clean_probability,
                  "flow_edges": sweep.flow_edges, "control_edges": sweep.control_edges}
        values.update({m: sweep.metrics[..., i] for i, m in enumerate(METRICS)})
        for name, value in values.items():
            state.rows[name].append(value)
        if state.done % config.checkpoint_every == 0:
            state.write()
        if on_sample is not None:
            on_sample(state.done)


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
