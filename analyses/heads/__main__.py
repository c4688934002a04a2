"""``python -m analyses.heads [options]``: head attribution of one model on one dataset (see
:mod:`analyses.heads`); shard runs merge with ``python -m analyses.merge``."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from analyses.common import load_data
from analyses.heads.run import AGAINST, Heads, HeadsConfig
from analyses.layer_masking.run import check_regions
from analyses.runner.cli import add_analysis_arguments, add_engine_argument, run_from_args
from probes.arguments import BOOTSTRAP, NONNEGATIVE_NUMBER, POSITIVE, PROBABILITY, ArgumentParser
from probes.arguments import heads as head_list
from probes.cli import run_cli

DEFAULT_OUT = "runs/heads"


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m analyses.heads", description=__doc__.split("\n")[0])
    add_analysis_arguments(parser, DEFAULT_OUT)
    add_engine_argument(parser)
    parser.add_argument("--flow", default="image->last",
                        help="the flow knocked out in one head at a time, SRC->DST "
                             "(default: image->last)")
    parser.add_argument("--heads", type=head_list, default=(), metavar="LAYER.HEAD,...",
                        help="also knock out these heads together (e.g. 3.1,4.0), against as "
                             "many random heads")
    parser.add_argument("--controls", type=POSITIVE, default=8,
                        help="random heads (or head sets) per sample (default: 8)")
    parser.add_argument("--against", choices=AGAINST, default="runner-up",
                        help="the logit difference's other side for the attribution: the clean "
                             "runner-up token or the mean logit (default: runner-up)")
    parser.add_argument("--all-samples", action="store_true",
                        help="test the heads on every sample, not only those answered correctly")
    parser.add_argument("--top", type=POSITIVE, default=10, help="heads in the top lists")
    parser.add_argument("--alpha", type=PROBABILITY, default=0.05,
                        help="family-wise error rate of the key-head test (default: 0.05)")
    parser.add_argument("--min-effect", type=NONNEGATIVE_NUMBER, default=2.0,
                        help="smallest mean drop (%%) of a key head (default: 2.0)")
    parser.add_argument("--bootstrap", type=BOOTSTRAP, default=2000, help="bootstrap resamples")
    args = parser.parse_args(argv)
    dataset = load_data(args.data, args.split, args.limit)
    config = HeadsConfig(flow=args.flow, heads=args.heads, controls=args.controls,
                         against=args.against, samples="all" if args.all_samples else "correct",
                         top=args.top, batch_size=args.batch_size, seed=args.seed,
                         n_bootstrap=args.bootstrap, alpha=args.alpha, min_effect=args.min_effect,
                         engine=args.engine)
    config.validate(10**9)  # the flow and options, before the model loads (layers: later)
    check_regions(dataset, (args.flow,))  # a region flow on data without regions
    run_from_args(Heads(config), args, dataset)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
