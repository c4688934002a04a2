"""What every analysis command shares: loading the model and data its options name, the records
of both that go into ``summary.json``, and writing a run's files (the options themselves are
the runner's: :func:`analyses.runner.cli.add_analysis_arguments`)."""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path
from typing import Any

from analyses.data import Dataset, load_dataset
from probes.errors import UserError
from probes.models.loading import LoadedModel, load_model

DEFAULT_DATA = "easy-vqa"


def load_data(name: str, split: str, limit: int | None) -> Dataset:
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be at least 1, not {limit}.")
    try:
        return load_dataset(name, split, limit=limit)
    except ValueError as err:
        raise UserError(str(err)) from err


def load_model_from_args(args: argparse.Namespace) -> LoadedModel:
    return load_model(args.model, device=args.device, dtype=args.dtype,
                      trust_remote_code=args.trust_remote_code, allow_pickle=args.allow_pickle,
                      device_map=getattr(args, "device_map", None))


SMALL_WEIGHTS = 256 * 2**20  # weights up to this size are hashed whole (the embedded models)


def model_record(loaded: LoadedModel) -> dict[str, Any]:
    """Which model produced a result: id, where it came from, and a revision (see
    :func:`weights_revision`)."""
    revision = getattr(loaded.model.config, "_commit_hash", None)
    if revision is None:
        revision = weights_revision(Path(loaded.source.location))
    return {"id": loaded.model_id, "kind": loaded.source.kind, "revision": revision,
            "dtype": str(loaded.dtype).removeprefix("torch."), "layers": loaded.adapter.num_layers}


def weights_revision(directory: Path) -> str | None:
    """A checkpoint directory's revision without reading its weights into memory: a hash of the
    weights' bytes when they are small (the embedded models), else of the sharded index and
    every weights file's name, size and safetensors header (tensor names, shapes, dtypes and
    offsets), which a re-saved or re-sharded checkpoint changes. None without weights files.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = (Path(d) / "model.safetensors").write_bytes(b"\x02" + bytes(7) + b"{}")
    ...     weights_revision(Path(d))
    'sha256:411a485216e432ec'
    """
    if not directory.is_dir():
        return None
    files = sorted(p for p in directory.glob("*.safetensors") if p.is_file())
    files = files or sorted(p for p in directory.glob("*.bin") if p.is_file())
    if not files:
        return None
    if sum(p.stat().st_size for p in files) <= SMALL_WEIGHTS and len(files) == 1:
        digest = hashlib.sha256()
        with files[0].open("rb") as stream:
            for block in iter(lambda: stream.read(2**20), b""):
                digest.update(block)
        return "sha256:" + digest.hexdigest()[:16]
    digest = hashlib.sha256()
    for index in sorted(directory.glob("*.index.json")):
        digest.update(index.name.encode() + index.read_bytes())
    for path in files:
        digest.update(f"{path.name}:{path.stat().st_size}:".encode())
        with path.open("rb") as stream:
            head = stream.read(8)
            if path.suffix == ".safetensors" and len(head) == 8:
                digest.update(stream.read(min(int.from_bytes(head, "little"), 2**26)))
    return "files:" + digest.hexdigest()[:16]


def data_record(dataset: Dataset) -> dict[str, Any]:
    return {"name": dataset.name, "split": dataset.split, "size": len(dataset),
            "fingerprint": dataset.fingerprint()}


def write_run(result, out: Path, table: str) -> None:
    """What every analysis CLI does with its result: save it, draw its figures (PNG + PDF) next
    to it, print its table."""
    from figures.paper import draw_run  # drawing is the CLI's business, not the analysis's
    from figures.style import save

    result.save(out)
    for name, figure in draw_run(result).items():
        save(figure, out, name)
    sys.stdout.write(table + "\n")
    sys.stdout.write(f"results and figures in {out}\n")
