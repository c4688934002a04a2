"""Shared command-line plumbing: the model options every command accepts, and the wrapper that
turns a :class:`~probes.errors.UserError` into one sentence on stderr and exit code 2."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from probes.errors import UserError

EXIT_BAD_INPUT = 2


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--model --device --device-map --dtype --trust-remote-code --allow-pickle`` with the
    design's defaults (``args.device_map`` is ``load_model``'s ``device_map``)."""
    from probes.models.registry import DEFAULT_MODEL

    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"alias, hub id or local directory (default: {DEFAULT_MODEL}); "
        "`python -m probes.models list` shows the aliases",
    )
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument(
        "--device-map", default=None, choices=["auto", "balanced", "balanced_low_0", "sequential"],
        help="spread one model over several GPUs with accelerate: auto spreads the layers over "
        "all visible GPUs (needs pip install 'fusionlens[multi-gpu]'; default: one device)",
    )
    parser.add_argument(
        "--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
        help="auto: bfloat16 on CUDA, float32 on CPU",
    )
    parser.add_argument(
        "--trust-remote-code", action="store_true",
        help="allow a checkpoint to run its own Python code (off by default)",
    )
    parser.add_argument(
        "--allow-pickle", action="store_true",
        help="allow pickled .bin weights when a checkpoint has no safetensors (off by default)",
    )


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Run ``main(argv)``; a UserError becomes ``error: <sentence>`` on stderr and exit code 2."""
    try:
        code = main(argv)
    except UserError as err:
        sys.stderr.write(f"error: {err}\n")
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    return 0 if code is None else code
