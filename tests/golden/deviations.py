"""Each golden quantity's largest deviation from the saved files against its tolerance
(``tests/test_golden.py``), for runs made on other kernels or thread counts.

    ATEN_CPU_CAPABILITY=default python tests/golden/deviations.py --threads 1 [OUT]
    python tests/golden/deviations.py --only OUT      # compare runs already in OUT/<name>

Runs every golden run into OUT/<name> (a temporary folder when OUT is not given) unless
``--only``, then prints one line per quantity with a deviation: run, quantity, largest
deviation, tolerance, and their ratio (the test fails above 1), then every failure.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", nargs="?", type=Path)
    parser.add_argument("--threads", type=int, default=None, help="torch threads of the runs")
    parser.add_argument("--only", action="store_true", help="compare the runs already in OUT")
    args = parser.parse_args()
    import torch

    from analyses.results import RunResult

    from runs import RUNS, run
    from test_golden import deviations, load_expected

    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out or Path(tempfile.mkdtemp())
    worst, failures = 0.0, []
    sys.stdout.write(f"kernels {torch.backends.cpu.get_cpu_capability()}, "
                     f"{torch.get_num_threads()} thread(s)\n")
    for name in RUNS:
        if not args.only and run(name, out / name) != 0:
            failures.append(f"{name}: the run failed")
            continue
        problems, seen = deviations(load_expected(name), RunResult.load(out / name))
        failures += [f"{name}: {problem}" for problem in problems]
        for quantity, (deviation, tolerance) in sorted(seen.items()):
            if deviation > 0:
                ratio = deviation / tolerance if tolerance else float("inf")
                worst = max(worst, ratio)
                sys.stdout.write(f"{name:22} {quantity:52} {deviation:9.2e} {tolerance:9.2e} "
                                 f"{ratio:6.3f}\n")
    sys.stdout.write(f"largest deviation / tolerance: {worst:.3f}\n")
    sys.stdout.writelines(f"FAIL {failure}\n" for failure in failures)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
