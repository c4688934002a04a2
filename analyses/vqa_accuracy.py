"""How often a model answers a dataset's questions right, per question kind, with 95% CIs.

    python -m analyses.vqa_accuracy --data easy-vqa --limit 500

Answers are produced by the same greedy path as ``python -m probes.models answer`` and compared
with the reference after lower-casing and stripping.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from analyses.common import load_model_from_args
from analyses.data import load_dataset
from analyses.grading import grade
from analyses.stats import wilson_interval
from probes.cli import add_model_arguments, run_cli
from probes.errors import UserError


@dataclass(frozen=True)
class KindAccuracy:
    kind: str  # a question kind, or "all"
    n: int
    correct: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.n

    @property
    def ci(self) -> tuple[float, float]:
        return wilson_interval(self.correct, self.n)


def accuracy_by_kind(samples: Sequence, correct: Sequence[bool]) -> list[KindAccuracy]:
    """One row per question kind (sorted), then ``all``."""
    kinds = sorted({s.kind for s in samples})
    rows = []
    for kind in [*kinds, "all"]:
        hits = [c for s, c in zip(samples, correct) if kind in ("all", s.kind)]
        rows.append(KindAccuracy(kind, len(hits), sum(hits)))
    return rows


def format_table(rows: Sequence[KindAccuracy]) -> str:
    lines = [f"{'kind':<10} {'n':>6} {'accuracy':>9}  95% CI"]
    for row in rows:
        low, high = row.ci
        lines.append(f"{row.kind:<10} {row.n:>6} {row.accuracy:>9.1%}  [{low:.1%}, {high:.1%}]")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analyses.vqa_accuracy", description=__doc__.split("\n")[0])
    add_model_arguments(parser)
    parser.add_argument("--data", default="easy-vqa", help="dataset name (default: easy-vqa)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=None, help="first N questions only")
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        raise UserError("--limit must be at least 1.")
    try:
        dataset = load_dataset(args.data, args.split, limit=args.limit)
    except ValueError as err:
        raise UserError(str(err)) from err
    loaded = load_model_from_args(args)
    correct = grade(loaded, dataset, args.batch_size, progress=True)
    sys.stdout.write(f"{loaded.model_id} on {args.data}/{args.split}\n")
    sys.stdout.write(format_table(accuracy_by_kind(dataset, correct)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
