"""Several benchmarks as one dataset: their samples in turn, each tagged with its benchmark.

``--data vstar,mmstar`` is one run over both (:func:`analyses.common.load_data` splits it with
:func:`data_names`, which keeps a path with a comma in its name whole, and calls
:func:`concatenate`); every sample's ``meta["benchmark"]`` names the part it came from, so a
record says which benchmark it belongs to without the dataset at hand. Prompting a suite
prompts each part with its own reference template.

>>> from analyses.data import load_dataset
>>> suite = concatenate([load_dataset("easy-vqa", limit=2), load_dataset("fine-grained",
...                                                                       limit=3)])
>>> len(suite), suite.name, [s.meta["benchmark"] for s in suite]
(5, 'easy-vqa,fine-grained', ['easy-vqa', 'easy-vqa', 'fine-grained', 'fine-grained', 'fine-grained'])
>>> suite.prompted("llava").template
{'easy-vqa': '{question}', 'fine-grained': '{question}'}
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import replace

from analyses.data.dataset import Dataset
from analyses.data.sample import Sample
from analyses.data.tabular import path_exists

BENCHMARK = "benchmark"  # the meta key naming a sample's part


def benchmark_of(sample: Sample) -> str:
    """The benchmark a sample belongs to: its suite part, else its dataset."""
    return str(sample.meta.get(BENCHMARK, sample.dataset))


def part_names(parts: Sequence[Dataset]) -> list[str]:
    """Each part's name, made unique (``pope``, ``pope#2``) where a name repeats."""
    names: list[str] = []
    for part in parts:
        name, k = part.name, 2
        while name in names:
            name, k = f"{part.name}#{k}", k + 1
        names.append(name)
    return names


class Suite(Dataset):
    """The samples of ``parts`` in turn (see the module docstring)."""

    def __init__(self, parts: Sequence[Dataset]) -> None:
        self.parts = list(parts)
        self.names = part_names(self.parts)
        self._starts = list(itertools.accumulate([0] + [len(p) for p in self.parts]))
        splits = [str(part.split) for part in self.parts]
        split = splits[0] if len(set(splits)) == 1 else ",".join(splits)
        content = ";".join(f"{name}={part.fingerprint()}"
                           for name, part in zip(self.names, self.parts))
        super().__init__(",".join(self.names), split, {"parts": self.names},
                         self._starts[-1], self._sample, None, content)
        templates = {name: getattr(part, "template", None)
                     for name, part in zip(self.names, self.parts)}
        self.template = templates if any(v is not None for v in templates.values()) else None

    def _sample(self, index: int) -> Sample:
        k = bisect.bisect_right(self._starts, index) - 1
        sample = self.parts[k][index - self._starts[k]]
        return replace(sample, meta={**sample.meta, BENCHMARK: self.names[k]})

    def texts(self) -> Iterator[tuple[str, str]]:
        return itertools.chain.from_iterable(part.texts() for part in self.parts)

    def prompted(self, family: str | None, template: str | None = None) -> Suite:
        """Each part prompted for ``family`` (``template`` for all of them, if given)."""
        return Suite([part.prompted(family, template) for part in self.parts])


def _exists(spec: str) -> bool:
    """Whether ``spec`` is a path that exists, or ``NAME:PATH`` with one."""
    _, colon, after = spec.partition(":")
    return any(path_exists(text) for text in (spec, after if colon else "") if text)


def data_names(spec: str) -> list[str]:
    """The datasets a ``--data`` value names: its comma-separated parts, except that a comma
    inside the name of a path that exists (``--data "runs/a,b.jsonl"``) does not separate.
    Each part is the longest run of comma-joined pieces that names an existing path, else one
    piece; blank pieces are dropped.

    >>> data_names("easy-vqa, fine-grained"), data_names(",,")
    (['easy-vqa', 'fine-grained'], [])
    """
    pieces = spec.split(",")
    names, start = [], 0
    while start < len(pieces):
        end = next((stop for stop in range(len(pieces), start + 1, -1)
                    if _exists(",".join(pieces[start:stop]).strip())), start + 1)
        name = ",".join(pieces[start:end]).strip()
        if name:
            names.append(name)
        start = end
    return names


def concatenate(parts: Sequence[Dataset]) -> Dataset:
    """One dataset of ``parts`` in turn (a single part is returned as it is)."""
    if len(parts) == 1:
        return parts[0]
    return Suite(parts)
