"""``python -m analyses.attention_evolution [options]``: record, score and draw."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from analyses.attention_evolution.run import AttentionEvolution, EvolutionConfig
from analyses.runner.cli import add_analysis_arguments, add_engine_argument, run_from_args
from probes.arguments import BOOTSTRAP, NONNEGATIVE, ArgumentParser, layers, number
from probes.cli import run_cli

DEFAULT_OUT = "runs/attention_evolution"


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m analyses.attention_evolution",
                                     description=__doc__.split("\n")[0])
    add_analysis_arguments(parser, DEFAULT_OUT)
    add_engine_argument(parser)
    parser.add_argument("--heads", action="store_true", help="also keep every head's maps")
    parser.add_argument("--top-share", type=number(0, 1, low_open=True, high_open=True), default=0.05,
                        help="a patch is high in a map when among its top share (default 0.05)")
    parser.add_argument("--sink-threshold", type=number(0, 1, low_open=True), default=0.5,
                        help="sink score from which a patch is a sink (default 0.5)")
    parser.add_argument("--examples", type=NONNEGATIVE, default=4, help="samples shown in the map figure")
    parser.add_argument("--figure-layers", type=layers, default=None,
                        help="layers shown in the map figure, e.g. 0,2,5 (default: up to 6)")
    parser.add_argument("--bootstrap", type=BOOTSTRAP, default=2000, help="bootstrap resamples")
    args = parser.parse_args(argv)
    config = EvolutionConfig(heads=args.heads, top_share=args.top_share,
                             sink_threshold=args.sink_threshold, examples=args.examples,
                             figure_layers=args.figure_layers,
                             n_bootstrap=args.bootstrap, seed=args.seed, engine=args.engine)
    run_from_args(AttentionEvolution(config), args)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
