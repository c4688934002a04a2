"""The short table ``python -m analyses.patching`` prints."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def format_table(summary: Mapping[str, Any]) -> str:
    """Per site and group, the mean effect per layer; the restoring layers; the skipped."""
    config, layers = summary["config"], summary["num_layers"]
    lines = [f"{summary['model']['id']} on {summary['data']['name']}/{summary['data']['split']}: "
             f"{config['direction']} with --corrupt {config['corrupt']}, "
             f"{summary['n_used']} of {summary['n_samples']} samples used"
             + (f" (skipped: {', '.join(f'{n} {r}' for r, n in summary['skipped_by_reason'].items())})"
                if summary["skipped_by_reason"] else ""),
             f"{'mean effect per layer':<24}" + " ".join(f"{layer:>6}" for layer in range(layers))]
    for series in dict.fromkeys(row["series"] for row in summary["per_layer"]):
        rows = sorted((r for r in summary["per_layer"] if r["series"] == series),
                      key=lambda r: r["layer"])
        lines.append(f"{series:<24}" + " ".join(f"{r['mean']:>6.2f}" for r in rows))
    if summary["heads"]:
        top = sorted(summary["heads"], key=lambda r: -r["mean"])[:5]
        lines.append("top heads (layer.head: effect): " + ", ".join(
            f"{r['layer']}.{r['head']}: {r['mean']:.2f}" for r in top))
    for series, found in summary["restoring_layers"].items():
        lines.append(f"layers where {series} restores >= half: {found or 'none'}")
    return "\n".join(lines)
