"""Users' own questions: a ``.jsonl``, ``.csv`` or ``.parquet`` file, a folder holding one such
file and its images, or a ``datasets.Dataset`` / ``DatasetDict`` saved with ``save_to_disk``.

Columns: ``image`` (a path relative to the file, or bytes, or the ``{bytes, path}`` struct of
parquet and ``datasets``), ``question``, ``answer`` (a string, or a list of acceptable answers;
in CSV a JSON list such as ``["cat", "kitten"]``), and optionally ``choices`` (a list; the
answer may be the option's letter or its text and is stored as the letter), ``boxes`` (a list
of ``[x0, y0, x1, y1]`` in image pixels, end-exclusive: the regions the question is about),
``kind`` (the category results are broken down by) and ``id``. Every other column goes to
``meta``. Text is checked when the file is loaded, and so is every box, against its image's
size read from the image's header (no image is decoded before its sample is built).

>>> normalise_answer("dog", ("cat", "dog"), "row 0")
'B'
>>> normalise_answer("e", ("cat", "dog"), "row 0")
Traceback (most recent call last):
...
probes.errors.UserError: the answer 'e' of row 0 is not among its choices (A, B or the option texts).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from analyses.data.boxes import strict_box
from analyses.data.dataset import Dataset
from analyses.data.fields import field, text, texts
from analyses.data.prompts import LETTERS
from analyses.data.records import Record, records_dataset
from analyses.data.tabular import (
    SUFFIXES,
    Table,
    concat,
    decode_image,
    image_size,
    path_exists,
    read_arrow,
    read_json,
    read_table,
)
from probes.errors import UserError

KNOWN = ("image", "question", "answer", "choices", "boxes", "kind", "id")
DATA_SUFFIXES = (".jsonl", ".csv", ".parquet")


def _listed(value: Any) -> list[Any] | None:
    """A list cell (a list, or a CSV cell holding a JSON list); None for an empty cell."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        if value.lstrip().startswith("["):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                return [value]
        else:
            return [value]
    return list(value) if isinstance(value, (list, tuple)) else [value]


def normalise_answer(answer: str, choices: tuple[str, ...], where: str) -> str:
    """The letter of ``answer`` (a letter or an option's text) among ``choices``."""
    if len(choices) > len(LETTERS):
        raise UserError(f"{where} has {len(choices)} choices; at most {len(LETTERS)} (A to Z) "
                        "are supported.")
    letters = LETTERS[: len(choices)]
    given = str(answer).strip()
    if len(given) == 1 and given in letters:
        return given
    if given in choices:
        return letters[choices.index(given)]
    raise UserError(
        f"the answer {given!r} of {where} is not among its choices "
        f"({', '.join(letters)} or the option texts)."
    )


def _boxes(value: Any, where: str) -> tuple[tuple[float, ...], ...]:
    boxes = _listed(value) or []
    parsed = []
    for box in boxes:
        try:
            numbers = tuple(float(v) for v in box)
        except (TypeError, ValueError):
            numbers = ()
        if len(numbers) != 4 or not (numbers[0] < numbers[2] and numbers[1] < numbers[3]):
            raise UserError(f"the box {box!r} of {where} is not [x0, y0, x1, y1] with "
                            "x0 < x1 and y0 < y1.")
        parsed.append(numbers)
    return tuple(parsed)


def _record(table: Table, i: int, name: str) -> Record:
    row, where = table.row(i), table.where(i)
    answers = [a.strip() for a in texts(_listed(row.get("answer")) or [], "answer", where)]
    if not answers:
        raise UserError(f"{where} has no answer.")
    choices = texts(_listed(row.get("choices")) or [], "choices", where)
    if choices:
        answers = [normalise_answer(a, choices, where) for a in answers]
    answers = list(dict.fromkeys(answers))
    boxes = _boxes(row.get("boxes"), where)
    row_id = text(row, "id", where, default="") or str(i)
    # JSON lines and CSV keep image paths as a text column; other formats' images stay unread
    path = row.get("image")
    image_key = f"{name}/{path}" if isinstance(path, str) else ""
    meta = {column: value for column, value in row.items() if column not in KNOWN}
    return Record(
        f"{name}/{row_id}", text(row, "question", where), answers[0],
        text(row, "kind", where, default="") or "all",
        "choice" if choices else "exact", answers=tuple(answers) if len(answers) > 1 else (),
        choices=choices, boxes=boxes, target=tuple(range(len(boxes))), image_key=image_key,
        meta={**meta, "row": i},
    )


def _saved_dataset(folder: Path) -> Table:
    """A ``save_to_disk`` Dataset folder: ``state.json`` lists its Arrow files."""
    state_path = folder / "state.json"
    entries = field(read_json(state_path), "_data_files", str(state_path), default=[])
    if not isinstance(entries, list):
        raise UserError(f"'_data_files' in {state_path} is not a list of files.")
    files = [folder / text(entry, "filename", f"an entry of '_data_files' in {state_path}")
             for entry in entries]
    if not files:
        raise UserError(f"{folder} (a saved dataset) lists no Arrow data file.")
    for file in files:
        if not file.is_file():
            raise UserError(f"{folder} (a saved dataset) lists {file.name}, which is not there.")
    return concat([read_arrow(f) for f in files], folder.name)


def own_table(path: Path, split: str | None) -> tuple[Table, str, str]:
    """The rows a user's path holds, the split label, and the data's name (the data file's
    name, also for a folder that holds one; the folder's for a saved dataset)."""
    if not path_exists(path):
        raise UserError(f"there is no file or folder {path}.")
    if path.is_file():
        return read_table(path), split or "all", path.name
    if (path / "state.json").is_file():
        return _saved_dataset(path), split or "all", path.name
    if (path / "dataset_dict.json").is_file():
        listing = path / "dataset_dict.json"
        splits = texts(field(read_json(listing), "splits", str(listing)), "splits", str(listing))
        if not splits:
            raise UserError(f"{listing} lists no split.")
        chosen = split or ("test" if "test" in splits else splits[0])
        if chosen in splits and not (path / chosen / "state.json").is_file():
            raise UserError(f"{path} lists the split {chosen!r} but has no {chosen}/state.json.")
        if chosen not in splits:
            raise UserError(f"{path} has no split {chosen!r}; its splits: {', '.join(splits)}.")
        return _saved_dataset(path / chosen), chosen, path.name
    found = sorted(p for p in path.iterdir() if p.suffix in DATA_SUFFIXES)
    if len(found) != 1:
        what = "no" if not found else f"{len(found)} ({', '.join(p.name for p in found)})"
        raise UserError(f"the folder {path} holds {what} data files; it needs exactly one "
                        f"{', '.join(DATA_SUFFIXES)} file (or a datasets save_to_disk folder).")
    return read_table(found[0]), split or "all", found[0].name


def load_own(path: str | Path, split: str | None = None, limit: int | None = None) -> Dataset:
    """A user's file or folder as a :class:`Dataset` named after it."""
    path = Path(path)
    table, label, name = own_table(path, split)
    if len(table) == 0:
        raise UserError(f"{path} holds no rows (questions).")
    table.require("image", "question", "answer")
    rows = range(len(table) if limit is None else min(limit, len(table)))
    records = [_record(table, i, name) for i in rows]
    for i, record in enumerate(records):
        if record.boxes:  # a box outside its image is a broken file: refused before any run
            try:
                size = image_size(table.raw_image(i), table.base, f"sample {record.id}")
            except UserError:  # an unreadable image fails its own sample when it is read
                continue
            for box in record.boxes:
                strict_box(box, size, f"sample {record.id}")
    return records_dataset(
        name, label, records,
        lambda i: decode_image(table.raw_image(i), table.base, f"sample {records[i].id}"),
        prompt_style="choice" if any(r.choices for r in records) else "plain",
        source=str(path), strict_boxes=True,
        image_source=lambda i: records[i].image_key or i,  # a path, else the row's own cell
    )


__all__ = ["SUFFIXES", "load_own", "normalise_answer", "own_table"]
