"""``python -m analyses.contrastive_attention [options]``: contrastive maps and refinement."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from analyses.attention_evolution.__main__ import parse_layers
from analyses.common import add_analysis_arguments, load_data, load_model_from_args, write_run
from analyses.contrastive_attention import ContrastiveConfig, run_contrastive_attention
from probes.cli import run_cli

DEFAULT_OUT = "runs/contrastive_attention"


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
        lines.append(f"{'method':<15} {'accuracy':>8} {'95% CI':>16}  {'p vs clean':>10}")
        for row in summary["methods"]:
            p = "" if row["p_value_vs_clean"] is None else f"{row['p_value_vs_clean']:.3f}"
            lines.append(f"{row['method']:<15} {row['accuracy']:8.1%} "
                         f"[{row['ci_low']:5.1%}, {row['ci_high']:5.1%}]  {p:>10}")
        lines.append(f"refined vs random control: McNemar p {summary['refined_vs_random_p']:.3f}; "
                     f"answers changed: {summary['answers_changed']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analyses.contrastive_attention",
                                     description=__doc__.split("\n")[0])
    add_analysis_arguments(parser, DEFAULT_OUT)
    parser.add_argument("--series", default="last", help="whose attention: last or question")
    parser.add_argument("--late-layer", type=int, default=None, help="default: the last layer")
    parser.add_argument("--early-layer", type=int, default=None,
                        help="default: the first fusion layer of --layer-masking, else the "
                             "automatic rule (the early candidate most unlike the late layer)")
    parser.add_argument("--layer-masking", type=Path, default=None, metavar="RUN_DIR",
                        help="a saved layer-masking run: its fusion layers and review")
    parser.add_argument("--refine-layers", default=None,
                        help="layers to refine at, e.g. 4,5 (default: the review layers of "
                             "--layer-masking, else the last quarter)")
    parser.add_argument("--mode", default="soft", help="soft (logit bias) or hard (cut edges)")
    parser.add_argument("--bias", type=float, default=-2.0, help="soft mode's bias (default -2)")
    parser.add_argument("--ratio", type=float, default=None,
                        help="share of image patches to suppress (default 0.5)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="instead of --ratio: suppress patches whose contrast is below "
                             "threshold / patches")
    parser.add_argument("--no-refine", action="store_true", help="localisation only")
    parser.add_argument("--max-new-tokens", type=int, default=4)
    parser.add_argument("--examples", type=int, default=4, help="samples shown in the figures")
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples")
    args = parser.parse_args(argv)
    ratio = 0.5 if args.ratio is None and args.threshold is None else args.ratio
    config = ContrastiveConfig(
        series=args.series, late_layer=args.late_layer, early_layer=args.early_layer,
        refine_layers=parse_layers(args.refine_layers, "--refine-layers"), mode=args.mode,
        bias=args.bias, ratio=ratio, threshold=args.threshold, refine=not args.no_refine,
        max_new_tokens=args.max_new_tokens, examples=args.examples,
        n_bootstrap=args.bootstrap, seed=args.seed)
    dataset = load_data(args.data, args.split, args.limit)
    loaded = load_model_from_args(args)
    result = run_contrastive_attention(loaded, dataset, config, args.layer_masking, progress=True,
                                       out=args.out, resume=args.resume)
    write_run(result, args.out, format_table(result.summary))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
