"""``python -m analyses.train_vif [options]``: train a VIF module on a frozen model (easy-VQA
train + fine-grained train), save it as ``vif.safetensors`` in ``--out``, and compare the
model with and without it on held-out data (default: the fine-grained test split)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from analyses.common import add_analysis_arguments, load_data, load_model_from_args, write_run
from analyses.train_vif.run import run_train_vif
from analyses.train_vif.train import TrainConfig
from probes.cli import run_cli
from probes.errors import UserError
from probes.vif import VIF, VIFConfig

DEFAULT_OUT = "runs/train_vif"
WEIGHTS = "vif.safetensors"


def parse_layers(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise UserError(f"layers are given as integers separated by commas, not {text!r}.") from None


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
    lines.append(f"{'method':<8} {'accuracy':>8}  {'95% CI':>15}  {'p vs clean':>10}")
    for row in summary["methods"]:
        p = "" if row["p_value_vs_clean"] is None else f"{row['p_value_vs_clean']:.3f}"
        lines.append(f"{row['method']:<8} {row['accuracy']:8.1%}  "
                     f"[{row['ci_low']:.1%}, {row['ci_high']:.1%}]  {p:>10}")
    loc = summary["localisation"]
    if loc["n"]:
        lines.append(f"heatmap mass on the target: {loc['target_mass']:.3f} [{loc['ci_low']:.3f}, "
                     f"{loc['ci_high']:.3f}] vs uniform {loc['uniform_mass']:.3f}; peak on the "
                     f"target {loc['pointing']:.1%} (n={loc['n']})")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analyses.train_vif",
                                     description=__doc__.split("\n")[0])
    add_analysis_arguments(parser, DEFAULT_OUT, default_batch_size=32)
    parser.set_defaults(data="fine-grained")
    parser.add_argument("--steps", type=int, default=300, help="training steps (default 300)")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--kl-weight", type=float, default=0.1)
    parser.add_argument("--sparsity-weight", type=float, default=0.01)
    parser.add_argument("--fine-fraction", type=float, default=0.5,
                        help="share of each batch from the fine-grained train split")
    parser.add_argument("--alpha", type=float, default=0.5, help="mixing weight (default 0.5)")
    parser.add_argument("--learn-layers", default=None,
                        help="e.g. '2,3' (default: fractions 0.34..0.55 of depth, stride 2)")
    parser.add_argument("--apply-layers", default=None,
                        help="e.g. '4,5' (default: fraction 0.78 of depth to the last layer)")
    parser.add_argument("--load", type=Path, default=None,
                        help="evaluate this saved vif.safetensors instead of training")
    args = parser.parse_args(argv)
    if args.resume:
        raise UserError("train_vif keeps no resume state; run again without --resume.")
    vif_config = VIFConfig(alpha=args.alpha, learn_layers=parse_layers(args.learn_layers),
                           apply_layers=parse_layers(args.apply_layers))
    config = TrainConfig(steps=0 if args.load else args.steps, batch_size=args.batch_size,
                         lr=args.lr, kl_weight=args.kl_weight,
                         sparsity_weight=args.sparsity_weight, fine_fraction=args.fine_fraction,
                         seed=args.seed, vif=vif_config)
    test = load_data(args.data, args.split, args.limit)
    loaded = load_model_from_args(args)
    config.validate(loaded.adapter.num_layers)
    module = None if args.load is None else VIF.load(args.load, loaded)
    easy, fine = load_data("easy-vqa", "train", None), load_data("fine-grained", "train", None)
    result, module = run_train_vif(loaded, easy, fine, test, config, module, progress=True)
    if args.load is None:
        module.save(args.out / WEIGHTS)
    write_run(result, args.out, format_table(result.summary))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
