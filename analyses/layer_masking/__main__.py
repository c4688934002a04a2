"""``python -m analyses.layer_masking [options]`` runs a sweep;
``python -m analyses.layer_masking merge --out DIR SHARD_DIR...`` merges shard runs."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from analyses.common import add_analysis_arguments, load_data, load_model_from_args, write_run
from analyses.layer_masking import DEFAULT_FLOWS, LayerMaskingConfig, merge, run_layer_masking
from analyses.layer_masking.run import parse_shard
from probes.cli import run_cli
from probes.errors import UserError

DEFAULT_OUT = "runs/layer_masking"


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


def main_run(argv: Sequence[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analyses.layer_masking",
                                     description=__doc__.split("\n")[0])
    add_analysis_arguments(parser, DEFAULT_OUT)
    parser.add_argument("--flows", default=";".join(DEFAULT_FLOWS),
                        help="flows to block, separated by ';' (default: image->question,last); "
                             "e.g. 'image->last;question->last;object->last'")
    parser.add_argument("--window", type=int, default=1,
                        help="layers blocked around each layer (default 1; the literature used 9)")
    parser.add_argument("--all-samples", action="store_true",
                        help="sweep every sample, not only those the model answers correctly")
    parser.add_argument("--shard", default="0/1",
                        help="i/n: run only every n-th sample from the i-th (merge the shards "
                             "with the merge command)")
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples")
    parser.add_argument("--min-effect", type=float, default=LayerMaskingConfig.min_effect,
                        help="smallest mean drop of p(answer) in %% that can make a fusion layer "
                             "(default 2.0)")
    args = parser.parse_args(argv)
    flows = tuple(part.strip() for part in args.flows.split(";") if part.strip())
    config = LayerMaskingConfig(flows=flows, window=args.window,
                                samples="all" if args.all_samples else "correct",
                                batch_size=args.batch_size, seed=args.seed,
                                n_bootstrap=args.bootstrap, min_effect=args.min_effect)
    shard = parse_shard(args.shard)
    dataset = load_data(args.data, args.split, args.limit)
    loaded = load_model_from_args(args)
    config.validate(loaded.adapter.num_layers)  # bad flows or windows fail before any work
    result = run_layer_masking(loaded, dataset, config, out=args.out, resume=args.resume,
                               shard=shard, progress=True)
    write_run(result, args.out, format_table(result.summary))
    return 0


def main_merge(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m analyses.layer_masking merge",
                                     description="merge shard runs into one result")
    parser.add_argument("shards", nargs="+", type=Path, help="the shards' --out directories")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        result = merge(args.shards)
    except FileNotFoundError as err:
        raise UserError(str(err)) from err
    write_run(result, args.out, format_table(result.summary))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["merge"]:
        return main_merge(argv[1:])
    return main_run(argv)


if __name__ == "__main__":
    sys.exit(run_cli(main))
