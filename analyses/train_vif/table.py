"""The short table ``python -m analyses.train_vif`` prints."""

from __future__ import annotations

from analyses.stats import method_table


def format_table(summary: dict) -> str:
    vif, training = summary["vif"], summary["training"]
    lines = [f"{summary['model']['id']} (frozen) + VIF ({vif['parameters']:,} parameters; "
             f"learning layers {vif['learn_layers']}, apply layers {vif['apply_layers']}, "
             f"alpha {vif['alpha']})"]
    if training["trained_here"]:
        lines.append(f"trained {training['steps']} steps in {training['seconds']:.0f} s: loss "
                     f"{training['loss_first']:.3f} -> {training['loss_last']:.3f} (nll "
                     f"{training['nll_first']:.3f} -> {training['nll_last']:.3f})")
    lines.append(f"{summary['data']['name']}/{summary['data']['split']}, {summary['n_samples']} "
                 "samples:")
    lines += method_table(summary["methods"])
    loc = summary["localisation"]
    if loc["n"]:
        lines.append(f"heatmap mass on the target: {loc['target_mass']:.3f} [{loc['ci_low']:.3f}, "
                     f"{loc['ci_high']:.3f}] vs uniform {loc['uniform_mass']:.3f}; peak on the "
                     f"target {loc['pointing']:.1%} (n={loc['n']})")
    return "\n".join(lines)
