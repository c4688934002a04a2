"""``python -m analyses.patching [options]``: activation patching of one model on one dataset
(see :mod:`analyses.patching`); shard runs merge with ``python -m analyses.merge``."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from analyses.common import load_data
from analyses.patching.corrupt import CORRUPTIONS, partners
from analyses.patching.run import DIRECTIONS, PATCH_GROUPS, Patching, PatchingConfig
from analyses.runner.cli import add_analysis_arguments, add_engine_argument, run_from_args
from probes.arguments import BOOTSTRAP, POSITIVE_NUMBER, ArgumentParser
from probes.cli import run_cli
from probes.patching import SITES

DEFAULT_OUT = "runs/patching"


def names(text: str) -> tuple[str, ...]:
    """A comma-separated list of names."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m analyses.patching",
                            description=__doc__.split("\n")[0])
    add_analysis_arguments(parser, DEFAULT_OUT, default_batch_size=16)
    add_engine_argument(parser)
    parser.add_argument("--corrupt", default="noise", choices=CORRUPTIONS,
                        help="the corrupt run: the data's counterfactual pairs, noise on the "
                             "image embeddings, a blank image, another sample's image "
                             "(default: noise)")
    parser.add_argument("--noise-scale", type=POSITIVE_NUMBER, default=3.0,
                        help="--corrupt noise: the noise's std in units of the image "
                             "embeddings' std (default: 3)")
    parser.add_argument("--direction", default="denoise", choices=DIRECTIONS,
                        help="denoise: clean activations into the corrupt run; noise: corrupt "
                             "into the clean run (default: denoise)")
    parser.add_argument("--sites", type=names, default=("residual",),
                        help=f"comma-separated sites among {', '.join(SITES)} (head: every "
                             "(layer, head) at --head-group; default: residual)")
    parser.add_argument("--groups", type=names, default=("image", "question", "last"),
                        help=f"token groups patched, among {', '.join(PATCH_GROUPS)} "
                             "(default: image,question,last)")
    parser.add_argument("--head-group", default="last", choices=PATCH_GROUPS,
                        help="the token group a head's output is patched at (default: last)")
    parser.add_argument("--bootstrap", type=BOOTSTRAP, default=2000, help="bootstrap resamples")
    args = parser.parse_args(argv)
    config = PatchingConfig(corrupt=args.corrupt, direction=args.direction, sites=args.sites,
                            groups=args.groups, head_group=args.head_group,
                            noise_scale=args.noise_scale, batch_size=args.batch_size,
                            n_bootstrap=args.bootstrap, seed=args.seed, engine=args.engine)
    analysis = Patching(config)  # refuses a bad site or group before the data loads
    dataset = load_data(args.data, args.split, args.limit)
    partners(dataset, config.corrupt)  # an unknown pair id: refused before the model loads
    run_from_args(analysis, args, dataset)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
