"""Figures of a VIF run: pure functions from its summary and arrays to Figures.

>>> import numpy as np
>>> summary = {"methods": [{"method": "clean", "accuracy": 0.4, "ci_low": 0.3, "ci_high": 0.5,
...                         "n": 10, "p_value_vs_clean": None},
...                        {"method": "vif", "accuracy": 0.5, "ci_low": 0.4, "ci_high": 0.6,
...                         "n": 10, "p_value_vs_clean": 0.5}], "methods_by_kind": []}
>>> [axes.get_ylabel() for axes in accuracy(summary).axes]
['accuracy']
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from figures.style import PALETTE, SEQUENTIAL, house_style, new_figure

METHOD_COLORS = {"clean": PALETTE["control"], "vif": PALETTE["flow"]}


def training_curves(arrays: Mapping[str, np.ndarray]) -> Figure:
    """Loss, its answer cross-entropy, KL and sparsity per step (a 20-step running mean)."""
    names = ("loss", "nll", "kl", "sparsity")
    figure = new_figure(columns=2, height=1.8, ncols=len(names))
    with house_style():
        for axes, name in zip(figure.axes, names):
            values = np.asarray(arrays[f"history_{name}"], dtype=float)
            if values.size:
                window = min(20, values.size)
                smooth = np.convolve(values, np.ones(window) / window, mode="valid")
                axes.plot(np.arange(values.size), values, color=PALETTE["control"], linewidth=0.5)
                axes.plot(np.arange(window - 1, values.size), smooth, color=PALETTE["flow"])
            axes.set_title(name)
            axes.set_xlabel("step")
    return figure


def _grid(heat: np.ndarray, coords: np.ndarray) -> tuple[np.ndarray, tuple]:
    """Heat on the patch grid spelt out by the centres (one grid: the rows of distinct y)."""
    real = np.isfinite(heat)
    heat, coords = heat[real], coords[real]
    xs, ys = np.unique(coords[:, 0]), np.unique(coords[:, 1])
    grid = np.full((ys.size, xs.size), np.nan)
    grid[np.searchsorted(ys, coords[:, 1]), np.searchsorted(xs, coords[:, 0])] = heat
    return grid, (0, 1, 1, 0)


def heatmaps(arrays: Mapping[str, np.ndarray], columns: int = 4) -> Figure:
    """The prior's heatmap over a few held-out images, with the question and the answer."""
    images = arrays["example_images"]
    count = len(images)
    rows = int(np.ceil(count / columns))
    figure = new_figure(columns=2, height=1.9 * rows, ncols=columns, nrows=rows)
    with house_style():
        for k, axes in enumerate(figure.axes):
            axes.set_axis_off()
            if k >= count:
                continue
            grid, extent = _grid(arrays["example_heatmaps"][k], arrays["example_coords"][k])
            axes.imshow(images[k], extent=extent)
            axes.imshow(grid, extent=extent, cmap=SEQUENTIAL, alpha=0.55, interpolation="nearest")
            axes.set_title(f"{arrays['example_questions'][k]}\n-> {arrays['example_answers'][k]}",
                           fontsize=5)
    return figure


def accuracy(summary: Mapping[str, Any]) -> Figure:
    """Accuracy of clean vs VIF, overall and per question kind, with 95% Wilson CIs."""
    groups = [("all", summary["methods"])]
    kinds = sorted({row["kind"] for row in summary.get("methods_by_kind", [])})
    groups += [(kind, [r for r in summary["methods_by_kind"] if r["kind"] == kind])
               for kind in kinds]
    figure = new_figure(columns=1, height=2.0)
    axes = figure.axes[0]
    with house_style():
        for g, (_name, rows) in enumerate(groups):
            for m, row in enumerate(rows):
                x = g + (m - 0.5) * 0.35
                axes.bar(x, row["accuracy"], width=0.33, color=METHOD_COLORS.get(row["method"]),
                         label=row["method"] if g == 0 else None)
                axes.errorbar(x, row["accuracy"], yerr=[[row["accuracy"] - row["ci_low"]],
                                                        [row["ci_high"] - row["accuracy"]]],
                              color="black", linewidth=0.6, capsize=1.5)
        axes.set_xticks(range(len(groups)), [name for name, _ in groups])
        axes.set_ylabel("accuracy")
        axes.set_ylim(0, 1)
        axes.legend(loc="upper right")
    return figure


def draw_all(summary: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> dict[str, Figure]:
    """Every figure of a run, by file name."""
    figures = {"vif_accuracy": accuracy(summary)}
    if np.asarray(arrays.get("history_loss", [])).size:
        figures["vif_training"] = training_curves(arrays)
    if "example_images" in arrays:
        figures["vif_heatmaps"] = heatmaps(arrays)
    return figures
