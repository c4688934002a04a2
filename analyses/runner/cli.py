"""What every analysis CLI does with the runner: pick the backend its options name, load the
data, run, save, draw and print (``run_from_args``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from analyses.common import DEFAULT_DATA, load_data, load_model_from_args, write_run
from analyses.data import available_datasets
from analyses.results import RunResult
from analyses.runner.execute import LocalBackend, RunOptions, parse_shard, run
from analyses.runner.spec import Analysis
from analyses.runner.store import KEY_FILE, PARTIAL, check_finished, check_out
from probes.cli import add_model_arguments
from probes.errors import UserError


def add_analysis_arguments(parser: argparse.ArgumentParser, default_out: str,
                           default_batch_size: int = 32) -> None:
    """``--model --device --dtype`` plus ``--data --split --limit --out --batch-size --seed
    --resume`` and the runner's ``--shard --strict --overwrite --backend --workers
    --gpus-per-worker``."""
    add_model_arguments(parser)
    parser.add_argument("--data", default=DEFAULT_DATA,
                        help=f"dataset: {', '.join(available_datasets())} (default: {DEFAULT_DATA})")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=None, help="the first N samples only")
    parser.add_argument("--out", type=Path, default=Path(default_out),
                        help=f"directory for the result files (default: {default_out})")
    parser.add_argument("--batch-size", type=int, default=default_batch_size,
                        help=f"conditions or samples per forward (default: {default_batch_size})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run in --out instead of starting over")
    add_runner_arguments(parser)


def add_runner_arguments(parser: argparse.ArgumentParser) -> None:
    """``--shard --strict --overwrite --backend --workers --gpus-per-worker``."""
    parser.add_argument("--shard", default="0/1",
                        help="i/n: run only the i-th of n shards of the data (merge the shard "
                             "runs with `python -m analyses.merge`)")
    parser.add_argument("--strict", action="store_true",
                        help="stop at the first sample that fails instead of recording it and "
                             "going on")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a finished run in --out")
    parser.add_argument("--backend", default="local", choices=["local", "ray"],
                        help="local: this process; ray: actors on a Ray cluster (RAY_ADDRESS, "
                             "or a local one); needs fusionlens[ray]")
    parser.add_argument("--workers", type=int, default=None,
                        help="ray: model replicas (default: the cluster's GPUs // "
                             "--gpus-per-worker; without GPUs, 2 or the CPUs if fewer)")
    parser.add_argument("--gpus-per-worker", type=float, default=None,
                        help="ray: GPUs each replica loads its model on (default 1 when the "
                             "cluster has GPUs, else 0); > 1 spreads a model with "
                             "--device-map auto")


def make_backend(args: argparse.Namespace):
    """The backend ``--backend`` names (the local one loads the model here)."""
    if args.backend == "ray":
        from analyses.runner.ray_backend import RayBackend  # the extra's import is there

        return RayBackend.from_args(args)
    return LocalBackend(load_model_from_args(args))


def options_from_args(args: argparse.Namespace, out: Path | None = None) -> RunOptions:
    return RunOptions(out=Path(out or args.out), resume=args.resume, overwrite=args.overwrite,
                      shard=parse_shard(args.shard), strict=args.strict, progress=True)


def check_out_from_args(args: argparse.Namespace) -> None:
    """Refuse a bad ``--out`` before any work (a CLI that trains first calls this first)."""
    if args.resume and args.overwrite:
        raise UserError("--resume continues a run and --overwrite replaces it; give one.")
    options = options_from_args(args)
    check_out(options.out)
    if not (args.resume and (options.out / PARTIAL / KEY_FILE).is_file()):
        check_finished(options.out, args.resume, args.overwrite)


def run_from_args(analysis: Analysis, args: argparse.Namespace, dataset=None) -> RunResult:
    """Run ``analysis`` as its CLI's options say, save the result with its figures into
    ``--out`` and print its table."""
    options = options_from_args(args)
    check_out_from_args(args)  # before any loading: a bad --out costs nothing
    if dataset is None:
        dataset = load_data(args.data, args.split, args.limit)
    backend = make_backend(args)
    try:
        result = run(analysis, backend, dataset, options)
    finally:
        backend.close()
    write_run(result, options.out, analysis.table(result.summary) + failed_line(result))
    return result


def failed_line(result: RunResult) -> str:
    failed = result.summary.get("failed") or []
    if not failed:
        return ""
    return (f"\n{len(failed)} sample(s) failed and were skipped (reasons in summary.json "
            f"'failed'), e.g. sample {failed[0]['index']}: {failed[0]['reason']}")
