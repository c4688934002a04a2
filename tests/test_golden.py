"""The analyses' final files, run through today's code, equal those saved from the code before
the shared runner (``tests/golden``, made by ``tests/golden/runs.py``): the refactor changed
where the per-sample loop lives, not a number. Timings, library versions and the runner's own
new keys are left out of the comparison; everything else must match: integers, booleans and
strings exactly, floats to 1e-5 relative (the same arithmetic, but float32 CPU kernels may sum
in another order depending on how a process's buffers happen to be aligned: the VIF training
run gives losses 1e-7 apart in a fresh process and after six other analyses)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

from analyses.results import RunResult

GOLDEN = Path(__file__).parent / "golden"
sys.path.insert(0, str(GOLDEN))
from runs import RUNS, run  # noqa: E402

IGNORED = {"timing", "versions"}  # what differs from run to run by nature
ADDED = {"failed", "skipped",  # keys the shared runner and provenance add to every summary
         "min_kind_samples", "kinds_below_minimum"}  # layer masking: kinds too small, listed
RTOL, ATOL = 1e-5, 1e-7


def assert_same(expected, actual, where: str) -> None:
    if isinstance(expected, dict):
        assert isinstance(actual, dict), where
        missing = set(expected) - set(actual) - IGNORED
        extra = set(actual) - set(expected) - IGNORED - ADDED
        assert not missing and not extra, f"{where}: missing {missing}, extra {extra}"
        for key in set(expected) - IGNORED:
            if key.endswith("seconds"):  # wall time, e.g. training.seconds
                continue
            assert_same(expected[key], actual[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), where
        for i, (e, a) in enumerate(zip(expected, actual)):
            assert_same(e, a, f"{where}[{i}]")
    elif isinstance(expected, float) and isinstance(actual, (int, float)):
        assert (math.isnan(expected) and math.isnan(actual)) or math.isclose(
            expected, actual, rel_tol=RTOL, abs_tol=ATOL), f"{where}: {expected} != {actual}"
    else:
        assert expected == actual, f"{where}: {expected!r} != {actual!r}"


def intended(summary: dict) -> dict:
    """The saved summary with the changes the runner's refactor meant to make: every method
    comparison follows one contract (``analyses.stats.method_rows``), whose rows carry the
    number correct and whose clean row has no p-value (two analyses wrote 1.0 or None); and,
    since real benchmark data, the model's family and the prompt template the data was asked
    with are recorded (the embedded sets are asked the bare question; train_vif's training sets
    are never prompted)."""
    def fix(rows):
        for row in rows:
            if "method" in row and "p_value_vs_clean" in row:
                row.setdefault("correct", round(row["accuracy"] * row["n"]) if row["n"] else 0)
                if row["method"] == "clean":
                    row["p_value_vs_clean"] = None
    for key in ("methods", "methods_by_kind"):
        if isinstance(summary.get(key), list):
            fix(summary[key])
    summary["model"]["family"] = "llava"
    summary["data"].update(prompt="{question}", spec=summary["data"]["name"])
    for record in summary.get("training", {}).get("data", []):
        record.update(prompt=None, spec=record["name"])
    return summary


@pytest.mark.parametrize("name", sorted(RUNS))
def test_final_files_equal_the_saved_ones(name, tmp_path):
    assert run(name, tmp_path / name) == 0
    expected, actual = RunResult.load(GOLDEN / name), RunResult.load(tmp_path / name)
    assert_same(intended(expected.summary), actual.summary, "summary")
    assert sorted(expected.arrays) == sorted(actual.arrays)
    for key, value in expected.arrays.items():
        if key.endswith("seconds"):  # per-sample timings
            continue
        if value.dtype.kind == "f":
            np.testing.assert_allclose(actual.arrays[key], value, rtol=RTOL, atol=ATOL,
                                       err_msg=key)
        else:
            np.testing.assert_array_equal(actual.arrays[key], value, err_msg=key)
    assert actual.summary["failed"] == []
