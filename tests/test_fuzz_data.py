"""Fuzz the data loaders and the analysis CLIs' data options with generated input (Hypothesis):
whatever a user's file or option holds, the data path either works or refuses in one
:class:`~probes.errors.UserError` sentence (exit code 2 at the CLI); never another exception,
never a raw library error passed on as the sentence, never one sample's image served to another.

What is generated: own ``.jsonl`` files (any JSON value in any field, ids that repeat, images
that are missing, damaged, byte-flipped, decompression bombs or too small), ``.csv`` files
(rows with a field too many or too few, quotes, newlines, oversized fields, a byte-order mark,
Latin-1 or UTF-16 text), ``.parquet`` files (columns of any type, images as bytes or structs),
folders holding zero, one or two data files or a broken ``save_to_disk`` state, every parquet
benchmark's layout with a column dropped, retyped or emptied, rows repeated or images damaged,
GQA and the original V* release with their JSON mutated, and the analysis CLIs' ``--data
--split --prompt --limit`` (paths with commas in their names included), run up to the model.

Correctness, not only robustness: every row of a generated own file has an image of its own
colour, and every sample that loads must carry its own row's pixels (duplicate ids once made
a cache serve the first row's image to the second).

Budget: ``derandomize=True`` (the same examples on every run), a fixed ``max_examples`` per
test, no deadline, no example database.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import io
import json
import os
import struct
import tempfile
import zlib
from functools import cache
from pathlib import Path
from typing import Any
from unittest import mock

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from benchmark_fixtures import (
    build_gqa,
    build_vstar,
    countbench_rows,
    mmstar_rows,
    pope_rows,
    realworldqa_rows,
    refcoco_rows,
    textvqa_rows,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from analyses.common import load_data, prompt_data
from probes.cli import run_cli
from probes.errors import UserError

SETTINGS = dict(deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))
MAX_SAMPLES = 12  # samples built per loaded dataset
SIDE = 16


# ---------------------------------------------------------------- images
def colour(row: int) -> tuple[int, int, int]:
    """The colour of row ``row``'s image: distinct for every row a test writes."""
    return (row * 41 % 256, row * 97 % 256, 200 - row % 150)


def png(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@cache
def row_png(row: int) -> bytes:
    return png(Image.new("RGB", (SIDE, SIDE), colour(row)))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


# a PNG whose header says 30000 x 30000: PIL's decompression-bomb guard refuses it on open
BOMB = (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0))
        + _chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _chunk(b"IEND", b""))
BAD_IMAGES = {
    "corrupt": b"this is not an image",
    "empty": b"",
    "truncated": row_png(1)[:40],
    "bomb": BOMB,
    "tiny": png(Image.new("RGB", (3, 3))),
    "gif": png(Image.new("P", (SIDE, SIDE)), "GIF"),
    "bmp": png(Image.new("RGB", (SIDE, SIDE)), "BMP"),
    "tiff": png(Image.new("RGB", (SIDE, SIDE)), "TIFF"),
    "jpeg": png(Image.new("RGB", (SIDE, SIDE)), "JPEG"),
}


@st.composite
def damaged_image(draw) -> bytes:
    """A known bad image, or a good one of any format with bytes overwritten or cut."""
    name = draw(st.sampled_from(sorted(BAD_IMAGES)))
    data = bytearray(BAD_IMAGES[name])
    for _ in range(draw(st.integers(0, 4))):
        if data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    if data and draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


# ---------------------------------------------------------------- what every load must satisfy
def check_refusal(err: UserError) -> None:
    """A refusal is one sentence of ours: not empty, and not a library's exception (an
    OSError, a ValueError subclass such as UnicodeDecodeError) passed on word for word."""
    text = " ".join(str(err).split())
    assert text, "an empty error message"
    cause = err.__cause__
    raw = isinstance(cause, OSError) or (isinstance(cause, ValueError)
                                         and type(cause) is not ValueError)
    assert not (raw and text == " ".join(str(cause).split())), (
        f"a library's {type(cause).__name__} passed on as the sentence: {text!r}")


def exercise(spec: str, split: str | None = None, limit: int | None = None,
             expected: dict[int, tuple[int, int, int]] | None = None):
    """Load ``spec`` as the CLIs do, prompt it, build its samples; refusals must be sentences;
    a sample of row r (``meta['row']``) must show ``expected[r]``'s colour."""
    try:
        dataset = prompt_data(load_data(spec, split, limit), "llava")
    except UserError as err:
        check_refusal(err)
        return []
    built = []
    for index in range(min(len(dataset), MAX_SAMPLES)):
        try:
            sample = dataset[index]
        except UserError as err:  # a bad sample fails only itself
            check_refusal(err)
            continue
        assert sample.image.mode == "RGB"
        row = sample.meta.get("row")
        if expected is not None and row in expected:
            assert sample.image.getpixel((0, 0)) == expected[row], (
                f"sample {sample.id} (row {row}) shows another row's image")
        built.append(sample)
    return built


# ---------------------------------------------------------------- own files
ENCODINGS = ["utf-8"] * 8 + ["utf-8-sig", "utf-8-sig", "latin-1", "utf-16"]
json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                      st.floats(allow_nan=True), st.text(max_size=12))
json_value = st.recursive(json_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=8)
ids = st.one_of(st.sampled_from(["a", "b", "1", "", "x/y"]), st.integers(0, 2), st.none())
answers = st.one_of(st.text(max_size=8), st.sampled_from(["A", "B", "Z", "cat"]),
                    st.lists(st.text(max_size=5), max_size=3), json_value)
choices = st.one_of(st.none(), st.lists(st.text(max_size=4), max_size=30),
                    st.lists(st.sampled_from(["cat", "dog", "A"]), max_size=3), json_value)
boxes = st.one_of(st.none(), st.lists(st.lists(st.integers(-2, 20), min_size=0, max_size=5),
                                      max_size=2), json_value)


@st.composite
def own_row(draw, row: int) -> dict[str, Any]:
    """A valid row (its own image, a question, an answer, perhaps choices, boxes, an id that
    may repeat, a kind), then up to two fields deleted or given any JSON value."""
    value: dict[str, Any] = {"image": f"img/{row}.png", "question": draw(st.text(max_size=10)),
                             "answer": draw(st.text(min_size=1, max_size=6))}
    if draw(st.booleans()):
        value["choices"] = draw(st.lists(st.text(min_size=1, max_size=4), min_size=1,
                                         max_size=28, unique=True))
        value["answer"] = draw(st.sampled_from(["A", value["choices"][-1], "A", "Z"]))
    if draw(st.booleans()):
        x0, y0 = draw(st.integers(0, SIDE - 1)), draw(st.integers(0, SIDE - 1))
        value["boxes"] = [[x0, y0, draw(st.integers(x0 + 1, SIDE + 1)),
                           draw(st.integers(y0 + 1, SIDE))]]
    if draw(st.booleans()):
        value["id"] = draw(ids)
    if draw(st.booleans()):
        value["kind"] = draw(st.text(max_size=5))
    fields = {"image": st.one_of(st.sampled_from(
        ["img/missing.png", "img/bad.png", "", "img", "../img/0.png"]), json_value),
        "question": json_value, "answer": answers, "choices": choices, "boxes": boxes,
        "id": ids, "kind": json_value, "extra": json_value}
    for _ in range(draw(st.sampled_from([0] * 6 + [1, 2]))):
        name = draw(st.sampled_from(sorted(fields)))
        if draw(st.integers(0, 3)) == 0:
            value.pop(name, None)
        else:
            value[name] = draw(fields[name])
    return value


def write_images(folder: Path, rows: int, bad: bytes) -> dict[int, tuple[int, int, int]]:
    (folder / "img").mkdir(parents=True, exist_ok=True)
    for row in range(rows):
        (folder / "img" / f"{row}.png").write_bytes(row_png(row))
    (folder / "img" / "bad.png").write_bytes(bad)
    return {row: colour(row) for row in range(rows)}


def expected_of(rows: list[dict[str, Any]], colours: dict[int, tuple]) -> dict[int, tuple]:
    """The colour each row's sample must show (rows whose image is their own file)."""
    return {r: colours[r] for r, row in enumerate(rows) if row.get("image") == f"img/{r}.png"}


def outcome(spec: str) -> tuple:
    """What loading ``spec`` gives, comparable across folders: the refusal (paths cut) or
    the samples' ids, questions, answers and first pixels."""
    try:
        dataset = load_data(spec, None, None)
        return ("loaded", [(s.id, s.question, s.answer, s.image.getpixel((0, 0)))
                           for s in (dataset[i] for i in range(len(dataset)))])
    except UserError as err:
        return ("refused", str(err).replace(str(Path(spec).parent), "DIR"))


def check_file(data, text: str, name: str, rows: int, expected: set[int], **load) -> list:
    """Write ``text`` as ``name`` in one of the generated encodings beside ``rows`` images,
    load it (:func:`exercise`), and check that a byte-order mark changes nothing."""
    encoding = data.draw(st.sampled_from(ENCODINGS))
    with tempfile.TemporaryDirectory() as tmp:
        folders = [Path(tmp) / "a", Path(tmp) / "b"]
        bad = data.draw(damaged_image())
        for folder in folders:
            colours = write_images(folder, rows, bad)
        (folders[0] / name).write_bytes(text.encode(encoding, errors="replace"))
        built = exercise(str(folders[0] / name), expected={r: colours[r] for r in expected},
                         **load)
        if encoding == "utf-8-sig" and not load:
            (folders[1] / name).write_bytes(text.encode("utf-8"))
            with_mark, without = outcome(str(folders[0] / name)), outcome(str(folders[1] / name))
            assert with_mark == without, (with_mark, without)
    return built


@settings(max_examples=250, **SETTINGS)
@given(st.data())
def test_own_jsonl_files(data):
    rows = data.draw(st.integers(0, 5))
    drawn = [data.draw(own_row(r)) for r in range(rows)]
    lines = [json.dumps(row) for row in drawn]
    if data.draw(st.integers(0, 9)) == 0:  # a line that is not an object, or not JSON
        lines.insert(data.draw(st.integers(0, len(lines))),
                     data.draw(st.sampled_from(["[1, 2]", "{", "null", "\x00", "  "])))
    expected = {r for r, row in enumerate(drawn) if row.get("image") == f"img/{r}.png"}
    limit = data.draw(st.one_of(st.none(), st.none(), st.integers(1, 6)))
    check_file(data, "\n".join(lines), "mine.jsonl", rows, expected,
               **({} if limit is None else {"limit": limit}))


csv_cell = st.one_of(st.text(max_size=8), st.sampled_from(
    ['["cat", "dog"]', "[[0, 0, 4, 4]]", "[[0,0,99,99]]", "[", '"', "a,b", "x\ny", "A", ""]))
CSV_COLUMNS = ["image", "question", "answer", "choices", "boxes", "id", "kind", "note", ""]


@settings(max_examples=250, **SETTINGS)
@given(st.data())
def test_own_csv_files(data):
    header = ["image", "question", "answer"] + data.draw(st.lists(
        st.sampled_from(CSV_COLUMNS[3:]), max_size=3, unique=True))
    if data.draw(st.integers(0, 4)) == 0:  # a column lost, or the header shuffled
        header = data.draw(st.permutations(header))[: data.draw(st.integers(0, len(header)))]
    rows = data.draw(st.integers(0, 5))
    lines, expected = [list(header)], set()
    for r in range(rows):
        cells = {"image": f"img/{r}.png", "question": data.draw(st.text(max_size=8)),
                 "answer": data.draw(st.text(min_size=1, max_size=5)),
                 "choices": "", "boxes": "[[1, 1, 5, 5]]", "id": data.draw(
                     st.sampled_from(["a", "b", "1", ""])), "kind": "k", "note": "n", "": ""}
        if data.draw(st.booleans()):
            cells["choices"], cells["answer"] = '["cat", "dog"]', "dog"
        for _ in range(data.draw(st.sampled_from([0] * 6 + [1, 2]))):
            cells[data.draw(st.sampled_from(header or ["image"]))] = data.draw(csv_cell)
        expected |= {r} if cells["image"] == f"img/{r}.png" else set()
        row = [cells[name] for name in header]
        change = data.draw(st.sampled_from([0] * 12 + [1, -1]))  # a field too many or too few
        row = row + ["extra"] if change > 0 else row[:-1] if change < 0 else row
        if data.draw(st.integers(0, 25)) == 0 and row:  # an oversized field
            row[0] = "x" * 200_000
        lines.append(row)
    buffer = io.StringIO()
    csv.writer(buffer).writerows(lines)
    for sample in check_file(data, buffer.getvalue(), "mine.csv", rows, expected):
        assert None not in sample.meta  # a row that loads holds exactly the header's fields


# parquet columns are typed: each column draws one type, each cell a value of it or None
PARQUET_TYPES = {
    "text": st.text(max_size=8),
    "int": st.integers(-5, 5),
    "float": st.one_of(st.floats(-5, 50), st.just(float("nan"))),
    "texts": st.lists(st.text(max_size=4), max_size=28),
    "boxes": st.lists(st.lists(st.floats(-2, 20), max_size=5), max_size=2),
}


@settings(max_examples=200, **SETTINGS)
@given(st.data())
def test_own_parquet_files(data):
    rows = data.draw(st.integers(1, 6))
    columns: dict[str, list[Any]] = {
        "question": [data.draw(st.text(max_size=8)) for _ in range(rows)],
        "answer": [data.draw(st.text(min_size=1, max_size=5)) for _ in range(rows)]}
    if data.draw(st.booleans()):  # ids that may repeat
        columns["id"] = [data.draw(st.sampled_from(["a", "b", None])) for _ in range(rows)]
    if data.draw(st.booleans()):
        columns["kind"] = [data.draw(st.text(max_size=4)) for _ in range(rows)]
    for _ in range(data.draw(st.sampled_from([0, 0, 0, 1, 2]))):  # a column dropped or retyped
        name = data.draw(st.sampled_from(["question", "answer", "choices", "boxes", "id",
                                          "kind", "note"]))
        if data.draw(st.integers(0, 3)) == 0:
            columns.pop(name, None)
            continue
        cell = PARQUET_TYPES[data.draw(st.sampled_from(sorted(PARQUET_TYPES)))]
        columns[name] = [data.draw(st.none() if data.draw(st.integers(0, 5)) == 0 else cell)
                         for _ in range(rows)]
    expected = {}
    if data.draw(st.integers(0, 19)) > 0:
        images = []
        struct_cells = data.draw(st.booleans())
        for r in range(rows):
            good = data.draw(st.integers(0, 5)) > 0
            payload = row_png(r) if good else data.draw(damaged_image())
            if good:
                expected[r] = colour(r)
            images.append({"bytes": payload, "path": f"{r}.png"} if struct_cells else payload)
        columns["image"] = images
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mine.parquet"
        try:
            table = pa.table(columns) if columns else pa.table({"x": [None] * rows})
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # a column pyarrow cannot type
            return
        pq.write_table(table, path, row_group_size=2)
        exercise(str(path), limit=data.draw(st.one_of(st.none(), st.integers(1, 6))),
                 expected=expected)


@settings(max_examples=60, **SETTINGS)
@given(st.data())
def test_own_folders(data):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "data"
        colours = write_images(folder, 2, BAD_IMAGES["corrupt"])
        rows = [{"image": f"img/{r}.png", "question": "q?", "answer": "a", "id": "same"}
                for r in range(2)]
        files = data.draw(st.lists(st.sampled_from(["mine.jsonl", "other.jsonl", "mine.csv",
                                                    "mine.parquet"]), max_size=2, unique=True))
        for name in files:
            (folder / name).write_text("".join(json.dumps(row) + "\n" for row in rows))
        saved = data.draw(st.sampled_from([None, "state.json", "dataset_dict.json"]))
        if saved:
            (folder / saved).write_text(data.draw(st.sampled_from(
                ["{}", "[]", "{", '{"splits": []}', '{"splits": ["x"]}',
                 '{"_data_files": [{"filename": "nope.arrow"}]}',
                 '{"_data_files": [{"filename": "img/0.png"}]}', '{"_data_files": 3}'])))
        split = data.draw(st.one_of(st.none(), st.sampled_from(["test", "x", ""])))
        exercise(str(folder), split=split, expected=colours)


# ---------------------------------------------------------------- benchmark layouts
BENCHMARKS = {
    "pope": (pope_rows, "data/test-00000-of-00001.parquet"),
    "mmstar": (mmstar_rows, "mmstar.parquet"),
    "realworldqa": (realworldqa_rows, "data/test-00000-of-00001.parquet"),
    "textvqa": (textvqa_rows, "data/validation-00000-of-00001.parquet"),
    "countbench": (countbench_rows, "data/test-00000-of-00001.parquet"),
    "refcoco": (refcoco_rows, "data/val-00000-of-00001.parquet"),
}


@cache
def fixture_rows(name: str) -> tuple:
    return tuple(BENCHMARKS[name][0]())


def mutate_rows(data, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with one column dropped, retyped, emptied, a row repeated or an image damaged."""
    rows = copy.deepcopy(rows)
    for _ in range(data.draw(st.integers(1, 3))):
        column = data.draw(st.sampled_from(sorted(rows[0])))
        action = data.draw(st.sampled_from(["drop", "none", "text", "int", "list", "repeat",
                                            "image", "empty"]))
        if action == "drop":
            for row in rows:
                row.pop(column, None)
        elif action == "none":
            rows[data.draw(st.integers(0, len(rows) - 1))][column] = None
        elif action in ("text", "int", "list"):
            value = {"text": "7", "int": 3, "list": ["x", "y"]}[action]
            for row in rows:
                row[column] = value
        elif action == "repeat":
            rows.append(copy.deepcopy(rows[data.draw(st.integers(0, len(rows) - 1))]))
        elif action == "image":
            rows[data.draw(st.integers(0, len(rows) - 1))]["image"] = {
                "bytes": data.draw(damaged_image()), "path": "bad.png"}
        else:
            rows = rows[:0] if data.draw(st.booleans()) else rows
        if not rows:
            break
    return rows


@settings(max_examples=250, **SETTINGS)
@given(st.data())
def test_parquet_benchmark_layouts(data):
    name = data.draw(st.sampled_from(sorted(BENCHMARKS)))
    rows = mutate_rows(data, list(fixture_rows(name)))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / BENCHMARKS[name][1]
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            table = pa.Table.from_pylist(rows) if rows else pa.table({"x": pa.array([], pa.int8())})
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            return
        pq.write_table(table, path, row_group_size=3)
        split = data.draw(st.one_of(st.none(), st.sampled_from(["test", "val", "random", "x"])))
        exercise(f"{name}:{tmp}", split=split)


def mutate_json(data, value: Any, depth: int = 0) -> Any:
    """``value`` with one place deep inside deleted, emptied or given another type."""
    if isinstance(value, dict) and value and depth < 5 and data.draw(st.integers(0, 4)) > 0:
        key = data.draw(st.sampled_from(sorted(value)))
        if data.draw(st.integers(0, 4)) == 0:
            return {k: v for k, v in value.items() if k != key}
        return {**value, key: mutate_json(data, value[key], depth + 1)}
    if isinstance(value, list) and value and depth < 5 and data.draw(st.integers(0, 4)) > 0:
        k = data.draw(st.integers(0, len(value) - 1))
        return [*value[:k], mutate_json(data, value[k], depth + 1), *value[k + 1:]]
    return data.draw(st.one_of(json_leaf, st.just([]), st.just({}), st.just([1.0, 2.0])))


@cache
def _folder_fixture(kind: str) -> Path:
    root = Path(tempfile.mkdtemp(prefix=f"fuzz-{kind}-"))
    return build_gqa(root) if kind == "gqa" else build_vstar(root)


@settings(max_examples=150, **SETTINGS)
@given(st.data())
def test_gqa_and_vstar_folders(data):
    kind = data.draw(st.sampled_from(["gqa", "vstar"]))
    source = _folder_fixture(kind)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / kind
        import shutil

        shutil.copytree(source, folder)
        if kind == "gqa":
            name = data.draw(st.sampled_from(["val_balanced_questions.json",
                                              "val_sceneGraphs.json"]))
            path = folder / name
            path.write_text(json.dumps(mutate_json(data, json.loads(path.read_text()))))
        else:
            choice = data.draw(st.sampled_from(["jsonl", "item", "nojsonl"]))
            if choice == "jsonl":
                path = folder / "test_questions.jsonl"
                lines = mutate_json(data, [json.loads(x) for x in path.read_text().splitlines()])
                lines = lines if isinstance(lines, list) else [lines]
                path.write_text("".join(json.dumps(x) + "\n" for x in lines))
            else:
                item = sorted(folder.glob("*/*.json"))[data.draw(st.integers(0, 3))]
                item.write_text(json.dumps(mutate_json(data, json.loads(item.read_text()))))
                if choice == "nojsonl":
                    (folder / "test_questions.jsonl").unlink()
        exercise(f"{kind}:{folder}", split=data.draw(st.sampled_from([None, "val", "test"])))


# ---------------------------------------------------------------- the CLIs' data options
CLIS = ("layer_masking", "attention_evolution", "attenuation", "contrastive_attention",
        "token_importance", "evaluate")


class ReachedTheModel(Exception):
    """Raised where the model's work would start: the data options passed every check."""


def fake_run(analysis, backend, dataset, options):
    for index in range(min(len(dataset), MAX_SAMPLES)):
        try:
            dataset[index]
        except UserError as err:
            check_refusal(err)
    raise ReachedTheModel


class FakeBackend:
    def model_record(self):
        return {"family": "llava"}

    def close(self):
        pass


@contextlib.contextmanager
def up_to_the_model():
    with mock.patch("analyses.runner.cli.make_backend", lambda args: FakeBackend()), \
            mock.patch("analyses.runner.cli.run", fake_run):
        yield


def _cli_folder() -> Path:
    """Two own files, one of them with a comma in its name, and an image."""
    folder = Path(tempfile.mkdtemp(prefix="fuzz-cli-"))
    write_images(folder, 2, b"")
    for name in ("plain.jsonl", "a,b.jsonl", "b.jsonl"):
        rows = [{"image": f"img/{r}.png", "question": "what?", "answer": "x", "id": f"r{r}"}
                for r in range(2)]
        (folder / name).write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder


@cache
def cli_folder() -> Path:
    return _cli_folder()


@settings(max_examples=250, **SETTINGS)
@given(st.data())
def test_cli_data_options(data):
    import importlib

    folder = cli_folder()
    main = importlib.import_module(f"analyses.{data.draw(st.sampled_from(CLIS))}.__main__").main
    argv = ["--out", str(Path(tempfile.mkdtemp(prefix="fuzz-out-")) / "run")]
    data_value = data.draw(st.one_of(
        st.sampled_from([f"{folder}/plain.jsonl", f"{folder}/a,b.jsonl", f"{folder}/a",
                         f"{folder}/plain.jsonl,{folder}/b.jsonl", f"{folder}/nope.jsonl",
                         "easy-vqa", "easy-vqa,fine-grained", "pope:", "pope:/nonexistent",
                         "gqa", ",", "", ":", "easy-vqa:x", str(folder), "vstar,,", "x" * 300,
                         "~nosuchuser/a.jsonl", "pope:~nosuchuser", f"{folder}/a,b.jsonl,easy-vqa",
                         f"pope:{folder}/a,b.jsonl", f"{folder}/img/bad.png"]),
        st.text(max_size=10)))
    argv += [f"--data={data_value}"]
    if data.draw(st.booleans()):
        argv += [f"--split={data.draw(st.one_of(st.sampled_from(['test', 'train', 'val', '']), st.text(max_size=6)))}"]
    if data.draw(st.booleans()):
        argv += [f"--prompt={data.draw(st.one_of(st.sampled_from(['{question}', '{choices}', '{question}{choices}{', '{{question}}', 'Q: {question} {x}']), st.text(max_size=12)))}"]
    if data.draw(st.booleans()):
        argv += [f"--limit={data.draw(st.one_of(st.integers(-3, 10**12).map(str), st.text(max_size=4)))}"]
    code, stderr = None, io.StringIO()
    with up_to_the_model(), contextlib.redirect_stderr(stderr):
        try:
            code = run_cli(main, argv)
        except ReachedTheModel:
            code = 0
        except SystemExit as exit_:  # argparse: 2 for a bad option
            code = exit_.code
    assert code in (0, 2), (argv, stderr.getvalue())
    if os.path.isfile(data_value):  # a file that is there is never said to be missing
        assert "no file or folder" not in stderr.getvalue(), (argv, stderr.getvalue())


@pytest.mark.parametrize("name", ["a,b.jsonl"])
def test_a_path_with_a_comma_is_one_dataset(name):
    path = cli_folder() / name
    dataset = load_data(str(path), None, None)
    assert len(dataset) == 2 and dataset.name == name


# ---------------------------------------------------------------- weights files
def _weights_files() -> dict[str, bytes]:
    import torch
    from safetensors.torch import save

    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buffer)
    return {"torch.save": buffer.getvalue(), "png": row_png(0), "json": b'{"config": 1}',
            "plain safetensors": save({"w": torch.zeros(2)}),
            "no fields": save({"w": torch.zeros(2)}, metadata={"config": "{}"}),
            "empty": b""}


@settings(max_examples=40, **SETTINGS)
@given(st.sampled_from(sorted(_weights_files())), st.integers(0, 64), st.booleans())
def test_a_weights_file_of_another_format_is_one_sentence(kind, cut, truncate):
    """``vif:PATH`` (evaluate) and ``--load`` (train_vif) read VIF.load: any other file, whole
    or cut short, is refused in one sentence."""
    from probes.vif import VIF

    data = _weights_files()[kind]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "vif.safetensors"
        path.write_bytes(data[:cut] if truncate else data)
        with pytest.raises(UserError, match="is no VIF module"):
            VIF.load(path)
