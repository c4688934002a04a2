"""The short table ``python -m analyses.layer_masking`` prints: one block per flow.

The effect is the drop of p(answer) in % (positive = blocking the flow hurt the answer), as in
``summary.json``'s ``tests`` and in the figures.
"""

from __future__ import annotations


def format_table(summary: dict) -> str:
    """Per flow and layer: the effect with its CI, the control's, and the verdict; the fusion
    layers by question kind (the first flow's), kinds too small for their own, and one line of
    fusion layers per flow."""
    flows = summary["flows"]
    lines = [f"{summary['model']['id']} on {summary['data']['name']}/{summary['data']['split']}: "
             f"{summary['n_samples']} samples ({summary['graded']['correct']} of "
             f"{summary['graded']['n']} answered correctly), window {summary['config']['window']}"]
    for flow in flows:
        lines += [f"block {flow}: effect = drop of p(answer) in % (positive: the answer lost "
                  "probability), 95% CI; control = as many late edges carrying no image into text",
                  f"{'layer':>5}  {'effect':>7} {'95% CI':>17}  {'control':>7}  {'p (Holm)':>8}"
                  "  fusion"]
        for row in (r for r in summary["tests"] if r["flow"] == flow):
            ci = f"[{row['effect_ci_low']:6.1f}, {row['effect_ci_high']:6.1f}]"
            mark = "*" if row["significant"] else ""
            lines.append(f"{row['layer']:>5}  {row['effect']:7.1f} {ci:>17}  "
                         f"{row['control_effect']:7.1f}  {row['p_holm']:8.4f}  {mark}")
    by_kind = summary.get("fusion_layers_by_kind", {})
    minimum = summary["config"].get("min_kind_samples")
    if by_kind:
        lines.append(f"by question kind (block {flows[0]}):")
    for kind, row in by_kind.items():
        effects = " ".join(f"{e:5.1f}" for e in row["effect"])
        lines.append(f"  {kind:<10} n={row['n']:<5} effect by layer: {effects}   fusion: "
                     f"{row['fusion_layers'] or 'none'}")
    small = summary.get("kinds_below_minimum", {})
    if small:
        lines.append(f"kinds with fewer than {minimum} samples (no fusion layers of their own; "
                     "--min-kind-samples): "
                     + ", ".join(f"{kind} n={n}" for kind, n in small.items()))
    if "deepstack" in summary:
        deepstack = summary["deepstack"]
        lines.append("DeepStack (--deepstack): drop of p(answer) in %, mean over samples")
        lines += [f"  {drop:7.1f}  {name}" for name, drop in zip(deepstack["conditions"],
                                                                deepstack["drop_pct"])]
    if len(flows) == 1:
        lines.append(f"fusion layers: {_flow_findings(summary, flows[0])}")
    else:
        lines += ["fusion layers:", *(f"  {flow}: {_flow_findings(summary, flow)}"
                                      for flow in flows)]
    return "\n".join(lines)


def _flow_findings(summary: dict, flow: str) -> str:
    fusion = summary.get("fusion_layers_by_flow", {}).get(flow, summary["fusion_layers"])
    late = summary.get("review_by_flow", {}).get(flow, summary["review"])
    return (f"{fusion or 'none'}; review: "
            + (f"layers {late['layers']}" if late["detected"] else "not detected"))
