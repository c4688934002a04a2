"""The short table ``python -m analyses.contrastive_attention`` prints."""

from __future__ import annotations

from analyses.stats import method_table


def format_table(summary: dict) -> str:
    layers, data, config = summary["layers"], summary["data"], summary["config"]
    lines = [f"{summary['model']['id']} on {data['name']}/{data['split']}: "
             f"{summary['n_samples']} samples; attention of {config['series']}",
             f"late layer {layers['late']}, early layer {layers['early']} ({layers['early_rule']})",
             f"{'map':<12} {'AUROC':>6} {'95% CI':>15}  {'pointing':>8} {'95% CI':>15}"]
    rows = {(r["map"], r["metric"]): r for r in summary["localisation"]}
    for name in summary["maps"]:
        cells = []
        for metric in ("auroc", "pointing"):
            row = rows.get((name, metric))
            cells.append(f"{row['mean']:6.3f} [{row['ci_low']:5.3f}, {row['ci_high']:5.3f}]"
                         if row else f"{'-':>6} {'':>15}")
        lines.append(f"{name:<12} {cells[0]}  {cells[1]:>24}")
    for row in summary["comparisons"]:
        lines.append(f"contrastive - {row['versus']} ({row['metric']}): {row['difference']:+.3f} "
                     f"[{row['ci_low']:+.3f}, {row['ci_high']:+.3f}], one-sided p "
                     f"{row['p_one_sided']:.3f}")
    if "methods" in summary:
        lines.append(f"refinement at layers {layers['refine']} ({layers['refine_rule']}): "
                     f"{summary['rules']['suppression']}; {summary['rules']['suppressed']}")
        lines += method_table(summary["methods"])
        lines.append(f"refined vs random control: McNemar p {summary['refined_vs_random_p']:.3f}; "
                     f"answers changed: {summary['answers_changed']}")
    return "\n".join(lines)
