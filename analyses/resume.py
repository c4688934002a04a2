"""``--resume`` for per-sample analyses: every finished sample's values are kept as their own
small ``.npz`` in ``OUT/.partial/`` (written atomically, no pickle, so ragged per-sample arrays
are fine), next to a key file naming what decides the numbers (model record, data record,
recorded config). A resumed run gets the finished samples back in order and goes on from the
first missing one; since each sample's values depend only on (model, sample, config, sample
index), the final files equal those of one uninterrupted run.

A run may have stages (e.g. a first pass over all samples before the main loop); each stage
keeps its own sequence of samples. The state is removed once the run is summarised.

>>> import tempfile
>>> from pathlib import Path
>>> with tempfile.TemporaryDirectory() as d:
...     store = SampleStore.open(Path(d), {"config": {"seed": 0}}, resume=False)
...     _ = store.add({"curve": [0.5, 0.25], "kind": "color"})
...     again = SampleStore.open(Path(d), {"config": {"seed": 0}}, resume=True)
...     back = again.finished()
>>> len(back), back[0]["curve"].tolist(), str(back[0]["kind"])
(1, [0.5, 0.25], 'color')
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from analyses.common import data_record, model_record
from analyses.results import SUMMARY, load_arrays, save_arrays, to_json, write_atomic
from probes.errors import UserError

PARTIAL = ".partial"
KEY_FILE = "key.json"
SAMPLES = "samples"  # the stage of the main per-sample loop


def run_key(analysis: str, loaded, dataset, config: Mapping[str, Any],
            model: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What decides a run's numbers: the analysis, model record, data record and the recorded
    config (``model``: an already computed :func:`model_record`, to hash weights once)."""
    return {"analysis": analysis, "model": dict(model or model_record(loaded)),
            "data": data_record(dataset), "config": dict(config)}


def _plain(key: Mapping[str, Any]) -> dict[str, Any]:
    return json.loads(to_json(dict(key)))  # tuples -> lists, numpy -> numbers: as stored


class SampleStore:
    """The resume state of a run in ``out`` (None: nothing is written, nothing resumed)."""

    def __init__(self, out: Path | None, key: Mapping[str, Any]) -> None:
        self.directory = None if out is None else Path(out) / PARTIAL
        self.key = _plain(key)
        self._counts: dict[str, int] = {}

    @classmethod
    def open(cls, out: str | Path | None, key: Mapping[str, Any], resume: bool) -> SampleStore:
        """Without ``resume``: a fresh state (any earlier one in ``out`` is removed). With it:
        the unfinished run's state; a UserError when it was made with another key, or when
        ``out`` holds only a finished run."""
        store = cls(None if out is None else Path(out), key)
        if store.directory is None:
            return store
        key_path = store.directory / KEY_FILE
        if resume and key_path.is_file():
            saved = json.loads(key_path.read_text())
            if saved != store.key:
                differs = ", ".join(name for name in sorted(set(saved) | set(store.key))
                                    if saved.get(name) != store.key.get(name))
                raise UserError(f"the unfinished run in {out} used another {differs}; resume "
                                "with the same model, data and options, or choose another --out.")
            return store
        if resume and (Path(out) / SUMMARY).is_file():
            raise UserError(f"{out} holds a finished run; nothing to resume (drop --resume to "
                            "run again).")
        store.clear()
        write_atomic(key_path, to_json(store.key).encode())
        return store

    def _path(self, stage: str, position: int) -> Path:
        return self.directory / f"{stage}-{position:07d}.npz"

    def finished(self, stage: str = SAMPLES) -> list[dict[str, np.ndarray]]:
        """The stage's finished samples, in order (the longest unbroken run from the first)."""
        values: list[dict[str, np.ndarray]] = []
        if self.directory is not None:
            while self._path(stage, len(values)).is_file():
                values.append(load_arrays(self._path(stage, len(values))))
        self._counts[stage] = len(values)
        return values

    def add(self, values: Mapping[str, Any], stage: str = SAMPLES) -> dict[str, np.ndarray]:
        """Keep the next sample's values (as arrays; the same arrays a resumed run gets back
        from :meth:`finished`, so fresh and resumed samples stack alike) and return them."""
        arrays = {name: np.asarray(value) for name, value in values.items()}
        for name, array in arrays.items():
            if array.dtype.hasobject:
                raise TypeError(f"{name}: per-sample values must be numbers, booleans or "
                                "strings (arrays of objects would need pickle)")
        position = self._counts.get(stage, 0)
        if self.directory is not None:
            save_arrays(self._path(stage, position), arrays)
        self._counts[stage] = position + 1
        return arrays

    def clear(self) -> None:
        """Remove the state (the run is summarised, or starts over)."""
        if self.directory is None or not self.directory.is_dir():
            return
        for path in self.directory.iterdir():
            if path.is_file():
                path.unlink()
        self.directory.rmdir()

