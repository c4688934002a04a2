"""Figures of an attenuation run: pure functions from its summary to Figures.

>>> summary = {"num_layers": 2, "subsets": {"all": 3, "small": 1, "large": 2},
...            "per_layer": [{"series": s, "subset": "all", "layer": l, "mean": 0.5,
...                           "ci_low": 0.4, "ci_high": 0.6, "n": 3}
...                          for s in LAST_SERIES for l in range(2)],
...            "small_minus_large": []}
>>> figure = attenuation_curves(summary)
>>> [axes.get_title() for axes in figure.axes][:2]
['image share (last)', 'region share (last)']
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from figures.style import PALETTE, SERIES_COLORS, house_style, new_figure, note_empty

LAST_SERIES = ("image_share(last)", "region_share(last)", "image_value_ratio(last)",
               "answer_prob")
QUESTION_SERIES = ("image_share(question)", "region_share(question)",
                   "image_value_ratio(question)")
TITLES = {
    "image_share(last)": "image share (last)", "image_share(question)": "image share (question)",
    "region_share(last)": "region share (last)",
    "region_share(question)": "region share (question)",
    "image_value_ratio(last)": "image value ratio (last)",
    "image_value_ratio(question)": "image value ratio (question)",
    "answer_prob": "logit lens: p(answer)", "answer_rank": "logit lens: rank of the answer",
}
SUBSET_COLORS = {"all": PALETTE["control"], "small": SERIES_COLORS[1], "large": SERIES_COLORS[0]}


def _curve(summary: Mapping[str, Any], series: str, subset: str) -> dict[str, np.ndarray]:
    rows = sorted((r for r in summary["per_layer"] if r["series"] == series
                   and r["subset"] == subset), key=lambda r: r["layer"])
    return {key: np.array([r[key] for r in rows], dtype=float)
            for key in ("layer", "mean", "ci_low", "ci_high")}


def curves(summary: Mapping[str, Any], series: Sequence[str]) -> Figure:
    """One panel per series: the mean per layer with its 95% CI band for every subset present
    (all samples grey, small targets orange, large blue)."""
    figure = new_figure(columns=2, height=2.0, ncols=len(series))
    subsets = [s for s in ("all", "small", "large") if summary["subsets"].get(s)]
    with house_style():
        for axes, name in zip(figure.axes, series):
            drawn = False
            for subset in subsets:
                curve = _curve(summary, name, subset)
                if not curve["layer"].size or not np.isfinite(curve["mean"]).any():
                    continue
                drawn = True
                color = SUBSET_COLORS[subset]
                axes.fill_between(curve["layer"], curve["ci_low"], curve["ci_high"],
                                  color=color, alpha=0.2, linewidth=0)
                axes.plot(curve["layer"], curve["mean"], color=color, marker="o", markersize=2,
                          label=f"{subset} (n={summary['subsets'][subset]})")
            if not drawn:
                note_empty(axes, "no sample with a value\n(n = 0)")
            axes.set_title(TITLES.get(name, name))
            axes.set_xlabel("layer")
            axes.set_xlim(-0.5, summary["num_layers"] - 0.5)
        if any(axes.lines for axes in figure.axes):
            figure.axes[-1].legend(loc="best")
    return figure


def attenuation_curves(summary: Mapping[str, Any]) -> Figure:
    """The curves at the ``last`` position."""
    return curves(summary, LAST_SERIES)


def question_curves(summary: Mapping[str, Any]) -> Figure:
    """The curves averaged over the question's tokens."""
    return curves(summary, QUESTION_SERIES)


def small_minus_large(summary: Mapping[str, Any]) -> Figure:
    """Per layer, mean(small) - mean(large) with its bootstrap 95% CI, for the last-position
    curves; zero marked."""
    figure = new_figure(columns=2, height=2.0, ncols=len(LAST_SERIES))
    with house_style():
        for axes, name in zip(figure.axes, LAST_SERIES):
            rows = sorted((r for r in summary["small_minus_large"] if r["series"] == name),
                          key=lambda r: r["layer"])
            layer = np.array([r["layer"] for r in rows], dtype=float)
            axes.axhline(0, color="black", linewidth=0.5)
            axes.fill_between(layer, [r["ci_low"] for r in rows], [r["ci_high"] for r in rows],
                              color=PALETTE["flow"], alpha=0.25, linewidth=0)
            axes.plot(layer, [r["difference"] for r in rows], color=PALETTE["flow"], marker="o",
                      markersize=2)
            axes.set_title(TITLES[name])
            axes.set_xlabel("layer")
        figure.axes[0].set_ylabel("small - large")
    return figure


def draw_all(summary: Mapping[str, Any], arrays: Mapping[str, np.ndarray] | None = None
             ) -> dict[str, Figure]:
    """Every figure of a run, by file name."""
    figures = {"attenuation_curves": attenuation_curves(summary),
               "attenuation_question": question_curves(summary)}
    if summary.get("small_minus_large"):
        figures["attenuation_small_vs_large"] = small_minus_large(summary)
    return figures
