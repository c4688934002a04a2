"""The driver of every analysis run: open the store, walk the analysis's passes (plan, measure
the units not yet finished, read the records back), aggregate, and record what failed. The
measuring is a backend's: :class:`LocalBackend` here (one model in this process), or
``analyses.runner.ray_backend.RayBackend`` (actors on a Ray cluster). Both measure a unit with
:func:`measure_unit` and write its records into the same store, so a run's files do not depend
on the backend, on ``--resume`` or on ``--shard`` + merge.
"""

from __future__ import annotations

import time
from argparse import ArgumentTypeError
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from analyses.common import data_record, model_record
from analyses.results import RunResult, provenance
from analyses.runner.spec import Analysis, Pass, RunInfo
from analyses.runner.store import RecordStore
from probes.arguments import shard
from probes.errors import UserError

RECORDS = "records"  # a shard run keeps its records here, for analyses.merge


@dataclass(frozen=True)
class RunOptions:
    """How to run (not what decides the numbers)."""

    out: Path | None = None
    resume: bool = False
    overwrite: bool = False
    shard: tuple[int, int] = (0, 1)
    strict: bool = False  # stop at the first failed sample instead of recording it
    progress: bool = False
    on_sample: Callable[[int], None] | None = None  # after each unit of the last pass: done


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> (i, n) with 0 <= i < n (:func:`probes.arguments.shard`, the option's
    ``type=``, outside a parser)."""
    try:
        return shard(text)
    except ArgumentTypeError as err:
        raise UserError(f"--shard {err}.") from None


def units_of(indices: Sequence[int], batch: int) -> list[list[int]]:
    """A pass's units: ``batch`` consecutive samples of its list each."""
    return [list(indices[k:k + batch]) for k in range(0, len(indices), batch)]


def shard_samples(length: int, passes: Sequence[Pass], shard: tuple[int, int]) -> list[int]:
    """The samples of shard (i, n): every n-th unit of the first pass from the i-th, so shards
    see alike mixes of the data and measure exactly the units of the unsharded run."""
    units = units_of(range(length), passes[0].batch)
    return [index for unit in units[shard[0]::shard[1]] for index in unit]


def nothing_measured(where: str, step: str, failures: list[dict[str, Any]]) -> UserError:
    """The sentence for a pass none of whose samples could be measured: how many failed and
    the most common reason."""
    reasons = Counter(row["reason"] for row in failures if row["pass"] == step)
    if not reasons:
        return UserError(f"no sample of {where} could be measured in the {step} pass.")
    reason, count = reasons.most_common(1)[0]
    total = sum(reasons.values())
    return UserError(f"every sample of {where} failed in the {step} pass ({total} of them); "
                     f"the most common reason ({count} of {total}): {reason.rstrip('.')}.")


def empty_shard(analysis: Analysis, store: RecordStore, key: dict[str, Any], device: str,
                options: RunOptions, reason: str) -> RunResult:
    """The result of a shard that measured nothing (it holds no unit, or all its samples
    failed): its key and failures are kept for ``analyses.merge``, which accepts it; the
    summary says ``reason``; no figures."""
    recorded = analysis.recorded()
    summary = provenance(analysis.name, key["model"], key["data"], 0, recorded,
                         recorded.get("seed", 0))
    summary.update(timing={"seconds_per_sample": 0.0, "device": device},
                   failed=store.failures(), shard=f"{options.shard[0]}/{options.shard[1]}",
                   empty_shard=reason.rstrip("."))
    if options.out is not None:
        store.keep(Path(options.out) / RECORDS)
    return RunResult(summary)


def failure_reason(error: BaseException) -> str:
    text = str(error) if isinstance(error, UserError) else f"{type(error).__name__}: {error}"
    text = " ".join(text.split())
    return text if len(text) <= 300 else text[:297] + "..."


def measure_unit(analysis: Analysis, loaded, dataset, store: RecordStore, step: Pass,
                 unit: list[int], context: dict[str, Any], strict: bool) -> None:
    """Measure one unit and write each sample's record (or failure) into the store. A unit of
    several samples that raises is measured again one sample at a time, so one bad sample
    does not take its neighbours down; a sample that raises alone is recorded as failed
    (``strict``: a UserError naming it instead)."""
    samples, ready = [], []
    for index in unit:
        try:
            samples.append(dataset[index])
            ready.append(index)
        except Exception as error:  # an unreadable image, a broken row
            _failed(store, step, index, str(index), error, strict)
    if not ready:
        return
    try:
        records = analysis.measure(step.name, loaded, samples, ready, context)
    except Exception as error:
        if len(ready) == 1:
            _failed(store, step, ready[0], samples[0].id, error, strict)
            return
        for index in ready:
            measure_unit(analysis, loaded, dataset, store, step, [index], context, strict)
        return
    for index, record in zip(ready, records):
        store.put(step.name, index, record)


def _failed(store, step: Pass, index: int, sample_id: str, error: Exception,
            strict: bool) -> None:
    reason = failure_reason(error)
    if strict:
        raise UserError(f"sample {index} ({sample_id}) failed in the {step.name} pass: {reason} "
                        "(without --strict it is recorded and skipped).") from error
    store.fail(step.name, index, sample_id, reason)


class LocalBackend:
    """Measures in this process, on one loaded model."""

    def __init__(self, loaded) -> None:
        self.loaded = loaded
        self._warm = False

    def model_record(self) -> dict[str, Any]:
        return model_record(self.loaded)

    @property
    def device(self) -> str:
        return str(self.loaded.device)

    def measure(self, analysis: Analysis, dataset, store: RecordStore, step: Pass,
                units: list[list[int]], context: dict[str, Any], strict: bool,
                done: Callable[[list[int]], None]) -> None:
        if units and not self._warm:
            analysis.warm_up(self.loaded, dataset)
            self._warm = True
        for unit in units:
            measure_unit(analysis, self.loaded, dataset, store, step, unit, context, strict)
            done(unit)

    def close(self) -> None:
        pass


def run(analysis: Analysis, backend, dataset, options: RunOptions = RunOptions()) -> RunResult:
    """Run ``analysis`` over ``dataset`` on ``backend`` and return its result (the caller
    saves it). See the module docstring."""
    if len(dataset) == 0:
        raise UserError(f"{dataset.name}/{dataset.split} holds no samples.")
    model = backend.model_record()
    analysis.validate(int(model["layers"]))
    key = {"analysis": analysis.name, "model": model, "data": data_record(dataset),
           "config": analysis.recorded(), "shard": list(options.shard)}
    store = RecordStore.open(options.out, key, options.resume, options.overwrite)
    mine = shard_samples(len(dataset), analysis.passes, options.shard)
    where = f"{dataset.name}/{dataset.split}" + (
        f" in shard {options.shard[0]}/{options.shard[1]}" if options.shard != (0, 1) else "")
    if not mine:  # more shards than units (a SLURM array larger than the work): nothing here
        units = len(units_of(range(len(dataset)), analysis.passes[0].batch))
        return empty_shard(analysis, store, key, backend.device, options,
                           f"shard {options.shard[0]}/{options.shard[1]} holds no sample: the "
                           f"data's {len(dataset)} sample(s) make {units} unit(s) of work, "
                           f"fewer than the {options.shard[1]} shards; it merges as empty")
    earlier: dict[str, dict] = {}
    seconds, measured = 0.0, 0
    for position, step in enumerate(analysis.passes):
        last = position == len(analysis.passes) - 1
        failed = store.failed_indices()
        pool = range(len(dataset)) if step.scope == "all" else mine
        plan = analysis.plan(step.name, [i for i in pool if i not in failed], earlier)
        units = units_of(plan.indices, step.batch)
        todo = [u for u in units if not all(store.has(step.name, i) for i in u)]
        finished = sum(len(u) for u in units) - sum(len(u) for u in todo)
        bar = tqdm(total=len(plan.indices), initial=finished, disable=not options.progress,
                   desc=step.description or f"{analysis.name.replace('_', ' ')}",
                   unit="sample")
        count = [finished]

        def done(unit: list[int], bar=bar, count=count, last=last) -> None:
            bar.update(len(unit))
            count[0] += len(unit)
            if last and options.on_sample is not None:
                options.on_sample(count[0])

        started = time.perf_counter()
        try:
            backend.measure(analysis, dataset, store, step, todo, plan.context,
                            options.strict, done)
        finally:
            bar.close()
        if last:
            seconds, measured = time.perf_counter() - started, sum(len(u) for u in todo)
        earlier[step.name] = store.records(step.name, plan.indices)
        # an analysis may plan no sample for a pass (nothing there applies: its aggregate
        # says so); a pass whose planned samples all failed ends the run, saying why
        if plan.indices and not earlier[step.name]:
            error = nothing_measured(where, step.name, store.failures())
            if options.shard == (0, 1):
                raise error
            # a shard whose samples all failed keeps its failures for merge, which decides
            return empty_shard(analysis, store, key, backend.device, options, str(error))
    failures = store.failures()
    if not any(earlier.values()):
        raise UserError(f"no sample of {where} is one that {analysis.name} measures.")
    info = RunInfo(model=model, data=data_record(dataset), device=backend.device,
                   seconds_per_sample=seconds / max(1, measured), shard=options.shard,
                   dataset=dataset)
    result = analysis.aggregate(earlier, info)
    result.summary["failed"] = failures
    if options.shard != (0, 1):
        result.summary["shard"] = f"{options.shard[0]}/{options.shard[1]}"
        if options.out is not None:
            store.keep(Path(options.out) / RECORDS)
    else:
        store.clear()
    return result
