"""The short table ``python -m analyses.sinks`` prints."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from analyses.logit_lens.table import curve

ROWS = (("answer_first", "last -> first token", "{:.3f}"),
        ("answer_image", "last -> image", "{:.3f}"),
        ("answer_before", "last -> text before image", "{:.3f}"),
        ("answer_after", "last -> text after image", "{:.3f}"),
        ("answer_first_head_max", "last -> first (max head)", "{:.3f}"),
        ("question_first", "question -> first token", "{:.3f}"),
        ("question_image", "question -> image", "{:.3f}"),
        ("top_ratio_first", "max/median |h|: first", "{:.1f}"),
        ("top_ratio_image", "max/median |h|: image", "{:.1f}"),
        ("top_ratio_text", "max/median |h|: text", "{:.1f}"),
        ("first_ratio", "first: max |h_d| / RMS", "{:.1f}"),
        ("visual_share", "visual sinks / image", "{:.3f}"),
        ("visual_attention", "last -> visual sinks", "{:.3f}"))


def format_table(summary: Mapping[str, Any]) -> str:
    """Per layer, the mean of the main series over the samples; the sink dimensions; the two
    verdict lines."""
    layers = summary["num_layers"]
    lines = [f"{summary['model']['id']} on {summary['data']['name']}/{summary['data']['split']}: "
             f"{summary['n_samples']} samples, {summary['n_image_tokens']:g} image tokens on "
             f"average, hidden size {summary['hidden']}, tau {summary['tau']:g}",
             f"{'mean per layer':<28}" + " ".join(f"{layer:>6}" for layer in range(layers))]
    for series, label, form in ROWS:
        cells = " ".join(f"{form.format(r['mean']):>6}" for r in curve(summary, series, "all"))
        lines.append(f"{label:<28}{cells}")
    dims = summary["sink_dims"]
    lines.append("first token's sink dimensions (in half the samples): " + (
        "; ".join(f"layer {layer}: {values}" for layer, values in dims.items()) or "none"))
    lines.extend(summary["lines"])
    return "\n".join(lines)
