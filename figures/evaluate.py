"""The figure of an evaluation: per benchmark, each method's headline score with its 95% CI
(a filled marker where the change from clean is significant, p < 0.05).

>>> summary = {"method_names": ["clean", "aif"], "benchmarks": ["a", "b"], "results": {
...     name: {"methods": [{"method": "clean", "accuracy": 0.5, "ci_low": 0.4, "ci_high": 0.6,
...                         "n": 9, "p_value_vs_clean": None, "summary": "mean"},
...                        {"method": "aif", "accuracy": 0.6, "ci_low": 0.5, "ci_high": 0.7,
...                         "n": 9, "p_value_vs_clean": 0.01, "summary": "mean"}]}
...     for name in ("a", "b")}}
>>> [axes.get_title() for axes in scores(summary).axes]
['a', 'b']
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from figures.style import PALETTE, SERIES_COLORS, house_style, new_figure

ALPHA = 0.05
HEADLINE = {"mean": "score", "macro": "macro score", "pope": "F1", "refcoco": "acc@IoU0.5"}


def label(method: str) -> str:
    """``vif:PATH`` as ``vif:`` and the file's stem; other methods as they are."""
    name, _, path = method.partition(":")
    return f"{name}:{PurePath(path).stem}" if path else method


def method_colors(methods) -> dict[str, str]:
    """clean in the control grey, the others in the palette's order."""
    others = iter(SERIES_COLORS)
    return {method: PALETTE["control"] if method == "clean" else next(others)
            for method in methods}


def scores(summary: Mapping[str, Any]) -> Figure:
    """One panel per benchmark: score (%) with its 95% CI per method."""
    names, methods = summary["benchmarks"], summary["method_names"]
    colors = method_colors(methods)
    columns = min(len(names), 5)
    rows = int(np.ceil(len(names) / columns))
    figure = new_figure(columns=1 if len(names) == 1 else 2, height=1.9 * rows, ncols=columns,
                        nrows=rows)
    with house_style():
        for axes, name in zip(figure.axes, names):
            result = summary["results"][name]
            for k, row in enumerate(result["methods"]):
                if not row["n"]:
                    continue
                value = 100 * row["accuracy"]
                error = [[max(0.0, value - 100 * row["ci_low"])],  # rounding: never < 0
                         [max(0.0, 100 * row["ci_high"] - value)]]
                p = row.get("p_value_vs_clean")
                filled = p is not None and p < ALPHA
                axes.errorbar([k], [value], yerr=error, fmt="o", color=colors[row["method"]],
                              markerfacecolor=colors[row["method"]] if filled or
                              row["method"] == "clean" else "white", capsize=2, markersize=4)
            clean = result["methods"][0]
            if clean["n"]:
                axes.axhline(100 * clean["accuracy"], color=PALETTE["control"], linewidth=0.6,
                             linestyle=":")
            axes.set_xticks(range(len(methods)))
            axes.set_xticklabels([label(m) for m in methods], rotation=45, ha="right")
            axes.set_xlim(-0.6, len(methods) - 0.4)
            axes.set_title(name)
            axes.set_ylabel(f"{HEADLINE.get(clean.get('summary', 'mean'), 'score')} (%)")
        for axes in figure.axes[len(names):]:
            axes.set_axis_off()
    return figure


def draw_all(summary: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> dict[str, Figure]:
    """Every figure of an evaluation, by file name."""
    return {"evaluate_scores": scores(summary)}
