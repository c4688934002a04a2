"""The short table ``python -m analyses.attenuation`` prints."""

from __future__ import annotations

TABLE_SERIES = ("image_share(last)", "region_share(last)", "image_value_ratio(last)",
                "answer_prob")


def format_table(summary: dict) -> str:
    """Per layer, the mean of the main curves for each subset present."""
    subsets = [s for s in ("all", "small", "large") if summary["subsets"].get(s)]
    lines = [f"{summary['model']['id']} on {summary['data']['name']}/{summary['data']['split']}: "
             f"{summary['n_samples']} samples ("
             + ", ".join(f"{s} {summary['subsets'][s]}" for s in subsets) + ")"]
    for series in TABLE_SERIES:
        lines.append(f"{series}: mean per layer 0..{summary['num_layers'] - 1}")
        for subset in subsets:
            rows = sorted((r for r in summary["per_layer"]
                           if r["series"] == series and r["subset"] == subset),
                          key=lambda r: r["layer"])
            n = max((r["n"] for r in rows), default=0)
            cells = " ".join(f"{r['mean']:.3f}" for r in rows) if n else "n = 0 (skipped)"
            lines.append(f"  {subset:<6} {cells}")
    for row in summary["attenuation"]:
        if row["series"] == "region_share(last)":
            lines.append(f"region_share(last) {row['subset']}: peak {row['peak']:.3f} at layer "
                         f"{row['peak_layer']}, last layer {row['last']:.3f} "
                         f"(retained {row['retained']:.2f}; uniform over the image: "
                         f"{summary['region_chance'][row['subset']]:.3f})")
    return "\n".join(lines)
