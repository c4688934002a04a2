"""Shared command-line plumbing: the model options every command accepts, and the wrapper that
turns a :class:`~probes.errors.UserError` into one sentence on stderr and exit code 2."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from probes.arguments import THREADS
from probes.errors import UserError

EXIT_BAD_INPUT = 2


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--model --device --device-map --dtype --trust-remote-code --allow-pickle
    --threads`` with the design's defaults (``args.device_map`` is ``load_model``'s
    ``device_map``; ``args.threads`` is :func:`set_threads`'s)."""
    from probes.models.registry import DEFAULT_MODEL

    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"alias, hub id or local directory (default: {DEFAULT_MODEL}); "
        "`python -m probes.models list` shows the aliases",
    )
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument(
        "--device-map", default=None, choices=["auto", "balanced", "balanced_low_0", "sequential"],
        help="spread one model over several GPUs with accelerate: auto spreads the layers over "
        "all visible GPUs (needs pip install 'fusionlens[multi-gpu]'; default: one device)",
    )
    parser.add_argument(
        "--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
        help="auto: bfloat16 on CUDA, float32 on CPU",
    )
    parser.add_argument(
        "--trust-remote-code", action="store_true",
        help="allow a checkpoint to run its own Python code (off by default)",
    )
    parser.add_argument(
        "--allow-pickle", action="store_true",
        help="allow pickled .bin weights when a checkpoint has no safetensors (off by default)",
    )
    add_threads_argument(parser)


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    """``--threads N``: the CPU threads torch computes with (:func:`set_threads`)."""
    parser.add_argument(
        "--threads", type=THREADS, default=None, metavar="N",
        help="CPU threads torch computes with (default: OMP_NUM_THREADS if set, else one less "
        "than the CPUs this process may use, at least 1: torch's own default, every core, "
        "slows to a crawl when another job holds one of them)",
    )


def available_cpus() -> int:
    """The CPUs this process may run on: its affinity mask, narrowed by a cgroup v2 CPU quota
    (a container's ``cpu.max``) where there is one."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        count = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            count = min(count, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, count)


def default_threads() -> int:
    """``OMP_NUM_THREADS`` when it is set to a number, else one less than
    :func:`available_cpus` (at least 1): a spare core for this process's other work and for
    whatever else the machine runs, where OpenMP's threads would otherwise wait on each other."""
    try:
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    except (KeyError, ValueError):
        return max(1, available_cpus() - 1)


def set_threads(threads: int | None = None) -> int:
    """Let torch compute with ``threads`` CPU threads (None: :func:`default_threads`) and run
    as many inter-op tasks at once (where torch still allows that setting); return the count.
    The numbers do not depend on it beyond float rounding (a parallel sum adds in another
    order)."""
    if threads is None:
        threads = default_threads()
    if threads < 1:
        raise UserError(f"--threads must be at least 1, not {threads}.")
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:  # set already, or inter-op work has started: it stays as it is
        pass
    return threads


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Run ``main(argv)``; a UserError becomes ``error: <sentence>`` on stderr and exit code 2."""
    try:
        code = main(argv)
    except UserError as err:
        sys.stderr.write(f"error: {err}\n")
        return EXIT_BAD_INPUT
    except KeyboardInterrupt as err:  # a command may say what was kept and how to go on
        sys.stderr.write(f"interrupted: {err}\n" if str(err) else "interrupted\n")
        return 130
    return 0 if code is None else code
