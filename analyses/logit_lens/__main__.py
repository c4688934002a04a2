"""``python -m analyses.logit_lens [options]``: the logit lens of one model on one dataset (see
:mod:`analyses.logit_lens`); shard runs merge with ``python -m analyses.merge``."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from analyses.common import data_record, load_data
from analyses.logit_lens.run import LensConfig, LogitLens, read_layer_masking
from analyses.runner.cli import add_analysis_arguments, add_engine_argument, run_from_args
from probes.arguments import BOOTSTRAP, ArgumentParser, layers
from probes.cli import run_cli
from probes.errors import UserError
from probes.models.registry import resolve

DEFAULT_OUT = "runs/logit_lens"


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m analyses.logit_lens",
                            description=__doc__.split("\n")[0])
    add_analysis_arguments(parser, DEFAULT_OUT, default_batch_size=1)
    add_engine_argument(parser)
    parser.add_argument("--layer-masking", default=None, metavar="RUN",
                        help="a layer masking run (its --out) of the same model and data: its "
                             "fusion layers are shown beside the lens")
    parser.add_argument("--figure-layers", type=layers, default=None,
                        help="layers shown in the image-token figure, e.g. 0,2,5 (default: 4)")
    parser.add_argument("--bootstrap", type=BOOTSTRAP, default=2000, help="bootstrap resamples")
    args = parser.parse_args(argv)
    if args.batch_size != 1:
        raise UserError("the logit lens reads one sample per forward; --batch-size must be 1.")
    dataset = load_data(args.data, args.split, args.limit)
    masking = None
    if args.layer_masking is not None:  # refused before the model loads
        source = resolve(args.model)
        model_id = source.location if source.kind == "hub" else source.name
        masking = read_layer_masking(args.layer_masking, model_id, data_record(dataset))
    config = LensConfig(figure_layers=args.figure_layers,
                        n_bootstrap=args.bootstrap, seed=args.seed, engine=args.engine,
                        layer_masking=masking)
    run_from_args(LogitLens(config), args, dataset)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
