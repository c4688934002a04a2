"""``python -m analyses.attenuation [options]``: attenuation curves of one model on one dataset
(see :mod:`analyses.attenuation`); shard runs merge with ``python -m analyses.merge``."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from analyses.attenuation import AttenuationConfig
from analyses.attenuation.run import Attenuation
from analyses.runner.cli import add_analysis_arguments, run_from_args
from probes.arguments import BOOTSTRAP, POSITIVE_NUMBER, ArgumentParser
from probes.cli import run_cli
from probes.errors import UserError

DEFAULT_OUT = "runs/attenuation"


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m analyses.attenuation",
                                     description=__doc__.split("\n")[0])
    add_analysis_arguments(parser, DEFAULT_OUT, default_batch_size=1)
    parser.add_argument("--small-cells", type=POSITIVE_NUMBER, default=1.0,
                        help="targets covering fewer patch cells than this are small (default 1)")
    parser.add_argument("--bootstrap", type=BOOTSTRAP, default=2000, help="bootstrap resamples")
    args = parser.parse_args(argv)
    if args.batch_size != 1:
        raise UserError("attenuation measures one sample per forward; --batch-size must be 1.")
    config = AttenuationConfig(small_cells=args.small_cells, seed=args.seed,
                               n_bootstrap=args.bootstrap)
    config.validate()  # bad options fail before the model loads
    run_from_args(Attenuation(config), args)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
