"""Benchmarks downloaded once into the Hugging Face cache, found again offline.

``hf download --repo-type dataset ID`` stores a snapshot under the hub cache
(``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``);
:func:`find_snapshot` asks ``huggingface_hub.snapshot_download(..., local_files_only=True)``
for it, trying every hub id a benchmark is published under, and never touches the network.
Parquet files in a snapshot are named ``<split>-NNNNN-of-NNNNN[-hash].parquet`` (one folder
per config); :func:`parquet_splits` groups them by split.

>>> parquet_splits_of(["data/test-00000-of-00002.parquet", "Full/random-00000-of-00001.parquet",
...                    "mmstar.parquet"], default="val")
{'random': ['Full/random-00000-of-00001.parquet'], 'test': ['data/test-00000-of-00002.parquet'], 'val': ['mmstar.parquet']}
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from probes.errors import UserError

_SHARD = re.compile(r"^(?P<split>[A-Za-z0-9_.+]+?)-\d{5}-of-\d{5}")


def hub_cache() -> Path:
    """The hub cache folder, read from the environment now (not at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def find_snapshot(benchmark: str, repo_ids: Sequence[str]) -> tuple[Path, str]:
    """``(snapshot folder, hub id)`` of the first of ``repo_ids`` in the local cache.

    Raises UserError naming the ids and the download command when none is cached.
    """
    from huggingface_hub import errors, snapshot_download

    # not every huggingface_hub version has IncompleteSnapshotError (a partial download)
    missing = tuple(getattr(errors, name) for name in
                    ("LocalEntryNotFoundError", "IncompleteSnapshotError") if hasattr(errors, name))
    cache = hub_cache()
    for repo_id in repo_ids:
        try:
            folder = snapshot_download(
                repo_id, repo_type="dataset", local_files_only=True, cache_dir=cache
            )
        except missing:
            continue
        return Path(folder), repo_id
    others = f" (or {', '.join(repo_ids[1:])})" if len(repo_ids) > 1 else ""
    raise UserError(
        f"{benchmark} is not in the Hugging Face cache {cache}: download it once with "
        f"`hf download --repo-type dataset {repo_ids[0]}`{others}, or pass "
        f"--data {benchmark}:PATH to a downloaded copy."
    )


def parquet_splits_of(paths: Sequence[str], default: str) -> dict[str, list[str]]:
    """Relative parquet paths grouped by the split their file name states (``default`` for
    a file that names none), in sorted order."""
    splits: dict[str, list[str]] = {}
    for path in sorted(paths, key=str):
        match = _SHARD.match(Path(path).name)
        splits.setdefault(match["split"] if match else default, []).append(path)
    return splits


def parquet_splits(root: Path, default: str) -> dict[str, list[Path]]:
    """The parquet files under ``root`` (hidden folders skipped) grouped by split."""
    files = [
        path.relative_to(root).as_posix()
        for path in root.rglob("*.parquet")
        if not any(part.startswith(".") for part in path.relative_to(root).parts)
    ]
    return {
        split: [root / name for name in names]
        for split, names in parquet_splits_of(files, default).items()
    }
