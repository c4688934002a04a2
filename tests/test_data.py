"""Tests for analyses.data: easy-VQA loading, the fine-grained generator, the registry.

Pixel checks re-derive objects from the rendered image (modal colour = background) instead of
trusting the generator's own boxes, so a drawing, placement or bookkeeping bug shows up here.
"""

from __future__ import annotations

import collections
import hashlib
import re
import time

import easy_vqa
import numpy as np
import pytest

import analyses.data.easyvqa as easyvqa_module
from analyses.data import COLORS, Box, Dataset, available_datasets, load_dataset, vocabulary
from analyses.data.palette import foreground_mask
from analyses.data.questions import NUMBER_WORDS, VOCABULARY

EASY_VQA_ANSWERS = {"yes", "no", "circle", "rectangle", "triangle", *COLORS}
EASY_VQA_WORDS = [
    "?", "a", "black", "blue", "brown", "circle", "color", "contain", "does", "gray", "green",
    "image", "in", "is", "no", "not", "of", "present", "rectangle", "red", "shape", "teal", "the",
    "there", "triangle", "what", "yellow", "yes",
]  # fmt: skip
QUESTION_FORMAT = re.compile(r"[a-z]+( [a-z]+)* \?")
GAP = 2  # the fine-grained default


# ---------------------------------------------------------------- helpers


def modal_color(pixels: np.ndarray) -> np.ndarray:
    packed = pixels.reshape(-1, 3).astype(np.int32) @ np.array([1 << 16, 1 << 8, 1])
    values, counts = np.unique(packed, return_counts=True)
    mode = int(values[counts.argmax()])
    return np.array([mode >> 16, (mode >> 8) & 255, mode & 255], dtype=pixels.dtype)


def foreground(pixels: np.ndarray) -> np.ndarray:
    """Pixels that differ at all from the modal (background) colour."""
    return (pixels != modal_color(pixels)).any(axis=-1)


def region(array: np.ndarray, box: Box) -> np.ndarray:
    return array[box.y0 : box.y1, box.x0 : box.x1]


def shape_from_fill(fill: float) -> str:
    """Aliased PIL shapes fill their box: rectangle 1, circle ~0.66-0.84, triangle ~0.5-0.63."""
    if fill == 1.0:
        return "rectangle"
    if 0.65 < fill < 0.9:
        return "circle"
    assert 0.45 < fill < 0.65, fill
    return "triangle"


def describe(pixels: np.ndarray, fg: np.ndarray, box: Box) -> tuple[str, str, int]:
    """(shape, colour name, pixel count) of the one object drawn in ``box``."""
    inside = region(fg, box)
    colors = np.unique(region(pixels, box)[inside], axis=0)  # small: a box, not the image
    assert len(colors) == 1, f"object in {box} has {len(colors)} colours"
    name = {rgb: n for n, rgb in COLORS.items()}[tuple(int(c) for c in colors[0])]
    return shape_from_fill(inside.mean()), name, int(inside.sum())


def is_one_blob(mask: np.ndarray) -> bool:
    """True when the True pixels form one 8-connected blob (flood fill from one of them)."""
    reached = np.zeros_like(mask)
    reached[tuple(np.argwhere(mask)[0])] = True
    while True:
        padded, (height, width) = np.pad(reached, 1), mask.shape
        grown = np.zeros_like(mask)
        for dy in range(3):
            for dx in range(3):
                grown |= padded[dy : dy + height, dx : dx + width]
        grown &= mask
        if np.array_equal(grown, reached):
            return bool(np.array_equal(reached, mask))
        reached = grown


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def fine_samples():
    return list(load_dataset("fine-grained", "test", limit=300))


@pytest.fixture(scope="module")
def easy_test():
    return load_dataset("easy-vqa", "test")


# ---------------------------------------------------------------- fine-grained generator


def test_same_seed_gives_identical_samples():
    first = load_dataset("fine-grained", "train", limit=40, seed=7)
    second = load_dataset("fine-grained", "train", limit=40, seed=7)
    for a, b in zip(first, second, strict=True):
        assert a.image.tobytes() == b.image.tobytes()
        assert a.boxes == b.boxes and a.target == b.target
        assert a.question == b.question and a.answer == b.answer
        assert np.array_equal(a.mask, b.mask)
    assert first.fingerprint() == second.fingerprint()


def test_different_seed_or_split_gives_different_samples():
    base = load_dataset("fine-grained", "train", limit=20, seed=7)
    for other in (
        load_dataset("fine-grained", "train", limit=20, seed=8),
        load_dataset("fine-grained", "test", limit=20, seed=7),
    ):
        assert all(a.image.tobytes() != b.image.tobytes() for a, b in zip(base, other, strict=True))
        assert [s.boxes for s in base] != [s.boxes for s in other]
        assert [s.question for s in base] != [s.question for s in other]
        assert base.fingerprint() != other.fingerprint()


def test_limit_and_size_give_the_same_prefix():
    by_limit = load_dataset("fine-grained", "test", limit=12)
    by_size = load_dataset("fine-grained", "test", size=12)
    longer = load_dataset("fine-grained", "test", size=30)
    assert len(by_limit) == len(by_size) == 12
    assert by_limit.fingerprint() == by_size.fingerprint() != longer.fingerprint()
    for a, b in zip(by_limit, longer[:12], strict=True):
        assert a.image.tobytes() == b.image.tobytes() and a.question == b.question


def test_generated_data_is_pinned():
    # Fails when a change alters generated samples: bump fine_grained.VERSION, update these.
    digest = hashlib.sha256()
    for sample in load_dataset("fine-grained", "test", limit=8):
        digest.update(sample.image.tobytes() + sample.question.encode() + sample.answer.encode())
    assert digest.hexdigest()[:16] == "eea4ce686e539eb5"
    assert load_dataset("fine-grained", "test").fingerprint() == "10ec8298ee0fb105"
    assert load_dataset("easy-vqa", "test").fingerprint() == "17a5264977c847f7"


def test_default_split_sizes_and_kind_rotation():
    assert len(load_dataset("fine-grained", "train")) == 20_000
    test = load_dataset("fine-grained", "test")
    assert len(test) == 1_000
    assert [test[i].kind for i in range(8)] == ["color", "shape", "count", "relation"] * 2
    only_count = load_dataset("fine-grained", "test", limit=5, kinds="count")
    assert {s.kind for s in only_count} == {"count"}


def test_boxes_match_drawn_pixels(fine_samples):
    for sample in fine_samples:
        pixels = np.asarray(sample.image)
        fg = foreground(pixels)
        covered = np.zeros_like(fg)
        for box in sample.boxes:
            inside = region(fg, box)
            # the drawn pixels reach every edge of the box, so their bbox is the box
            assert Box.from_mask(inside) == Box(0, 0, box.width, box.height), sample.id
            covered[box.y0 : box.y1, box.x0 : box.x1] = True
        assert not (fg & ~covered).any(), f"{sample.id}: pixels drawn outside every box"
        for i, a in enumerate(sample.boxes):
            for b in sample.boxes[i + 1 :]:
                apart = max(b.x0 - a.x1, a.x0 - b.x1, b.y0 - a.y1, a.y0 - b.y1)
                assert apart >= GAP, f"{sample.id}: {a} and {b} are {apart} px apart"
        assert 8 <= min(max(b.width, b.height) for b in sample.boxes)
        assert max(max(b.width, b.height) for b in sample.boxes) <= 32


def test_mask_is_exactly_the_target_pixels(fine_samples):
    for sample in fine_samples:
        fg = foreground(np.asarray(sample.image))
        expected = np.zeros_like(fg)
        for box in sample.target_boxes:
            expected[box.y0 : box.y1, box.x0 : box.x1] = region(fg, box)
        assert sample.mask.dtype == bool and sample.mask.shape == (128, 128)
        assert np.array_equal(sample.mask, expected), sample.id
        assert not sample.mask.flags.writeable


def test_answers_agree_with_the_pixels(fine_samples):
    seen_kinds = collections.Counter()
    for s in fine_samples:
        pixels = np.asarray(s.image)
        fg = foreground(pixels)
        objects = [describe(pixels, fg, box) for box in s.boxes]
        words = s.question.split()
        seen_kinds[s.kind] += 1
        if s.kind == "color":
            shape = words[-2]
            same_shape = [i for i, o in enumerate(objects) if o[0] == shape]
            assert objects[s.target[0]][:2] == (shape, s.answer)
            if words[-3] in ("small", "large"):
                assert len(same_shape) == 2
                sizes = sorted(same_shape, key=lambda i: objects[i][2])
                assert objects[sizes[1]][2] >= 2 * objects[sizes[0]][2]
                assert s.target[0] == sizes[0 if words[-3] == "small" else 1]
            else:
                assert same_shape == list(s.target)
        elif s.kind == "shape":
            color = words[-3]
            assert [i for i, o in enumerate(objects) if o[1] == color] == list(s.target)
            assert objects[s.target[0]][0] == s.answer
        elif s.kind == "count":
            attribute = words[2]
            field = 1 if attribute in COLORS else 0
            value = attribute if field else attribute[:-1]  # "circles" -> "circle"
            counted = [i for i, o in enumerate(objects) if o[field] == value]
            assert counted == list(s.target)
            assert s.answer == NUMBER_WORDS[len(counted)]
        else:
            check_relation(s, objects)
    assert set(seen_kinds) == {"color", "shape", "count", "relation"}


def check_relation(sample, objects):
    match = re.fullmatch(r"is the (\w+) (\w+) (left of|right of|above|below) the (\w+) (\w+) \?",
                         sample.question)  # fmt: skip
    assert match, sample.question
    color_a, shape_a, relation, color_b, shape_b = match.groups()
    for i, (color, shape) in zip(
        sample.target, ((color_a, shape_a), (color_b, shape_b)), strict=True
    ):
        assert [j for j, o in enumerate(objects) if o[:2] == (shape, color)] == [i]
    a, b = sample.target_boxes
    holds = {
        "left of": a.x1 + GAP <= b.x0,
        "right of": b.x1 + GAP <= a.x0,
        "above": a.y1 + GAP <= b.y0,
        "below": b.y1 + GAP <= a.y0,
    }
    opposite = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
    # unambiguous: the relation or its mirror image holds outright
    assert holds[relation] != holds[opposite[relation]]
    assert sample.answer == ("yes" if holds[relation] else "no")


def test_answers_are_balanced_within_each_kind():
    answers = collections.defaultdict(collections.Counter)
    dataset = load_dataset("fine-grained", "train", limit=2_000)
    for i, (_question, answer) in enumerate(dataset.texts()):
        answers[dataset.params["kinds"][i % 4]][answer] += 1
    expected = {
        "color": set(COLORS),
        "shape": {"circle", "rectangle", "triangle"},
        "count": {"zero", "one", "two", "three", "four"},
        "relation": {"yes", "no"},
    }
    for kind, counts in answers.items():
        assert set(counts) == expected[kind]
        total, uniform = sum(counts.values()), 1 / len(expected[kind])
        assert max(counts.values()) / total <= min(0.6, 1.5 * uniform), (kind, counts)
        assert min(counts.values()) / total >= 0.5 * uniform, (kind, counts)


def test_words_come_from_the_closed_vocabulary(fine_samples):
    for sample in fine_samples:
        assert QUESTION_FORMAT.fullmatch(sample.question), sample.question
        assert set(sample.question.split()) | {sample.answer} <= set(VOCABULARY)
    used = vocabulary([load_dataset("fine-grained", "train", limit=400)])
    assert set(used) == set(VOCABULARY) - {"five", "six", "seven"}  # max_count is 4


def test_generation_is_fast():
    start = time.perf_counter()
    list(load_dataset("fine-grained", "train", limit=300, seed=3))
    assert time.perf_counter() - start < 3.0  # ~0.2 s expected; guards against retry storms


def test_invalid_parameters_are_refused():
    with pytest.raises(ValueError, match="min_size must be >= 6"):
        load_dataset("fine-grained", min_size=4)
    with pytest.raises(ValueError, match="unknown fine-grained parameter"):
        load_dataset("fine-grained", colour="red")
    with pytest.raises(ValueError, match="known splits: train, test"):
        load_dataset("fine-grained", "val")


# ---------------------------------------------------------------- easy-VQA


def test_easy_vqa_split_sizes(easy_test):
    assert len(easy_vqa.get_train_image_paths()) == 4_000
    assert len(easy_vqa.get_test_image_paths()) == 1_000
    assert len(load_dataset("easy-vqa", "train")) == 38_575
    assert len(easy_test) == 9_673
    assert len(load_dataset("easy-vqa", "test", limit=10)) == 10


def test_easy_vqa_kinds_and_answers():
    for split, yes_no in (("train", 28_407), ("test", 7_136)):  # counts from easy-VQA's README
        dataset = load_dataset("easy-vqa", split)
        kinds = collections.Counter()
        for question, answer in dataset.texts():
            assert answer in EASY_VQA_ANSWERS
            assert QUESTION_FORMAT.fullmatch(question), question
            kind = easyvqa_module.kind_of_answer(answer)
            assert (kind == "color") == ("color" in question.split()), question
            kinds[kind] += 1
        assert kinds["yes/no"] == yes_no
        assert set(kinds) == {"shape", "color", "yes/no"}


def test_easy_vqa_masks_are_one_plausible_blob(easy_test):
    first_per_image = {}
    for sample in easy_test:
        first_per_image.setdefault(sample.image_id, sample)
    assert len(first_per_image) == 1_000
    total_area = 0
    for number, sample in enumerate(first_per_image.values()):
        mask, (box,) = sample.mask, sample.boxes
        assert sample.kind in ("shape", "color", "yes/no") and sample.target == (0,)
        assert mask.shape == (64, 64) and 40 <= mask.sum() <= 1_200, sample.image_id
        # all 5,000 images are one blob (checked once); 300 keep the test fast
        assert number >= 300 or is_one_blob(mask), sample.image_id
        assert Box.from_mask(mask) == box and box.x1 <= 64 and box.y1 <= 64
        assert 8 <= box.width <= 34 and 8 <= box.height <= 34
        if sample.kind == "color":  # the shape's dominant pixel colour is the answer's RGB
            rgb = modal_color(np.asarray(sample.image)[mask])
            assert tuple(int(c) for c in rgb) == COLORS[sample.answer], sample.id
        total_area += int(mask.sum())
    # pins the mask rule (threshold 30 on the modal border colour): 408,796 at threshold 0
    assert total_area == 396_827


def test_foreground_is_more_than_30_away_from_the_border_colour():
    pixels = np.full((8, 8, 3), 240, dtype=np.uint8)
    pixels[0, 0] = COLORS["red"]  # a shape over a corner must not become the background
    pixels[3, 3] = (250, 250, 250)  # summed difference exactly 30: background
    pixels[3, 4] = (251, 250, 250)  # 31: shape
    mask = foreground_mask(pixels)
    assert mask[0, 0] and mask[3, 4] and not mask[3, 3] and mask.sum() == 2


def test_easy_vqa_decodes_each_image_once(monkeypatch):
    calls = collections.Counter()
    real_decode = easyvqa_module._decode_image

    def counting_decode(path):
        calls[path] += 1
        return real_decode(path)

    monkeypatch.setattr(easyvqa_module, "_decode_image", counting_decode)
    dataset = load_dataset("easy-vqa", "test", limit=300)
    images = {}
    for _ in range(2):
        for sample in dataset:
            images.setdefault(sample.image_id, sample.image)
            assert sample.image is images[sample.image_id]
    assert max(calls.values()) == 1 and len(calls) == len(images) > 20


def test_easy_vqa_fingerprint_follows_the_questions():
    ten, ten_again, eleven = (load_dataset("easy-vqa", limit=n) for n in (10, 10, 11))
    assert ten.fingerprint() == ten_again.fingerprint() != eleven.fingerprint()
    with pytest.raises(ValueError, match="easy-vqa takes no parameters"):
        load_dataset("easy-vqa", seed=1)


def test_easy_vqa_vocabulary():
    both = [load_dataset("easy-vqa", "train"), load_dataset("easy-vqa", "test")]
    assert vocabulary(both) == EASY_VQA_WORDS


# ---------------------------------------------------------------- registry and Dataset


def test_unknown_dataset_names_the_known_ones():
    known = available_datasets()
    assert {"easy-vqa", "fine-grained", "vstar", "pope", "gqa", "refcoco"} <= set(known)
    with pytest.raises(ValueError) as error:
        load_dataset("nope")
    message = str(error.value)
    assert message.startswith(f"unknown dataset 'nope'; known datasets: {', '.join(known)} ")
    assert message.count("\n") == 0 and message.endswith(".")


def test_negative_limit_is_refused():
    with pytest.raises(ValueError, match="limit must be None or >= 0"):
        load_dataset("easy-vqa", limit=-1)


def test_dataset_behaves_as_a_sequence():
    dataset = load_dataset("fine-grained", "test", limit=5)
    assert isinstance(dataset, Dataset)
    assert (dataset.name, dataset.split) == ("fine-grained", "test")
    assert dataset[-1].id == dataset[4].id == "fine-grained/test/0/4"
    assert [s.id for s in dataset[1:3]] == ["fine-grained/test/0/1", "fine-grained/test/0/2"]
    with pytest.raises(IndexError):
        dataset[5]
