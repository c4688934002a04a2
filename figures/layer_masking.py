"""Figures of a layer-masking run: pure functions from its summary (and arrays) to Figures.

>>> summary = {"flows": ["image->last"], "num_layers": 3, "config": {"window": 1},
...            "fusion_layers_by_flow": {"image->last": [1]},
...            "review_by_flow": {"image->last": {"detected": False, "layers": []}},
...            "per_layer": [{"series": s, "metric": "prob_change_pct", "layer": l,
...                           "mean": -10.0 * (l == 1), "ci_low": -12.0 * (l == 1) - 1,
...                           "ci_high": 1.0, "n": 5}
...                          for s in ("image->last", "control(image->last)") for l in range(3)]}
>>> figure = effect_curves(summary)
>>> [axes.get_title() for axes in figure.axes]
['image->last']
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import seaborn
from matplotlib.figure import Figure

from figures.style import DIVERGING, PALETTE, house_style, new_figure, note_empty

METRIC_LABELS = {
    "prob_change_pct": "change of p(answer) (%)",
    "logit_change": "change of the answer's logit",
    "kl": "KL(clean || blocked) (nats)",
    "flipped": "answers flipped (share)",
}


def _series(summary: Mapping[str, Any], series: str, metric: str) -> dict[str, np.ndarray]:
    rows = sorted((r for r in summary["per_layer"] if r["series"] == series
                   and r["metric"] == metric), key=lambda r: r["layer"])
    return {key: np.array([r[key] for r in rows], dtype=float)
            for key in ("layer", "mean", "ci_low", "ci_high")}


def _layer_label(summary: Mapping[str, Any]) -> str:
    window = summary["config"]["window"]
    return "layer" if window == 1 else f"layer (centre of a {window}-layer window)"


def effect_curves(summary: Mapping[str, Any], metric: str = "prob_change_pct") -> Figure:
    """One panel per flow: the flow's per-layer mean with its 95% CI band, its control (grey,
    dashed), fusion layers marked (orange dots), the review shaded (pink)."""
    flows = summary["flows"]
    figure = new_figure(columns=1 if len(flows) == 1 else 2, height=2.1,
                        ncols=len(flows), sharey=True)
    with house_style():
        for axes, flow in zip(figure.axes, flows):
            control = _series(summary, f"control({flow})", metric)
            effect = _series(summary, flow, metric)
            axes.axhline(0, color="black", linewidth=0.5)
            axes.fill_between(control["layer"], control["ci_low"], control["ci_high"],
                              color=PALETTE["control"], alpha=0.2, linewidth=0)
            axes.plot(control["layer"], control["mean"], color=PALETTE["control"],
                      linestyle="--", label="control (random edges)")
            axes.fill_between(effect["layer"], effect["ci_low"], effect["ci_high"],
                              color=PALETTE["flow"], alpha=0.25, linewidth=0)
            axes.plot(effect["layer"], effect["mean"], color=PALETTE["flow"],
                      label="flow blocked (panel title)")
            fusion = summary["fusion_layers_by_flow"].get(flow, [])
            if fusion:
                axes.plot(fusion, effect["mean"][fusion], "o", color=PALETTE["fusion"],
                          markersize=4, label="fusion layer", zorder=3)
            late = summary["review_by_flow"].get(flow, {})
            if late.get("detected"):
                axes.axvspan(min(late["layers"]) - 0.5, max(late["layers"]) + 0.5,
                             color=PALETTE["review"], alpha=0.15, linewidth=0, label="review")
            axes.set_title(flow)
            axes.set_xlabel(_layer_label(summary))
            axes.set_xlim(-0.5, summary["num_layers"] - 0.5)
        figure.axes[0].set_ylabel(METRIC_LABELS[metric])
        figure.axes[-1].legend(loc="lower right")
    return figure


def metric_panels(summary: Mapping[str, Any], flow_index: int = 0) -> Figure:
    """The four metrics of one flow against its control, one panel each."""
    flow = summary["flows"][flow_index]
    figure = new_figure(columns=2, height=3.6, ncols=2, nrows=2)
    with house_style():
        for axes, metric in zip(figure.axes, METRIC_LABELS):
            for series, color, style in ((f"control({flow})", PALETTE["control"], "--"),
                                         (flow, PALETTE["flow"], "-")):
                values = _series(summary, series, metric)
                axes.fill_between(values["layer"], values["ci_low"], values["ci_high"],
                                  color=color, alpha=0.2, linewidth=0)
                axes.plot(values["layer"], values["mean"], color=color, linestyle=style,
                          label="control" if series != flow else f"block {flow}")
            axes.set_ylabel(METRIC_LABELS[metric])
            axes.set_xlabel(_layer_label(summary))
        figure.axes[0].legend()
    return figure


def sample_heatmap(summary: Mapping[str, Any], arrays: Mapping[str, np.ndarray],
                   flow_index: int = 0) -> Figure:
    """Samples x layers: the change of p(answer) (%) when the flow is blocked, samples grouped
    by question kind (blue = the answer lost probability)."""
    values = np.asarray(arrays["prob_change_pct"])[:, flow_index]  # [samples, layers]
    kinds = np.asarray(arrays["kind"]).astype(str)
    order = np.lexsort((np.asarray(arrays["sample_index"]), kinds))
    values, kinds = values[order], kinds[order]
    height = min(6.0, 1.2 + 0.02 * values.shape[0])
    figure = new_figure(columns=1, height=height)
    axes = figure.axes[0]
    if not values.shape[0]:  # no sample swept (n = 0)
        note_empty(axes, "no sample swept (n = 0)")
        axes.set_title(f"block {summary['flows'][flow_index]}, per sample")
        return figure
    with house_style():
        # symmetric around 0 so white = no change; changes beyond +-100% are clipped
        limit = min(100.0, max(1.0, float(np.nanpercentile(np.abs(values), 99))))
        seaborn.heatmap(values, ax=axes, cmap=DIVERGING, center=0.0, vmin=-limit, vmax=limit,
                        xticklabels=True, yticklabels=False, rasterized=True,
                        cbar_kws={"label": METRIC_LABELS["prob_change_pct"], "shrink": 0.8})
        boundaries = np.flatnonzero(kinds[1:] != kinds[:-1]) + 1
        axes.hlines(boundaries, *axes.get_xlim(), color="black", linewidth=0.5)
        starts = np.concatenate([[0], boundaries])
        ends = np.concatenate([boundaries, [len(kinds)]])
        axes.set_yticks((starts + ends) / 2, kinds[starts], rotation=0)
        axes.set_xlabel(_layer_label(summary))
        axes.set_title(f"block {summary['flows'][flow_index]}, per sample")
    return figure


def draw_all(summary: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> dict[str, Figure]:
    """Every figure of a run, by file name (without extension)."""
    return {
        "layer_effect": effect_curves(summary),
        "layer_metrics": metric_panels(summary),
        "layer_heatmap": sample_heatmap(summary, arrays),
    }
