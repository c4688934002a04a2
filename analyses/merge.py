"""``python -m analyses.merge SHARD_DIR... --out DIR``: the result of a whole run from its shard
runs (``--shard i/n``, each kept its records in ``SHARD_DIR/records``), equal to the run done in
one piece. Every shard 0/n..n-1/n of one analysis, model, data and config must be there once."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from analyses.common import write_run
from analyses.registry import rebuild
from analyses.results import SUMMARY, RunResult
from analyses.runner.execute import RECORDS, nothing_measured
from analyses.runner.spec import RunInfo
from analyses.runner.store import KEY_FILE, RecordStore
from figures.style import use_file_backend
from probes.arguments import ArgumentParser
from probes.cli import run_cli
from probes.errors import UserError


def _shard_store(directory: Path) -> RecordStore:
    key_path = directory / RECORDS / KEY_FILE
    if not key_path.is_file():
        raise UserError(f"{directory} holds no shard records ({RECORDS}/{KEY_FILE}); merge "
                        "takes the --out directories of runs made with --shard i/n.")
    try:
        key = json.loads(key_path.read_text())
    except ValueError:
        raise UserError(f"{key_path} is damaged (its node stopped while writing it); run that "
                        "shard again with --overwrite.") from None
    return RecordStore(directory / RECORDS, key)


def _shard_summary(directory: Path) -> dict | None:
    """A shard run's summary; None when it kept its records but not its summary (stopped
    after measuring: it merges, its timing unknown) or the summary is damaged."""
    try:
        return json.loads((directory / SUMMARY).read_text())
    except (OSError, ValueError):
        return None


class LazyDataset:
    """The run's dataset, loaded on first use (only analyses whose figures show example
    images read it) and checked against the recorded fingerprint."""

    def __init__(self, data: dict, family: str | None = None) -> None:
        self.data = data
        self.family = family  # the model's, for the prompt the samples were asked with
        self._dataset = None

    def __getitem__(self, index: int):
        if self._dataset is None:
            from analyses.common import RunSpec

            try:  # the run's own specification, as the shards recorded it
                dataset = RunSpec.from_recorded({}, self.data).dataset(self.family)
            except Exception as err:
                raise UserError(f"merge needs the dataset {self.data['name']} for the figures' "
                                f"example images and cannot load it: {err}") from None
            if dataset.fingerprint() != self.data["fingerprint"]:
                raise UserError(f"the dataset {self.data['name']} here differs from the one the "
                                "shards ran on (another fingerprint).")
            self._dataset = dataset
        return self._dataset[index]


def merge(directories: Sequence[Path]) -> RunResult:
    """Merge shard runs of one configuration into the result of the whole run."""
    directories = [Path(d) for d in directories]
    stores = [_shard_store(d) for d in directories]
    first = stores[0].key
    for store, directory in zip(stores, directories):
        for part in ("analysis", "model", "data", "config"):
            if store.key.get(part) != first.get(part):
                raise UserError(f"{directory} differs from {directories[0]} in its {part}; only "
                                "shards of one run can be merged.")
    shards = sorted((store.key["shard"][0], store.key["shard"][1]) for store in stores)
    count = shards[0][1]
    if shards != [(i, count) for i in range(count)]:
        got = ", ".join(f"{i}/{n}" for i, n in shards)
        raise UserError(f"merge needs every shard 0/{count}..{count - 1}/{count} once; got {got}.")
    analysis = rebuild(first["analysis"], first["config"])
    records = {step.name: {} for step in analysis.passes}
    failed = {}
    for store in stores:
        for step in analysis.passes:
            records[step.name].update(store.records(step.name))
        failed.update({(row["pass"], row["index"]): row for row in store.failures()})
    records = {name: dict(sorted(found.items())) for name, found in records.items()}
    rows = [failed[k] for k in sorted(failed)]
    for step in analysis.passes:  # as the whole run would: a pass whose samples all failed
        if not records[step.name] and any(row["pass"] == step.name for row in rows):
            data = first["data"]
            raise nothing_measured(f"{data['name']}/{data['split']}", step.name, rows)
    # a shard without its summary (stopped after its records were kept) still merges; the
    # timing is that of the shards that have one
    summaries = [s for s in map(_shard_summary, directories) if s is not None]
    counts = [s["n_samples"] for s in summaries]
    seconds = sum(s["timing"]["seconds_per_sample"] * n for s, n in zip(summaries, counts))
    info = RunInfo(model=first["model"], data=first["data"],
                   device=summaries[0]["timing"]["device"] if summaries else "unknown",
                   seconds_per_sample=seconds / max(1, sum(counts)) if summaries else math.nan,
                   dataset=LazyDataset(first["data"], first["model"].get("family")))
    result = analysis.aggregate(records, info)
    result.summary["failed"] = rows
    return result


def main(argv: Sequence[str] | None = None) -> int:
    use_file_backend()
    parser = ArgumentParser(prog="python -m analyses.merge",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("shards", nargs="+", type=Path, help="the shard runs' --out directories")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--overwrite", action="store_true", help="replace a finished run in --out")
    args = parser.parse_args(argv)
    from analyses.runner.store import check_out

    check_out(args.out)
    if (args.out / SUMMARY).is_file() and not args.overwrite:
        raise UserError(f"{args.out} already holds a finished run; use --overwrite to replace it "
                        "or another --out.")
    result = merge(args.shards)
    analysis = rebuild(result.summary["analysis"], result.summary["config"])
    write_run(result, args.out, analysis.table(result.summary))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
