"""The report's command line; see :mod:`figures.report`."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from probes.cli import run_cli
from probes.errors import UserError


def check_writable(out: Path) -> None:
    """``out`` can be written as a file (its folder is made where missing)."""
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; give the report's file name, e.g. "
                        f"{out / 'report.html'}.")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        probe = out.parent / f".{out.name}.write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise UserError(f"cannot write the report to {out} ({err.strerror or err}); choose "
                        "another --out.") from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m figures.report",
        description="one self-contained HTML report (opens offline) of saved runs")
    parser.add_argument("runs", nargs="+", type=Path,
                        help="the --out folders of runs of one analysis (several: side by side)")
    parser.add_argument("--out", type=Path, required=True, help="the HTML file to write")
    args = parser.parse_args(argv)
    check_writable(args.out)
    from figures.report.build import write_report

    path = write_report(args.runs, args.out)
    print(f"report in {path} ({path.stat().st_size / 2**20:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
