"""Redraw the figures of saved runs, without a model: ``python -m figures.paper RUN_DIR...``.

Each run directory holds ``summary.json`` (whose ``analysis`` key says which figures to draw)
and ``arrays.npz``; the figures are written next to them as PNG and PDF, or into ``--out``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from analyses.registry import drawer
from analyses.results import RunResult
from figures.style import save, use_file_backend
from probes.arguments import ArgumentParser
from probes.cli import run_cli
from probes.errors import UserError


def draw_run(result: RunResult) -> dict:
    """Every figure of one saved run, by name (the analysis's registered drawer,
    :mod:`analyses.registry`)."""
    return drawer(result.summary.get("analysis"))(result.summary, result.arrays)


def redraw(directory: Path, out: Path | None = None) -> list[Path]:
    try:
        result = RunResult.load(directory)
    except FileNotFoundError as err:
        raise UserError(str(err)) from err
    written = []
    for name, figure in draw_run(result).items():
        written += save(figure, out or directory, name)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    use_file_backend()
    parser = ArgumentParser(prog="python -m figures.paper", description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (with summary.json)")
    parser.add_argument("--out", type=Path, default=None,
                        help="write the figures here instead of into each run directory")
    args = parser.parse_args(argv)
    for directory in args.runs:
        target = None if args.out is None else args.out / directory.name
        for path in redraw(directory, target):
            sys.stdout.write(f"{path}\n")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
