"""Benchmarks and users' own files through ``load_dataset``, on fixtures in the real on-disk
layouts (tests/benchmark_fixtures.py): the hub-cache resolution, every field against the values
the fixture wrote, laziness (images decoded only for the samples built), every bad-input
sentence, prompts per family, and target boxes landing on the right image tokens."""

from __future__ import annotations

import doctest
import importlib
import json
import math
from pathlib import Path

import numpy as np
import PIL.Image
import pyarrow.parquet as pq
import pytest
from benchmark_fixtures import (
    COLOURS,
    build_countbench,
    build_gqa,
    build_mmstar,
    build_own_csv,
    build_own_jsonl,
    build_own_parquet,
    build_own_saved,
    build_pope,
    build_realworldqa,
    build_refcoco,
    build_textvqa,
    build_vstar,
    build_vstar_parquet,
    countbench_rows,
    gqa_questions,
    gqa_scene_graphs,
    hub_cache,
    image_cell,
    mmstar_rows,
    own_rows,
    pope_rows,
    realworldqa_rows,
    refcoco_rows,
    snapshot,
    textvqa_rows,
    vstar_items,
    vstar_label,
    write_parquet,
)

from analyses.common import load_data
from analyses.data import Box, available_datasets, default_template, load_dataset
from analyses.data.prompts import TEMPLATES
from probes.errors import UserError

BENCHMARKS = ["countbench", "gqa", "mmstar", "pope", "realworldqa", "refcoco", "refcoco+",
              "refcocog", "textvqa", "vstar"]


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty hub cache the loaders must resolve through (HF_HUB_CACHE read at call time)."""
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache(tmp_path)))
    monkeypatch.delenv("HF_HOME", raising=False)
    hub_cache(tmp_path).mkdir(parents=True, exist_ok=True)
    return tmp_path


def pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def covering(xywh) -> Box:
    """The independent floor/ceil reference for a float [x, y, w, h] box."""
    x, y, w, h = xywh
    return Box(math.floor(x), math.floor(y), math.ceil(x + w), math.ceil(y + h))


class DecodeCounter:
    """Counts PIL.Image.open calls (every loader decodes through it)."""

    def __init__(self, monkeypatch):
        self.calls = 0
        original = PIL.Image.open

        def counting(*args, **kwargs):
            self.calls += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(PIL.Image, "open", counting)


# ---------------------------------------------------------------- registry
def test_every_benchmark_is_listed():
    assert set(BENCHMARKS) <= set(available_datasets())
    assert {"easy-vqa", "fine-grained"} <= set(available_datasets())


def test_easy_vqa_keeps_its_split_default_and_scorer():
    assert load_dataset("easy-vqa", limit=2).split == "test"
    explicit, default = load_dataset("easy-vqa", "test", limit=3), load_dataset("easy-vqa", limit=3)
    assert explicit.fingerprint() == default.fingerprint()
    assert [s.scorer for s in explicit] == ["exact"] * 3
    assert load_dataset("fine-grained", limit=1)[0].scorer == "exact"


# ---------------------------------------------------------------- POPE
def test_pope_from_the_cache_all_splits(cache):
    build_pope(cache)
    ds = load_dataset("pope")
    rows = pope_rows()
    assert (ds.name, ds.split, len(ds)) == ("pope", "test", len(rows))
    assert ds.source == "lmms-lab/POPE"
    for sample, row in zip(ds, rows, strict=True):
        assert sample.question == row["question"] and sample.answer == row["answer"]
        assert sample.kind == row["category"] and sample.scorer == "pope"
        assert sample.meta["question_id"] == row["question_id"]
        assert sample.meta["image_source"] == row["image_source"]
        assert sample.boxes == () and sample.region() is None
        expected = PIL.Image.open(__import__("io").BytesIO(row["image"]["bytes"]))
        np.testing.assert_array_equal(pixels(sample.image), pixels(expected))


@pytest.mark.parametrize("split", ["random", "popular", "adversarial"])
def test_pope_split_filtered_by_category_equals_the_full_config_file(cache, split):
    default = load_dataset(f"pope:{build_pope(cache)}", split)
    full = load_dataset(f"pope:{build_pope(cache, 'Full', repo_id='me/pope-full')}", split)
    expected = [r for r in pope_rows() if r["category"] == split]
    for ds in (default, full):
        assert ds.split == split
        assert [(s.question, s.answer, s.kind) for s in ds] == [
            (r["question"], r["answer"], split) for r in expected]
    assert default.fingerprint() == full.fingerprint()  # the same data, whichever layout


def test_pope_full_config_without_split_is_all_three(cache):
    ds = load_dataset(f"pope:{build_pope(cache, 'Full')}")
    assert [s.kind for s in ds] == [r["category"] for r in pope_rows()]


def test_pope_renamed_namespace_and_a_single_file(cache):
    folder = build_pope(cache, repo_id="lmms-lab-encoder/POPE")
    assert load_dataset("pope").source == "lmms-lab-encoder/POPE"
    single = load_dataset(f"pope:{folder / 'data' / 'test-00000-of-00001.parquet'}", "popular")
    assert len(single) == 4 and {s.kind for s in single} == {"popular"}
    assert load_dataset("pope").fingerprint() == load_dataset(f"pope:{folder}").fingerprint()


# ---------------------------------------------------------------- the other parquet benchmarks
def test_mmstar(cache):
    build_mmstar(cache)
    ds = load_dataset("mmstar")
    assert ds.split == "val"
    for sample, row in zip(ds, mmstar_rows(), strict=True):
        assert sample.question == row["question"].strip()
        assert sample.answer == row["answer"] and sample.choices == COLOURS
        assert sample.kind == row["l2_category"] and sample.scorer == "choice"
        assert sample.meta["category"] == row["category"] and sample.meta["index"] == str(row["index"])


def test_realworldqa_letter_and_open_questions(cache):
    build_realworldqa(cache)
    first, second = load_dataset("realworldqa")
    rows = realworldqa_rows()
    assert (first.question, first.answer) == (rows[0]["question"], "B")
    assert first.choices == ("circle", "triangle", "rectangle")
    assert (second.answer, second.choices, second.scorer) == ("5", (), "realworldqa")


def test_textvqa_default_split_answers_and_capitalisation(cache):
    build_textvqa(cache)
    ds = load_dataset("textvqa")
    assert ds.split == "validation"
    for sample, row in zip(ds, textvqa_rows("validation"), strict=True):
        assert sample.answers == tuple(row["answers"]) and len(sample.acceptable) == 10
        assert sample.answer == max(set(row["answers"]), key=row["answers"].count)
        assert sample.question == "What does the sign say?"
        assert sample.meta["raw_question"] == row["question"]
        assert sample.meta["ocr_tokens"] == row["ocr_tokens"]
        assert (sample.kind, sample.scorer) == ("textvqa", "vqa")
    train = load_dataset("textvqa", "train")
    assert [s.meta["question_id"] for s in train] == [
        str(r["question_id"]) for r in textvqa_rows("train")]


def test_countbench_keeps_the_caption_out(cache):
    build_countbench(cache)
    ds = load_dataset("countbench")
    for sample, row in zip(ds, countbench_rows(), strict=True):
        assert sample.answer == str(row["number"]) and sample.scorer == "count"
        assert row["text"] not in sample.question and row["text"] not in map(str, sample.meta.values())
        assert row["text"] not in ds.prompted("llava")[0].prompt


@pytest.mark.parametrize("name, repo", [("refcoco", "lmms-lab/RefCOCO"),
                                        ("refcoco+", "lmms-lab/RefCOCOplus"),
                                        ("refcocog", "lmms-lab-encoder/RefCOCOg")])
def test_refcoco_one_sample_per_expression_with_its_box(cache, name, repo):
    build_refcoco(cache, repo_id=repo)
    for split in ("val", "testA"):
        ds = load_dataset(name, split)
        assert ds.split == split
        expected = [(row, e) for row in refcoco_rows(split) for e in row["answer"]]
        assert len(ds) == len(expected) == 6
        for sample, (row, expression) in zip(ds, expected, strict=True):
            assert sample.question == expression and sample.scorer == "refcoco"
            assert sample.target_boxes == (covering(row["bbox"]),)
            assert sample.meta["bbox"] == row["bbox"] and sample.meta["expressions"] == row["answer"]
            x, y, w, h = row["bbox"]
            assert np.allclose(eval(sample.answer), [x, y, x + w, y + h], atol=0.01)


def test_refcoco_by_default_reads_every_split_labelled_by_its_own(cache):
    """The grounding score is the mean over splits: with no split named, every split present
    is read, val first, each sample's kind its own split, the ids those of the split reads."""
    build_refcoco(cache)
    every = load_dataset("refcoco")
    assert every.split == "all" and [s.kind for s in every] == ["val"] * 6 + ["testA"] * 6
    alone = [s for split in ("val", "testA") for s in load_dataset("refcoco", split)]
    assert [(s.id, s.question, s.target_boxes) for s in every] == [
        (s.id, s.question, s.target_boxes) for s in alone]
    assert every[7].image.tobytes() == alone[7].image.tobytes()  # rows offset right
    assert len(load_dataset("refcoco", limit=8)) == 8


# ---------------------------------------------------------------- V* and GQA
def test_vstar_original_release_with_boxes(cache):
    build_vstar(cache)
    ds = load_dataset("vstar")
    assert (ds.split, len(ds), ds.source) == ("test", 4, "craigwu/vstar_bench")
    for i, (sample, item) in enumerate(zip(ds, vstar_items(), strict=True)):
        shuffled, label = vstar_label(i, item["options"])
        assert sample.question == item["question"] and sample.choices == tuple(shuffled)
        assert sample.answer == label and sample.choices["ABCD".index(label)] == item["options"][0]
        assert sample.kind == item["category"] and sample.scorer == "choice"
        assert sample.target_boxes == tuple(t.box for t in item["targets"])
        assert sample.meta["bbox"] == [[t.box.x0, t.box.y0, t.box.width, t.box.height]
                                       for t in item["targets"]]


def test_vstar_folder_without_the_jsonl_uses_the_item_options(cache):
    folder = build_vstar(cache, repo_id="me/vstar", jsonl=False)
    ds = load_dataset(f"vstar:{folder}")
    items = sorted(vstar_items(), key=lambda item: item["category"])
    assert [s.question for s in ds] == [it["question"] for it in items]
    for sample, item in zip(ds, items, strict=True):
        # the options in an order drawn from the item, the right one (stored first) named
        assert sorted(sample.choices) == sorted(item["options"])
        assert sample.choices[ord(sample.answer) - ord("A")] == item["options"][0]
    # not always A: a model that always says "A" must not score 100%
    assert len({s.answer for s in ds}) > 1


def test_vstar_lmms_eval_parquet_without_boxes(cache):
    build_vstar_parquet(cache)  # only the lmms-eval release is cached
    ds = load_dataset("vstar")
    assert ds.source == "lmms-lab/vstar-bench"
    for i, (sample, item) in enumerate(zip(ds, vstar_items(), strict=True)):
        shuffled, label = vstar_label(i, item["options"])
        assert (sample.question, sample.choices, sample.answer) == (
            item["question"], tuple(shuffled), label)
        assert sample.boxes == () and sample.kind == item["category"]


def test_gqa_targets_are_the_objects_the_question_names(tmp_path):
    ds = load_dataset(f"gqa:{build_gqa(tmp_path)}")
    questions, graphs = gqa_questions(), gqa_scene_graphs()
    assert (ds.split, len(ds)) == ("val", len(questions))
    for sample, question in zip(ds, questions.values(), strict=True):
        objects = graphs[question["imageId"]]["objects"]
        assert sample.boxes == tuple(
            Box(o["x"], o["y"], o["x"] + o["w"], o["y"] + o["h"]) for o in objects.values())
        # the objects named in the question's words first, then in its program, in order
        words = list(question["annotations"]["question"].values())
        program = [step["argument"].rsplit("(", 1)[1].rstrip(")")
                   for step in question["semantic"] if step["argument"].endswith(")")]
        order = list(dict.fromkeys(words + program))
        assert [list(objects)[k] for k in sample.target] == order
        types = question["types"]
        assert sample.kind == types["structural"].title() + types["semantic"].title()
        assert sample.scorer == "gqa"
        assert sample.meta["types"] == question["types"] and sample.answer == question["answer"]
        assert sample.image.size == (graphs[question["imageId"]]["width"],
                                     graphs[question["imageId"]]["height"])


# ---------------------------------------------------------------- own data
OWN_BUILDERS = [build_own_jsonl, build_own_csv, build_own_parquet, build_own_saved]


@pytest.mark.parametrize("build", OWN_BUILDERS, ids=lambda b: b.__name__[6:])
def test_own_data_in_every_format(tmp_path, build):
    path = build(tmp_path)
    ds = load_dataset(str(path))
    rows = own_rows()
    assert len(ds) == len(rows)
    letters = {"plain": "circle", "several": "cat", "by-text": "B", "boxed": "C"}
    for sample, row in zip(ds, rows, strict=True):
        assert sample.id.endswith("/" + row["id"]) and sample.question == row["question"]
        assert sample.answer == letters[row["id"]]
        assert sample.choices == tuple(row.get("choices", ()))
        assert sample.scorer == ("choice" if row.get("choices") else "exact")
        expected_boxes = tuple(Box(*b) for b in row.get("boxes", []))
        assert sample.target_boxes == expected_boxes and sample.boxes == expected_boxes
        image = PIL.Image.open(path.parent / row["image"]) if build is not build_own_saved else None
        if image is not None:
            np.testing.assert_array_equal(pixels(sample.image), pixels(image))
    assert ds[1].answers == ("cat", "kitten")
    assert ds.prompt_style == "choice"
    if build is build_own_jsonl:  # a column fusionlens does not know goes to meta
        assert ds[2].meta["source"] == "survey"


def test_own_folder_and_saved_dataset_dict(tmp_path):
    path = build_own_jsonl(tmp_path)
    assert load_dataset(str(path.parent)).fingerprint() == load_dataset(str(path)).fingerprint()
    import datasets

    saved = build_own_saved(tmp_path)
    dataset = datasets.load_from_disk(str(saved))
    datasets.DatasetDict({"train": dataset, "test": dataset.select([0, 3])}).save_to_disk(
        str(tmp_path / "dict"))
    assert [s.id for s in load_dataset(str(tmp_path / "dict"))] == ["dict/plain", "dict/boxed"]
    assert len(load_dataset(str(tmp_path / "dict"), "train")) == 4


def test_own_data_without_choices_keeps_the_bare_question(tmp_path):
    path = build_own_jsonl(tmp_path, rows=own_rows()[:2])
    ds = load_dataset(str(path))
    assert ds.prompt_style == "plain" and default_template(ds, "llava") == "{question}"
    assert [s.prompt for s in ds.prompted("qwen2_5_vl")] == [r["question"] for r in own_rows()[:2]]


# ---------------------------------------------------------------- laziness
def big_pope(root: Path, n: int = 200) -> Path:
    """A POPE file of ``n`` rows, every row its own image, row groups of 4."""
    folder = snapshot(root, "lmms-lab/POPE")
    cells = [image_cell(k) for k in range(4)]
    rows = [{"question_id": str(i), "question": f"Is there a thing {i}?", "answer": "yes",
             "image": cells[i % 4], "category": "random", "image_source": f"img{i}"}
            for i in range(n)]
    write_parquet(folder / "data" / "test-00000-of-00001.parquet", rows)
    return folder


def test_limit_decodes_only_the_samples_built(cache, monkeypatch):
    big_pope(cache)
    decodes = DecodeCounter(monkeypatch)
    groups_read, projected = [], []
    read_group, read_all = pq.ParquetFile.read_row_group, pq.ParquetFile.read

    def counting_group(self, i, *args, **kwargs):
        groups_read.append((i, kwargs.get("columns")))
        return read_group(self, i, *args, **kwargs)

    def counting_read(self, *args, **kwargs):
        projected.append(kwargs.get("columns"))
        return read_all(self, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", counting_group)
    monkeypatch.setattr(pq.ParquetFile, "read", counting_read)
    ds = load_dataset("pope", limit=6)
    assert len(ds) == 6 and decodes.calls == 0 and groups_read == []
    assert projected and all(columns is not None and "image" not in columns
                             for columns in projected)  # text columns only
    assert [q for q, _ in ds.texts()] == [f"Is there a thing {i}?" for i in range(6)]
    ds.fingerprint()
    assert decodes.calls == 0 and groups_read == []
    samples = list(ds)
    assert decodes.calls == 6 and len(samples) == 6
    assert groups_read == [(0, ["image"]), (1, ["image"])]  # rows 0-3 and 4-5, image only


def test_folder_benchmarks_decode_lazily(tmp_path, monkeypatch):
    folder = build_gqa(tmp_path)
    vstar = build_vstar(tmp_path, repo_id="me/vstar")
    decodes = DecodeCounter(monkeypatch)
    gqa, star = load_dataset(f"gqa:{folder}", limit=3), load_dataset(f"vstar:{vstar}")
    list(gqa.texts()), list(star.texts())
    assert decodes.calls == 0
    gqa[2], star[1]
    assert decodes.calls == 2


def test_unreadable_image_fails_only_its_own_sample(cache):
    build_pope(cache, corrupt=(1,))
    ds = load_dataset("pope")
    assert ds[0].answer == "yes" and ds[2].question == pope_rows()[2]["question"]
    with pytest.raises(UserError, match=r"^cannot read the image of sample pope/random/2: no "
                                        r"image format PIL knows\.$"):
        ds[1]


# ---------------------------------------------------------------- bad input
def test_unknown_benchmark_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown dataset 'popee'; known datasets: countbench, "
                                         "easy-vqa, .*pope.*vstar"):
        load_dataset("popee")
    with pytest.raises(UserError, match="unknown dataset 'popee'"):
        load_data("popee", None, None)  # what every CLI calls: exit 2


def test_the_cli_loader_reads_benchmark_paths_and_own_files(tmp_path):
    pope = load_data(f"pope:{build_pope(tmp_path)}", None, 5)
    assert (pope.split, len(pope), pope[4].kind) == ("test", 5, "popular")
    own = load_data(str(build_own_jsonl(tmp_path)), None, None)
    assert [s.answer for s in own] == ["circle", "cat", "B", "C"]
    with pytest.raises(UserError, match="^there is no file or folder"):
        load_data(str(tmp_path / "missing.csv"), None, None)


def test_spec_reloads_the_same_data_from_another_folder(tmp_path, monkeypatch):
    folder, mine = build_pope(tmp_path), build_own_jsonl(tmp_path)
    monkeypatch.chdir(folder.parent)
    pope = load_dataset(f"pope:{folder.name}", "random")  # paths relative to the cwd
    monkeypatch.chdir(mine.parent)
    own = load_dataset(mine.name)
    monkeypatch.chdir(tmp_path)
    for ds in (pope, own, load_dataset("easy-vqa", limit=2)):
        again = load_dataset(ds.spec, ds.split if ds.split != "all" else None, len(ds))
        assert again.fingerprint() == ds.fingerprint() and again.spec == ds.spec
        assert ds.prompted("llava").spec == ds.spec


def test_missing_path(tmp_path):
    with pytest.raises(UserError, match=f"^there is no file or folder {tmp_path}/nope.jsonl.$"):
        load_dataset(str(tmp_path / "nope.jsonl"))
    with pytest.raises(UserError, match="^there is no file or folder"):
        load_dataset(f"pope:{tmp_path / 'nothing'}")


def test_benchmark_not_cached_names_the_hub_ids_and_the_command(cache):
    with pytest.raises(UserError) as error:
        load_dataset("pope")
    message = str(error.value)
    assert "`hf download --repo-type dataset lmms-lab/POPE`" in message
    assert "lmms-lab-encoder/POPE" in message and message.count(".") >= 1
    with pytest.raises(UserError, match="Lin-Chen/MMStar"):
        load_dataset("mmstar")


def test_missing_column_is_named(tmp_path, cache):
    path = build_own_jsonl(tmp_path, rows=[{"image": "images/a.png", "question": "q?"}])
    with pytest.raises(UserError, match=r"^mine.jsonl has no column 'answer' \(it has: "):
        load_dataset(str(path))
    folder = snapshot(cache, "lmms-lab/POPE")
    write_parquet(folder / "data" / "test-00000-of-00001.parquet",
                  [{k: v for k, v in r.items() if k != "category"} for r in pope_rows()])
    with pytest.raises(UserError, match="has no column 'category'"):
        load_dataset("pope")


def test_answer_not_among_choices(tmp_path):
    rows = [{"image": "images/a.png", "question": "q?", "choices": ["x", "y"], "answer": "z"}]
    with pytest.raises(UserError, match=r"^the answer 'z' of row 0 of mine.jsonl is not among "
                                        r"its choices \(A, B or the option texts\).$"):
        load_dataset(str(build_own_jsonl(tmp_path, rows=rows)))


def test_box_outside_its_image_is_refused_at_load_without_decoding(tmp_path, monkeypatch):
    rows = [{"image": "images/a.png", "question": "q?", "answer": "a", "boxes": [[0, 0, 10, 10]]},
            {"image": "images/a.png", "question": "q?", "answer": "a", "boxes": [[120, 0, 130, 9]]}]
    path = build_own_jsonl(tmp_path, rows=rows)
    loads, original = [], PIL.Image.Image.load
    monkeypatch.setattr(PIL.Image.Image, "load", lambda image: loads.append(1) or original(image))
    with pytest.raises(UserError, match=r"^the box \[120, 0, 130, 9\] of sample mine.jsonl/1 is "
                                        r"not inside its 128x128 image"):
        load_dataset(str(path))
    assert loads == []  # the size came from the image's header: no pixel was decoded
    ds = load_dataset(str(path), limit=1)  # the rows a run takes are the rows checked
    assert ds[0].target_boxes == (Box(0, 0, 10, 10),)
    bad = [{"image": "images/a.png", "question": "q?", "answer": "a", "boxes": [[5, 5, 2, 9]]}]
    with pytest.raises(UserError, match=r"is not \[x0, y0, x1, y1\] with x0 < x1"):
        load_dataset(str(build_own_jsonl(tmp_path, rows=bad, name="bad.jsonl")))


def test_gqa_drops_unnamed_objects_off_the_image_and_names_the_sample_of_a_bad_target(
        tmp_path):
    folder = build_gqa(tmp_path)
    graphs, questions = gqa_scene_graphs(), gqa_questions()
    first = next(iter(questions.values()))
    graph = graphs[first["imageId"]]
    graph["objects"]["stray"] = {"name": "x", "x": graph["width"] + 5, "y": 0, "w": 4, "h": 4,
                                 "attributes": [], "relations": []}
    (folder / "val_sceneGraphs.json").write_text(json.dumps(graphs))
    sample = load_dataset(f"gqa:{folder}")[0]
    assert len(sample.boxes) == len(graph["objects"]) - 1  # the stray object is gone
    named = sorted(set(first["annotations"]["question"].values()))[0]
    graph["objects"][named].update(x=graph["width"] + 5)  # a target off the image
    (folder / "val_sceneGraphs.json").write_text(json.dumps(graphs))
    with pytest.raises(UserError, match=r"^the box .* of sample gqa/val/.* lies outside its "):
        load_dataset(f"gqa:{folder}")[0]


def test_gqa_needs_its_files(tmp_path):
    with pytest.raises(UserError, match="gqa:DIR"):
        load_dataset("gqa")
    (tmp_path / "g").mkdir()
    with pytest.raises(UserError, match="val_balanced_questions.json"):
        load_dataset(f"gqa:{tmp_path / 'g'}")


def test_unknown_split(cache):
    build_mmstar(cache)
    with pytest.raises(UserError, match=r"^mmstar has no split 'test' here; splits found: val.$"):
        load_dataset("mmstar", "test")


# ---------------------------------------------------------------- prompts
def test_prompts_per_benchmark_and_family(cache):
    build_vstar(cache), build_refcoco(cache), build_textvqa(cache), build_pope(cache)
    vstar = load_dataset("vstar", limit=1).prompted("llava")
    sample = vstar[0]
    options = "\n".join(f"{'ABCD'[k]}. {o}" for k, o in enumerate(sample.choices))
    assert sample.prompt == (f"{sample.question}\n{options}\nAnswer with the option's letter "
                             "from the given choices directly.")
    assert sample.ask == sample.prompt and vstar.template == TEMPLATES["vstar"][""]
    refcoco = load_dataset("refcoco", limit=1)
    assert refcoco.prompted("qwen2_5_vl")[0].prompt == (
        "Locate the green triangle in this image and output the bbox coordinates in JSON format.")
    assert refcoco.prompted("llava")[0].prompt.endswith("this sentence describes: the green triangle")
    assert load_dataset("textvqa", limit=1).prompted("llava-next")[0].prompt == (
        "What does the sign say?\nAnswer the question using a single word or phrase.")
    assert load_dataset("pope", limit=1).prompted("qwen2_5_vl")[0].prompt == (
        pope_rows()[0]["question"] + "\nAnswer the question using a single word or phrase.")
    assert default_template(refcoco, "qwen2_5_vl") == TEMPLATES["refcoco"]["qwen2_5_vl"]


def test_prompted_fingerprints_and_user_templates():
    easy = load_dataset("easy-vqa", limit=3)
    bare = easy.prompted("llava")
    assert bare.template == "{question}" and bare.fingerprint() == easy.fingerprint()
    assert [s.prompt for s in bare] == [s.question for s in easy]
    custom = easy.prompted("llava", "Q: {question} A:")
    assert custom[0].prompt == f"Q: {easy[0].question} A:"
    assert custom.fingerprint() != easy.fingerprint()
    assert custom.prompted("llava", "Q: {question} A:").fingerprint() == custom.fingerprint()
    with pytest.raises(UserError, match=r"has no \{question\} placeholder"):
        easy.prompted("llava", "Answer:")


# ---------------------------------------------------------------- boxes on image tokens
def expected_object_tokens(layout, boxes) -> set[int]:
    """Offsets of the patch tokens whose cell overlaps a target box with positive area,
    computed from the cells' pixel boxes directly."""
    found = set()
    for k in range(layout.n_tokens):
        cell = layout.token_box(k)
        if cell is None:
            continue
        for box in boxes:
            if min(cell[2], box.x1) > max(cell[0], box.x0) and \
                    min(cell[3], box.y1) > max(cell[1], box.y0):
                found.add(k)
    return found


@pytest.mark.parametrize("model", ["tiny-llava", "tiny-random-qwen2.5-vl"])
def test_target_boxes_land_on_their_image_tokens(tmp_path, model):
    from probes.models.loading import load_model
    from probes.tokens import token_groups

    loaded = load_model(model)
    gqa = load_dataset(f"gqa:{build_gqa(tmp_path)}")
    refcoco = load_dataset(f"refcoco:{build_refcoco(tmp_path, repo_id='me/refcoco')}", limit=2)
    for sample in [*gqa, *refcoco]:
        inputs = loaded.adapter.build_inputs([sample.image], [sample.ask])
        groups = token_groups(loaded.adapter, inputs).with_region(mask=sample.region())
        tokens = groups.image_tokens
        offsets = set(np.searchsorted(tokens.positions, groups.object).tolist())
        assert offsets == expected_object_tokens(tokens.layout, sample.target_boxes)
        assert 0 < len(offsets) < tokens.layout.n_tokens


@pytest.mark.parametrize("name", [
    "analyses.data.boxes", "analyses.data.prompts", "analyses.data.tabular", "analyses.data.hub",
    "analyses.data.records", "analyses.data.benchmarks", "analyses.data.folders",
    "analyses.data.own", "analyses.data.registry", "analyses.data.dataset",
])
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name),
                             optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
