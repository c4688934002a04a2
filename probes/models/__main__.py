"""``python -m probes.models``: list the known models, or answer a question about an image.

    python -m probes.models list
    python -m probes.models answer --image cat.png --question "What animal is this?"
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from probes.arguments import POSITIVE, ArgumentParser
from probes.cli import add_model_arguments, run_cli, set_threads
from probes.models.adapters.base import check_question


def _parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m probes.models", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="list model aliases")
    answer = commands.add_parser("answer", help="answer a question about an image")
    add_model_arguments(answer)
    answer.add_argument("--image", required=True, help="path to an image file")
    answer.add_argument("--question", required=True)
    answer.add_argument("--max-new-tokens", type=POSITIVE, default=16)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from probes.models.registry import known_models

    if args.command == "list":
        for name, description in known_models().items():
            sys.stdout.write(f"{name:<20} {description}\n")
        return 0
    check_question(args.question)  # before loading a 7B model
    from probes.images import load_image
    from probes.models.answer import answer_questions
    from probes.models.loading import load_model

    image = load_image(args.image)  # fail on a bad image before loading a 7B model
    set_threads(args.threads)
    loaded = load_model(
        args.model, device=args.device, dtype=args.dtype, trust_remote_code=args.trust_remote_code,
        allow_pickle=args.allow_pickle, device_map=args.device_map,
    )
    [result] = answer_questions(loaded, [image], [args.question], args.max_new_tokens)
    if loaded.source.kind == "builtin" and "UNTRAINED" in loaded.source.description:
        sys.stderr.write(f"note: {args.model} has random weights; its answers mean nothing.\n")
    sys.stdout.write(f"{result.text}\t(p={result.probability:.3f})\n")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
