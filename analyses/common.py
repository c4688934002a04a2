"""What every analysis command shares: loading the model and data its options name, the records
of both that go into ``summary.json``, and writing a run's files (the options themselves are
the runner's: :func:`analyses.runner.cli.add_analysis_arguments`)."""

from __future__ import annotations

import argparse
import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from analyses.data import Dataset, load_dataset
from analyses.data.suite import concatenate, data_names
from analyses.registry import text_files as registered_text_files
from probes.cli import set_threads
from probes.errors import UserError
from probes.models.loading import LoadedModel, load_model

DEFAULT_DATA = "easy-vqa"


def load_data(name: str, split: str | None, limit: int | None) -> Dataset:
    """The dataset ``--data`` names (``split`` None: the source's default split). Several
    names separated by commas are one dataset of their samples in turn, ``limit`` of each
    (:func:`analyses.data.suite.concatenate`)."""
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be at least 1, not {limit}.")
    names = data_names(name)  # a comma in an existing path's name does not split it
    if len(names) > 1:
        return concatenate([load_data(part, split, limit) for part in names])
    if not names:
        raise UserError("--data names no dataset.")
    try:
        if split is None:  # the source's own default split
            return load_dataset(names[0], limit=limit)
        return load_dataset(names[0], split, limit=limit)
    except (ValueError, OSError) as err:
        raise UserError(" ".join(str(err).split())) from err


def prompt_data(dataset: Dataset, family: str, template: str | None = None) -> Dataset:
    """``dataset`` with each sample's prompt rendered for a model ``family`` (the adapter's
    ``family``): ``template`` (placeholders ``{question}``, ``{choices}``) or, when None, the
    dataset's default for that family (:meth:`Dataset.prompted`)."""
    try:
        return dataset.prompted(family, template)
    except (ValueError, KeyError) as err:
        raise UserError(" ".join(str(err).split())) from err


@dataclass(frozen=True)
class RunSpec:
    """What a run loads, read once from its options: ``model``, :func:`load_model`'s keyword
    arguments (``--model --device --dtype --trust-remote-code --allow-pickle --device-map
    --min-pixels --max-pixels``), and ``data``, :func:`load_data`'s (``name split limit``) with
    ``prompt`` (``--prompt``). The local path loads from it, the Ray backend hands both dicts
    to every worker as they are (:class:`analyses.runner.ray_backend.RayBackend`), and
    :mod:`analyses.merge` rebuilds it from what the shards recorded (:meth:`from_recorded`): all
    three read the samples through :meth:`dataset` (:meth:`load`, then :meth:`prompt`)."""

    model: dict[str, Any]
    data: dict[str, Any]

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RunSpec:
        model = {"model": args.model, "device": args.device, "dtype": args.dtype,
                 "trust_remote_code": args.trust_remote_code, "allow_pickle": args.allow_pickle,
                 **{name: getattr(args, name, None)
                    for name in ("device_map", "min_pixels", "max_pixels")}}
        data = {"name": args.data, "split": args.split, "limit": args.limit,
                "prompt": getattr(args, "prompt", None)}
        return cls(model, data)

    @classmethod
    def from_recorded(cls, model: dict[str, Any], data: dict[str, Any]) -> RunSpec:
        """The spec of a run from what its result recorded (:func:`data_record`): the data it
        reloads from (``spec``), its size, and its prompt template (a suite's list of templates
        means each part's default; no template: the samples were used as loaded)."""
        template = data.get("prompt")
        return cls({"model": model.get("id")},
                   {"name": data.get("spec", data["name"]), "split": data["split"],
                    "limit": data["size"], "prompt": template if isinstance(template, str) else None,
                    "prompted": template is not None})

    def load(self) -> Dataset:
        """The samples ``data`` names, as loaded (:func:`load_data`)."""
        return load_data(self.data["name"], self.data["split"], self.data["limit"])

    def prompt(self, dataset: Dataset, family: str) -> Dataset:
        """``dataset`` asked as a model of ``family`` is asked, or as ``prompt`` says
        (:func:`prompt_data`); unchanged for a recorded run that used its samples as loaded."""
        if not self.data.get("prompted", True):
            return dataset
        return prompt_data(dataset, family, self.data.get("prompt"))

    def dataset(self, family: str) -> Dataset:
        """The run's samples for a model of ``family``: what the local path, every Ray worker
        and :mod:`analyses.merge` read."""
        return self.prompt(self.load(), family)


def load_model_from_args(args: argparse.Namespace) -> LoadedModel:
    """The model the options name (:class:`RunSpec`), on the CPU threads ``--threads`` gives
    (:func:`probes.cli.set_threads`)."""
    set_threads(getattr(args, "threads", None))
    return load_model(**RunSpec.from_args(args).model)


SMALL_WEIGHTS = 256 * 2**20  # weights up to this size are hashed whole (the embedded models)


def model_record(loaded: LoadedModel) -> dict[str, Any]:
    """Which model produced a result: id, where it came from, and a revision (see
    :func:`weights_revision`)."""
    revision = getattr(loaded.model.config, "_commit_hash", None)
    if revision is None:
        revision = weights_revision(Path(loaded.source.location))
    record = {"id": loaded.model_id, "family": loaded.adapter.family,
              "kind": loaded.source.kind, "revision": revision,
              "dtype": str(loaded.dtype).removeprefix("torch."),
              "layers": loaded.adapter.num_layers}
    if hasattr(loaded.adapter, "pixel_budget"):  # a family that resizes into an area range
        record["pixels"] = loaded.adapter.pixel_budget()
    return record


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
    """Which data a result is of; ``prompt``: the template the samples were prompted with
    (:func:`prompt_data`; None for data used as loaded); ``spec``: what ``--data`` reloads it
    from (a name, ``NAME:PATH``, a file)."""
    return {"name": dataset.name, "split": dataset.split, "size": len(dataset),
            "fingerprint": dataset.fingerprint(), "prompt": prompt_record(dataset),
            "spec": getattr(dataset, "spec", dataset.name)}


def prompt_record(dataset: Dataset) -> Any:
    """The prompt template of a prompted dataset (its ``template``), else None."""
    return getattr(dataset, "template", None)


def text_files(result) -> dict[str, str]:
    """The extra text files an analysis writes next to its result (evaluate: its tables), as
    its registration says (:mod:`analyses.registry`)."""
    files = registered_text_files(result.summary.get("analysis"))
    return {} if files is None else files(result.summary)


def write_run(result, out: Path, table: str) -> None:
    """What every analysis CLI (and ``analyses.merge``) does with its result: save it, write
    its extra text files (:func:`text_files`), draw its figures (PNG + PDF) next to it, print
    its table."""
    from analyses.results import skipped_lines, write_atomic
    from figures.paper import draw_run  # drawing is the CLI's business, not the analysis's
    from figures.style import save

    result.save(out)
    if result.summary.get("empty_shard"):  # nothing measured, nothing to draw
        sys.stdout.write(f"{result.summary['empty_shard']}.\nits records in {out}\n")
        return
    for name, text in text_files(result).items():
        write_atomic(Path(out) / name, text.encode())
    for name, figure in draw_run(result).items():
        save(figure, out, name)
    sys.stdout.write(table + skipped_lines(result.summary) + "\n")
    sys.stdout.write(f"results and figures in {out}\n")
