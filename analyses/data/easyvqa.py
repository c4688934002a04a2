"""easy-VQA (MIT, https://github.com/vzhou842/easy-VQA) from the installed ``easy_vqa`` package.

4,000 train / 1,000 test 64x64 images of one coloured shape on an off-white background, and
38,575 / 9,673 questions with 13 possible answers. Questions keep their wording but are
normalised to the synthetic sets' token format (lowercase, ``?`` as its own word).

``kind`` comes from the answer: ``yes``/``no`` -> ``"yes/no"``, a shape name -> ``"shape"``,
a colour name -> ``"color"`` (in the shipped questions every colour answer comes from a
question containing "color", and no other question contains it).

The only annotation easy-VQA ships is text, so the single box and the mask are recovered
from pixels: the shape is every pixel whose summed |RGB| difference from the background
(the modal border colour) exceeds 30. Over all 5,000 images that gives one connected blob of
47..1,154 pixels whose box is 8..34 px on a side.

>>> ds = load_easy_vqa("test", limit=3)
>>> [(s.question, s.answer, s.kind) for s in ds]  # doctest: +NORMALIZE_WHITESPACE
[('what is the red shape ?', 'triangle', 'shape'),
 ('what is the color of the triangle ?', 'red', 'color'),
 ('what is the color of the shape ?', 'red', 'color')]
>>> ds[0].image is ds[2].image  # one decode per image per dataset
True
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable

import numpy as np
from PIL import Image

from analyses.data.dataset import Dataset
from analyses.data.palette import COLORS, SHAPES, foreground_mask
from analyses.data.sample import Box, Sample

NAME = "easy-vqa"
ANSWERS: frozenset[str] = frozenset({"yes", "no", *SHAPES, *COLORS})
SPLITS = ("train", "test")


def _sources(split: str) -> tuple[Callable, Callable]:
    """easy_vqa's question and image-path readers of ``split``; imported only when read, so
    importing fusionlens needs no easy_vqa (a bare GPU machine's Python runs make gpu-check)."""
    import easy_vqa

    return (getattr(easy_vqa, f"get_{split}_questions"),
            getattr(easy_vqa, f"get_{split}_image_paths"))


def normalize_question(text: str) -> str:
    """Lowercase, ``?`` split off as its own word, single spaces.

    >>> normalize_question("Is there a  red shape?")
    'is there a red shape ?'
    """
    return " ".join(re.sub(r"\?", " ? ", text.lower()).split())


def kind_of_answer(answer: str) -> str:
    """The question type implied by an easy-VQA answer (see the module docstring)."""
    if answer in ("yes", "no"):
        return "yes/no"
    if answer in SHAPES:
        return "shape"
    if answer in COLORS:
        return "color"
    raise ValueError(f"{answer!r} is not one of easy-VQA's 13 answers.")


def _decode_image(path: str) -> Image.Image:
    with Image.open(path) as opened:
        return opened.convert("RGB")


class _ImageCache:
    """Decodes each image file at most once and remembers its shape mask and box."""

    def __init__(self, paths: dict[int, str]) -> None:
        self._paths = paths
        self._entries: dict[int, tuple[Image.Image, np.ndarray, Box]] = {}

    def get(self, image_id: int) -> tuple[Image.Image, np.ndarray, Box]:
        if image_id not in self._entries:
            image = _decode_image(self._paths[image_id])
            mask = foreground_mask(np.asarray(image))
            mask.setflags(write=False)  # shared by every question on this image
            self._entries[image_id] = (image, mask, Box.from_mask(mask))
        return self._entries[image_id]


def load_easy_vqa(split: str = "test", limit: int | None = None) -> Dataset:
    """The first ``limit`` questions (all when None) of easy-VQA's ``split`` (train or test)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} for {NAME}; known splits: train, test.")
    read_questions, read_paths = _sources(split)
    texts, answers, image_ids = read_questions()
    records = list(zip(texts, answers, image_ids, strict=True))[:limit]
    images = _ImageCache(read_paths())
    digest = hashlib.sha256(json.dumps(records).encode()).hexdigest()

    def make_text(index: int) -> tuple[str, str]:
        text, answer, _ = records[index]
        return normalize_question(text), answer

    def make_sample(index: int) -> Sample:
        text, answer, image_id = records[index]
        image, mask, box = images.get(image_id)
        return Sample(
            id=f"{NAME}/{split}/{index}",
            image=image,
            question=normalize_question(text),
            answer=answer,
            kind=kind_of_answer(answer),
            boxes=(box,),
            target=(0,),
            mask=mask,
            dataset=NAME,
            image_id=f"{NAME}/{split}/image-{image_id}",
        )

    return Dataset(NAME, split, {}, len(records), make_sample, make_text, content=digest)
