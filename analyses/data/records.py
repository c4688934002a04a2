"""Text-only records of a benchmark or a user's file, turned into a lazy :class:`Dataset`.

A loader reads every text field up front into :class:`Record` s (cheap: no image is touched)
and hands over a function that reads one record's image. :func:`records_dataset` builds each
:class:`~analyses.data.sample.Sample` on access: it decodes the image then (so an unreadable
image fails only its own sample), converts the record's float boxes to integer boxes on that
image, and keeps the last few decoded images, since benchmarks ask several questions about
one image (keyed by where an image is read from, never by a declared id).

>>> from PIL import Image
>>> records = [Record("toy/0", "what is it?", "B", "demo", "choice", choices=("cat", "dog"),
...                   boxes=((1.5, 1, 4, 3),), target=(0,), image_key="img-0")]
>>> ds = records_dataset("toy", "test", records, lambda i: Image.new("RGB", (8, 6)))
>>> sample = ds[0]
>>> sample.answer, sample.choices, sample.target_boxes, sample.image_id
('B', ('cat', 'dog'), (Box(x0=1, y0=1, x1=4, y1=3),), 'img-0')
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from PIL import Image

from analyses.data.boxes import FloatBox, clipped_box, strict_box
from analyses.data.dataset import Dataset
from analyses.data.prompts import LETTERS
from analyses.data.sample import Sample
from probes.errors import UserError

CACHED_IMAGES = 8  # decoded images kept per dataset (questions on one image come together)


@dataclass(frozen=True)
class Record:
    """Everything of one sample but its image: boxes are float ``(x0, y0, x1, y1)`` in image
    pixels (clipped to the image, or checked against it when ``strict_boxes``); ``image_key``
    identifies the image (questions on one image share it)."""

    id: str
    question: str
    answer: str
    kind: str
    scorer: str
    answers: tuple[str, ...] = ()
    choices: tuple[str, ...] = ()
    boxes: tuple[FloatBox, ...] = ()
    target: tuple[int, ...] = ()
    image_key: str = ""
    meta: Mapping[str, Any] = field(default_factory=dict)


def records_digest(records: Sequence[Record]) -> str:
    """A hash of every record's fields: the data's content, wherever it was read from."""
    digest = hashlib.sha256()
    for record in records:  # field by field: dataclasses.asdict deep-copies, 10x slower
        values = [getattr(record, f.name) for f in fields(record)]
        digest.update(json.dumps(values, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def numbered_ids(records: Sequence[Record]) -> list[Record]:
    """``records`` with a repeated id numbered (``pope/test/7``, ``pope/test/7#2``): a
    benchmark's file is not the user's to mend, so its ids are made unique rather than refused.

    >>> [r.id for r in numbered_ids([Record("b/1", "q", "x", "all", "exact")] * 3)]
    ['b/1', 'b/1#2', 'b/1#3']
    """
    seen: Counter[str] = Counter()
    numbered = []
    for record in records:
        seen[record.id] += 1
        count = seen[record.id]
        numbered.append(record if count == 1 else replace(record, id=f"{record.id}#{count}"))
    return numbered


def check_records(name: str, records: Sequence[Record]) -> None:
    """UserError unless every record's id is its own and no record has more choices than
    there are letters: the one check every benchmark and own file passes through.

    >>> check_records("mine.jsonl", [Record("mine.jsonl/a", "q", "x", "all", "exact")] * 2)
    Traceback (most recent call last):
    ...
    probes.errors.UserError: mine.jsonl has several samples with the id 'mine.jsonl/a'; every sample needs an id of its own (in your own file: a unique 'id' per row, or no 'id' column, to number the rows).
    """
    counts = Counter(record.id for record in records)
    repeated = [sample_id for sample_id, count in counts.items() if count > 1]
    if repeated:
        shown = ", ".join(repr(i) for i in repeated[:3]) + (", ..." if len(repeated) > 3 else "")
        raise UserError(
            f"{name} has several samples with the id{'s' * (len(repeated) > 1)} {shown}; every "
            "sample needs an id of its own (in your own file: a unique 'id' per row, or no "
            "'id' column, to number the rows)."
        )
    for record in records:
        if len(record.choices) > len(LETTERS):
            raise UserError(f"sample {record.id} has {len(record.choices)} choices; at most "
                            f"{len(LETTERS)} (A to Z) are supported.")


def records_dataset(
    name: str,
    split: str,
    records: Sequence[Record],
    read_image: Callable[[int], Image.Image],
    *,
    params: Mapping[str, Any] | None = None,
    prompt_style: str = "plain",
    source: str = "",
    strict_boxes: bool = False,
    image_source: Callable[[int], Hashable] | None = None,
    number_repeated_ids: bool = False,
) -> Dataset:
    """A :class:`Dataset` of ``records``; ``read_image(i)`` reads record i's image.

    ``image_source(i)`` names where record i's image is read from (a file, a table row):
    records with the same source share one decoded image; without it every record reads its
    own. The cache is keyed by that, never by an id a file declares, so no sample is ever
    shown another's image. Ids that repeat are refused (:func:`check_records`), or numbered
    when ``number_repeated_ids`` (benchmarks: :func:`numbered_ids`).
    """
    records = numbered_ids(records) if number_repeated_ids else list(records)
    check_records(name, records)
    cache: OrderedDict[Hashable, Image.Image] = OrderedDict()

    def image_of(index: int) -> Image.Image:
        key = index if image_source is None else image_source(index)
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
        image = read_image(index)
        cache[key] = image
        if len(cache) > CACHED_IMAGES:
            cache.popitem(last=False)
        return image

    def make_sample(index: int) -> Sample:
        record = records[index]
        image = image_of(index)
        if strict_boxes:
            boxes = tuple(strict_box(b, image.size, f"sample {record.id}") for b in record.boxes)
        else:
            boxes = tuple(clipped_box(b, image.size, f"sample {record.id}") for b in record.boxes)
        return Sample(
            id=record.id,
            image=image,
            question=record.question,
            answer=record.answer,
            kind=record.kind,
            boxes=boxes,
            target=record.target,
            mask=None,
            dataset=name,
            image_id=record.image_key or record.id,
            answers=record.answers,
            choices=record.choices,
            scorer=record.scorer,
            meta=dict(record.meta),
        )

    def make_text(index: int) -> tuple[str, str]:
        return records[index].question, records[index].answer

    return Dataset(
        name, split, params or {}, len(records), make_sample, make_text,
        content=records_digest(records), prompt_style=prompt_style, source=source,
    )
