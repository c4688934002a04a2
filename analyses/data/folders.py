"""Benchmarks released as folders of images and JSON, with object boxes: the original V*
release and GQA with its scene graphs.

- V* (``craigwu/vstar_bench``): ``test_questions.jsonl`` (image path, question text with
  lettered options, ``label`` = the correct letter, ``category``) and per image ``sa_N.json``
  with ``bbox`` = ``[x, y, w, h]`` of each target object: the target boxes. Without the jsonl,
  the per-item JSON's ``options`` are the choices (``options[0]`` is the correct one: answer A).
- GQA: ``{split}_balanced_questions.json`` + ``{split}_sceneGraphs.json`` (train and val have
  scene graphs) + ``images/{imageId}.jpg``. Every object of the image's scene graph is a box;
  the objects the question names (``annotations`` by word position, then ``semantic[].argument``
  ``"name (objId)"``) are its targets, in that order; ``kind`` is the question's structural
  and semantic type joined as the cross-modal information-flow paper names them (ChooseAttr,
  ChooseCat, ChooseRel, CompareAttr, LogicalObj, QueryAttr, ...; :func:`question_type`), so
  results break down by that paper's six types; all of ``types`` is in ``meta``.

>>> question_type({"structural": "choose", "semantic": "attr", "detailed": "chooseAttr"})
'ChooseAttr'
>>> question_type({})
'gqa'

>>> named_objects({"annotations": {"question": {"5": "12", "2:4": "7,9"}, "answer": {}},
...                "semantic": [{"argument": "jar (3)"}, {"argument": "_"}, {"argument": "x (7)"}]})
['7', '9', '12', '3']
"""

from __future__ import annotations

import hashlib
import random
import re
from pathlib import Path
from typing import Any

from analyses.data.boxes import xywh_to_xyxy
from analyses.data.dataset import Dataset
from analyses.data.fields import field, number, numbers, text, texts
from analyses.data.options import split_options
from analyses.data.records import Record, records_dataset
from analyses.data.tabular import decode_image, read_json, read_jsonl
from probes.errors import UserError

GQA_DOWNLOAD = "https://cs.stanford.edu/people/dorarad/gqa/download.html"


def _vstar_item(root: Path, image: str) -> tuple[tuple, dict]:
    """Target boxes and annotation of one V* image from its ``.json`` (none if missing)."""
    item_path = (root / image).with_suffix(".json")
    if not item_path.is_file():
        return (), {}
    item = read_json(item_path)
    where = str(item_path)
    listed = field(item, "bbox", where, default=[])
    if not isinstance(listed, list):
        raise UserError(f"the field 'bbox' of {where} is not a list of [x, y, w, h] boxes.")
    boxes = tuple(xywh_to_xyxy(numbers(b, "bbox", where, count=4)) for b in listed)
    return boxes, {"bbox": listed, "target_object": field(item, "target_object", where,
                                                          default=[])}


def load_vstar_folder(root: Path, split: str | None, limit: int | None,
                      source: str = "") -> Dataset:
    """V* from its original release folder, target boxes included."""
    if split not in (None, "test"):
        raise UserError(f"vstar has one split, test, not {split!r}.")
    records, images = [], []
    if (root / "test_questions.jsonl").is_file():
        table = read_jsonl(root / "test_questions.jsonl")
        table.require("image", "text", "label")
        for i in range(len(table)):
            row, where = table.row(i), table.where(i)
            image = text(row, "image", where)
            question, choices = split_options(text(row, "text", where))
            boxes, meta = _vstar_item(root, image)
            category = text(row, "category", where, default="vstar")
            qid = text(row, "question_id", where, default=str(i))
            meta = {**meta, "question_id": qid, "category": category, "image": image}
            records.append(Record(f"vstar/test/{qid}", question,
                                  text(row, "label", where).strip().upper(), category,
                                  "choice", choices=choices, boxes=boxes,
                                  target=tuple(range(len(boxes))), meta=meta))
            images.append(image)
    else:
        for category in ("direct_attributes", "relative_position"):
            for item_path in sorted((root / category).glob("*.json")):
                item, where = read_json(item_path), str(item_path)
                image = f"{category}/{item_path.stem}.jpg"
                boxes, meta = _vstar_item(root, image)
                options = texts(field(item, "options", where), "options", where)
                if not options:
                    raise UserError(f"{where} lists no options.")
                choices, answer = shuffled_options(list(options), item_path.stem)
                records.append(Record(f"vstar/test/{category}/{item_path.stem}",
                                      text(item, "question", where), answer, category, "choice",
                                      choices=choices, boxes=boxes,
                                      target=tuple(range(len(boxes))),
                                      meta={**meta, "category": category, "image": image}))
                images.append(image)
    records, images = records[:limit], images[:limit]
    return records_dataset(
        "vstar", "test", records,
        lambda i: decode_image(images[i], root, f"vstar sample {records[i].id}"),
        prompt_style="vstar", source=source or str(root), image_source=images.__getitem__,
        number_repeated_ids=True,
    )


def _ids(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip().isdigit()]


def shuffled_options(options: list[str], key: str) -> tuple[tuple[str, ...], str]:
    """V*'s per-item options (the first is always the right one) in a fixed order drawn from
    the item's name, and the right option's letter: a model that says "A" gains nothing.

    >>> shuffled_options(["red", "blue", "green", "white"], "sa_1")
    (('green', 'white', 'red', 'blue'), 'C')
    """
    seed = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
    order = random.Random(seed).sample(range(len(options)), len(options))
    return tuple(options[k] for k in order), chr(ord("A") + order.index(0))


def question_type(types: dict) -> str:
    """A GQA question's type as structural + semantic, capitalised ("ChooseAttr")."""
    parts = [types.get("structural", ""), types.get("semantic", "")]
    return "".join(part[:1].upper() + part[1:] for part in parts) or "gqa"


def named_objects(question: dict) -> list[str]:
    """Object ids a GQA question names: by word position in the question, then in its
    program (``semantic``), then in its answers; without repeats."""
    annotations = question.get("annotations") or {}
    in_words = sorted((annotations.get("question") or {}).items(),
                      key=lambda item: int(item[0].split(":")[0]))
    found = [i for _, ids in in_words for i in _ids(ids)]
    for step in question.get("semantic") or []:
        for ids in re.findall(r"\(([\d,\s]+)\)", str(step.get("argument", ""))):
            found.extend(_ids(ids))
    for part in ("answer", "fullAnswer"):
        for ids in (annotations.get(part) or {}).values():
            found.extend(_ids(ids))
    return list(dict.fromkeys(found))


def _inside(xywh: tuple[float, float, float, float], width: float, height: float) -> bool:
    """Whether a scene-graph box ``(x, y, w, h)`` has some area inside a width x height image."""
    x, y, w, h = xywh
    return x < width and y < height and x + w > 0 and y + h > 0 and w > 0 and h > 0


def load_gqa(split: str | None = None, limit: int | None = None, path: str | None = None
             ) -> Dataset:
    """GQA questions of ``split`` (default val) with the boxes of the objects they name."""
    if path is None:
        raise UserError(
            "gqa with object boxes is read from its files: pass --data gqa:DIR, DIR holding "
            f"val_balanced_questions.json, val_sceneGraphs.json and images/ (from {GQA_DOWNLOAD})."
        )
    root, split = Path(path), split or "val"
    if not root.is_dir():
        raise UserError(f"there is no folder {root}.")
    questions_path = root / f"{split}_balanced_questions.json"
    graphs_path = root / f"{split}_sceneGraphs.json"
    for needed in (questions_path, graphs_path):
        if not needed.is_file():
            raise UserError(f"GQA {split} needs {needed.name} in {root} (only train and val "
                            f"have scene graphs; see {GQA_DOWNLOAD}).")
    questions, graphs = read_json(questions_path), read_json(graphs_path)
    for path, value in ((questions_path, questions), (graphs_path, graphs)):
        if not isinstance(value, dict):
            raise UserError(f"{path} holds {type(value).__name__}, not GQA's object of ids.")
    images_dir = root / "images" if (root / "images").is_dir() else root
    records = []
    for qid, question in questions.items():
        if limit is not None and len(records) >= limit:
            break
        records.append(_gqa_record(qid, question, graphs, split, questions_path))
    return records_dataset(
        "gqa", split, records,
        lambda i: decode_image(f"{records[i].meta['image_id']}.jpg", images_dir,
                               f"gqa sample {records[i].id}"),
        prompt_style="gqa", source=str(root), image_source=lambda i: records[i].meta["image_id"],
        number_repeated_ids=True,
    )


def _gqa_record(qid: str, question: Any, graphs: dict, split: str, path: Path) -> Record:
    """One GQA question with the boxes of its image's scene graph."""
    where = f"question {qid} of {path.name}"
    image_id = text(question, "imageId", where)
    graph = graphs.get(image_id) or {}
    graph_where = f"scene graph {image_id}"
    objects = field(graph, "objects", graph_where, default={})
    if not isinstance(objects, dict):
        raise UserError(f"the objects of {graph_where} are not an object of ids.")
    boxes_of = {i: _gqa_box(o, f"object {i} of {graph_where}") for i, o in objects.items()}
    try:
        named = [i for i in named_objects(question) if i in objects]
    except (AttributeError, TypeError, ValueError) as err:
        raise UserError(f"the annotations of {where} are not in GQA's format "
                        f"({type(err).__name__}).") from err
    if "width" in graph and "height" in graph:  # an unnamed object off the image is noise
        width, height = number(graph, "width", graph_where), number(graph, "height", graph_where)
        boxes_of = {i: b for i, b in boxes_of.items() if i in named or _inside(b, width, height)}
    order = list(boxes_of)
    types = field(question, "types", where, default={})
    types = types if isinstance(types, dict) else {}
    meta = {"question_id": qid, "image_id": image_id, "types": types, "split": split,
            "full_answer": text(question, "fullAnswer", where, default=""), "objects": named,
            "object_names": [text(objects[i], "name", f"object {i} of {graph_where}",
                                  default="") for i in named]}
    return Record(f"gqa/{split}/{qid}", text(question, "question", where),
                  text(question, "answer", where), question_type(types), "gqa",
                  boxes=tuple(xywh_to_xyxy(b) for b in boxes_of.values()),
                  target=tuple(order.index(i) for i in named), image_key=f"gqa/{image_id}",
                  meta=meta)


def _gqa_box(obj: Any, where: str) -> tuple[float, float, float, float]:
    x, y, w, h = (number(obj, key, where) for key in ("x", "y", "w", "h"))
    return x, y, w, h
