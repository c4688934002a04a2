"""Reading run folders for the report: finished runs (``summary.json`` + ``arrays.npz``), and
unfinished or broken ones, which the report shows with what is missing instead of failing.

>>> import tempfile
>>> with tempfile.TemporaryDirectory() as d:
...     read_run(d)
Traceback (most recent call last):
...
probes.errors.UserError: ... is not a fusionlens run (no summary.json and no unfinished run's records); give an analysis's --out folder.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from analyses.results import ARRAYS, SUMMARY, load_arrays
from analyses.runner.execute import RECORDS
from analyses.runner.store import KEY_FILE, PARTIAL, describe_counts, finished_counts
from probes.errors import UserError


@dataclass
class Run:
    """One run folder as the report sees it. ``summary`` is {} when the run never finished;
    ``missing`` says, one sentence each, what the report cannot show and why."""

    path: Path
    label: str
    analysis: str | None
    summary: dict[str, Any]
    arrays: dict[str, np.ndarray]
    missing: list[str] = field(default_factory=list)


def _key_of_unfinished(path: Path) -> dict[str, Any] | None:
    for folder in (PARTIAL, RECORDS):
        key = path / folder / KEY_FILE
        if key.is_file():
            try:
                return json.loads(key.read_text())
            except (OSError, ValueError):
                return {}
    return None


def read_run(path: str | Path, label: str | None = None) -> Run:
    """The run in folder ``path``; a :class:`UserError` when it is no run at all."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path} is not a folder; give the --out folder of a fusionlens run.")
    label = label or path.name or str(path)
    missing: list[str] = []
    summary: dict[str, Any] = {}
    if (path / SUMMARY).is_file():
        try:
            summary = json.loads((path / SUMMARY).read_text())
            if not isinstance(summary, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as err:
            summary = {}
            missing.append(f"its {SUMMARY} cannot be read ({err}): no results are shown.")
    key = _key_of_unfinished(path)
    if not summary and key is None and not missing:
        raise UserError(f"{path} is not a fusionlens run (no {SUMMARY} and no unfinished run's "
                        "records); give an analysis's --out folder.")
    if not summary and key is not None:
        counts = finished_counts(path)
        done = describe_counts(counts) if counts else "no sample done yet"
        missing.append(f"the run is unfinished ({done}) and has no {SUMMARY} yet: rerun its "
                       "command with --resume to finish it; until then nothing is shown.")
    arrays: dict[str, np.ndarray] = {}
    if summary:
        if (path / ARRAYS).is_file():
            try:
                arrays = load_arrays(path / ARRAYS)
            except (OSError, ValueError) as err:
                missing.append(f"its {ARRAYS} cannot be read ({err}): no per-sample data.")
        else:
            missing.append(f"it has no {ARRAYS}: no per-sample data (the sample browser is "
                           "empty).")
        for row in summary.get("failed") or []:
            reason = row.get("reason", row.get("error", "no reason recorded"))
            missing.append(f"sample {row.get('index', '?')} failed ({reason}).")
    analysis = summary.get("analysis") or (key or {}).get("analysis")
    return Run(path, label, analysis, summary, arrays, missing)


def read_runs(paths: Sequence[str | Path]) -> list[Run]:
    """The runs of ``paths``, all of one analysis (else a :class:`UserError`); labels are the
    folder names, made unique with their parents where two share a name."""
    paths = [Path(p) for p in paths]
    names = [p.resolve().name for p in paths]
    labels = [str(p) if names.count(n) > 1 else n for p, n in zip(paths, names)]
    runs = [read_run(p, label) for p, label in zip(paths, labels)]
    kinds = {run.analysis for run in runs if run.analysis}
    if len(kinds) > 1:
        listed = ", ".join(f"{run.label} is {run.analysis}" for run in runs if run.analysis)
        raise UserError(f"runs of different analyses cannot be compared in one report ({listed}); "
                        "make one report per analysis.")
    return runs
