"""``python -m analyses.contrastive_attention [options]``: contrastive maps and refinement."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from analyses.contrastive_attention.run import ContrastiveAttention, ContrastiveConfig
from analyses.runner.cli import add_analysis_arguments, run_from_args
from probes.arguments import BOOTSTRAP, LAYER, NONNEGATIVE, POSITIVE, ArgumentParser, layers, number
from probes.cli import run_cli

DEFAULT_OUT = "runs/contrastive_attention"


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m analyses.contrastive_attention",
                                     description=__doc__.split("\n")[0])
    add_analysis_arguments(parser, DEFAULT_OUT)
    parser.add_argument("--series", default="last", help="whose attention: last or question")
    parser.add_argument("--late-layer", type=LAYER, default=None, help="default: the last layer")
    parser.add_argument("--early-layer", type=LAYER, default=None,
                        help="default: the first fusion layer of --layer-masking, else the "
                             "automatic rule (the early candidate most unlike the late layer)")
    parser.add_argument("--layer-masking", type=Path, default=None, metavar="RUN_DIR",
                        help="a saved layer-masking run: its fusion layers and review")
    parser.add_argument("--refine-layers", type=layers, default=None,
                        help="layers to refine at, e.g. 4,5 (default: the review layers of "
                             "--layer-masking, else the last quarter)")
    parser.add_argument("--mode", default="soft", help="soft (logit bias) or hard (cut edges)")
    parser.add_argument("--bias", type=number(high=0), default=-2.0, help="soft mode's bias (default -2)")
    parser.add_argument("--ratio", type=number(0, 1, high_open=True), default=None,
                        help="share of image patches to suppress (default 0.5)")
    parser.add_argument("--threshold", type=number(), default=None,
                        help="instead of --ratio: suppress patches whose contrast is below "
                             "threshold / patches")
    parser.add_argument("--no-refine", action="store_true", help="localisation only")
    parser.add_argument("--max-new-tokens", type=POSITIVE, default=4)
    parser.add_argument("--examples", type=NONNEGATIVE, default=4, help="samples shown in the figures")
    parser.add_argument("--bootstrap", type=BOOTSTRAP, default=2000, help="bootstrap resamples")
    args = parser.parse_args(argv)
    ratio = 0.5 if args.ratio is None and args.threshold is None else args.ratio
    config = ContrastiveConfig(
        series=args.series, late_layer=args.late_layer, early_layer=args.early_layer,
        refine_layers=args.refine_layers, mode=args.mode,
        bias=args.bias, ratio=ratio, threshold=args.threshold, refine=not args.no_refine,
        max_new_tokens=args.max_new_tokens, examples=args.examples,
        n_bootstrap=args.bootstrap, seed=args.seed)
    run_from_args(ContrastiveAttention(config, args.layer_masking), args)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
