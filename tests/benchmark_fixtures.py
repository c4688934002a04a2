"""Every benchmark in its real on-disk layout, small, built in a temporary folder from
fine-grained scenes (images whose object boxes are known).

Parquet benchmarks are written as Hugging Face cache snapshots
(``<cache>/datasets--ORG--NAME/snapshots/<hash>/...`` plus ``refs/main``), images as the
``datasets`` Image struct ``{bytes, path}``; point ``HF_HUB_CACHE`` at :func:`hub_cache` and
``load_dataset("pope")`` finds them, or pass the returned snapshot folder as ``pope:DIR``.
V* is its original release folder (``test_questions.jsonl`` + per-image JSON with ``bbox``),
GQA its question and scene-graph JSON files plus ``images/``. Each builder returns the folder;
the ``*_rows`` functions return exactly what the builders write, for tests to compare with.

>>> import tempfile
>>> from pathlib import Path
>>> snapshot = build_pope(Path(tempfile.mkdtemp()))
>>> sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*.parquet"))
['data/test-00000-of-00001.parquet']
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from analyses.data.fine_grained import FineGrainedParams, generate_scene, render_sample

ROW_GROUP = 4  # small row groups, so that reading images row group by row group is visible
POPE_SPLITS = ("random", "popular", "adversarial")
COLOURS = ("red", "blue", "green", "teal")


# ---------------------------------------------------------------- images and scenes
def scene(index: int):
    """Fine-grained test scene ``index``: (image, objects with shape/color/box, sample)."""
    params = FineGrainedParams()
    sample = render_sample(params, "test", index)
    return sample.image, generate_scene(params, "test", index)[0].objects, sample


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def image_cell(index: int) -> dict[str, Any]:
    return {"bytes": png(scene(index)[0]), "path": f"scene-{index}.png"}


def xywh(box, jitter: float = 0.0) -> list[float]:
    """A box as benchmarks store it: float [x, y, w, h] (jitter keeps it inside the box)."""
    return [box.x0 + jitter, box.y0 + jitter, box.width - 2 * jitter, box.height - 2 * jitter]


# ---------------------------------------------------------------- the hub cache layout
def hub_cache(root: Path) -> Path:
    """The folder to set as ``HF_HUB_CACHE`` for the snapshots the builders write."""
    return root / "hub"


def snapshot(root: Path, repo_id: str) -> Path:
    """An empty cached snapshot of dataset ``repo_id`` (``refs/main`` -> its folder)."""
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    repo = hub_cache(root) / f"datasets--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    folder = repo / "snapshots" / commit
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def write_parquet(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=ROW_GROUP)


def _shard(split: str) -> str:
    return f"{split}-00000-of-00001.parquet"


# ---------------------------------------------------------------- POPE
def pope_rows(per_split: int = 4) -> list[dict[str, Any]]:
    rows = []
    for s, split in enumerate(POPE_SPLITS):
        for k in range(per_split):
            i = s * per_split + k
            _, objects, _ = scene(k)  # every split asks about the same images, as POPE does
            present = k % 2 == 0
            shape = objects[0].shape if present else "star"
            rows.append({"question_id": str(i + 1), "question": f"Is there a {shape} in the image?",
                         "answer": "yes" if present else "no", "image": image_cell(k),
                         "category": split, "image_source": f"scene-{k}"})
    return rows


def build_pope(root: Path, config: str = "default", repo_id: str = "lmms-lab/POPE",
               corrupt: tuple[int, ...] = ()) -> Path:
    """POPE as config ``default`` (one test split, ``category`` = the split) or ``Full``
    (one file per split); rows ``corrupt`` get image bytes no decoder reads."""
    folder = snapshot(root, repo_id)
    rows = pope_rows()
    for i in corrupt:
        rows[i] = {**rows[i], "image": {"bytes": b"not an image", "path": "broken.png"}}
    if config == "default":
        write_parquet(folder / "data" / _shard("test"), rows)
    else:
        for split in POPE_SPLITS:
            write_parquet(folder / "Full" / _shard(split), [r for r in rows if r["category"] == split])
    return folder


# ---------------------------------------------------------------- MMStar
def mmstar_rows(n: int = 6) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        _, objects, _ = scene(i)
        options = list(COLOURS)
        colour = objects[0].color if objects[0].color in COLOURS else COLOURS[i % 4]
        listed = ", ".join(f"{'ABCD'[k]}: {o}" for k, o in enumerate(options))
        rows.append({"index": i, "question": f"What colour is the {objects[0].shape}?\nOptions: "
                     f"{listed}", "image": image_cell(i), "answer": "ABCD"[options.index(colour)],
                     "category": "coarse perception", "l2_category": ("color", "shape")[i % 2],
                     "meta_info": {"source": "fixture", "split": "val"}})
    return rows


def build_mmstar(root: Path, repo_id: str = "Lin-Chen/MMStar") -> Path:
    folder = snapshot(root, repo_id)
    write_parquet(folder / "mmstar.parquet", mmstar_rows())
    return folder


# ---------------------------------------------------------------- RealWorldQA
def realworldqa_rows() -> list[dict[str, Any]]:
    instruction = "Please answer directly with only the letter of the correct option and nothing else."
    return [
        {"image": image_cell(0), "question": f"Which shape is largest?\nA. circle\nB. triangle\n"
                                             f"C. rectangle\n{instruction}", "answer": "B"},
        {"image": image_cell(1), "question": "How many objects are there?", "answer": "5"},
    ]


def build_realworldqa(root: Path, repo_id: str = "lmms-lab/RealWorldQA") -> Path:
    folder = snapshot(root, repo_id)
    write_parquet(folder / "data" / _shard("test"), realworldqa_rows())
    return folder


# ---------------------------------------------------------------- TextVQA
def textvqa_rows(split: str = "validation", n: int = 5) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        answers = ["stop"] * 6 + ["stop sign"] * 3 + ["sign"] if i % 2 == 0 else ["12"] * 10
        rows.append({"image_id": f"img{i}", "question_id": 100 + i + (1000 if split == "train" else 0),
                     "question": "what does the SIGN say?", "image": image_cell(i),
                     "image_width": 128, "image_height": 128, "answers": answers,
                     "ocr_tokens": ["stop", "12"], "set_name": "val"})
    return rows


def build_textvqa(root: Path, repo_id: str = "lmms-lab/textvqa") -> Path:
    folder = snapshot(root, repo_id)
    for split in ("train", "validation"):
        write_parquet(folder / "data" / _shard(split), textvqa_rows(split))
    return folder


# ---------------------------------------------------------------- CountBench
def countbench_rows(n: int = 4) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        _, objects, _ = scene(i)
        rows.append({"image": image_cell(i), "text": f"a picture of {len(objects)} shapes",
                     "question": "How many shapes are there in the image?",
                     "number": len(objects)})
    return rows


def build_countbench(root: Path, repo_id: str = "vikhyatk/CountBenchQA") -> Path:
    folder = snapshot(root, repo_id)
    write_parquet(folder / "data" / _shard("test"), countbench_rows())
    return folder


# ---------------------------------------------------------------- RefCOCO / + / g
def refcoco_rows(split: str = "val", n: int = 4) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        _, objects, _ = scene(i)
        target = objects[i % len(objects)]
        expressions = [f"the {target.color} {target.shape}"] + (["it"] if i % 2 else [])
        rows.append({"question_id": f"{split}-{i}", "image": image_cell(i),
                     "question": "Please carefully observe the area circled in the image.",
                     "answer": expressions, "segmentation": [0.0] * 8,
                     "bbox": xywh(target.box, jitter=0.7), "iscrowd": 0,
                     "file_name": f"COCO_train2014_{i:012d}.jpg"})
    return rows


def build_refcoco(root: Path, repo_id: str = "lmms-lab/RefCOCO") -> Path:
    folder = snapshot(root, repo_id)
    for split in ("val", "testA"):
        write_parquet(folder / "data" / _shard(split), refcoco_rows(split))
    return folder


# ---------------------------------------------------------------- V*
def vstar_items(n: int = 4) -> list[dict[str, Any]]:
    """One item per scene: direct_attributes (4 options) then relative_position (2)."""
    items = []
    for i in range(n):
        _, objects, _ = scene(i)
        if i < n // 2:
            target = objects[0]
            others = [c for c in COLOURS if c != target.color][:3]
            items.append({"category": "direct_attributes", "name": f"sa_{i}",
                          "question": f"What is the color of the {target.shape}?",
                          "options": [target.color, *others], "targets": [target]})
        else:
            first, second = objects[0], objects[1]
            side = "left" if first.box.x0 < second.box.x0 else "right"
            items.append({"category": "relative_position", "name": f"sa_{i}",
                          "question": f"Is the {first.shape} on the left or right side of the "
                                      f"{second.shape}?",
                          "options": [side, "right" if side == "left" else "left"],
                          "targets": [first, second]})
    return items


def vstar_label(index: int, options: list[str]) -> tuple[list[str], str]:
    """The shuffled option order test_questions.jsonl uses (a rotation) and the letter."""
    shift = index % len(options)
    shuffled = options[shift:] + options[:shift]
    return shuffled, "ABCD"[shuffled.index(options[0])]


def build_vstar(root: Path, repo_id: str = "craigwu/vstar_bench", jsonl: bool = True) -> Path:
    """The original V* release folder (a cached snapshot of ``repo_id``)."""
    folder = snapshot(root, repo_id)
    lines = []
    for i, item in enumerate(vstar_items()):
        image, _, _ = scene(i)
        (folder / item["category"]).mkdir(exist_ok=True)
        image.save(folder / item["category"] / f"{item['name']}.jpg", quality=95)
        annotation = {"target_object": [t.shape for t in item["targets"]],
                      "bbox": [xywh(t.box) for t in item["targets"]],
                      "question": item["question"], "options": item["options"]}
        (folder / item["category"] / f"{item['name']}.json").write_text(json.dumps(annotation))
        shuffled, label = vstar_label(i, item["options"])
        options = "\n".join(f"({'ABCD'[k]}) {o}" for k, o in enumerate(shuffled))
        lines.append({"image": f"{item['category']}/{item['name']}.jpg",
                      "text": f"{item['question']}\n{options}\nAnswer with the option's letter "
                              "from the given choices directly.",
                      "category": item["category"], "question_id": i, "label": label})
    if jsonl:
        (folder / "test_questions.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return folder


def build_vstar_parquet(root: Path, repo_id: str = "lmms-lab/vstar-bench") -> Path:
    """The lmms-eval V* release: one parquet, options inline as ``(A) x``, no boxes."""
    folder = snapshot(root, repo_id)
    rows = []
    for i, item in enumerate(vstar_items()):
        shuffled, label = vstar_label(i, item["options"])
        options = " ".join(f"({'ABCD'[k]}) {o}" for k, o in enumerate(shuffled))
        rows.append({"image": image_cell(i), "text": f"{item['question']} {options}",
                     "label": label, "category": item["category"], "question_id": f"v{i}"})
    write_parquet(folder / "data" / _shard("test"), rows)
    return folder


# ---------------------------------------------------------------- GQA
def gqa_questions(n_images: int = 3) -> dict[str, dict[str, Any]]:
    """Two questions per image: one naming an object in its words, one in its program."""
    questions = {}
    for i in range(n_images):
        _, objects, _ = scene(i)
        a, b = objects[0], objects[1]
        questions[f"{i}0"] = {
            "imageId": f"n{i}", "question": f"What color is the {a.shape}?", "answer": a.color,
            "fullAnswer": f"The {a.shape} is {a.color}.",
            "types": {"structural": "query", "semantic": "attr", "detailed": "queryAttr"},
            "annotations": {"question": {"3": f"{i}00"}, "answer": {}, "fullAnswer": {"1": f"{i}00"}},
            "semantic": [{"operation": "select", "argument": f"{a.shape} ({i}00)", "dependencies": []},
                         {"operation": "query", "argument": "color", "dependencies": [0]}]}
        questions[f"{i}1"] = {
            "imageId": f"n{i}", "question": f"Is the {b.shape} left of the {a.shape}?",
            "answer": "yes" if b.box.x0 < a.box.x0 else "no", "fullAnswer": "",
            "types": {"structural": "verify", "semantic": "rel", "detailed": "positionVerify"},
            "annotations": {"question": {}, "answer": {}, "fullAnswer": {}},
            "semantic": [{"operation": "select", "argument": f"{b.shape} ({i}01)", "dependencies": []},
                         {"operation": "relate", "argument": f"left,{a.shape},s ({i}00)",
                          "dependencies": [0]}]}
    return questions


def gqa_scene_graphs(n_images: int = 3) -> dict[str, dict[str, Any]]:
    graphs = {}
    for i in range(n_images):
        image, objects, _ = scene(i)
        graphs[f"n{i}"] = {"width": image.width, "height": image.height, "objects": {
            f"{i}{k:02d}": {"name": o.shape, "x": o.box.x0, "y": o.box.y0, "w": o.box.width,
                            "h": o.box.height, "attributes": [o.color], "relations": []}
            for k, o in enumerate(objects)}}
    return graphs


def build_gqa(root: Path, n_images: int = 3) -> Path:
    folder = root / "gqa"
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for i in range(n_images):
        scene(i)[0].save(folder / "images" / f"n{i}.jpg", quality=95)
    (folder / "val_balanced_questions.json").write_text(json.dumps(gqa_questions(n_images)))
    (folder / "val_sceneGraphs.json").write_text(json.dumps(gqa_scene_graphs(n_images)))
    return folder


# ---------------------------------------------------------------- users' own data
def own_rows() -> list[dict[str, Any]]:
    """Rows as a user writes them (images as paths relative to the file)."""
    _, objects, _ = scene(3)
    box = objects[0].box
    return [
        {"id": "plain", "image": "images/a.png", "question": "what shape is it?",
         "answer": "circle", "kind": "shape"},
        {"id": "several", "image": "images/b.png", "question": "what is it?",
         "answer": ["cat", "kitten"]},
        {"id": "by-text", "image": "images/a.png", "question": "which colour?",
         "choices": ["red", "blue", "green"], "answer": "blue", "source": "survey"},
        {"id": "boxed", "image": "images/c.png", "question": f"what colour is the {objects[0].shape}?",
         "choices": list(COLOURS), "answer": "C", "boxes": [[box.x0, box.y0, box.x1, box.y1]]},
    ]


def _own_images(folder: Path) -> None:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for k, name in enumerate("abc"):
        scene(k + 1)[0].save(folder / "images" / f"{name}.png")  # a, b, c: scenes 1, 2, 3


def build_own_jsonl(root: Path, rows: list[dict[str, Any]] | None = None,
                    name: str = "mine.jsonl") -> Path:
    """A folder with ``images/`` and a ``.jsonl`` of ``rows`` (default :func:`own_rows`);
    returns the file."""
    folder = root / "own"
    _own_images(folder)
    rows = own_rows() if rows is None else rows
    path = folder / name
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def build_own_csv(root: Path) -> Path:
    import csv

    folder = root / "own-csv"
    _own_images(folder)
    columns = ["id", "image", "question", "answer", "choices", "boxes", "kind"]
    with (folder / "mine.csv").open("w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in own_rows():
            cells = {k: json.dumps(v) if isinstance(v, list) else v for k, v in row.items()}
            writer.writerow(cells)
    return folder / "mine.csv"


def _embedded_rows(folder: Path) -> list[dict[str, Any]]:
    """:func:`own_rows` with images as ``{bytes, path}`` structs (list cells as lists)."""
    rows = []
    for row in own_rows():
        data = (folder / row["image"]).read_bytes()
        rows.append({"id": row["id"], "image": {"bytes": data, "path": row["image"]},
                     "question": row["question"],
                     "answer": row["answer"] if isinstance(row["answer"], list) else [row["answer"]],
                     "choices": row.get("choices", []), "boxes": row.get("boxes", []),
                     "kind": row.get("kind", "all")})
    return rows


def build_own_parquet(root: Path) -> Path:
    folder = root / "own-parquet"
    _own_images(folder)
    write_parquet(folder / "mine.parquet", _embedded_rows(folder))
    return folder / "mine.parquet"


def build_own_saved(root: Path) -> Path:
    """A ``datasets.Dataset`` with an Image feature, saved with ``save_to_disk``."""
    import datasets

    source = root / "own-saved-images"
    _own_images(source)
    rows = _embedded_rows(source)
    features = datasets.Features({
        "id": datasets.Value("string"), "image": datasets.Image(),
        "question": datasets.Value("string"), "answer": datasets.Sequence(datasets.Value("string")),
        "choices": datasets.Sequence(datasets.Value("string")),
        "boxes": datasets.Sequence(datasets.Sequence(datasets.Value("float64"))),
        "kind": datasets.Value("string"),
    })
    datasets.disable_progress_bars()
    dataset = datasets.Dataset.from_list(rows, features=features)
    folder = root / "own-saved"
    dataset.save_to_disk(str(folder))
    return folder
