"""The record every dataset yields: one question about one image, with the regions it is about.

>>> import numpy as np
>>> from PIL import Image
>>> box = Box(2, 3, 6, 5)
>>> (box.width, box.height, box.area)
(4, 2, 8)
>>> sample = Sample(id="demo/0", image=Image.new("RGB", (8, 8)), question="what color is it ?",
...                 answer="red", kind="color", boxes=(box,), target=(0,), mask=None,
...                 dataset="demo")
>>> sample.target_boxes
(Box(x0=2, y0=3, x1=6, y1=5),)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Box:
    """An axis-aligned pixel box, end-exclusive: columns ``x0 .. x1-1``, rows ``y0 .. y1-1``.

    >>> Box.from_mask(np.eye(3, dtype=bool))
    Box(x0=0, y0=0, x1=3, y1=3)
    """

    x0: int
    y0: int
    x1: int
    y1: int

    def __post_init__(self) -> None:
        if not (0 <= self.x0 < self.x1 and 0 <= self.y0 < self.y1):
            raise ValueError(f"a box needs 0 <= x0 < x1 and 0 <= y0 < y1, got {self}.")

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def area(self) -> int:
        return self.width * self.height

    @classmethod
    def from_mask(cls, mask: np.ndarray) -> Box:
        """The tightest box around the True pixels of a 2-D boolean ``mask``."""
        rows = np.flatnonzero(mask.any(axis=1))
        cols = np.flatnonzero(mask.any(axis=0))
        if rows.size == 0:
            raise ValueError("an empty mask has no bounding box.")
        return cls(int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)


# eq=False: the mask is an ndarray, and dataclass equality would compare it elementwise and
# fail; samples are compared by their fields in tests, never as wholes.
@dataclass(frozen=True, eq=False)
class Sample:
    """One visual question.

    ``boxes`` holds every object in the image (pixel coordinates of ``image``); ``target``
    indexes the objects the question is about (for relations in the order the question names
    them, otherwise ascending); ``mask`` is a read-only boolean HxW array of the target objects'
    pixels (all False when the question is about nothing visible, e.g. a count of zero) or
    None where a dataset has no pixel annotation. ``image_id`` is shared by all questions on
    the same image, so features of one image can be computed once. Treat ``image`` as
    read-only: datasets may hand the same cached object to several samples.

    Benchmarks fill the rest: ``answer`` is the reference (for multiple-choice data the correct
    option's letter, so the token an analysis measures is the letter); ``answers`` every
    acceptable answer where there are several (TextVQA's ten); ``choices`` the option texts,
    lettered A, B, ... in order; ``prompt`` the text the model is asked (the benchmark's
    prompt rendered for the model's family; empty means the bare question); ``scorer`` the
    name of the rule in :mod:`analyses.scoring` that grades a reply; ``kind`` the category
    results are broken down by; ``meta`` whatever else the source holds (a split, an original
    box, a question type).
    """

    id: str
    image: Image.Image
    question: str
    answer: str
    kind: str
    boxes: tuple[Box, ...]
    target: tuple[int, ...]
    mask: np.ndarray | None
    dataset: str
    image_id: str = ""
    answers: tuple[str, ...] = ()
    choices: tuple[str, ...] = ()
    prompt: str = ""
    scorer: str = "exact"
    meta: Mapping[str, Any] = field(default_factory=dict)

    @property
    def ask(self) -> str:
        """The text the model is asked: the rendered :attr:`prompt`, else the question."""
        return self.prompt or self.question

    @property
    def acceptable(self) -> tuple[str, ...]:
        """Every acceptable reference answer (:attr:`answers`, else just :attr:`answer`)."""
        return self.answers or (self.answer,)

    @property
    def target_boxes(self) -> tuple[Box, ...]:
        """The boxes of the objects the question is about."""
        return tuple(self.boxes[i] for i in self.target)

    def region(self) -> np.ndarray | None:
        """The pixels the question is about, the one way every analysis finds them: boolean
        HxW, the sample's mask where it has one (all False when the question is about
        nothing visible), else the union of its target boxes; None with neither."""
        if self.mask is not None:
            return np.asarray(self.mask, dtype=bool)
        if not self.target_boxes:
            return None
        region = np.zeros((self.image.height, self.image.width), dtype=bool)
        for box in self.target_boxes:
            region[box.y0:box.y1, box.x0:box.x1] = True
        return region

    def has_region(self) -> bool:
        """Whether the question is about a visible region (:meth:`region` has a pixel)."""
        region = self.region()
        return region is not None and bool(region.any())
