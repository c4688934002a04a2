"""The command lines' parser and the range of every numeric option, checked when the options are
parsed: before any data is read or any model loads, in one sentence.

Every CLI builds its parser with :class:`ArgumentParser` (an error is a
:class:`~probes.errors.UserError`: one line on stderr and exit code 2) and gives each numeric option a
``type=`` made here: :func:`whole` for counts, :func:`number` for real values (never NaN or
infinite), or one of the named ranges below.

>>> parser = ArgumentParser(prog="demo")
>>> _ = parser.add_argument("--limit", type=POSITIVE)
>>> _ = parser.add_argument("--ratio", type=number(0, 1, high_open=True))
>>> parser.parse_args(["--limit", "3", "--ratio", "0.5"])
Namespace(limit=3, ratio=0.5)
>>> POSITIVE("0")
Traceback (most recent call last):
argparse.ArgumentTypeError: takes a whole number of at least 1, not '0'
>>> number(0, 1, high_open=True)("nan")
Traceback (most recent call last):
argparse.ArgumentTypeError: takes a number in [0, 1), not 'nan'
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import NoReturn

from probes.errors import UserError

SEED_MAX = 2**32 - 1  # numpy's and torch's generators all take seeds up to here
THREADS_MAX = 1024  # torch starts this many OpenMP threads when asked: more is a mistake
BOOTSTRAP_MAX = 1_000_000  # resamples held in memory at once


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser whose errors are a :class:`~probes.errors.UserError` like any other
    bad input: one sentence, ``<what> (see PROG --help).``, which
    :func:`probes.cli.run_cli` prints as one line with exit code 2 (no usage block)."""

    def error(self, message: str) -> NoReturn:
        option, _, said = message.partition(": ")
        if option.startswith("argument ") and said.startswith("takes "):
            message = f"{option.removeprefix('argument ').split('/')[0]} {said}"
        raise UserError(f"{message.rstrip('.')} (see {self.prog} --help).")


def _span(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if high is None:
        return f"{'above' if low_open else 'of at least'} {low:g}"
    if low is None:
        return f"{'below' if high_open else 'of at most'} {high:g}"
    return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"


def whole(low: int | None = None, high: int | None = None) -> Callable[[str], int]:
    """The ``type=`` of a whole-number option from ``low`` to ``high`` (None: unbounded)."""
    if high is None:
        wanted = f"a whole number of at least {low}" if low is not None else "a whole number"
    else:
        wanted = f"a whole number from {low} to {high}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or (low is not None and value < low) or (high is not None
                                                                 and value > high):
            raise argparse.ArgumentTypeError(f"takes {wanted}, not {_shown(text)}")
        return value

    parse.__name__ = "whole number"
    return parse


def number(low: float | None = None, high: float | None = None, *, low_open: bool = False,
           high_open: bool = False) -> Callable[[str], float]:
    """The ``type=`` of a real-valued option in the range from ``low`` to ``high`` (None:
    unbounded; ``*_open``: the bound itself excluded); NaN and infinities never pass."""
    wanted = ("a finite number" if low is None and high is None
              else f"a number {_span(low, high, low_open, high_open)}")

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        inside = math.isfinite(value)
        if inside and low is not None:
            inside = value > low if low_open else value >= low
        if inside and high is not None:
            inside = value < high if high_open else value <= high
        if not inside:
            raise argparse.ArgumentTypeError(f"takes {wanted}, not {_shown(text)}")
        return value

    parse.__name__ = "number"
    return parse


def _shown(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:37] + "...")


def layers(text: str) -> tuple[int, ...]:
    """The ``type=`` of a list of layer numbers: ``"3,4"`` -> (3, 4); at least one, none
    negative (the model's depth bounds them once it is known)."""
    try:
        found = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        found = ()
    if not found or min(found) < 0:
        raise argparse.ArgumentTypeError(f"takes layer numbers separated by commas, e.g. 3,4, "
                                         f"not {_shown(text)}")
    return found


def heads(text: str) -> tuple[tuple[int, int], ...]:
    """The ``type=`` of a list of attention heads as LAYER.HEAD: ``"3.1,5.0"`` ->
    ((3, 1), (5, 0)); at least one, none negative (the model bounds them once it is known)."""
    try:
        found = tuple((int(layer), int(head)) for layer, _, head in
                      (part.strip().partition(".") for part in text.split(",") if part.strip()))
    except ValueError:
        found = ()
    if not found or min(min(pair) for pair in found) < 0:
        raise argparse.ArgumentTypeError(f"takes heads as LAYER.HEAD separated by commas, e.g. "
                                         f"3.1,5.0, not {_shown(text)}")
    return found


def shard(text: str) -> tuple[int, int]:
    """The ``type=`` of ``--shard``: ``"i/n"`` -> (i, n) with 0 <= i < n."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        index, count = -1, 0
    if not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"takes i/n with 0 <= i < n, e.g. 0/4, not "
                                         f"{_shown(text)}")
    return index, count


POSITIVE = whole(1)  # counts: --limit, --batch-size, --steps of training, --workers ...
NONNEGATIVE = whole(0)  # counts that may be none: --examples, --timed-samples, --warmup
LAYER = whole(0)  # a layer number (the model's depth is checked once it is known)
SEED = whole(0, SEED_MAX)
THREADS = whole(1, THREADS_MAX)
BOOTSTRAP = whole(1, BOOTSTRAP_MAX)
PROBABILITY = number(0, 1)  # shares and weights in [0, 1]
POSITIVE_NUMBER = number(0, low_open=True)  # learning rates, sizes
NONNEGATIVE_NUMBER = number(0)  # loss weights, tolerances, GPU shares
