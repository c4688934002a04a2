"""Figures of a token-importance (AIF) run: pure functions from its summary and arrays.

>>> import numpy as np
>>> rows, cols = np.meshgrid(np.arange(2), np.arange(2), indexing="ij")
>>> cells = np.stack([np.zeros(4, int), rows.ravel(), cols.ravel()], 1)[None]
>>> arrays = {"entropy": np.array([[0.1, 0.9, 0.5, 0.7]]), "mu": np.array([[0.4, 0.1, 0.3, 0.2]]),
...           "cells": cells, "is_object": np.array([[True, False, False, False]]),
...           "masked_count": np.array([[0, 2]])}
>>> figure = entropy_map({"method_names": ["clean", "aif"]}, arrays)
>>> [axes.get_title() for axes in figure.axes[:2]]
['curve entropy (low = important)', 'mu (mean attention)']
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from figures.style import PALETTE, SEQUENTIAL, SERIES_COLORS, house_style, new_figure


def _grid(values: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """Values of the first grid's tokens placed on that grid (NaN elsewhere)."""
    first = (cells[:, 0] == 0) & np.isfinite(values)
    rows, cols = cells[first, 1], cells[first, 2]
    grid = np.full((rows.max() + 1, cols.max() + 1), np.nan)
    grid[rows, cols] = values[first]
    return grid


def entropy_map(summary: Mapping[str, Any], arrays: Mapping[str, np.ndarray],
                sample: int = 0) -> Figure:
    """One sample's curve entropy and mu over the image grid; the object's tokens dotted,
    the tokens AIF masks crossed."""
    entropy, mu = arrays["entropy"][sample], arrays["mu"][sample]
    cells = arrays["cells"][sample]
    valid = cells[:, 0] >= 0
    entropy, mu, cells = entropy[valid], mu[valid], cells[valid]
    is_object = arrays["is_object"][sample][valid]
    aif = summary["method_names"].index("aif")
    count = int(arrays["masked_count"][sample, aif])
    masked = np.lexsort((np.arange(entropy.size), -entropy))[:count]
    figure = new_figure(columns=2, height=2.6, ncols=2)
    with house_style():
        for axes, values, title in zip(figure.axes, (entropy, mu),
                                       ("curve entropy (low = important)", "mu (mean attention)")):
            image = axes.imshow(_grid(values, cells), cmap=SEQUENTIAL, interpolation="nearest")
            figure.colorbar(image, ax=axes, shrink=0.8)
            first = cells[:, 0] == 0
            if is_object.any():
                chosen = first & is_object
                axes.plot(cells[chosen, 2], cells[chosen, 1], "o", color="white", mec="black", mew=0.4,
                          markersize=3, label="object token")
            chosen = np.zeros(entropy.size, bool)
            chosen[masked] = True
            chosen &= first
            axes.plot(cells[chosen, 2], cells[chosen, 1], "x", color=PALETTE["fusion"],
                      markersize=3, label="masked by AIF")
            axes.set_title(title)
            axes.set_xticks([])
            axes.set_yticks([])
        figure.axes[0].legend(loc="upper left", bbox_to_anchor=(0, -0.02), ncols=2)
    return figure


def dynamics_curves(summary: Mapping[str, Any]) -> Figure:
    """Mean token dynamics d^l per layer of the tokens AIF keeps vs those it masks (95% CI)."""
    figure = new_figure(columns=1, height=2.2)
    axes = figure.axes[0]
    series = list(dict.fromkeys(row["series"] for row in summary["per_layer"]))
    with house_style():
        for color, name in zip(SERIES_COLORS, series):
            rows = sorted((r for r in summary["per_layer"] if r["series"] == name),
                          key=lambda r: r["layer"])
            layers = [r["layer"] for r in rows]
            axes.fill_between(layers, [r["ci_low"] for r in rows], [r["ci_high"] for r in rows],
                              color=color, alpha=0.25, linewidth=0)
            axes.plot(layers, [r["mean"] for r in rows], color=color, marker="o",
                      markersize=2.5, label=name)
        axes.set_xlabel("layer")
        axes.set_ylabel("max text->token attention")
        axes.legend()
    return figure


def s_curve(summary: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> Figure:
    """Left: S(r) - S0 per candidate ratio (mean and one sample), the chosen ratio marked.
    Right: how often each ratio was chosen, by the published and the normalised S."""
    ratios = np.asarray(summary["config"]["aif"]["ratios"], dtype=float)
    shift = arrays["s_curve"] - arrays["s0"][:, None]
    figure = new_figure(columns=2, height=2.2, ncols=2)
    left, right = figure.axes
    with house_style():
        left.axhline(0, color="black", linewidth=0.5)
        left.plot(ratios, np.nanmean(shift, 0), color=PALETTE["flow"], marker="o",
                  markersize=2.5, label="mean over samples")
        left.plot(ratios, shift[0], color=PALETTE["control"], linestyle="--",
                  label="first sample")
        chosen = int(np.nanargmax(np.abs(shift[0])))
        left.plot(ratios[chosen], shift[0, chosen], "*", color=PALETTE["fusion"], markersize=7,
                  label="its chosen ratio")
        left.set_xlabel("mask ratio r")
        left.set_ylabel("S(r) - S0 (nats)")
        left.legend()
        width = 0.35 * (ratios[1] - ratios[0]) if ratios.size > 1 else 0.03
        for offset, key, color, label in ((-width / 2, "published_s", PALETTE["flow"],
                                           "published S"),
                                          (width / 2, "normalized_s", PALETTE["highlight"],
                                           "normalised S")):
            counts = [summary["chosen_ratios"][key].get(f"{r:g}", 0) for r in ratios]
            right.bar(ratios + offset, counts, width=width, color=color, label=label)
        right.set_xlabel("chosen ratio")
        right.set_ylabel("samples")
        right.legend()
    return figure


def accuracy_table(summary: Mapping[str, Any]) -> Figure:
    """Accuracy of every method with its 95% Wilson interval; clean's as a reference line."""
    rows = summary["methods"]
    figure = new_figure(columns=1, height=0.25 * len(rows) + 0.8)
    axes = figure.axes[0]
    with house_style():
        positions = np.arange(len(rows))[::-1]
        accuracy = np.array([r["accuracy"] for r in rows]) * 100
        low = accuracy - np.array([r["ci_low"] for r in rows]) * 100
        high = np.array([r["ci_high"] for r in rows]) * 100 - accuracy
        colors = [PALETTE["control"] if r["method"] == "clean" else PALETTE["fusion"]
                  if r["p_value_vs_clean"] < 0.05 else PALETTE["flow"] for r in rows]
        axes.axvline(accuracy[0], color=PALETTE["control"], linewidth=0.6, linestyle="--")
        axes.errorbar(accuracy, positions, xerr=[low, high], fmt="none", ecolor="black",
                      elinewidth=0.6, capsize=1.5)
        axes.scatter(accuracy, positions, c=colors, s=12, zorder=3)
        axes.set_yticks(positions, [r["method"] for r in rows])
        axes.set_xlabel(f"accuracy (%), 95% CI, n = {rows[0]['n']}; orange: McNemar p < 0.05")
    return figure


def draw_all(summary: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> dict[str, Figure]:
    """Every figure of a run, by file name."""
    return {
        "aif_accuracy": accuracy_table(summary),
        "aif_entropy_map": entropy_map(summary, arrays),
        "aif_dynamics": dynamics_curves(summary),
        "aif_s_curve": s_curve(summary, arrays),
    }
