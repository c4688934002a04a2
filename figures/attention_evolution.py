"""Figures of attention-evolution and contrastive-attention runs: pure functions from a run's
summary (and arrays) to Figures: maps overlaid on the image per layer, curves over layers with
95% CIs, sink patches marked, the contrastive maps, localisation and refinement accuracy.

>>> import numpy as np
>>> summary = {"series": ["question", "last"], "num_layers": 2, "sinks": {"patches": []},
...            "per_layer": [{"series": s, "metric": m, "layer": l, "mean": 0.5,
...                           "ci_low": 0.4, "ci_high": 0.6, "n": 3}
...                          for s in ("question", "last") for m in ("relevant_share", "auroc")
...                          for l in range(2)]}
>>> [axes.get_ylabel() for axes in evolution_curves(summary).axes]
['share of the map on the region', 'AUROC of the map vs the region']
>>> grid_values(np.array([1.0, 2.0, 3.0, 4.0]), np.array([[0, 0, 0], [0, 0, 1], [0, 1, 0], [0, 1, 1]]))
array([[1., 2.],
       [3., 4.]])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from figures.overlay import overlay
from figures.style import DIVERGING, PALETTE, SEQUENTIAL, SERIES_COLORS, house_style, new_figure

METRIC_LABELS = {
    "relevant_share": "share of the map on the region",
    "auroc": "AUROC of the map vs the region",
    "pointing": "pointing accuracy",
    "entropy": "entropy / log(patches)",
    "image_share": "attention on image tokens",
    "sink_share": "share of the map on sinks",
}
CHANCE = {"auroc": 0.5}


def grid_values(values: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """Per-patch ``values`` placed on the first patch grid ([rows, cols]; NaN where no patch)."""
    first = cells[:, 0] == 0
    rows, cols = cells[first, 1].max() + 1, cells[first, 2].max() + 1
    grid = np.full((rows, cols), np.nan)
    grid[cells[first, 1], cells[first, 2]] = values[first]
    return grid


def cell_boxes(cells: np.ndarray, geometry: np.ndarray, pixels: int) -> np.ndarray:
    """[patches, 4] pixel boxes, on a square image of ``pixels``, of the patches of the first
    grid placed by ``geometry`` = [rows, cols, x0, y0, cell width, cell height] (fractions of
    the image); NaN for the other grids' patches. The geometry :func:`figures.overlay` takes."""
    _, _, x0, y0, width, height = geometry
    cells = np.asarray(cells)
    boxes = np.full((len(cells), 4), np.nan)
    first = cells[:, 0] == 0
    left, top = x0 + cells[first, 2] * width, y0 + cells[first, 1] * height
    boxes[first] = np.clip(np.stack([left, top, left + width, top + height], 1) * pixels,
                           0, pixels)
    return boxes


def _overlay(axes, image, values, cells, geometry, cmap=SEQUENTIAL, vmin=None, vmax=None,
             marked: Sequence[int] = (), alpha: float = 0.6):
    boxes = cell_boxes(cells, geometry, image.shape[0])
    marked = [p for p in marked if not np.isnan(boxes[p, 0])]
    overlay(image, values, boxes, ax=axes, cmap=cmap, alpha=alpha, vmin=vmin, vmax=vmax,
            marked=marked)


def map_grid(summary: Mapping[str, Any], arrays: Mapping[str, np.ndarray], series: str = "last",
             layers: Sequence[int] | None = None) -> Figure:
    """Rows: example samples; columns: layers. Each panel is the series' map over the image
    (each panel scaled to its own maximum), sink patches marked with an orange x; the first
    column names the sample's kind."""
    layers = list(summary["figure_layers"] if layers is None else layers)
    examples = np.asarray(arrays["example_index"], dtype=int)
    s = summary["series"].index(series)
    count = max(1, len(examples))
    figure = new_figure(columns=2, height=0.25 + 1.05 * count, ncols=len(layers), nrows=count)
    grid = np.array(figure.axes).reshape(count, len(layers))
    sinks = summary["sinks"]["patches"]
    # examples are named by dataset index; a shard's arrays hold only its own samples
    order = arrays.get("sample_index", np.arange(len(arrays["maps"])))
    row_of = {int(i): row for row, i in enumerate(order)}
    with house_style():
        for r, example in enumerate(examples):
            index = row_of[int(example)]
            for c, layer in enumerate(layers):
                values = np.asarray(arrays["maps"][index, s, layer], dtype=float)
                _overlay(grid[r, c], arrays["example_images"][r], values, arrays["cells"],
                         arrays["example_grid"][r], vmin=0, vmax=values.max(), marked=sinks)
                if r == 0:
                    grid[r, c].set_title(f"layer {layer}")
            grid[r, 0].set_ylabel(str(arrays["kind"][index]))
        if not len(examples):
            grid[0, 0].text(0.5, 0.5, "no sample with a region", ha="center")
        figure.suptitle(f"attention of {series} on the image, by layer")
    return figure


def _rows(summary: Mapping[str, Any], series: str, metric: str) -> dict[str, np.ndarray]:
    rows = sorted((r for r in summary["per_layer"] if r["series"] == series
                   and r["metric"] == metric), key=lambda r: r["layer"])
    return {key: np.array([r[key] for r in rows], dtype=float)
            for key in ("layer", "mean", "ci_low", "ci_high")}


def evolution_curves(summary: Mapping[str, Any],
                     metrics: Sequence[str] = ("relevant_share", "auroc", "sink_share")) -> Figure:
    """One panel per metric: the mean over samples per layer with its 95% CI band, one line
    per query series (metrics the run does not have, e.g. sink_share without sinks, are
    skipped); AUROC's chance level dashed."""
    present = [m for m in metrics if any(r["metric"] == m for r in summary["per_layer"])]
    figure = new_figure(columns=1 if len(present) <= 1 else 2, height=2.0,
                        ncols=max(1, len(present)))
    if not present:  # no sample with a region (a shard or a dataset without boxes)
        figure.axes[0].text(0.5, 0.5, "no sample with a region: nothing to show", ha="center")
        figure.axes[0].set_axis_off()
        return figure
    with house_style():
        for axes, metric in zip(figure.axes, present):
            for color, series in zip(SERIES_COLORS, summary["series"]):
                rows = _rows(summary, series, metric)
                if not rows["layer"].size:
                    continue
                axes.fill_between(rows["layer"], rows["ci_low"], rows["ci_high"], color=color,
                                  alpha=0.2, linewidth=0)
                axes.plot(rows["layer"], rows["mean"], color=color, marker="o", markersize=2.5,
                          label=series)
            if metric in CHANCE:
                axes.axhline(CHANCE[metric], color=PALETTE["control"], linestyle="--",
                             linewidth=0.8, label="chance")
            axes.set_xlabel("layer")
            axes.set_ylabel(METRIC_LABELS[metric])
            axes.set_xlim(-0.3, summary["num_layers"] - 0.7)
        figure.axes[0].legend()
    return figure


def sink_map(summary: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> Figure:
    """Sink score of every patch on the patch grid; sink patches (score >= threshold) marked."""
    figure = new_figure(columns=1, height=2.4)
    axes = figure.axes[0]
    scores = np.asarray(arrays["sink_score"], dtype=float)
    cells = np.asarray(arrays["cells"])
    with house_style():
        shown = axes.imshow(grid_values(scores, cells), cmap=SEQUENTIAL, vmin=0,
                            vmax=max(0.5, np.nanmax(scores)), interpolation="nearest")
        sinks = [p for p in summary["sinks"]["patches"] if cells[p, 0] == 0]
        if sinks:
            axes.plot(cells[sinks, 2], cells[sinks, 1], "x", color=PALETTE["highlight"],
                      markersize=6, markeredgewidth=1.5, label="sink")
            axes.legend(loc="upper right", bbox_to_anchor=(1.0, -0.02))
        axes.set_title(f"sink score per patch ({len(summary['sinks']['patches'])} sinks; "
                       f"chance {summary['sinks']['chance']:.2f})")
        axes.set_xticks([])
        axes.set_yticks([])
        figure.colorbar(shown, ax=axes, label="share of maps where high", shrink=0.8)
    return figure


def draw_all(summary: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> dict[str, Figure]:
    """Every figure of an attention-evolution run, by file name."""
    return {
        "attention_maps": map_grid(summary, arrays, "last"),
        "attention_maps_question": map_grid(summary, arrays, "question"),
        "attention_curves": evolution_curves(summary),
        "attention_shares": evolution_curves(summary, ("image_share", "entropy", "pointing")),
        "sink_scores": sink_map(summary, arrays),
    }


# ----------------------------------------------------------------- contrastive attention
def contrastive_examples(summary: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> Figure:
    """Per example sample: the early map, the late map, and the contrastive map (blue = lost,
    red = gained), with the suppressed patches marked on the contrastive one."""
    layers = summary["layers"]
    examples = np.asarray(arrays["example_index"], dtype=int)
    count = max(1, len(examples))
    figure = new_figure(columns=1, height=0.3 + 1.05 * count, ncols=3, nrows=count)
    grid = np.array(figure.axes).reshape(count, 3)
    with house_style():
        for r, index in enumerate(examples):
            maps = np.asarray(arrays["maps"][index], dtype=float)
            early, late = maps[layers["early"]], maps[layers["late"]]
            contrast = late - early
            limit = max(np.abs(contrast).max(), 1e-12)
            image, geometry = arrays["example_images"][r], arrays["example_grid"][r]
            _overlay(grid[r, 0], image, early, arrays["cells"], geometry, vmin=0, vmax=early.max())
            _overlay(grid[r, 1], image, late, arrays["cells"], geometry, vmin=0, vmax=late.max())
            _overlay(grid[r, 2], image, contrast, arrays["cells"], geometry, cmap=DIVERGING,
                     vmin=-limit, vmax=limit, alpha=0.7,
                     marked=np.flatnonzero(arrays["suppressed"][index]))
            grid[r, 0].set_ylabel(str(arrays["kind"][index]))
        grid[0, 0].set_title(f"early (layer {layers['early']})")
        grid[0, 1].set_title(f"late (layer {layers['late']})")
        grid[0, 2].set_title("late - early")
    return figure


def localisation_bars(summary: Mapping[str, Any]) -> Figure:
    """AUROC and pointing of the early, late and contrastive maps, with 95% CIs."""
    figure = new_figure(columns=1, height=2.0, ncols=2)
    with house_style():
        for axes, metric in zip(figure.axes, ("auroc", "pointing")):
            rows = [r for r in summary["localisation"] if r["metric"] == metric]
            names = [r["map"] for r in rows]
            means = np.array([r["mean"] for r in rows])
            errors = np.array([[r["mean"] - r["ci_low"] for r in rows],
                               [r["ci_high"] - r["mean"] for r in rows]])
            axes.bar(names, means, yerr=errors, color=SERIES_COLORS[: len(rows)], capsize=2)
            if metric in CHANCE:
                axes.axhline(CHANCE[metric], color=PALETTE["control"], linestyle="--",
                             linewidth=0.8)
            axes.set_ylabel(METRIC_LABELS[metric])
            axes.tick_params(axis="x", labelrotation=20)
    return figure


def refinement_bars(summary: Mapping[str, Any]) -> Figure:
    """Accuracy of the clean decode, the refinement and the random control with Wilson 95% CIs
    and exact McNemar p-values against clean."""
    rows = summary["methods"]
    figure = new_figure(columns=1, height=2.0)
    axes = figure.axes[0]
    with house_style():
        means = np.array([r["accuracy"] for r in rows])
        errors = np.array([[r["accuracy"] - r["ci_low"] for r in rows],
                           [r["ci_high"] - r["accuracy"] for r in rows]])
        colors = [PALETTE["flow"], PALETTE["fusion"], PALETTE["control"]]
        axes.bar([r["method"] for r in rows], means, yerr=errors, color=colors, capsize=2)
        for x, row in enumerate(rows):
            if row["p_value_vs_clean"] is not None:
                axes.text(x, row["ci_high"] + 0.01, f"p={row['p_value_vs_clean']:.2f}",
                          ha="center", va="bottom", fontsize=6)
        axes.set_ylabel(f"accuracy (n={rows[0]['n']})")
        axes.set_ylim(0, min(1.0, max(r["ci_high"] for r in rows) + 0.12))
    return figure


def draw_contrastive(summary: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> dict[str, Figure]:
    """Every figure of a contrastive-attention run, by file name."""
    figures = {"contrastive_maps": contrastive_examples(summary, arrays)}
    if summary["localisation"]:
        figures["contrastive_localisation"] = localisation_bars(summary)
    if "methods" in summary:
        figures["refinement_accuracy"] = refinement_bars(summary)
    return figures
