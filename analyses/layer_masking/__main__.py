"""``python -m analyses.layer_masking [options]`` runs a sweep;
``python -m analyses.layer_masking merge --out DIR SHARD_DIR...`` merges shard runs (the same as
``python -m analyses.merge``)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from analyses.common import load_data
from analyses.layer_masking import DEFAULT_FLOWS, LayerMaskingConfig
from analyses.layer_masking.run import MIN_KIND_SAMPLES, LayerMasking, check_regions
from analyses.runner.cli import (
    add_analysis_arguments,
    add_engine_argument,
    check_out_from_args,
    run_from_args,
)
from probes.arguments import BOOTSTRAP, POSITIVE, ArgumentParser, number
from probes.cli import run_cli

DEFAULT_OUT = "runs/layer_masking"


def main_run(argv: Sequence[str] | None) -> int:
    parser = ArgumentParser(prog="python -m analyses.layer_masking",
                                     description=__doc__.split("\n")[0])
    add_analysis_arguments(parser, DEFAULT_OUT)
    add_engine_argument(parser)
    parser.add_argument("--flows", default=";".join(DEFAULT_FLOWS),
                        help="flows to block, separated by ';' (default: image->question,last); "
                             "e.g. 'image->last;question->last;object->last'")
    parser.add_argument("--window", type=POSITIVE, default=1,
                        help="layers blocked around each layer (default 1; the literature used 9)")
    parser.add_argument("--all-samples", action="store_true",
                        help="sweep every sample, not only those the model answers correctly")
    parser.add_argument("--bootstrap", type=BOOTSTRAP, default=2000, help="bootstrap resamples")
    parser.add_argument("--min-effect", type=number(0, 100), default=LayerMaskingConfig.min_effect,
                        help="smallest mean drop of p(answer) in %% that can make a fusion layer "
                             "(default 2.0)")
    parser.add_argument("--min-kind-samples", type=POSITIVE, default=MIN_KIND_SAMPLES,
                        help="fewest samples of a question kind for its own fusion layers; "
                             f"smaller kinds are listed with their n (default {MIN_KIND_SAMPLES})")
    parser.add_argument("--deepstack", action="store_true",
                        help="Qwen3-VL: also remove the DeepStack additions (vision features added "
                             "after the first decoder layers, which no attention edge carries): "
                             "all of them, after each layer alone, and each flow blocked at every "
                             "layer without and with them")
    args = parser.parse_args(argv)
    flows = tuple(part.strip() for part in args.flows.split(";") if part.strip())
    config = LayerMaskingConfig(flows=flows, window=args.window,
                                samples="all" if args.all_samples else "correct",
                                batch_size=args.batch_size, seed=args.seed,
                                n_bootstrap=args.bootstrap, min_effect=args.min_effect,
                                engine=args.engine, min_kind_samples=args.min_kind_samples,
                                deepstack=args.deepstack)
    check_out_from_args(args)  # a bad --out before the data is read
    dataset = load_data(args.data, args.split, args.limit)
    check_regions(dataset, flows)  # a region flow on data without regions: before the model
    run_from_args(LayerMasking(config), args, dataset)
    return 0


def main_merge(argv: Sequence[str]) -> int:
    from analyses.merge import main as merge_main  # the shared merge, for every analysis

    return merge_main(argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["merge"]:
        return main_merge(argv[1:])
    return main_run(argv)


if __name__ == "__main__":
    sys.exit(run_cli(main))
