"""Samples for the scoring tests, built the way real ones are: each benchmark's rows are written
in its real on-disk layout (the lmms-eval parquet columns, GQA's question and scene-graph JSON,
a user's JSON lines) and read back through ``analyses.data.load_dataset``, so every sample has
exactly the fields its loader sets (choices, answers, scorer, kind, dataset, meta) and no test
can pass on a sample shape that never occurs.

The ``*_row`` functions give one row of a benchmark with the fields a scoring test varies (the
answer, the options, the boxes) and the rest as the benchmark stores them; :func:`load_rows`
writes rows and loads them. Columns and layouts: /work/shared/BENCHMARKS.md and
tests/benchmark_fixtures.py.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmark_fixtures import png, write_parquet
from PIL import Image

from analyses.data import load_dataset
from analyses.data.sample import Sample

LETTERS = "ABCDEFGH"
RWQA_INSTRUCTION = ("Please answer directly with only the letter of the correct option and "
                    "nothing else.")
# where each parquet benchmark keeps its rows (the loaders' default split)
LAYOUT = {"mmstar": "mmstar.parquet", "textvqa": "data/validation-00000-of-00001.parquet",
          **dict.fromkeys(("refcoco", "refcoco+", "refcocog"), "data/val-00000-of-00001.parquet")}
TEST_SHARD = "data/test-00000-of-00001.parquet"
_IMAGES: dict[tuple[int, int], dict[str, Any]] = {}


def image_cell(size: tuple[int, int] = (8, 8)) -> dict[str, Any]:
    """A blank image as the ``datasets`` Image struct ``{bytes, path}``."""
    if size not in _IMAGES:
        _IMAGES[size] = {"bytes": png(Image.new("RGB", size)), "path": f"{size[0]}x{size[1]}.png"}
    return _IMAGES[size]


def load_rows(root: Path, name: str, rows: Sequence[dict[str, Any]],
              split: str | None = None) -> list[Sample]:
    """``rows`` of benchmark ``name`` (its own columns) written in its layout under a fresh
    folder of ``root`` (as the file of ``split``, None: the benchmark's default) and read back
    by ``load_dataset("NAME:FOLDER")``, in order."""
    folder = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=root))
    shard = f"data/{split}-00000-of-00001.parquet" if split else LAYOUT.get(name, TEST_SHARD)
    write_parquet(folder / shard, list(rows))
    return list(load_dataset(f"{name}:{folder}", split=split))


def mmstar_row(answer: str, options: Sequence[str], l2_category: str = "l2", index: int = 0,
               question: str = "Which one is it?") -> dict[str, Any]:
    listed = ", ".join(f"{LETTERS[k]}: {text}" for k, text in enumerate(options))
    return {"index": index, "question": f"{question}\nOptions: {listed}", "image": image_cell(),
            "answer": answer, "category": "coarse perception", "l2_category": l2_category,
            "meta_info": {"source": "test", "split": "val"}}


def realworldqa_row(answer: str, options: Sequence[str] = ()) -> dict[str, Any]:
    """A letter question (``options`` as ``A. x`` lines plus the instruction) or, without
    options, an open one."""
    lines = "".join(f"\n{LETTERS[k]}. {text}" for k, text in enumerate(options))
    question = f"What is shown?{lines}" + (f"\n{RWQA_INSTRUCTION}" if options else "")
    return {"image": image_cell(), "question": question, "answer": answer}


def vstar_row(label: str, options: Sequence[str], question_id: int = 0) -> dict[str, Any]:
    """lmms-eval's V* release: options inline as ``(A) x``; two options are a
    relative-position question, four a direct-attributes one."""
    listed = " ".join(f"({LETTERS[k]}) {text}" for k, text in enumerate(options))
    category = "relative_position" if len(options) == 2 else "direct_attributes"
    return {"image": image_cell(), "text": f"What is it? {listed}", "label": label,
            "category": category, "question_id": f"v{question_id}"}


def textvqa_row(answers: Sequence[str], question_id: int = 0) -> dict[str, Any]:
    return {"image_id": "img", "question_id": question_id, "question": "what does it say?",
            "image": image_cell(), "image_width": 8, "image_height": 8,
            "answers": list(answers), "ocr_tokens": [], "set_name": "val"}


def countbench_row(number: int) -> dict[str, Any]:
    return {"image": image_cell(), "text": f"a picture of {number} cats",
            "question": "How many cats are there?", "number": number}


def pope_row(answer: str, split: str = "random", question_id: int = 0) -> dict[str, Any]:
    return {"question_id": str(question_id), "question": "Is there a dog in the image?",
            "answer": answer, "image": image_cell(), "category": split,
            "image_source": f"img{question_id}"}


def refcoco_row(bbox: Sequence[float], size: tuple[int, int] = (200, 100),
                question_id: int = 0) -> dict[str, Any]:
    """One referring expression about the box ``bbox`` = [x, y, w, h] in an image of ``size``."""
    return {"question_id": str(question_id), "image": image_cell(size),
            "question": "Please carefully observe the area circled in the image.",
            "answer": ["the dog"], "segmentation": [0.0] * 8, "bbox": [float(v) for v in bbox],
            "iscrowd": 0, "file_name": f"COCO_{question_id:012d}.jpg"}


def gqa_samples(root: Path, answers: Sequence[str]) -> list[Sample]:
    """GQA val questions (one per answer, all on one image) in GQA's own files, through the
    loader."""
    folder = Path(tempfile.mkdtemp(prefix="gqa-", dir=root))
    (folder / "images").mkdir()
    Image.new("RGB", (16, 16)).save(folder / "images" / "n0.jpg")
    questions = {
        str(i): {"imageId": "n0", "question": "What is it?", "answer": answer,
                 "fullAnswer": f"It is {answer}.",
                 "types": {"structural": "query", "semantic": "attr", "detailed": "queryAttr"},
                 "annotations": {"question": {}, "answer": {}, "fullAnswer": {}},
                 "semantic": [{"operation": "select", "argument": "thing (1)",
                               "dependencies": []}]}
        for i, answer in enumerate(answers)
    }
    graphs = {"n0": {"width": 16, "height": 16, "objects": {
        "1": {"name": "thing", "x": 2, "y": 3, "w": 5, "h": 6, "attributes": [],
              "relations": []}}}}
    (folder / "val_balanced_questions.json").write_text(json.dumps(questions))
    (folder / "val_sceneGraphs.json").write_text(json.dumps(graphs))
    return list(load_dataset(f"gqa:{folder}"))


def own_samples(root: Path, rows: Sequence[dict[str, Any]]) -> list[Sample]:
    """A user's JSON lines file (each row ``question``, ``answer`` and optionally ``choices``,
    ``kind``; the image is filled in), through the loader: "choice" with choices, else
    "exact"."""
    folder = Path(tempfile.mkdtemp(prefix="own-", dir=root))
    Image.new("RGB", (8, 8)).save(folder / "a.png")
    lines = [json.dumps({"id": str(i), "image": "a.png", **row}) for i, row in enumerate(rows)]
    (folder / "mine.jsonl").write_text("\n".join(lines) + "\n")
    return list(load_dataset(str(folder / "mine.jsonl")))
