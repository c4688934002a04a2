"""Result files shared by every analysis: ``summary.json`` (small, readable) + ``arrays.npz``.

A :class:`RunResult` is the pair; ``save`` writes both atomically (a temporary file renamed into
place, so an interrupted write never leaves a half file), ``load`` restores them exactly.
:func:`provenance` gives the design's shared summary keys.

>>> import tempfile, numpy as np
>>> result = RunResult({"analysis": "demo", "n_samples": 2}, {"x": np.arange(3.0)})
>>> with tempfile.TemporaryDirectory() as d:
...     _ = result.save(d)
...     back = RunResult.load(d)
>>> back.summary["analysis"], back.arrays["x"].tolist()
('demo', [0.0, 1.0, 2.0])
"""

from __future__ import annotations

import io
import json
import os
import platform
import sys
import tempfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

SUMMARY = "summary.json"
ARRAYS = "arrays.npz"
_PACKAGES = ("fusionlens", "torch", "transformers", "numpy", "nnsight")


def current_umask() -> int:
    """The process's umask (read by setting it and putting it back)."""
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory + rename; the
    file gets the mode of any file the user makes (0666 less the umask: 0644 under umask 022),
    not mkstemp's private 0600, so others sharing the results (a cluster's file system) can
    read them. The data reaches the disk (fsync) before the rename, so a node that dies
    leaves the old file or the whole new one, never an empty or cut-short one under the name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.chmod(temporary, 0o666 & ~current_umask())
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def to_json(value: Any) -> str:
    """JSON with numpy scalars and arrays turned into plain numbers and lists."""

    def plain(obj):
        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
        if isinstance(obj, (tuple, set, frozenset)):
            return list(obj)
        raise TypeError(f"{type(obj).__name__} is not JSON serialisable")

    return json.dumps(value, indent=1, default=plain, allow_nan=True) + "\n"


def save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    write_atomic(path, buffer.getvalue())


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as stored:
        return {name: stored[name] for name in stored.files}


@dataclass(frozen=True)
class RunResult:
    """What an analysis run leaves: the summary dict and named arrays (axes named in
    ``summary["axes"]`` where an analysis has them)."""

    summary: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        save_arrays(directory / ARRAYS, self.arrays)
        write_atomic(directory / SUMMARY, to_json(self.summary).encode())
        return directory

    def to_dataframe(self, table: str = "per_layer"):
        """A tidy pandas frame of one of the summary's row tables (``per_layer``, ``tests``,
        ``methods``, ...)."""
        import pandas as pd  # only here: results load and save without pandas

        if table not in self.summary or not isinstance(self.summary[table], list):
            raise KeyError(f"the summary has no row table {table!r}")
        return pd.DataFrame(self.summary[table])

    @classmethod
    def load(cls, directory: str | Path) -> RunResult:
        directory = Path(directory)
        if not (directory / SUMMARY).is_file():
            raise FileNotFoundError(f"{directory} holds no {SUMMARY}: is it a fusionlens run?")
        summary = json.loads((directory / SUMMARY).read_text())
        arrays = load_arrays(directory / ARRAYS) if (directory / ARRAYS).is_file() else {}
        return cls(summary, arrays)


def versions() -> dict[str, Any]:
    """Versions of the libraries that decide the numbers, and Python's; with torch loaded, the
    CPU threads it computes with (``torch_threads``: float rounding may depend on them)."""
    found: dict[str, Any] = {"python": platform.python_version()}
    for package in _PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    torch = sys.modules.get("torch")  # never imported for this: results load without torch
    if torch is not None:
        found["torch_threads"] = torch.get_num_threads()
    return found


def provenance(analysis: str, model: dict[str, Any], data: dict[str, Any], n_samples: int,
               config: dict[str, Any], seed: int) -> dict[str, Any]:
    """The shared keys of every ``summary.json`` (see the design's conventions); ``skipped``
    lists the parts of the analysis that did not apply to the data (:func:`skip`)."""
    return {
        "analysis": analysis, "model": model, "data": data, "n_samples": n_samples,
        "config": config, "versions": versions(), "seed": seed, "skipped": [],
    }


def skip(summary: dict[str, Any], part: str, reason: str) -> None:
    """Record in ``summary`` that ``part`` of the analysis was not done, and why (its rows, if
    any, are NaN with n = 0); the CLI prints it under the table (:func:`skipped_lines`)."""
    summary.setdefault("skipped", []).append({"part": part, "reason": reason})


def skipped_lines(summary: dict[str, Any]) -> str:
    """The lines a CLI prints under its table for the skipped parts ("" when none).

    >>> print(skipped_lines({"skipped": [{"part": "region", "reason": "no sample has a box"}]}))
    <BLANKLINE>
    skipped: region (no sample has a box)
    """
    return "".join(f"\nskipped: {row['part']} ({row['reason']})"
                   for row in summary.get("skipped") or [])
