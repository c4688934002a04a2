"""analyses.scoring on its own: each rule against hand-worked cases and independent formulas,
each intended deviation from lmms-eval on its own, the summaries, and Qwen2.5-VL's box frame
against the image processor's own resize. (The comparison with the reference harness itself is
tests/test_scoring_reference.py.) Every sample is built by its benchmark's loader from rows in
the real layout (tests/scoring_samples.py), with the fields real samples have."""

from __future__ import annotations

import dataclasses
import doctest
import importlib
import itertools
from types import SimpleNamespace

import numpy as np
import pytest
import scoring_samples as real
import torch
from helpers import image_with_box
from PIL import Image
from transformers import Qwen2_5_VLConfig, Qwen2VLConfig
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from analyses import grading, scoring
from analyses.data import load_dataset
from analyses.scoring import BoxFrame, Verdict, frame_for, iou, judge, parse_box, summarize
from probes.errors import UserError
from probes.models.adapters import adapter_for

MODULES = ["analyses.scoring", "analyses.scoring.base", "analyses.scoring.choice",
           "analyses.scoring.vqa", "analyses.scoring.rules", "analyses.scoring.boxes",
           "analyses.scoring.summary"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("benchmarks")


def own(root, *rows):
    """Samples of a user's own data (JSON lines), each row ``(answer, choices, kind)``."""
    return real.own_samples(root, [{"question": "q?", "answer": answer, "kind": kind,
                               **({"choices": list(choices)} if choices else {})}
                              for answer, choices, kind in rows])


# ---------------------------------------------------------------- exact: behaviour unchanged

def test_exact_is_the_old_strip_lower_match(root):
    words = ["red", "Red", " red ", "RED\n", "blue", "red.", "", "circle", "Circle "]
    answers = [w for w in words if w.strip()]  # the loaders strip answers; none is empty
    samples = own(root, *[(answer, (), "all") for answer in answers])
    for reply, (answer, exact) in itertools.product(words, zip(answers, samples)):
        assert exact.scorer == "exact" and exact.answer == answer.strip()
        old = reply.strip().lower() == answer.strip().lower()
        assert grading.is_correct(reply, exact) is old
        assert scoring.is_correct(reply, exact) is old
    assert grading.is_correct(" Red", SimpleNamespace(answer="red "))  # bare objects still work
    for embedded in ("easy-vqa", "fine-grained"):
        first = load_dataset(embedded, limit=1)[0]
        assert first.scorer == "exact" and judge(f" {first.answer.upper()}\n", first).full


def test_exact_accepts_any_listed_answer(root):
    (multi,) = own(root, (["grey", "gray"], (), "all"))
    assert multi.answers == ("grey", "gray")
    assert judge("Gray", multi).score == 1.0 and judge("silver", multi).score == 0.0


def test_unknown_rule_is_one_sentence(root):
    (exact,) = own(root, ("red", (), "all"))
    with pytest.raises(UserError, match="unknown scoring rule 'bleu'; the known ones are"):
        judge("x", dataclasses.replace(exact, scorer="bleu"))


# ---------------------------------------------------------------- multiple choice

CHOICES = ("cotton", "wool", "silk", "linen")


@pytest.mark.parametrize(("reply", "letter"), [
    ("B", "B"), ("(C)", "C"), ("The answer is (D).", "D"), ("A. cotton", "A"),
    ("I choose B", "B"), ("B or C? C", "B"), ("Maybe B, or rather C", "C"), ("  d  ", ""),
    ("Answer: C", "C"),
    ("Cotton", "A"),  # no letter: the option text names A (not C, as in lmms-eval)
    ("Silky", ""), ("The answer is Wool", ""), ("", ""),  # text: whole reply only
])
def test_choice_letters(root, reply, letter):
    mmstar, mine = real.load_rows(root, "mmstar", [real.mmstar_row("A", CHOICES)])[0], own(
        root, ("A", CHOICES, "all"))[0]
    for sample in (mmstar, mine):
        assert (sample.scorer, sample.choices) == ("choice", CHOICES)
        verdict = judge(reply, sample)
        assert verdict.prediction == letter
        assert verdict.score == float(letter == "A")


def test_choice_letters_follow_the_number_of_choices(root):
    (two,) = real.load_rows(root, "vstar", [real.vstar_row("B", ("left", "right"))])  # relative position
    assert two.choices == ("left", "right")
    assert judge("C", two).prediction == ""  # only A and B exist
    assert judge("B", two).score == 1.0


def test_realworldqa_open_answers(root):
    open_ended, bare_letter, short = real.load_rows(root, "realworldqa", [
        real.realworldqa_row("Downhill"), real.realworldqa_row("B"), real.realworldqa_row("D", ("x", "y"))])
    assert judge("downhill.", open_ended).score == 1.0
    assert judge("Downhill, mostly", open_ended).score == 0.0
    assert bare_letter.choices == () and judge("The answer is B.", bare_letter).score == 1.0
    # options parsed short of the answer letter: A-D still apply, as in lmms-eval
    assert short.choices == ("x", "y") and judge("D", short).score == 1.0


# ---------------------------------------------------------------- TextVQA

def test_vqa_accuracy_formula_and_full_credit(root):
    def by_formula(k: int) -> float:  # k of the 10 answers equal the reply
        return (k * min(1, (k - 1) / 3) + (10 - k) * min(1, k / 3)) / 10
    samples = real.load_rows(root, "textvqa", [
        real.textvqa_row(["Coca Cola"] * k + ["pepsi"] * (10 - k), question_id=k) for k in range(11)])
    for k, textvqa in enumerate(samples):
        assert textvqa.scorer == "vqa" and len(textvqa.answers) == 10
        assert judge("coca-cola.", textvqa).score == pytest.approx(by_formula(k))
        # correct = full credit: 4 matching humans; 3 give 0.9
        assert scoring.is_correct("coca-cola.", textvqa) is (k >= 4)
    assert by_formula(3) == pytest.approx(0.9)


def test_vqa_normalisation_examples():
    from analyses.scoring.vqa import normalize_answer
    assert normalize_answer("Two dogs") == "2 dogs"
    assert normalize_answer("dont stop") == "don't stop"
    assert normalize_answer("The Beatles!") == "beatles"
    assert normalize_answer("3.5") == "3.5" and normalize_answer("5.") == "5"
    assert normalize_answer("coca-cola") == "coca cola" and normalize_answer("- x") == " x"[1:]


# ---------------------------------------------------------------- CountBench, POPE, GQA

@pytest.mark.parametrize(("reply", "score"), [
    ("3", 1.0), ("three", 1.0), (" Three ", 1.0), ("3.", 1.0), ("3 apples", 0.0), ("4", 0.0),
])
def test_count(root, reply, score):
    (three,) = real.load_rows(root, "countbench", [real.countbench_row(3)])
    assert judge(reply, three).score == score


def test_count_words_up_to_twenty(root):
    twenty, zero = real.load_rows(root, "countbench", [real.countbench_row(20), real.countbench_row(0)])
    assert judge("Twenty", twenty).score == 1.0
    assert judge("none", zero).score == 1.0


def test_pope_is_llavas_rule_ignoring_case(root):
    (pope,) = real.load_rows(root, "pope", [real.pope_row("yes")])
    for reply, said in [("Yes", "yes"), ("No", "no"), ("NO", "no"), ("Not at all", "no"),
                        ("Yes, there is a dog.", "yes"), ("no, no.", "no"),
                        ("There is a cat. There is no dog.", "yes")]:
        assert judge(reply, pope).prediction == said


def test_gqa_ignores_case_punctuation_and_spaces(root):
    (gqa,) = real.gqa_samples(root, ["t-shirt"])
    assert judge(" T-Shirt.\n", gqa).score == 1.0 and judge("tshirt", gqa).score == 1.0
    assert judge("t shirt", gqa).score == 0.0


# ---------------------------------------------------------------- summaries

def test_summary_mean_and_per_kind(root):
    samples = own(root, *[("red", (), kind) for kind in "aab"])
    verdicts = [Verdict(1.0, "x"), Verdict(0.0, "y"), Verdict(0.0, "z")]
    summary = summarize(samples, verdicts)
    assert summary["summary"] == "mean" and summary["n"] == 3
    assert summary["score"] == pytest.approx(1 / 3)
    assert summary["per_kind"] == {"a": {"score": 0.5, "n": 2}, "b": {"score": 0.0, "n": 1}}


def test_summary_is_chosen_by_dataset_then_rule(root):
    (mmstar,) = real.load_rows(root, "mmstar", [real.mmstar_row("A", CHOICES)])
    (vstar,) = real.load_rows(root, "vstar", [real.vstar_row("A", CHOICES)])
    (pope,) = real.load_rows(root, "pope", [real.pope_row("yes")])
    (exact,) = own(root, ("red", (), "all"))
    assert scoring.summary_name([mmstar]) == "macro"
    assert scoring.summary_name([vstar]) == "mean"
    assert scoring.summary_name([pope]) == "pope"
    with pytest.raises(UserError, match="one benchmark at a time"):
        scoring.summary_name([pope, exact])
    with pytest.raises(UserError, match="nothing to summarize"):
        summarize([], [])


def test_pope_summary_per_split_macro_f1(root):
    gold = ["yes", "no", "yes", "no"]
    splits = ["random", "random", "adversarial", "adversarial"]
    samples = real.load_rows(root, "pope", [real.pope_row(g, split, i)
                                       for i, (g, split) in enumerate(zip(gold, splits))])
    assert [s.kind for s in samples] == splits
    said = ["yes", "yes", "no", "no"]  # random: TP, FP; adversarial: FN, TN
    summary = summarize(samples, [judge(s, x) for s, x in zip(said, samples)])
    assert summary["per_kind"]["random"]["f1"] == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert summary["per_kind"]["adversarial"]["f1"] == 0.0  # no TP: precision = recall = 0
    assert summary["score"] == pytest.approx((2 / 3 + 0) / 2)
    assert summary["yes_share"] == 0.5 and summary["accuracy"] == 0.5


# ---------------------------------------------------------------- grounding

def test_parse_box_variants():
    assert parse_box('[{"bbox_2d": [10, 20, 30, 40], "label": "dog"}]') == (10, 20, 30, 40)
    assert parse_box('```json\n[\n  {"bbox_2d": [1.5, 2, 3, 4]}\n]\n```') == (1.5, 2, 3, 4)
    assert parse_box("[5, 6, 7, 8]") == (5, 6, 7, 8)
    assert parse_box('[{"bbox_2d": [10, 20, 30, 40], "label": "do') == (10, 20, 30, 40)
    assert parse_box('{"label": "a", "bbox_2d": [1, 2, 3, 4]}') == (1, 2, 3, 4)
    assert parse_box("a dog on the left") is None


def test_iou_by_hand():
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((5, 5, 5, 9), (0, 0, 10, 10)) == 0.0  # no area


def grounding_sample(root, bbox, size=(200, 100), split="val"):
    """A RefCOCO sample of ``split`` (its kind) about the COCO box ``bbox`` = [x, y, w, h]."""
    (sample,) = real.load_rows(root, "refcoco", [real.refcoco_row(bbox, size)], split=split)
    assert (sample.kind, sample.image.size, sample.meta["bbox"]) == (split, size, bbox)
    return sample


def test_box_rule_maps_and_thresholds(root):
    target = grounding_sample(root, [50.0, 20.0, 100.0, 40.0])  # -> (50, 20, 150, 60)
    frame = BoxFrame(input_size=(100, 50), image_size=(200, 100))  # half size
    hit = judge('[{"bbox_2d": [25, 10, 75, 30]}]', target, frame)
    assert hit.score == 1.0 and hit.iou == pytest.approx(1.0)
    miss = judge('[{"bbox_2d": [25, 10, 75, 30]}]', target)  # read as original pixels
    assert miss.score == 0.0 and miss.iou == pytest.approx(iou((25, 10, 75, 30),
                                                               (50, 20, 150, 60)))
    assert judge("I cannot tell", target, frame) == Verdict(0.0, "", iou=0.0)


def test_box_summary_per_split(root):
    samples = [grounding_sample(root, [0, 0, 10, 10], split=k) for k in ["val", "val", "testA"]]
    replies = ["[0, 0, 10, 10]", "[0, 0, 4, 10]", "[0, 0, 10, 10]"]
    summary = summarize(samples, [judge(r, s) for r, s in zip(replies, samples)])
    assert summary["per_kind"]["val"]["score"] == 0.5
    assert summary["per_kind"]["val"]["mean_iou"] == pytest.approx((1 + 0.4) / 2)
    assert summary["score"] == pytest.approx((0.5 + 1.0) / 2)  # mean over splits


LMMS_BUDGET = {"min_pixels": 200704, "max_pixels": 1605632, "patch_size": 14, "merge_size": 2}


def qwen_adapter(**budget):
    return adapter_for(Qwen2_5_VLConfig(), Qwen2VLImageProcessorPil(**{**LMMS_BUDGET, **budget}))


@pytest.mark.parametrize("size", [(640, 427), (2000, 1333), (300, 900)])
def test_qwen_frame_is_the_processors_resized_input(size):
    adapter = qwen_adapter()
    out = adapter.image_processor(images=Image.new("RGB", size), return_tensors="pt")
    _, rows, cols = out["image_grid_thw"][0].tolist()
    assert frame_for(adapter, size) == BoxFrame((cols * 14, rows * 14), size)


def _resized_pixels(out, processor) -> np.ndarray:
    """The processor's resized image [H, W, 3] in 0..255, undoing Qwen's patchify."""
    _, rows, cols = out["image_grid_thw"][0].tolist()
    patch, merge, time = processor.patch_size, processor.merge_size, processor.temporal_patch_size
    patches = out["pixel_values"].view(rows // merge, cols // merge, merge, merge, 3, time,
                                       patch, patch)[:, :, :, :, :, 0]
    image = patches.permute(4, 0, 2, 5, 1, 3, 6).reshape(3, rows * patch, cols * patch)
    mean = torch.tensor(processor.image_mean).view(3, 1, 1)
    std = torch.tensor(processor.image_std).view(3, 1, 1)
    return ((image * std + mean) * 255).permute(1, 2, 0).numpy()


@pytest.mark.parametrize(("size", "box"), [((320, 213), (50, 30, 210, 150)),
                                           ((2000, 1333), (300, 500, 1500, 1200))])
def test_box_in_resized_input_comes_back_as_the_original(root, size, box):
    """Paint a box, let Qwen's processor resize the image, find the box in the resized pixels
    (what the model sees, and the coordinates it answers in) and map it back."""
    adapter = qwen_adapter()
    processor = adapter.image_processor
    out = processor(images=image_with_box(size, box), return_tensors="pt")
    rgb = _resized_pixels(out, processor)
    red = (rgb[..., 0] > 127) & (rgb[..., 1] < 128) & (rgb[..., 2] < 128)
    ys, xs = np.nonzero(red)
    seen = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
    frame = frame_for(adapter, size)
    assert frame.input_size == (rgb.shape[1], rgb.shape[0]) != size
    reply = f'```json\n[{{"bbox_2d": {seen}, "label": "red box"}}]\n```'
    x0, y0, x1, y1 = box
    original = grounding_sample(root, [x0, y0, x1 - x0, y1 - y0], size)
    verdict = judge(reply, original, frame)
    assert verdict.iou > 0.99 and verdict.score == 1.0, verdict
    assert judge(reply, original).iou < 0.5  # unmapped, the box misses


def test_frame_for_other_families():
    qwen2 = adapter_for(Qwen2VLConfig(), Qwen2VLImageProcessorPil(**LMMS_BUDGET))
    assert frame_for(qwen2, (640, 427)) == BoxFrame((1000, 1000), (640, 427))
    with pytest.raises(UserError, match="grounding needs one of those"):
        frame_for(SimpleNamespace(family="llava"), (640, 427))


def test_grading_decodes_each_reply_with_its_rules_budget(root, monkeypatch):
    """"Correctly answered" in every analysis decodes as evaluate does: 16 new tokens for a
    benchmark's letters and words, 4 for the embedded sets' one-word answers."""
    asked = []

    def answer_questions(loaded, images, questions, max_new_tokens):
        asked.append((tuple(questions), max_new_tokens))
        return [SimpleNamespace(text="B" if "Options" in q else "red") for q in questions]

    monkeypatch.setattr(grading, "answer_questions", answer_questions)
    (mc,) = real.load_rows(root, "mmstar", [real.mmstar_row("B", ("x", "y"))])
    (word,) = own(root, ("red", (), "all"))
    assert grading.grade(None, [mc, word]) == [True, True]
    assert sorted(asked) == [((mc.ask,), 16), ((word.ask,), 4)]
    asked.clear()
    grading.grade(None, [mc, word], max_new_tokens=8)
    assert asked == [((mc.ask, word.ask), 8)]


def test_an_answer_letter_beyond_the_parsed_options_can_still_be_read(root):
    """Options parsed from a question's text can be miscounted (one option swallowing the
    rest); the answer letter must stay readable, so the letters reach it (and at least D)."""
    swallowing = real.mmstar_row("D", ())
    swallowing["question"] = "Which?\nOptions: A: 5\nB: 6\nC: 7\nD: 8"  # one option a line
    swallowed, two = real.load_rows(root, "mmstar", [swallowing, real.mmstar_row("B", ("cat", "dog"))])
    assert swallowed.choices == ("5\nB: 6\nC: 7\nD: 8",)
    assert judge("D", swallowed).score == 1.0 and judge("(C)", swallowed).prediction == "C"
    assert judge("C", two).prediction == ""  # a well-parsed sample keeps its own letters
