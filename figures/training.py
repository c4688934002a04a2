"""The training curve of an embedded model, from the ``training.json`` its trainer writes.

    python -m figures.training probes/models/zoo/checkpoints/tiny-llava-smollm2/training.json \\
        --out docs/figures

>>> report = {"curve": [{"step": 10, "loss": 2.0}, {"step": 20, "loss": 1.0}],
...           "history": [{"step": 20, "easy_vqa_slice": {"all": 0.5, "color": 0.25}}],
...           "easy_vqa_test": {"all": 0.75, "color": 0.5}}
>>> [axes.get_ylabel() for axes in training_curve(report).axes]
['answer loss (10-step mean)', 'accuracy (first answer token)']
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from figures.style import (
    OKABE_ITO,
    PALETTE,
    house_style,
    log_y,
    new_figure,
    save,
    use_file_backend,
)
from probes.arguments import ArgumentParser
from probes.cli import run_cli
from probes.errors import UserError

KIND_ORDER = ("all", "color", "shape", "yes/no")


def training_curve(report: Mapping[str, Any]) -> Figure:
    """Left: the logged loss per step. Right: the periodic check's accuracy per question kind
    (``history[*].easy_vqa_slice``), and the final whole-test-split accuracy as points at the
    last step (``easy_vqa_test``), when the report has it; a dotted line where the first phase (shape
    questions only, ``config.shape_only_fraction``) ends."""
    curve, history = report.get("curve", []), report.get("history", [])
    if not curve:
        raise UserError("this training.json has no loss curve ('curve' is missing or empty).")
    figure = new_figure(columns=2, height=2.2, ncols=2)
    loss_axes, accuracy_axes = figure.axes
    with house_style():
        loss_axes.plot([row["step"] for row in curve], [row["loss"] for row in curve],
                       color=PALETTE["flow"])
        log_y(loss_axes)
        config = report.get("config", {})
        if config.get("shape_only_fraction") and config.get("steps"):
            switch = config["shape_only_fraction"] * config["steps"]
            for axes in (loss_axes, accuracy_axes):
                axes.axvline(switch, color=PALETTE["control"], linestyle=":", linewidth=0.8)
            loss_axes.annotate("every kind\nfrom here", (switch, 0.98), xytext=(3, 0),
                               xycoords=("data", "axes fraction"), textcoords="offset points",
                               va="top", fontsize="small", color="0.35")
        loss_axes.set_xlabel("step")
        loss_axes.set_ylabel("answer loss (10-step mean)")
        kinds = [k for k in KIND_ORDER if history and k in history[0]["easy_vqa_slice"]]
        kinds += sorted({k for row in history for k in row["easy_vqa_slice"]} - set(kinds))
        final = report.get("easy_vqa_test", {})
        last = curve[-1]["step"]
        for k, kind in enumerate(kinds):
            colour = "black" if kind == "all" else OKABE_ITO[(k + 1) % len(OKABE_ITO)]
            steps = [row["step"] for row in history if kind in row["easy_vqa_slice"]]
            values = [100 * row["easy_vqa_slice"][kind] for row in history
                      if kind in row["easy_vqa_slice"]]
            accuracy_axes.plot(steps, values, marker=".", color=colour, label=kind,
                               linewidth=1.6 if kind == "all" else 1.0)
            if kind in final:
                accuracy_axes.plot([last], [100 * final[kind]], marker="D", color=colour,
                                   linestyle="none", markersize=4)
        accuracy_axes.set_xlabel("step")
        accuracy_axes.set_ylabel("accuracy (first answer token)")
        accuracy_axes.set_ylim(0, 100)
        if kinds:
            accuracy_axes.legend(loc="lower right", title_fontsize="small", ncols=2,
                                 title="lines: 200-question check\n"
                                 "diamonds: whole test split" if final else None)
    return figure


def main(argv: Sequence[str] | None = None) -> int:
    use_file_backend()
    parser = ArgumentParser(prog="python -m figures.training", description=__doc__.split("\n")[0])
    parser.add_argument("report", type=Path, help="a training.json")
    parser.add_argument("--out", type=Path, default=None,
                        help="directory for training_curve.png/.pdf (default: beside the report)")
    parser.add_argument("--name", default="training_curve", help="file name without extension")
    args = parser.parse_args(argv)
    try:
        report = json.loads(args.report.read_text())
    except FileNotFoundError:
        raise UserError(f"{args.report} does not exist.") from None
    except json.JSONDecodeError as err:
        raise UserError(f"{args.report} is not JSON ({err.msg} at line {err.lineno}).") from None
    for path in save(training_curve(report), args.out or args.report.parent, args.name):
        sys.stdout.write(f"{path}\n")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
