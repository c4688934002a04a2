"""The resumable store of a run: every finished sample's record is its own small ``.npz`` in
``OUT/.partial/<pass>/<index>.npz`` (one atomic write each, no pickle, idempotent: the same
sample measured twice writes the same file), a failed sample a ``<index>.failed.json`` with its
reason, next to ``key.json`` naming what decides the numbers (analysis, model record, data
record, recorded config). Workers of any backend write into it directly; the driver reads it.

Without a directory (``out=None``: notebooks, tests) records are kept in memory.

>>> store = RecordStore(None, {"config": {"seed": 0}})
>>> _ = store.put("samples", 3, {"curve": [0.5, 0.25], "kind": "color"})
>>> back = store.records("samples")
>>> list(back), back[3]["curve"].tolist(), str(back[3]["kind"])
([3], [0.5, 0.25], 'color')
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from analyses.results import SUMMARY, load_arrays, save_arrays, to_json, write_atomic
from analyses.runner.spec import Record, Records
from probes.errors import UserError

PARTIAL = ".partial"
KEY_FILE = "key.json"
FAILED = ".failed.json"


def plain(key: Mapping[str, Any]) -> dict[str, Any]:
    """A key as it is stored (tuples -> lists, numpy -> numbers)."""
    return json.loads(to_json(dict(key)))


def as_record(values: Mapping[str, Any]) -> Record:
    arrays = {name: np.asarray(value) for name, value in values.items()}
    for name, array in arrays.items():
        if array.dtype.hasobject:
            raise TypeError(f"{name}: per-sample values must be numbers, booleans or strings "
                            "(arrays of objects would need pickle)")
    return arrays


def check_out(out: Path) -> None:
    """``out`` can hold a run: a directory that exists or can be made, and can be written
    (a name longer than the file system allows is refused like any other unwritable one)."""
    try:
        if out.exists() and not out.is_dir():
            raise UserError(f"--out {out} is a file, not a directory; choose a directory.")
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise UserError(f"cannot write results into {out} ({err.strerror or err}); choose "
                        "another --out.") from None


def check_finished(out: Path, resume: bool, overwrite: bool) -> None:
    """A finished run in ``out`` is replaced only with ``overwrite`` (and never resumed)."""
    if not (Path(out) / SUMMARY).is_file():
        return
    if resume:
        raise UserError(f"{out} holds a finished run; nothing to resume (use --overwrite "
                        "to run it again).")
    if not overwrite:
        raise UserError(f"{out} already holds a finished run; use --overwrite to replace "
                        "it, --resume to continue an unfinished one, or another --out.")


def finished_counts(out: Path) -> dict[str, int]:
    """Per pass, the samples the unfinished run in ``out`` has finished (measured or failed),
    most first; empty when there is no such run or it has finished none."""
    partial = Path(out) / PARTIAL
    if not partial.is_dir():
        return {}
    counts = {folder.name: sum(1 for p in folder.iterdir() if p.name.endswith((".npz", FAILED))
                               and not p.name.startswith("."))
              for folder in sorted(partial.iterdir()) if folder.is_dir()}
    return dict(sorted(((k, n) for k, n in counts.items() if n), key=lambda kv: -kv[1]))


def describe_counts(counts: Mapping[str, int]) -> str:
    """``{"graded": 150, "samples": 127}`` -> "150 samples done in its graded pass, 127 in
    its samples pass"."""
    return ", ".join(f"{n}{' samples done' if i == 0 else ''} in its {name} pass"
                     for i, (name, n) in enumerate(counts.items()))


def check_unfinished(out: Path, resume: bool, overwrite: bool) -> None:
    """An unfinished run in ``out`` with finished samples is continued (``resume``) or started
    over (``overwrite``), never silently thrown away."""
    if resume or overwrite:
        return
    counts = finished_counts(out)
    if counts:
        raise UserError(f"{out} holds an unfinished run ({describe_counts(counts)}); add "
                        "--resume to continue it, or --overwrite to start over.")


def readable(path: Path) -> bool:
    """Whether the record or failure file at ``path`` reads whole (a node killed while the
    file system had not yet written it leaves it empty or cut short)."""
    try:
        if path.name.endswith(FAILED):
            json.loads(path.read_text())
        else:
            load_arrays(path)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return False
    return True


def load_record(path: Path) -> Record:
    """A stored record; a damaged one named in one sentence."""
    try:
        return load_arrays(path)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise UserError(f"the record {path} is damaged ({type(err).__name__}); run that "
                        "shard again with --resume, which measures it again.") from None


class RecordStore:
    """The records of one run (``directory``: its ``.partial`` folder, or None for memory)."""

    def __init__(self, directory: Path | None, key: Mapping[str, Any]) -> None:
        self.directory = None if directory is None else Path(directory)
        self.key = plain(key)
        self._memory: dict[str, Records] = {}
        self._failed: dict[tuple[str, int], dict[str, Any]] = {}

    @classmethod
    def open(cls, out: str | Path | None, key: Mapping[str, Any], resume: bool = False,
             overwrite: bool = False) -> RecordStore:
        """The store of a run in ``out``. Without ``resume``: a fresh one (a finished run, or an
        unfinished one with finished samples, is replaced only with ``overwrite``). With it:
        the unfinished run's state, refused when it was made with another key."""
        if out is None:
            return cls(None, key)
        out = Path(out)
        check_out(out)
        store = cls(out / PARTIAL, key)
        key_path = store.directory / KEY_FILE
        if resume and key_path.is_file():
            try:
                saved = json.loads(key_path.read_text())
            except ValueError:
                raise UserError(f"the unfinished run in {out} has a damaged {KEY_FILE} (its "
                                "node stopped while writing it); start over with --overwrite."
                                ) from None
            if saved != store.key:
                differs = ", ".join(name for name in sorted(set(saved) | set(store.key))
                                    if saved.get(name) != store.key.get(name))
                raise UserError(f"the unfinished run in {out} used another {differs}; resume "
                                "with the same model, data and options, or choose another --out.")
            store.drop_damaged()
            return store
        check_finished(out, resume, overwrite)
        check_unfinished(out, resume, overwrite)
        store.clear()
        write_atomic(key_path, to_json(store.key).encode())
        return store

    def _path(self, step: str, index: int, suffix: str = ".npz") -> Path:
        return self.directory / step / f"{index:07d}{suffix}"

    def has(self, step: str, index: int) -> bool:
        """Whether sample ``index`` is finished (measured or failed) in pass ``step``."""
        if self.directory is None:
            return index in self._memory.get(step, {}) or (step, index) in self._failed
        return self._path(step, index).is_file() or self._path(step, index, FAILED).is_file()

    def put(self, step: str, index: int, values: Mapping[str, Any]) -> Record:
        record = as_record(values)
        if self.directory is None:
            self._memory.setdefault(step, {})[index] = record
        else:
            save_arrays(self._path(step, index), record)
        return record

    def fail(self, step: str, index: int, sample_id: str, reason: str) -> None:
        row = {"index": int(index), "id": str(sample_id), "pass": step, "reason": reason}
        if self.directory is None:
            self._failed[(step, index)] = row
        else:
            write_atomic(self._path(step, index, FAILED), to_json(row).encode())

    def records(self, step: str, indices: Iterable[int] | None = None) -> Records:
        """The pass's measured records (failed samples left out), by ascending index."""
        if self.directory is None:
            found = self._memory.get(step, {})
            chosen = sorted(found) if indices is None else [i for i in sorted(indices)
                                                             if i in found]
            return {i: found[i] for i in chosen}
        folder = self.directory / step
        if indices is None:
            indices = [int(p.name[:7]) for p in folder.glob("*.npz")] if folder.is_dir() else []
        return {i: load_record(self._path(step, i)) for i in sorted(indices)
                if self._path(step, i).is_file()}

    def failures(self) -> list[dict[str, Any]]:
        """Every failed sample's row ``{index, id, pass, reason}``, by pass then index."""
        if self.directory is None:
            rows = list(self._failed.values())
        else:
            rows = [self._failure(p) for p in self.directory.glob(f"*/*{FAILED}")]
        return sorted(rows, key=lambda r: (r["pass"], r["index"]))

    @staticmethod
    def _failure(path: Path) -> dict[str, Any]:
        try:
            return json.loads(path.read_text())
        except ValueError:
            raise UserError(f"the failure record {path} is damaged; run that shard again with "
                            "--resume, which measures the sample again.") from None

    def drop_damaged(self) -> list[Path]:
        """Remove every record or failure file that does not read whole, so the samples are
        measured again; the removed paths."""
        if self.directory is None or not self.directory.is_dir():
            return []
        damaged = [path for path in sorted(self.directory.glob("*/*"))
                   if path.is_file() and not path.name.startswith(".")
                   and path.name.endswith((".npz", FAILED)) and not readable(path)]
        for path in damaged:
            path.unlink()
        return damaged

    def failed_indices(self) -> set[int]:
        return {row["index"] for row in self.failures()}

    def clear(self) -> None:
        """Remove the state (the run is summarised, or starts over)."""
        self._memory.clear()
        self._failed.clear()
        if self.directory is None or not self.directory.is_dir():
            return
        for path in sorted(self.directory.rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
        self.directory.rmdir()

    def keep(self, target: Path) -> None:
        """Keep the state as ``target`` (a shard's records, for ``analyses.merge``)."""
        if self.directory is None:
            return
        if target.exists():
            for path in sorted(target.rglob("*"), reverse=True):
                path.rmdir() if path.is_dir() else path.unlink()
            target.rmdir()
        self.directory.rename(target)
