"""``python -m analyses.sinks [options]``: attention sinks and visual sink tokens of one model
on one dataset, per layer (see :mod:`analyses.sinks`); shard runs merge with
``python -m analyses.merge``."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from analyses.common import load_data
from analyses.runner.cli import add_analysis_arguments, add_engine_argument, run_from_args
from analyses.sinks.run import Sinks, SinksConfig
from probes.arguments import BOOTSTRAP, POSITIVE_NUMBER, ArgumentParser
from probes.cli import run_cli
from probes.errors import UserError

DEFAULT_OUT = "runs/sinks"


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m analyses.sinks", description=__doc__.split("\n")[0])
    add_analysis_arguments(parser, DEFAULT_OUT, default_batch_size=1)
    add_engine_argument(parser)
    parser.add_argument("--tau", type=POSITIVE_NUMBER, default=20.0,
                        help="a sink dimension's |h_d| is at least tau x the RMS of the token's "
                             "residual vector (default: 20, after Kang et al. 2025; no "
                             "dimension can pass tau above sqrt(hidden size))")
    parser.add_argument("--bootstrap", type=BOOTSTRAP, default=2000, help="bootstrap resamples")
    args = parser.parse_args(argv)
    if args.batch_size != 1:
        raise UserError("the sinks analysis reads one sample per forward; --batch-size must "
                        "be 1.")
    dataset = load_data(args.data, args.split, args.limit)
    config = SinksConfig(tau=args.tau, n_bootstrap=args.bootstrap, seed=args.seed,
                         engine=args.engine)
    run_from_args(Sinks(config), args, dataset)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
