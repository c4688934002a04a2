"""One entry point for every dataset, by name.

A new source (say, a local benchmark file) is a module with a loader
``(split, limit, **params) -> Dataset`` plus one :func:`register_dataset` call.

>>> available_datasets()
['easy-vqa', 'fine-grained']
>>> ds = load_dataset("fine-grained", "train", limit=8)
>>> len(ds), ds.split, ds.params["size"]
(8, 'train', 8)
>>> "?" in vocabulary([ds])
True
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from analyses.data.dataset import Dataset
from analyses.data.easyvqa import load_easy_vqa
from analyses.data.fine_grained import load_fine_grained
from analyses.data.sample import Sample

Loader = Callable[..., Dataset]

_LOADERS: dict[str, Loader] = {}


def register_dataset(name: str, loader: Loader) -> None:
    """Make ``loader(split, limit, **params)`` reachable as ``load_dataset(name, ...)``."""
    if name in _LOADERS:
        raise ValueError(f"a dataset named {name!r} is already registered.")
    _LOADERS[name] = loader


def available_datasets() -> list[str]:
    """The names :func:`load_dataset` accepts, sorted."""
    return sorted(_LOADERS)


def load_dataset(name: str, split: str = "test", limit: int | None = None, **params) -> Dataset:
    """The first ``limit`` samples (all when None) of ``split`` of dataset ``name``.

    Raises ValueError, with one sentence naming what is accepted, for an unknown name, split
    or parameter, or a negative limit.
    """
    if name not in _LOADERS:
        known = ", ".join(available_datasets())
        raise ValueError(f"unknown dataset {name!r}; known datasets: {known}.")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be None or >= 0, got {limit}.")
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
