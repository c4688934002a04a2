"""Redraw the figures of saved runs, without a model: ``python -m figures.paper RUN_DIR...``.

Each run directory holds ``summary.json`` (whose ``analysis`` key says which figures to draw)
and ``arrays.npz``; the figures are written next to them as PNG and PDF, or into ``--out``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from analyses.results import RunResult
from figures import attention_evolution, attenuation, evaluate, layer_masking, token_importance, vif
from figures.style import save, use_file_backend
from probes.arguments import ArgumentParser
from probes.cli import run_cli
from probes.errors import UserError

DRAWERS: dict[str, Callable[[Mapping, Mapping], dict]] = {
    "layer_masking": layer_masking.draw_all,
    "attention_evolution": attention_evolution.draw_all,
    "contrastive_attention": attention_evolution.draw_contrastive,
    "token_importance": token_importance.draw_all,
    "attenuation": attenuation.draw_all,
    "train_vif": vif.draw_all,
    "evaluate": evaluate.draw_all,
}


def draw_run(result: RunResult) -> dict:
    """Every figure of one saved run, by name."""
    analysis = result.summary.get("analysis")
    if analysis not in DRAWERS:
        raise UserError(f"no figures are known for analysis {analysis!r}; known: "
                        f"{', '.join(sorted(DRAWERS))}.")
    return DRAWERS[analysis](result.summary, result.arrays)


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
