"""Figures of a head attribution run: pure functions from its summary to Figures.

>>> summary = {"num_layers": 2, "num_heads": 3, "flow": "image->last", "n_tested": 4,
...            "heads": [{"layer": l, "head": h, "drop": float(l + h), "dla": 0.1 * h,
...                       "image_share_last": 0.5, "image_share_question": 0.25,
...                       "drop_ci_low": 0.0, "drop_ci_high": 1.0, "control_drop": 0.5,
...                       "key_head": h == 2} for l in range(2) for h in range(3)],
...            "top_heads": ["1.2", "1.1"]}
>>> [axes.get_title() for axes in heatmaps(summary).axes[:3]]
['drop of p(answer), % (image->last)', 'direct logit attribution', 'attention on the image from last']
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from figures.style import DIVERGING, PALETTE, SEQUENTIAL, new_figure, note_empty

PANELS = (("drop", "drop of p(answer), % ({flow})", DIVERGING),
          ("dla", "direct logit attribution", DIVERGING),
          ("image_share_last", "attention on the image from last", SEQUENTIAL))


def grid(summary: Mapping[str, Any], field: str) -> np.ndarray:
    """[layer, head] of one field of the per-head rows."""
    values = np.full((summary["num_layers"], summary["num_heads"]), np.nan)
    for row in summary["heads"]:
        values[row["layer"], row["head"]] = row[field]
    return values


def heatmaps(summary: Mapping[str, Any]) -> Figure:
    """Layer x head heatmaps: the single-head knockout drop (key heads outlined), the direct
    logit attribution and the image share from last."""
    figure = new_figure(2, 2.6, ncols=3)
    panels = figure.axes
    for axes, (field, title, cmap) in zip(panels, PANELS):
        values = grid(summary, field)
        axes.set_title(title.format(flow=summary["flow"]), fontsize="small")
        axes.set_xlabel("head")
        axes.set_ylabel("layer")
        if not np.isfinite(values).any():
            note_empty(axes, "no sample tested")
            continue
        if cmap == DIVERGING:
            bound = float(np.nanmax(np.abs(values))) or 1.0
            image = axes.imshow(values, cmap=cmap, vmin=-bound, vmax=bound, aspect="auto",
                                origin="lower")
        else:
            image = axes.imshow(values, cmap=cmap, vmin=0, aspect="auto", origin="lower")
        figure.colorbar(image, ax=axes, fraction=0.05)
        if field == "drop":
            for row in summary["heads"]:
                if row["key_head"]:
                    axes.add_patch(_outline(row["head"], row["layer"]))
    return figure


def _outline(x: int, y: int) -> Rectangle:
    return Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=1.2)


def top_heads(summary: Mapping[str, Any]) -> Figure:
    """The top heads by drop: mean drop with its 95% CI, the random-head control as a line."""
    figure = new_figure(1, 2.4)
    axes = figure.axes[0]
    rows = {f"{r['layer']}.{r['head']}": r for r in summary["heads"]}
    names = summary["top_heads"]
    if not names:
        note_empty(axes, "no sample tested")
        return figure
    drops = np.array([rows[n]["drop"] for n in names])
    low = drops - np.array([rows[n]["drop_ci_low"] for n in names])
    high = np.array([rows[n]["drop_ci_high"] for n in names]) - drops
    colors = [PALETTE["flow"] if rows[n]["key_head"] else PALETTE["control"] for n in names]
    axes.bar(range(len(names)), drops, yerr=[low, high], color=colors, capsize=2)
    axes.axhline(rows[names[0]]["control_drop"], color="0.3", linestyle="--", linewidth=0.8,
                 label="random head (control)")
    axes.set_xticks(range(len(names)), names, rotation=90)
    axes.set_xlabel("layer.head")
    axes.set_ylabel("drop of p(answer), %")
    axes.set_title(f"top heads, {summary['flow']} (n = {summary['n_tested']}; "
                   "blue: key heads)", fontsize="small")
    axes.legend(fontsize="x-small")
    return figure


def draw_all(summary: Mapping[str, Any], arrays: Mapping[str, np.ndarray] | None = None
             ) -> dict[str, Figure]:
    """Every figure of a run, by file name."""
    return {"heads_heatmaps": heatmaps(summary), "heads_top": top_heads(summary)}
