"""Figures of a logit lens run: pure functions from its summary and arrays to Figures.

>>> summary = {"num_layers": 2, "subsets": {"all": 3, "correct": 2},
...            "per_layer": [{"series": s, "subset": subset, "layer": l, "mean": 0.5,
...                           "ci_low": 0.4, "ci_high": 0.6, "n": 3}
...                          for s in ANSWER_SERIES for subset in ("all", "correct")
...                          for l in range(2)],
...            "emergence": [], "layer_masking": {"fusion_layers": [1], "flow": "image->last"}}
>>> figure = answer_curves(summary)
>>> [axes.get_title() for axes in figure.axes]
['p(answer) at last', 'rank of the answer', 'answer is the top token']
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import ScalarFormatter

from figures.overlay import overlay
from figures.style import PALETTE, SERIES_COLORS, house_style, new_figure, note_empty

ANSWER_SERIES = ("answer_prob", "answer_rank", "answer_top1")
TITLES = {"answer_prob": "p(answer) at last", "answer_rank": "rank of the answer",
          "answer_top1": "answer is the top token",
          "in_box_names_answer": "in-box tokens naming the answer",
          "out_box_names_answer": "out-of-box tokens (control)",
          "image_names_answer": "image tokens naming the answer"}
SUBSET_COLORS = {"all": PALETTE["control"], "correct": PALETTE["flow"]}
MAX_LABELS = 144  # image tokens up to which each token's top token is written on its cell


def _curve(summary: Mapping[str, Any], series: str, subset: str) -> dict[str, np.ndarray]:
    rows = sorted((r for r in summary["per_layer"] if r["series"] == series
                   and r["subset"] == subset), key=lambda r: r["layer"])
    return {key: np.array([r[key] for r in rows], dtype=float)
            for key in ("layer", "mean", "ci_low", "ci_high", "n")}


def _band(axes, curve: dict[str, np.ndarray], color: str, label: str) -> bool:
    """The mean with its CI band; False (nothing drawn) when no sample has a value."""
    if not curve["layer"].size or not np.isfinite(curve["mean"]).any():
        return False
    axes.fill_between(curve["layer"], curve["ci_low"], curve["ci_high"], color=color,
                      alpha=0.2, linewidth=0)
    axes.plot(curve["layer"], curve["mean"], color=color, marker="o", markersize=2, label=label)
    return True


def mark_fusion(axes, summary: Mapping[str, Any]) -> None:
    """Shade the layer masking run's fusion layers, when the run was given one."""
    masking = summary.get("layer_masking") or {}
    for k, layer in enumerate(masking.get("fusion_layers") or []):
        axes.axvspan(layer - 0.4, layer + 0.4, color=PALETTE["fusion"], alpha=0.15, linewidth=0,
                     label=f"fusion layers ({masking['flow']})" if k == 0 else None)


def _layer_axis(axes, summary: Mapping[str, Any]) -> None:
    axes.set_xlabel("layer")
    axes.set_xlim(-0.5, summary["num_layers"] - 0.5)


def curves(summary: Mapping[str, Any], series: tuple[str, ...], subsets: dict[str, str]
           ) -> Figure:
    """One panel per series: the mean per layer with its 95% CI band per subset (name ->
    colour), the fusion layers shaded."""
    figure = new_figure(columns=2, height=2.0, ncols=len(series))
    with house_style():
        for axes, name in zip(figure.axes, series):
            mark_fusion(axes, summary)
            drawn = [_band(axes, _curve(summary, name, subset), color,
                           f"{subset} (n={summary['subsets'].get(subset, 0)})")
                     for subset, color in subsets.items()]
            if not any(drawn):
                note_empty(axes, "no sample with a value\n(n = 0)")
            if name == "answer_rank":
                axes.set_yscale("symlog", linthresh=1)
                axes.yaxis.set_major_formatter(ScalarFormatter())
            axes.set_title(TITLES.get(name, name))
            _layer_axis(axes, summary)
        figure.axes[-1].legend(loc="best")
    return figure


def answer_curves(summary: Mapping[str, Any]) -> Figure:
    """The answer token at ``last`` per layer: probability, rank, share of samples where it
    is the top token; all samples and the correctly answered ones."""
    return curves(summary, ANSWER_SERIES, SUBSET_COLORS)


def kind_curves(summary: Mapping[str, Any]) -> Figure:
    """The answer's probability and top-token share per layer, one curve per question kind."""
    kinds = [s for s in summary["subsets"] if s.startswith("kind:")]
    colors = [c for c in SERIES_COLORS if c != PALETTE["fusion"]]  # the fusion band's colour
    return curves(summary, ("answer_prob", "answer_top1"),
                  {kind: colors[k % len(colors)] for k, kind in enumerate(kinds)})


def emergence(summary: Mapping[str, Any]) -> Figure:
    """How many samples (answered correctly, else all) first have the answer on top at each
    layer, and from which layer it stays there; the fusion layers shaded."""
    figure = new_figure(columns=1, height=2.0)
    axes = figure.axes[0]
    rows = {(r["measure"], r["subset"]): r for r in summary["emergence"]}
    subset = "correct" if rows.get(("first_top1", "correct"), {}).get("n") else "all"
    layers = np.arange(summary["num_layers"])
    with house_style():
        mark_fusion(axes, summary)
        for k, (measure, label) in enumerate((("first_top1", "first on top"),
                                              ("settled", "stays on top from"))):
            row = rows.get((measure, subset))
            if row is None or not row["n"]:
                continue
            axes.bar(layers + (k - 0.5) * 0.35, row["counts"], width=0.35,
                     color=SERIES_COLORS[2 * k], label=f"{label} (median {row['median']:g})")
        if not axes.patches:
            note_empty(axes, "no sample (n = 0)")
        else:
            axes.set_ylim(0, axes.get_ylim()[1] * 1.4)  # room for the legend above the bars
        axes.set_title(f"where the answer emerges ({subset} samples)")
        axes.set_ylabel("samples")
        _layer_axis(axes, summary)
        axes.legend(loc="upper left")
    return figure


def region_curves(summary: Mapping[str, Any]) -> Figure:
    """Per layer, the share of image tokens inside the region whose top token is the answer,
    beside the share outside it (the control), for the correctly answered samples."""
    figure = new_figure(columns=1, height=2.0)
    axes = figure.axes[0]
    subset = "correct" if summary["subsets"].get("correct") else "all"
    with house_style():
        drawn = [_band(axes, _curve(summary, series, subset), color, TITLES[series])
                 for series, color in (("in_box_names_answer", PALETTE["flow"]),
                                       ("out_box_names_answer", PALETTE["control"]))]
        if not any(drawn):
            note_empty(axes, "no sample with a region\n(n = 0)")
        else:
            axes.legend(loc="best")
        axes.set_title(f"image tokens naming the answer ({subset})")
        axes.set_ylabel("share of tokens")
        _layer_axis(axes, summary)
    return figure


def example_tokens(arrays: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """The example sample's top token per image token per layer, its answer token and its
    in-box flags, with the token texts (from the run's arrays)."""
    row = int(np.flatnonzero(arrays["sample_index"] == int(arrays["example_index"]))[0])
    start, stop = arrays["image_offsets"][row], arrays["image_offsets"][row + 1]
    text = dict(zip(arrays["token_ids"].tolist(), arrays["token_text"].tolist()))
    return {"top1": arrays["image_top1"][start:stop].T, "in_box": arrays["in_box"][start:stop],
            "answer": int(arrays["answer_token"][row]), "text": text,
            "correct": bool(arrays["correct"][row]), "id": str(arrays["sample_id"][row])}


def image_tokens(summary: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> Figure:
    """For the example sample, at a few layers: each image token's top token drawn over the
    image (written on its cell when the grid is small enough), the tokens whose top token is the
    answer filled, the tokens inside the region outlined."""
    example = example_tokens(arrays)
    layers = summary["figure_layers"]
    image, boxes = arrays["example_image"], arrays["example_boxes"]
    height, width = image.shape[:2]
    figure = new_figure(columns=2, height=7.0 / len(layers) * height / width + 0.5,
                        ncols=len(layers))
    answer = example["text"].get(example["answer"], str(example["answer"]))
    fill = ListedColormap([PALETTE["highlight"]])
    with house_style():
        for axes, layer in zip(figure.axes, layers):
            top = example["top1"][layer]
            names = np.where(top == example["answer"], 1.0, np.nan)
            overlay(image, names, boxes, ax=axes, cmap=fill, alpha=0.6, vmin=0, vmax=1,
                    title=f"layer {layer}: {int(np.nansum(names))} name {answer.strip()!r}")
            for box in boxes[example["in_box"]]:
                if np.isfinite(box).all():
                    axes.add_patch(Rectangle(box[:2], box[2] - box[0], box[3] - box[1],
                                             fill=False, edgecolor="black", linewidth=0.6,
                                             linestyle=(0, (2, 1))))
            if top.size <= MAX_LABELS:
                for token, box in zip(top.tolist(), boxes):
                    if np.isfinite(box).all():
                        axes.text((box[0] + box[2]) / 2, (box[1] + box[3]) / 2,
                                  example["text"].get(token, str(token)).strip()[:4],
                                  ha="center", va="center", fontsize=3.5, color="black")
        figure.suptitle(f"{example['id']}: top token per image token (answer {answer.strip()!r}, "
                        f"{'correct' if example['correct'] else 'wrong'}; region dashed)",
                         fontsize=8)
    return figure


def draw_all(summary: Mapping[str, Any], arrays: Mapping[str, np.ndarray] | None = None
             ) -> dict[str, Figure]:
    """Every figure of a run, by file name (the image-token panel needs the arrays)."""
    figures = {"logit_lens_answer": answer_curves(summary),
               "logit_lens_emergence": emergence(summary),
               "logit_lens_region": region_curves(summary)}
    if any(s.startswith("kind:") for s in summary["subsets"]):
        figures["logit_lens_kinds"] = kind_curves(summary)
    if arrays is not None and "example_image" in arrays:
        figures["logit_lens_image_tokens"] = image_tokens(summary, arrays)
    return figures
