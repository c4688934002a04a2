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
>>> float(figure.axes[0].lines[2].get_ydata()[1])  # drawn as a drop: the answer lost 10%
10.0
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import seaborn
from matplotlib.figure import Figure

from figures.style import DIVERGING, PALETTE, SERIES_COLORS, house_style, new_figure, note_empty

# One sign convention, as the printed table and summary.json's tests: an effect is how much
# blocking the flow hurt the answer (positive = it mattered), so the two "change" metrics are
# drawn negated, as drops; KL and flips are positive when the flow mattered already.
METRIC_LABELS = {
    "prob_change_pct": "drop of p(answer) (%)",
    "logit_change": "drop of the answer's logit",
    "kl": "KL(clean || blocked) (nats)",
    "flipped": "answers flipped (share)",
}
SIGNS = {"prob_change_pct": -1.0, "logit_change": -1.0, "kl": 1.0, "flipped": 1.0}


def _series(summary: Mapping[str, Any], series: str, metric: str) -> dict[str, np.ndarray]:
    """A series' per-layer mean and CI of ``metric`` in the figures' sign (:data:`SIGNS`)."""
    rows = sorted((r for r in summary["per_layer"] if r["series"] == series
                   and r["metric"] == metric), key=lambda r: r["layer"])
    values = {key: np.array([r[key] for r in rows], dtype=float)
              for key in ("layer", "mean", "ci_low", "ci_high")}
    sign = SIGNS[metric]
    low, high = sign * values["ci_low"], sign * values["ci_high"]
    values.update(mean=sign * values["mean"], ci_low=np.minimum(low, high),
                  ci_high=np.maximum(low, high))
    return values


def _layer_label(summary: Mapping[str, Any]) -> str:
    window = summary["config"]["window"]
    return "layer" if window == 1 else f"layer (centre of a {window}-layer window)"


def effect_curves(summary: Mapping[str, Any], metric: str = "prob_change_pct") -> Figure:
    """One panel per flow: the flow's per-layer mean effect (a drop: positive = blocking it
    hurt the answer) with its 95% CI band, its control (grey, dashed), fusion layers marked
    (orange dots), the review shaded (pink)."""
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
                      linestyle="--", label="control (late non-image edges)")
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
        figure.axes[-1].legend(loc="upper right")
    return figure


def metric_panels(summary: Mapping[str, Any]) -> Figure:
    """The four metrics, one panel each, of every flow (its colour, solid, with its 95% CI
    band) against its control (the same colour, dashed)."""
    flows = summary["flows"]
    figure = new_figure(columns=2, height=3.6, ncols=2, nrows=2)
    with house_style():
        for axes, metric in zip(figure.axes, METRIC_LABELS):
            for flow, color in zip(flows, SERIES_COLORS):
                control = _series(summary, f"control({flow})", metric)
                axes.plot(control["layer"], control["mean"], color=color, linestyle="--",
                          alpha=0.7, label=f"control({flow})")
                values = _series(summary, flow, metric)
                axes.fill_between(values["layer"], values["ci_low"], values["ci_high"],
                                  color=color, alpha=0.2, linewidth=0)
                axes.plot(values["layer"], values["mean"], color=color, label=f"block {flow}")
            axes.set_ylabel(METRIC_LABELS[metric])
            axes.set_xlabel(_layer_label(summary))
        figure.axes[0].legend(fontsize="x-small")
    return figure


def sample_heatmap(summary: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> Figure:
    """Samples x layers, one panel per flow: the drop of p(answer) (%) when the flow is
    blocked, samples grouped by question kind (red = the answer lost probability)."""
    flows = summary["flows"]
    drops = SIGNS["prob_change_pct"] * np.asarray(arrays["prob_change_pct"])  # [s, series, l]
    kinds = np.asarray(arrays["kind"]).astype(str)
    order = np.lexsort((np.asarray(arrays["sample_index"]), kinds))
    drops, kinds = drops[order], kinds[order]
    height = min(6.0, 1.2 + 0.02 * drops.shape[0])
    figure = new_figure(columns=1 if len(flows) == 1 else 2, height=height, ncols=len(flows),
                        sharey=True)
    if not drops.shape[0]:  # no sample swept (n = 0)
        for axes, flow in zip(figure.axes, flows):
            note_empty(axes, "no sample swept (n = 0)")
            axes.set_title(f"block {flow}, per sample")
        return figure
    # one colour scale for every panel, symmetric around 0 so white = no change; drops beyond
    # +-100% are clipped
    shown = drops[:, :len(flows)]
    limit = min(100.0, max(1.0, float(np.nanpercentile(np.abs(shown), 99))))
    boundaries = np.flatnonzero(kinds[1:] != kinds[:-1]) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(kinds)]])
    with house_style():
        for index, (axes, flow) in enumerate(zip(figure.axes, flows)):
            last = index == len(flows) - 1
            seaborn.heatmap(shown[:, index], ax=axes, cmap=DIVERGING, center=0.0,
                            vmin=-limit, vmax=limit, xticklabels=True, yticklabels=False,
                            rasterized=True, cbar=last,
                            cbar_kws={"label": METRIC_LABELS["prob_change_pct"], "shrink": 0.8})
            axes.hlines(boundaries, *axes.get_xlim(), color="black", linewidth=0.5)
            axes.set_xlabel(_layer_label(summary))
            axes.set_title(f"block {flow}, per sample")
        # after every panel: a later heatmap resets the ticks of the shared axis
        figure.axes[0].set_yticks((starts + ends) / 2, kinds[starts], rotation=0)
    return figure


def draw_all(summary: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> dict[str, Figure]:
    """Every figure of a run, by file name (without extension)."""
    return {
        "layer_effect": effect_curves(summary),
        "layer_metrics": metric_panels(summary),
        "layer_heatmap": sample_heatmap(summary, arrays),
    }
