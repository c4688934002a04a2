"""Public benchmarks stored as parquet (the lmms-eval releases): V* (without boxes), MMStar,
RealWorldQA, TextVQA, CountBench, POPE, RefCOCO / RefCOCO+ / RefCOCOg.

``load_dataset("pope")`` finds the snapshot in the local Hugging Face cache
(:mod:`analyses.data.hub`); ``load_dataset("pope", path=DIR)`` (``--data pope:DIR``) reads a
snapshot folder, one parquet file, or a glob of them. Each row becomes a
:class:`~analyses.data.records.Record` with the fields of :class:`Sample` (the answer as the
correct letter for multiple choice, every acceptable answer, the options, target boxes, the
category results are broken down by, the scoring rule's name, the rest in ``meta``); images are
decoded only when a sample is built. Files and columns: /work/shared/BENCHMARKS.md.

>>> split_options("What is the colour of the cup? (A) red (B) dark blue\\nAnswer with the letter.")
('What is the colour of the cup?', ('red', 'dark blue'))
>>> mmstar_options("Which is larger?\\nOptions: A: the cat, B: 1,000 dogs, C: none")
('the cat', '1,000 dogs', 'none')
"""

from __future__ import annotations

import collections
import glob
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import PIL.Image

from analyses.data.boxes import xywh_to_xyxy
from analyses.data.dataset import Dataset
from analyses.data.fields import field, number, numbers, text, texts
from analyses.data.hub import find_snapshot, parquet_splits, parquet_splits_of
from analyses.data.options import lettered_lines, mmstar_options, split_options
from analyses.data.records import Record, records_dataset
from analyses.data.tabular import Table, concat, decode_image, path_exists, read_parquet
from probes.errors import UserError

Rows = list[tuple[int, Record]]  # (table row holding the image, record)


def _hub_ids(*names: str) -> tuple[str, ...]:
    """Both lmms-eval namespaces for each name."""
    return tuple(f"{space}/{name}" for name in names for space in ("lmms-lab", "lmms-lab-encoder"))


def _row_id(table: Table, column: str, index: int) -> str:
    if not table.has(column):
        return str(index)
    return text(table.row(index), column, table.where(index), default=str(index))


def _vstar(table: Table, name: str, split: str) -> Rows:
    table.require("image", "text", "label")
    rows = []
    for i in range(len(table)):
        row, where = table.row(i), table.where(i)
        question, choices = split_options(text(row, "text", where))
        category = text(row, "category", where, default="vstar")
        qid = _row_id(table, "question_id", i)
        meta = {"question_id": qid, "category": category, "split": split}
        rows.append((i, Record(f"{name}/{split}/{qid}", question,
                               text(row, "label", where).strip().upper(), category, "choice",
                               choices=choices, meta=meta)))
    return rows


def _mmstar(table: Table, name: str, split: str) -> Rows:
    table.require("image", "question", "answer", "l2_category")
    rows = []
    for i in range(len(table)):
        row, where = table.row(i), table.where(i)
        question, category = text(row, "question", where), text(row, "l2_category", where)
        qid = _row_id(table, "index", i)
        meta = {"index": qid, "split": split, "l2_category": category}
        for extra in ("category", "meta_info"):
            if table.has(extra):
                meta[extra] = row[extra]
        rows.append((i, Record(f"{name}/{split}/{qid}", question.strip(),
                               text(row, "answer", where).strip(), category, "choice",
                               choices=mmstar_options(question), meta=meta)))
    return rows


def _realworldqa(table: Table, name: str, split: str) -> Rows:
    table.require("image", "question", "answer")
    rows = []
    for i in range(len(table)):
        row, where = table.row(i), table.where(i)
        question = text(row, "question", where)
        rows.append((i, Record(f"{name}/{split}/{i}", question.strip(),
                               text(row, "answer", where).strip(), "realworldqa", "realworldqa",
                               choices=lettered_lines(question), meta={"row": i, "split": split})))
    return rows


def _textvqa(table: Table, name: str, split: str) -> Rows:
    table.require("image", "question", "answers")
    rows = []
    for i in range(len(table)):
        row, where = table.row(i), table.where(i)
        question = text(row, "question", where)
        answers = texts(row["answers"], "answers", where)
        majority = collections.Counter(answers).most_common(1)
        qid = _row_id(table, "question_id", i)
        meta = {"question_id": qid, "split": split, "raw_question": question}
        for extra in ("image_id", "ocr_tokens", "image_width", "image_height"):
            if table.has(extra):
                meta[extra] = row[extra]
        # lmms-eval asks the question capitalised, the rest lowercased
        asked = question[:1].upper() + question[1:].lower()
        rows.append((i, Record(f"{name}/{split}/{qid}", asked,
                               majority[0][0] if majority else "", "textvqa", "vqa",
                               answers=answers, image_key=str(meta.get("image_id", "")),
                               meta=meta)))
    return rows


def _countbench(table: Table, name: str, split: str) -> Rows:
    table.require("image", "question", "number")
    rows = []
    # the caption column ("text") holds the count: it stays out of the sample entirely
    for i in range(len(table)):
        row, where = table.row(i), table.where(i)
        count = number(row, "number", where)
        if not count.is_integer() or count < 0:
            raise UserError(f"the field 'number' of {where} is {count:g}, not a count.")
        rows.append((i, Record(f"{name}/{split}/{i}", text(row, "question", where).strip(),
                               str(int(count)), "count", "count", meta={"row": i, "split": split})))
    return rows


def _pope(table: Table, name: str, split: str) -> Rows:
    table.require("image", "question", "answer", "category")
    rows = []
    for i in range(len(table)):
        row, where = table.row(i), table.where(i)
        qid = _row_id(table, "question_id", i)
        category = text(row, "category", where)
        source = text(row, "image_source", where, default="")
        meta = {"question_id": qid, "category": category, "image_source": source}
        rows.append((i, Record(f"{name}/{category}/{qid}", text(row, "question", where).strip(),
                               text(row, "answer", where).strip().lower(), category, "pope",
                               image_key=f"{name}/{source}" if source else "", meta=meta)))
    return rows


def _refcoco(table: Table, name: str, split: str) -> Rows:
    """One sample per referring expression (a row's ``answer`` lists several), as lmms-eval."""
    table.require("image", "answer", "bbox")
    rows = []
    for i in range(len(table)):
        row, where = table.row(i), table.where(i)
        expressions = list(texts(field(row, "answer", where), "answer", where))
        xywh = list(numbers(field(row, "bbox", where), "bbox", where, count=4))
        box = xywh_to_xyxy(xywh)
        qid = _row_id(table, "question_id", i)
        file_name = text(row, "file_name", where, default="")
        for k, expression in enumerate(expressions):
            meta = {"question_id": qid, "bbox": xywh, "file_name": file_name, "split": split,
                    "expressions": expressions}
            rows.append((i, Record(f"{name}/{split}/{qid}/{k}", expression,
                                   json.dumps([round(v, 2) for v in box]), split, "refcoco",
                                   boxes=(box,), target=(0,), image_key=f"{name}/{i}",
                                   meta=meta)))
    return rows


@dataclass(frozen=True)
class Benchmark:
    """A parquet benchmark: where it lives on the hub, its default split, how a row reads."""

    name: str
    hub_ids: tuple[str, ...]
    default_split: str
    rows: Callable[[Table, str, str], Rows]
    prompt_style: str


PARQUET_BENCHMARKS: dict[str, Benchmark] = {
    bench.name: bench
    for bench in (
        Benchmark("mmstar", ("Lin-Chen/MMStar", *_hub_ids("MMStar")), "val", _mmstar, "mmstar"),
        Benchmark("realworldqa", _hub_ids("RealWorldQA"), "test", _realworldqa, "realworldqa"),
        Benchmark("textvqa", _hub_ids("textvqa"), "validation", _textvqa, "textvqa"),
        Benchmark("countbench", ("vikhyatk/CountBenchQA", *_hub_ids("CountBenchQA")), "test",
                  _countbench, "countbench"),
        Benchmark("pope", _hub_ids("POPE"), "test", _pope, "pope"),
        Benchmark("refcoco", _hub_ids("RefCOCO"), "val", _refcoco, "refcoco"),
        Benchmark("refcoco+", _hub_ids("RefCOCOplus"), "val", _refcoco, "refcoco"),
        Benchmark("refcocog", _hub_ids("RefCOCOg"), "val", _refcoco, "refcoco"),
        # the lmms-eval V* release (no boxes); the original release is analyses.data.folders
        Benchmark("vstar", ("craigwu/vstar_bench", *_hub_ids("vstar-bench")), "test", _vstar,
                  "vstar"),
    )
}
POPE_SPLITS = ("random", "popular", "adversarial")


def parquet_files(path: Path | str, default: str) -> dict[str, list[Path]]:
    """The parquet files a ``NAME:PATH`` names (a folder, a file, or a glob) by split."""
    text = str(path)
    if any(char in text for char in "*?["):
        found = [Path(p) for p in sorted(glob.glob(text, recursive=True))]
        if not found:
            raise UserError(f"no file matches {text}.")
        return {s: [Path(f) for f in fs] for s, fs in _by_split(found, default).items()}
    path = Path(path)
    if not path_exists(path):
        raise UserError(f"there is no file or folder {path}.")
    if path.is_file():
        return _by_split([path], default)
    found = parquet_splits(path, default)
    if not found:
        raise UserError(f"the folder {path} holds no .parquet file.")
    return found


def _by_split(files: list[Path], default: str) -> dict[str, list[Path]]:
    by_name = {str(f): f for f in files}
    grouped = parquet_splits_of(list(by_name), default)
    return {split: [by_name[name] for name in names] for split, names in grouped.items()}


def _table(files: list[Path], name: str) -> Table:
    return concat([read_parquet(f) for f in files], name)


ALL = "all"  # every split present, one after the other (val first); kind = the split
# the grounding benchmarks report the mean over their splits: every split unless one is named
DEFAULT_SPLIT = {"refcoco": ALL, "refcoco+": ALL, "refcocog": ALL}


def _every_split(bench: Benchmark, splits: dict[str, list[Path]], name: str,
                 limit: int | None) -> tuple[Table, Rows]:
    """Every split's rows in turn (val first, then by name), labelled by their own split."""
    tables, rows, offset = [], [], 0
    for split in sorted(splits, key=lambda s: (s != "val", s)):
        if limit is not None and len(rows) >= limit:
            break
        table = _table(splits[split], f"{bench.name} {split}")
        rows += [(i + offset, record) for i, record in bench.rows(table, name, split)]
        tables.append(table)
        offset += len(table)
    return concat(tables, bench.name), rows[:limit]


def select_split(bench: Benchmark, splits: dict[str, list[Path]], split: str | None
                 ) -> tuple[Table, str]:
    """The table of ``split`` (the benchmark's default when None) and the split's label.

    POPE: None or "test" = all three splits; a named split is its own file (config ``Full``)
    or the rows of the single test split whose ``category`` names it (config ``default``).
    """
    if bench.name == "pope":
        return _pope_split(splits, split)
    split = split or bench.default_split
    if split not in splits:
        raise UserError(f"{bench.name} has no split {split!r} here; splits found: "
                        f"{', '.join(sorted(splits))}.")
    return _table(splits[split], f"{bench.name} {split}"), split


def _pope_split(splits: dict[str, list[Path]], split: str | None) -> tuple[Table, str]:
    known = ("test", *POPE_SPLITS)
    if split is not None and split not in known:
        raise UserError(f"pope has no split {split!r}; splits: {', '.join(known)}.")
    if split in (None, "test"):
        if "test" in splits:
            return _table(splits["test"], "pope test"), "test"
        present = [s for s in POPE_SPLITS if s in splits]
        if not present:
            raise UserError(f"no POPE parquet file here; files found for: {', '.join(splits)}.")
        return concat([_table(splits[s], f"pope {s}") for s in present], "pope"), "test"
    if split in splits:
        return _table(splits[split], f"pope {split}"), split
    if "test" not in splits:
        raise UserError(f"no POPE file for split {split!r} nor a test split to filter.")
    table = _table(splits["test"], "pope test")
    table.require("category")
    keep = [i for i, category in enumerate(table.column("category")) if category == split]
    return table.take(keep), split


def load_parquet_benchmark(
    name: str, split: str | None = None, limit: int | None = None, path: str | None = None
) -> Dataset:
    """The first ``limit`` samples of ``split`` of a parquet benchmark, from the hub cache or
    from ``path``."""
    bench = PARQUET_BENCHMARKS[name]
    if path is None:
        root, source = find_snapshot(name, bench.hub_ids)
        if name == "vstar" and _is_vstar_original(root):
            from analyses.data.folders import load_vstar_folder

            return load_vstar_folder(root, split, limit, source=source)
    else:
        root, source = Path(path), str(path)
        if name == "vstar" and root.is_dir() and _is_vstar_original(root):
            from analyses.data.folders import load_vstar_folder

            return load_vstar_folder(root, split, limit, source=source)
    splits = parquet_files(root, bench.default_split)
    if name != "pope" and (split or DEFAULT_SPLIT.get(name)) == ALL:
        table, rows = _every_split(bench, splits, name, limit)
        label = ALL
    else:
        table, label = select_split(bench, splits, split)
        if limit is not None and limit < len(table):  # a row gives at least one sample
            table = table.take(range(limit))
        rows = bench.rows(table, name, label)[:limit]
    image_rows, records = [row for row, _ in rows], [record for _, record in rows]

    def read_image(index: int) -> PIL.Image.Image:
        raw = table.raw_image(image_rows[index])
        return decode_image(raw, table.base, f"sample {records[index].id}")

    return records_dataset(name, label, records, read_image, prompt_style=bench.prompt_style,
                           source=source, image_source=image_rows.__getitem__,
                           number_repeated_ids=True)


def _is_vstar_original(root: Path) -> bool:
    return (root / "test_questions.jsonl").is_file() or (root / "direct_attributes").is_dir()
