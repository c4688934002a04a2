"""The short table ``python -m analyses.logit_lens`` prints."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

ROWS = (("answer_prob", "p(answer) at last", "{:.3f}"),
        ("answer_rank", "rank of the answer", "{:.1f}"),
        ("answer_top1", "answer on top", "{:.2f}"),
        ("in_box_names_answer", "in-box tokens naming it", "{:.3f}"),
        ("out_box_names_answer", "out-of-box tokens naming it", "{:.3f}"))


def curve(summary: Mapping[str, Any], series: str, subset: str) -> list[dict]:
    return sorted((r for r in summary["per_layer"] if r["series"] == series
                   and r["subset"] == subset), key=lambda r: r["layer"])


def format_table(summary: Mapping[str, Any]) -> str:
    """Per layer, the main curves for all samples and the correctly answered ones; the
    emergence layers; the fusion layers beside them when a layer masking run was given."""
    layers = summary["num_layers"]
    lines = [f"{summary['model']['id']} on {summary['data']['name']}/{summary['data']['split']}: "
             f"{summary['n_samples']} samples, {summary['n_correct']} answered correctly, "
             f"{summary['n_with_region']} with a region",
             f"{'mean per layer':<38}" + " ".join(f"{layer:>6}" for layer in range(layers))]
    for subset in ("all", "correct"):
        for series, label, form in ROWS:
            rows = curve(summary, series, subset)
            if not any(r["n"] for r in rows):
                continue
            cells = " ".join(f"{form.format(r['mean']):>6}" for r in rows)
            lines.append(f"{label + ' (' + subset + ')':<38}{cells}")
    for row in summary["emergence"]:
        if row["n"]:
            lines.append(f"{row['measure']} ({row['subset']}): median layer {row['median']:g}, "
                         f"mean {row['mean']:.2f} [{row['ci_low']:.2f}, {row['ci_high']:.2f}], "
                         f"per layer {row['counts']}" + (f", never {row['never']}"
                                                         if row["never"] else ""))
    masking = summary.get("layer_masking")
    if masking:
        lines.append(f"layer masking {masking['run']} ({masking['flow']}, n = {masking['n']}"
                     f"{'' if masking['same_samples'] else ', other samples'}): fusion layers "
                     f"{masking['fusion_layers'] or 'none'}")
        for measure in ("first_top1", "settled"):
            if measure in masking:
                counts = masking[measure]
                lines.append(f"  {measure} of the correct samples: {counts['before_fusion']} "
                             f"before, {counts['within_fusion']} within, "
                             f"{counts['after_fusion']} after the fusion layers "
                             f"(n = {counts['n']})")
    return "\n".join(lines)
