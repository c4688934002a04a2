"""Every benchmark script (``tests/bench_*.py``, what `make bench` runs) runs through in smoke
mode (``FUSIONLENS_BENCH_SMOKE=1``: the same code at tiny sizes), so none rots between the
benchmark runs: it exits 0 and writes its rows to bench-results.json with the fields
``make bench`` reports and finite positive ratios (baseline / ours). A ratio's size is never
asserted: at these sizes timings mean nothing."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
SCRIPTS = sorted(path.name for path in HERE.glob("bench_*.py"))
FIELDS = {"name", "baseline", "ours", "unit", "ratio", "shape"}


def test_every_bench_script_of_make_bench_is_smoke_run():
    makefile = (HERE.parent / "Makefile").read_text()
    bench = makefile.split("\nbench:")[1].split("\n\n")[0]
    assert sorted(Path(word).name for word in bench.split() if "tests/bench_" in word) == SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS)
def test_bench_script_runs_at_tiny_sizes_and_writes_its_rows(script, tmp_path):
    env = {**os.environ, "FUSIONLENS_BENCH_SMOKE": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE.parent),
                                                       os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, str(HERE / script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads((tmp_path / "bench-results.json").read_text())
    assert rows
    for row in rows:
        assert set(row) == FIELDS, row
        assert row["name"] and row["unit"] and row["shape"], row
        for field in ("baseline", "ours", "ratio"):
            assert isinstance(row[field], float) and math.isfinite(row[field]), row
            assert row[field] > 0, row
        assert math.isclose(row["ratio"], row["baseline"] / row["ours"], rel_tol=1e-9), row
        assert row["name"].split(":")[0] in done.stdout  # the printed table has it
