"""One entry point for every dataset: a registered name, ``NAME:PATH``, or a path.

A new source is a module with a loader ``(split, limit, **params) -> Dataset`` plus one
:func:`register_dataset` call. ``load_dataset`` accepts

- a name: ``easy-vqa``, ``fine-grained`` (generated or installed) and the benchmarks (V*,
  MMStar, RealWorldQA, TextVQA, CountBench, POPE, RefCOCO/+/g, read offline from the Hugging
  Face cache; GQA from its files);
- ``NAME:PATH``: a benchmark read from a folder or file instead of the cache;
- a path to a user's ``.jsonl``, ``.csv``, ``.parquet`` file, a folder holding one, or a
  ``datasets`` ``save_to_disk`` folder (:mod:`analyses.data.own`).

``split`` None means the source's default split (test for easy-vqa and fine-grained).

>>> available_datasets()  # doctest: +NORMALIZE_WHITESPACE
['countbench', 'easy-vqa', 'fine-grained', 'gqa', 'mmstar', 'pope', 'realworldqa', 'refcoco',
 'refcoco+', 'refcocog', 'textvqa', 'vstar']
>>> ds = load_dataset("fine-grained", "train", limit=8)
>>> len(ds), ds.split, ds.params["size"]
(8, 'train', 8)
>>> "?" in vocabulary([ds])
True
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence

from analyses.data.benchmarks import PARQUET_BENCHMARKS, load_parquet_benchmark
from analyses.data.dataset import Dataset
from analyses.data.easyvqa import load_easy_vqa
from analyses.data.fine_grained import load_fine_grained
from analyses.data.folders import load_gqa
from analyses.data.own import load_own
from analyses.data.sample import Sample
from analyses.data.tabular import SUFFIXES, path_exists, user_path

Loader = Callable[..., Dataset]

_LOADERS: dict[str, Loader] = {}
_DEFAULT_SPLITS: dict[str, str | None] = {}  # None: the loader resolves split None itself
_READS_PATHS: set[str] = set()


def register_dataset(
    name: str, loader: Loader, default_split: str | None = "test", reads_paths: bool = False
) -> None:
    """Make ``loader(split, limit, **params)`` reachable as ``load_dataset(name, ...)``.

    ``default_split`` replaces a split of None (None: the loader takes None itself);
    ``reads_paths``: ``NAME:PATH`` calls ``loader(split, limit, path=PATH)``.
    """
    if name in _LOADERS:
        raise ValueError(f"a dataset named {name!r} is already registered.")
    _LOADERS[name] = loader
    _DEFAULT_SPLITS[name] = default_split
    if reads_paths:
        _READS_PATHS.add(name)


def available_datasets() -> list[str]:
    """The names :func:`load_dataset` accepts, sorted."""
    return sorted(_LOADERS)


def _looks_like_path(spec: str) -> bool:
    return (
        "/" in spec or "\\" in spec or spec.startswith((".", "~"))
        or spec.endswith((*SUFFIXES, ".json")) or path_exists(spec)
    )


def load_dataset(
    name: str, split: str | None = None, limit: int | None = None, **params
) -> Dataset:
    """The first ``limit`` samples (all when None) of ``split`` (None: the source's default)
    of the dataset ``name`` names: a registered name, ``NAME:PATH`` or a path.

    Raises ValueError or :class:`~probes.errors.UserError`, one sentence naming what is
    accepted, for an unknown name, split or parameter, a missing path, a benchmark not in the
    cache, or a negative limit.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be None or >= 0, got {limit}.")
    dataset, spec = _resolve(name, split, limit, params)
    dataset.spec = spec
    return dataset


def _resolve(name: str, split: str | None, limit: int | None, params: dict
             ) -> tuple[Dataset, str]:
    """The dataset ``name`` names, and the spec that reloads it from any folder."""
    prefix, colon, path = name.partition(":")
    if name not in _LOADERS and colon and prefix in _LOADERS:
        if prefix not in _READS_PATHS:
            raise ValueError(f"{prefix} is not read from files, so {name!r} names nothing; "
                             f"datasets read from a path: {', '.join(sorted(_READS_PATHS))}.")
        if not path:
            raise ValueError(f"{name!r} names no path after the colon.")
        where = user_path(path)
        return _call(prefix, split, limit, {**params, "path": str(where)}), f"{prefix}:{where}"
    if name in _LOADERS:
        return _call(name, split, limit, params), name
    if _looks_like_path(name):
        if params:
            raise ValueError(f"your own data takes no parameters, got {', '.join(params)}.")
        where = user_path(name)
        return load_own(where, split, limit), str(where)
    known = ", ".join(available_datasets())
    raise ValueError(
        f"unknown dataset {name!r}; known datasets: {known} (or NAME:PATH, or a path to a "
        f"{', '.join(SUFFIXES[:3])} file or folder of your own)."
    )


def _call(name: str, split: str | None, limit: int | None, params: dict) -> Dataset:
    if split is None:
        split = _DEFAULT_SPLITS[name]
    if name in _READS_PATHS and set(params) - {"path"}:
        extra = ", ".join(sorted(set(params) - {"path"}))
        raise ValueError(f"{name} takes no parameters besides path, got {extra}.")
    return _LOADERS[name](split, limit, **params)


def vocabulary(datasets: Dataset | Iterable[Sequence[Sample]]) -> list[str]:
    """Sorted distinct whitespace-separated words of every question and answer.

    Uses :meth:`Dataset.texts` where available, so no image is built or decoded.
    """
    if isinstance(datasets, Dataset):
        datasets = [datasets]
    words: set[str] = set()
    for dataset in datasets:
        if isinstance(dataset, Dataset):
            texts = dataset.texts()
        else:
            texts = ((sample.question, sample.answer) for sample in dataset)
        for question, answer in texts:
            words.update(question.split())
            words.update(answer.split())
    return sorted(words)


def _load_easy_vqa(split: str, limit: int | None, **params) -> Dataset:
    if params:
        raise ValueError(f"easy-vqa takes no parameters, got {', '.join(sorted(params))}.")
    return load_easy_vqa(split, limit)


register_dataset("easy-vqa", _load_easy_vqa)
register_dataset("fine-grained", load_fine_grained)
for _name in PARQUET_BENCHMARKS:
    register_dataset(_name, functools.partial(load_parquet_benchmark, _name), None, True)
register_dataset("gqa", load_gqa, None, True)
