"""What every analysis command shares: its options (the design's conventions), loading the
model and data they name, and the records of both that go into ``summary.json``."""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path
from typing import Any

from analyses.data import Dataset, available_datasets, load_dataset
from probes.cli import add_model_arguments
from probes.errors import UserError
from probes.models.loading import LoadedModel, load_model

DEFAULT_DATA = "easy-vqa"


def add_analysis_arguments(parser: argparse.ArgumentParser, default_out: str,
                           default_batch_size: int = 32) -> None:
    """``--model --device --dtype`` plus ``--data --split --limit --out --batch-size --seed
    --resume`` and the runner's ``--shard --strict --overwrite --backend --workers
    --gpus-per-worker``."""
    add_model_arguments(parser)
    parser.add_argument("--data", default=DEFAULT_DATA,
                        help=f"dataset: {', '.join(available_datasets())} (default: {DEFAULT_DATA})")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=None, help="the first N samples only")
    parser.add_argument("--out", type=Path, default=Path(default_out),
                        help=f"directory for the result files (default: {default_out})")
    parser.add_argument("--batch-size", type=int, default=default_batch_size,
                        help=f"conditions or samples per forward (default: {default_batch_size})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run in --out instead of starting over")
    from analyses.runner.cli import add_runner_arguments  # the runner imports this module

    add_runner_arguments(parser)


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
