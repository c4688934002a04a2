"""What every analysis CLI does with the runner: pick the backend its options name, load the
data, run, save, draw and print (``run_from_args``)."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from analyses.common import DEFAULT_DATA, RunSpec, load_model_from_args, write_run
from analyses.data import available_datasets
from analyses.results import RunResult
from analyses.runner.execute import LocalBackend, RunOptions, run
from analyses.runner.spec import Analysis
from analyses.runner.store import (
    KEY_FILE,
    PARTIAL,
    check_finished,
    check_out,
    check_unfinished,
    describe_counts,
    finished_counts,
)
from figures.style import use_file_backend
from probes import engines
from probes.arguments import NONNEGATIVE_NUMBER, POSITIVE, SEED, shard
from probes.cli import add_model_arguments
from probes.errors import UserError


def add_analysis_arguments(parser: argparse.ArgumentParser, default_out: str,
                           default_batch_size: int = 32) -> None:
    """``--model --device --dtype --min-pixels --max-pixels`` plus ``--data --split --prompt
    --limit --out --batch-size --seed --resume`` and the runner's ``--shard --strict
    --overwrite --backend --workers --gpus-per-worker``."""
    add_model_arguments(parser)
    add_pixel_arguments(parser)
    parser.add_argument("--data", default=DEFAULT_DATA,
                        help=f"dataset: {', '.join(available_datasets())}, a benchmark "
                             "(NAME or NAME:PATH) or a file or folder of your own "
                             f"(default: {DEFAULT_DATA})")
    parser.add_argument("--split", default=None,
                        help="the split to read (default: the source's default split)")
    parser.add_argument("--prompt", default=None, metavar="TEMPLATE",
                        help="the prompt template instead of the dataset's default for the "
                             "model's family; placeholders {question} and {choices}")
    parser.add_argument("--limit", type=POSITIVE, default=None, help="the first N samples only")
    parser.add_argument("--out", type=Path, default=Path(default_out),
                        help=f"directory for the result files (default: {default_out})")
    parser.add_argument("--batch-size", type=POSITIVE, default=default_batch_size,
                        help=f"conditions or samples per forward (default: {default_batch_size})")
    parser.add_argument("--seed", type=SEED, default=0)
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run in --out instead of starting over")
    add_runner_arguments(parser)


def add_pixel_arguments(parser: argparse.ArgumentParser) -> None:
    """``--min-pixels --max-pixels``: the pixel budget of a family that has one (Qwen2.5-VL)."""
    parser.add_argument("--min-pixels", type=POSITIVE, default=None,
                        help="Qwen2.5-VL: smallest image area after resizing, in pixels "
                             "(default: the checkpoint's; lmms-eval uses 200704)")
    parser.add_argument("--max-pixels", type=POSITIVE, default=None,
                        help="Qwen2.5-VL: largest image area after resizing, in pixels "
                             "(default: the checkpoint's; lmms-eval uses 1605632)")


def add_runner_arguments(parser: argparse.ArgumentParser) -> None:
    """``--shard --strict --overwrite --backend --workers --gpus-per-worker``."""
    parser.add_argument("--shard", type=shard, default="0/1",
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
    parser.add_argument("--workers", type=POSITIVE, default=None,
                        help="ray: model replicas (default: the cluster's GPUs // "
                             "--gpus-per-worker; without GPUs, 2 or the CPUs if fewer)")
    parser.add_argument("--gpus-per-worker", type=NONNEGATIVE_NUMBER, default=None,
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
                      shard=args.shard, strict=args.strict, progress=True)


def check_out_from_args(args: argparse.Namespace) -> None:
    """Refuse a bad ``--out`` before any work (a CLI that trains first calls this first); the
    CLI's edge, so from here on figures are drawn into files (Agg)."""
    use_file_backend()
    if args.resume and args.overwrite:
        raise UserError("--resume continues a run and --overwrite replaces it; give one.")
    options = options_from_args(args)
    check_out(options.out)
    if not (args.resume and (options.out / PARTIAL / KEY_FILE).is_file()):
        check_finished(options.out, args.resume, args.overwrite)
    check_unfinished(options.out, args.resume, args.overwrite)


def run_from_args(analysis: Analysis, args: argparse.Namespace, dataset=None) -> RunResult:
    """Run ``analysis`` as its CLI's options say on the data prompted for the model's family
    (:func:`analyses.common.prompt_data`), save the result with its figures into ``--out``
    and print its table."""
    use_file_backend()
    options = options_from_args(args)
    check_out_from_args(args)  # before any loading: a bad --out costs nothing
    spec = RunSpec.from_args(args)
    if dataset is None:
        dataset = spec.load()  # before the model: bad data costs nothing
    backend = make_backend(args)
    try:
        # the samples are asked as the model's family is asked (or as --prompt says)
        dataset = spec.prompt(dataset, backend.model_record()["family"])
        result = run(analysis, backend, dataset, options)
    except KeyboardInterrupt:  # run_cli says "interrupted: " and this
        raise KeyboardInterrupt(interrupted_hint(options.out)) from None
    finally:
        backend.close()
    write_run(result, options.out, printed(analysis, result))
    return result


def resume_command(argv: list[str] | None = None) -> str:
    """The command line that was run, without ``--overwrite`` and with ``--resume``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    main = sys.modules.get("__main__")
    module = getattr(getattr(main, "__spec__", None), "name", None)
    program = (["python", "-m", module.removesuffix(".__main__")] if module
               else [os.path.basename(sys.executable), sys.argv[0]])
    kept = [part for part in argv if part != "--overwrite"]
    return shlex.join(program + kept + ([] if "--resume" in kept else ["--resume"]))


def interrupted_hint(out: Path) -> str:
    """What an interrupted run left in ``out`` and the command that continues it ("" when it
    finished no sample)."""
    counts = finished_counts(out)
    if not counts:
        return ""
    return f"the run in {out} has {describe_counts(counts)}; continue it with: {resume_command()}"


def printed(analysis: Analysis, result: RunResult) -> str:
    """What the CLI prints of a run: its table and what failed (an empty shard has neither:
    :func:`analyses.common.write_run` says why it is empty)."""
    if result.summary.get("empty_shard"):
        return ""
    return analysis.table(result.summary) + failed_line(result)


def failed_line(result: RunResult) -> str:
    failed = result.summary.get("failed") or []
    if not failed:
        return ""
    return (f"\n{len(failed)} sample(s) failed and were skipped (reasons in summary.json "
            f"'failed'), e.g. sample {failed[0]['index']}: {failed[0]['reason']}")


def add_engine_argument(parser: argparse.ArgumentParser) -> None:
    """``--engine NAME`` for an analysis that runs on any engine (:mod:`probes.engines`): the
    engine is chosen, and checked to run here, as the options are read; ``args.engine`` is it."""
    parser.add_argument("--engine", default=engines.DEFAULT, type=engines.choose,
                        metavar="{" + ",".join(engines.names()) + "}",
                        help="; ".join(f"{name}: {engines.named(name).summary}"
                                       for name in engines.names()) + " (default: "
                             f"{engines.DEFAULT.name})")
