"""The short table ``python -m analyses.layer_masking`` prints."""

from __future__ import annotations


def format_table(summary: dict) -> str:
    """Per layer: the first flow's effect with its CI, the control's, and the verdict."""
    flow = summary["flows"][0]
    lines = [f"{summary['model']['id']} on {summary['data']['name']}/{summary['data']['split']}: "
             f"{summary['n_samples']} samples ({summary['graded']['correct']} of "
             f"{summary['graded']['n']} answered correctly), window {summary['config']['window']}",
             f"block {flow}: drop of p(answer) in % (95% CI), control = random edges",
             f"{'layer':>5}  {'effect':>7} {'95% CI':>17}  {'control':>7}  {'p (Holm)':>8}  fusion"]
    for row in (r for r in summary["tests"] if r["flow"] == flow):
        ci = f"[{row['effect_ci_low']:6.1f}, {row['effect_ci_high']:6.1f}]"
        mark = "*" if row["significant"] else ""
        lines.append(f"{row['layer']:>5}  {row['effect']:7.1f} {ci:>17}  "
                     f"{row['control_effect']:7.1f}  {row['p_holm']:8.4f}  {mark}")
    for kind, row in summary.get("fusion_layers_by_kind", {}).items():
        effects = " ".join(f"{e:5.1f}" for e in row["effect"])
        lines.append(f"  {kind:<10} n={row['n']:<5} effect by layer: {effects}   fusion: "
                     f"{row['fusion_layers'] or 'none'}")
    review = summary["review"]
    lines.append(f"fusion layers: {summary['fusion_layers'] or 'none'}; review: "
                 + (f"layers {review['layers']}" if review["detected"] else "not detected"))
    return "\n".join(lines)
