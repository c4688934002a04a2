"""Figures of an activation patching run: pure functions from its summary to Figures.

>>> summary = {"num_layers": 3, "sites": ["residual"], "groups": ["image", "last"],
...            "config": {"direction": "denoise", "corrupt": "noise", "head_group": "last"},
...            "per_layer": [{"site": "residual", "group": g, "layer": l, "mean": 0.1 * l,
...                           "n": 4} for g in ("image", "last") for l in range(3)],
...            "heads": []}
>>> figure = group_heatmaps(summary)
>>> [axes.get_title() for axes in figure.axes[:1]]
['residual']
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from figures.style import house_style, new_figure, note_empty

CMAP = "RdBu_r"


def _label(summary: Mapping[str, Any]) -> str:
    config = summary["config"]
    what = ("clean into corrupt: share of the logit difference restored"
            if config["direction"] == "denoise"
            else "corrupt into clean: share of the logit difference removed")
    return f"patching {what} (--corrupt {config['corrupt']})"


def _grid(rows, row_key: str, row_names, layers: int) -> np.ndarray:
    grid = np.full((len(row_names), layers), np.nan)
    for row in rows:
        if row["n"]:
            grid[row_names.index(row[row_key]), row["layer"]] = row["mean"]
    return grid


def _heatmap(figure: Figure, axes, grid: np.ndarray, row_names, title: str, label: str):
    limit = max(1.0, float(np.nanmax(np.abs(grid)))) if np.isfinite(grid).any() else 1.0
    image = axes.imshow(grid, aspect="auto", cmap=CMAP, vmin=-limit, vmax=limit,
                        interpolation="nearest")
    axes.set_yticks(range(len(row_names)), [str(name) for name in row_names])
    axes.set_xlabel("layer")
    axes.set_title(title)
    if not np.isfinite(grid).any():
        note_empty(axes, "no sample (n = 0)")
    figure.colorbar(image, ax=axes, label=label, shrink=0.9)


def group_heatmaps(summary: Mapping[str, Any]) -> Figure:
    """Per site, the mean effect per (token group, layer)."""
    sites, groups = summary["sites"], summary["groups"]
    figure = new_figure(columns=2, height=1.0 + 0.9 * len(sites) * max(1, len(groups)) / 3,
                        nrows=max(1, len(sites)))
    with house_style():
        for axes, site in zip(figure.axes, sites):
            rows = [r for r in summary["per_layer"] if r["site"] == site]
            _heatmap(figure, axes, _grid(rows, "group", groups, summary["num_layers"]), groups,
                     site, "effect")
        figure.suptitle(_label(summary), fontsize="small")
    return figure


def head_heatmap(summary: Mapping[str, Any]) -> Figure:
    """The mean effect of each head's output at the head group, per (head, layer)."""
    heads = sorted({r["head"] for r in summary["heads"]})
    figure = new_figure(columns=2, height=1.2 + 0.12 * len(heads))
    axes = figure.axes[0]
    with house_style():
        _heatmap(figure, axes, _grid(summary["heads"], "head", heads, summary["num_layers"]),
                 heads, f"heads at {summary['config']['head_group']}", "effect")
        axes.set_ylabel("head")
        figure.suptitle(_label(summary), fontsize="small")
    return figure


def draw_all(summary: Mapping[str, Any], arrays: Mapping[str, np.ndarray] | None = None
             ) -> dict[str, Figure]:
    """Every figure of a run, by file name."""
    figures = {}
    if summary["sites"]:
        figures["patching_groups"] = group_heatmaps(summary)
    if summary["heads"]:
        figures["patching_heads"] = head_heatmap(summary)
    return figures
