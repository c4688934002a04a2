"""Figures of an attention-sink run (:mod:`analyses.sinks`): pure functions from its summary to
Figures.

>>> from analyses.sinks.run import SERIES
>>> summary = {"num_layers": 2, "tau": 20.0,
...            "per_layer": [{"series": s, "subset": "all", "layer": l, "mean": 0.5,
...                           "ci_low": 0.4, "ci_high": 0.6, "n": 3}
...                          for s in SERIES for l in range(2)]}
>>> [axes.get_title() for axes in draw_all(summary)["sinks_massive"].axes]
['visual sink tokens', 'max |h_d| / median |h_d|', "first token's max |h_d| / RMS"]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from matplotlib.figure import Figure

from figures.logit_lens import _band, _curve, _layer_axis
from figures.style import PALETTE, SERIES_COLORS, house_style, log_y, new_figure, note_empty

GROUP_LABELS = {"first": "first token", "image": "image tokens",
                "before": "text before the image", "after": "text after the image"}
RATIO_LABELS = {"first": "first token", "image": "image tokens (max)", "text": "text (max)"}


def _panel(axes, summary: Mapping[str, Any], series: Mapping[str, str], title: str,
           log: bool = False) -> None:
    """One panel: each series (name -> label) per layer with its 95% CI band."""
    drawn = [_band(axes, _curve(summary, name, "all"), SERIES_COLORS[k % len(SERIES_COLORS)],
                   label) for k, (name, label) in enumerate(series.items())]
    if not any(drawn):
        note_empty(axes, "no sample (n = 0)")
    else:
        axes.legend(loc="best", fontsize=6)
    if log:
        log_y(axes)
    axes.set_title(title)
    _layer_axis(axes, summary)


def attention(summary: Mapping[str, Any]) -> Figure:
    """The answer row's and the question rows' attention on the four key groups per layer
    (heads averaged)."""
    figure = new_figure(columns=2, height=2.2, ncols=2)
    with house_style():
        for axes, query, title in zip(figure.axes, ("answer", "question"),
                                      ("answer row (last)", "question rows (mean)")):
            _panel(axes, summary, {f"{query}_{g}": label for g, label in GROUP_LABELS.items()},
                   f"attention of the {title}")
            axes.set_ylabel("share of attention")
            axes.set_ylim(-0.02, 1.02)
    return figure


def massive(summary: Mapping[str, Any]) -> Figure:
    """Per layer: the share of image tokens that are visual sink tokens and the answer row's
    attention on them; the largest max/median |h_d| per token group (log scale); the first
    token's max |h_d| / RMS beside tau (the sink-dimension threshold)."""
    figure = new_figure(columns=2, height=2.2, ncols=3)
    sinks, ratios, first = figure.axes
    with house_style():
        _panel(sinks, summary, {"visual_share": "share of image tokens",
                                "visual_attention": "answer row's attention on them"},
               "visual sink tokens")
        sinks.set_ylim(-0.02, 1.02)
        _panel(ratios, summary, {f"top_ratio_{g}": label for g, label in RATIO_LABELS.items()},
               "max |h_d| / median |h_d|", log=True)
        _panel(first, summary, {"first_ratio": "first token"},
               "first token's max |h_d| / RMS", log=True)
        first.axhline(summary["tau"], color=PALETTE["control"], linestyle="--", linewidth=0.8,
                      label=f"tau = {summary['tau']:g}")
        first.legend(loc="best", fontsize=6)
    return figure


def draw_all(summary: Mapping[str, Any], arrays: Mapping | None = None) -> dict[str, Figure]:
    """Every figure of a run, by file name."""
    return {"sinks_attention": attention(summary), "sinks_massive": massive(summary)}
