"""A lazily built, fingerprinted sequence of :class:`~analyses.data.sample.Sample`.

Datasets are built by :func:`analyses.data.load_dataset`; each source supplies two functions
of an index: one that builds the full sample (image included) and a cheap one that returns
only ``(question, answer)``, so vocabularies are collected without decoding any image.

>>> from PIL import Image
>>> from analyses.data.sample import Sample
>>> def make(i):
...     return Sample(f"toy/{i}", Image.new("RGB", (8, 8)), "is it red ?", "no", "yes/no",
...                   (), (), None, "toy")
>>> ds = Dataset("toy", "test", {}, 3, make, lambda i: ("is it red ?", "no"), content="v1")
>>> len(ds), ds[-1].id, list(ds.texts())[0]
(3, 'toy/2', ('is it red ?', 'no'))
>>> ds.fingerprint() == Dataset("toy", "test", {}, 3, make, None, content="v1").fingerprint()
True
>>> asked = ds.prompted("llava", "Q: {question} A:")
>>> asked[0].prompt, asked.template, asked.fingerprint() == ds.fingerprint()
('Q: is it red ? A:', 'Q: {question} A:', False)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any, overload

from analyses.data.prompts import BARE, check_template, default_template, render
from analyses.data.sample import Sample


class Dataset(Sequence[Sample]):
    """Samples ``0 .. length-1`` of one split of one named dataset, built on access.

    ``params`` are the resolved parameters that define the data (defaults filled in);
    ``content`` is a string naming whatever else defines it (a hash of a question file, a
    generator version) and enters :meth:`fingerprint`.
    """

    def __init__(
        self,
        name: str,
        split: str,
        params: Mapping[str, Any],
        length: int,
        make_sample: Callable[[int], Sample],
        make_text: Callable[[int], tuple[str, str]] | None = None,
        content: str = "",
        *,
        prompt_style: str = "plain",
        source: str = "",
    ) -> None:
        self.name = name
        self.split = split
        self.params = dict(params)
        self._length = length
        self._make_sample = make_sample
        self._make_text = make_text
        self._content = content
        self.prompt_style = prompt_style  # which reference prompts apply (analyses.data.prompts)
        self.source = source  # where the data was read from (a file, a folder, a hub id)
        self.spec = name  # what load_dataset reloads it from ("pope", "pope:/dir", a path)
        self.template: str | None = None  # the prompt template, once prompted()
        self._unprompted = (make_sample, content)  # what prompted() starts from

    def __len__(self) -> int:
        return self._length

    @overload
    def __getitem__(self, index: int) -> Sample: ...

    @overload
    def __getitem__(self, index: slice) -> list[Sample]: ...

    def __getitem__(self, index: int | slice) -> Sample | list[Sample]:
        if isinstance(index, slice):
            return [self._make_sample(i) for i in range(*index.indices(self._length))]
        if not -self._length <= index < self._length:
            raise IndexError(f"index {index} is out of range for {self!r}.")
        return self._make_sample(index % self._length)

    def __iter__(self) -> Iterator[Sample]:
        return (self._make_sample(i) for i in range(self._length))

    def __repr__(self) -> str:
        return f"Dataset(name={self.name!r}, split={self.split!r}, length={self._length})"

    def texts(self) -> Iterator[tuple[str, str]]:
        """``(question, answer)`` for every sample, without building images."""
        if self._make_text is None:
            return ((s.question, s.answer) for s in self)
        return (self._make_text(i) for i in range(self._length))

    def prompted(self, family: str | None, template: str | None = None) -> Dataset:
        """The same samples with :attr:`Sample.prompt` rendered for a model ``family``.

        ``template`` (placeholders ``{question}``, ``{choices}``) overrides the dataset's
        reference prompt (:func:`analyses.data.prompts.default_template`). The fingerprint
        includes the template, except for the bare ``{question}``: asking the question as it
        is leaves the data as it was.
        """
        chosen = check_template(template) if template is not None else None
        chosen = chosen or default_template(self, family)
        make_sample, base_content = self._unprompted

        def make_prompted(index: int) -> Sample:
            sample = make_sample(index)
            return replace(sample, prompt=render(chosen, sample.question, sample.choices))

        content = base_content if chosen == BARE else f"{base_content}\nprompt: {chosen}"
        prompted = Dataset(
            self.name, self.split, self.params, self._length, make_prompted, self._make_text,
            content, prompt_style=self.prompt_style, source=self.source,
        )
        prompted.template, prompted.spec = chosen, self.spec
        prompted._unprompted = self._unprompted
        return prompted

    def fingerprint(self) -> str:
        """A stable 16-hex-digit hash of name, split, params, length and content."""
        payload = {
            "name": self.name,
            "split": self.split,
            "params": self.params,
            "length": self._length,
            "content": self._content,
        }
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]
