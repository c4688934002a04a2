"""``python -m probes.lens``: TransformerLens interop (needs ``pip install 'fusionlens[lens]'``).

    python -m probes.lens crosscheck --model llava --image cat.png --question "What is it?"

prints, at every layer, the largest difference between fusionlens's recorded attention and
TransformerLens's ``hook_pattern``, and between the effects of the same knockout in both.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from probes.arguments import NONNEGATIVE_NUMBER, ArgumentParser
from probes.cli import add_model_arguments, run_cli, set_threads
from probes.lens.compare import DEFAULT_FLOWS


def _parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m probes.lens", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("crosscheck", help="compare our attention and knockouts with "
                                "TransformerLens's on one image and question")
    add_model_arguments(check)
    check.add_argument("--image", required=True, help="path to an image file")
    check.add_argument("--question", required=True)
    check.add_argument("--flows", default=DEFAULT_FLOWS,
                       help=f"flows the knockouts block, one layer at a time (default: {DEFAULT_FLOWS})")
    check.add_argument("--tolerance", type=NONNEGATIVE_NUMBER, default=None,
                       help="exit with code 1 when the largest difference exceeds this")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from probes.images import load_image
    from probes.lens.compare import crosscheck
    from probes.lens.extra import require_transformer_lens
    from probes.masking import parse_flows
    from probes.models.adapters.base import check_question
    from probes.models.loading import load_model

    require_transformer_lens()  # before loading a 7B model, as are the checks below
    parse_flows(args.flows)
    check_question(args.question)
    image = load_image(args.image)
    set_threads(args.threads)
    loaded = load_model(
        args.model, device=args.device, dtype=args.dtype, trust_remote_code=args.trust_remote_code,
        allow_pickle=args.allow_pickle, device_map=args.device_map,
    )
    report = crosscheck(loaded, image, args.question, flows=args.flows)
    sys.stdout.write(f"{report}\n")
    if args.tolerance is not None and report.largest > args.tolerance:
        sys.stderr.write(f"largest difference {report.largest:.2e} exceeds --tolerance "
                         f"{args.tolerance:.2e}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
