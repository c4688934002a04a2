"""Token groups on the three tiny random families: the groups partition every row, the question
group decodes to the question (with left padding), image and last agree with the ids, regions
agree with the adapter's layout, and bad names, boxes and masks get one UserError sentence."""

from __future__ import annotations

import dataclasses
import doctest

import numpy as np
import pytest
from PIL import Image

import probes.tokens
from probes.errors import UserError
from probes.models.adapters.grids import SEPARATOR
from probes.models.loading import load_model
from probes.tokens import TokenGroups, token_groups, token_groups_batch

# different lengths and different image sizes, so rows get different padding
QUESTIONS = ["What shape is in the image?", "what color?"]
SIZES = [(100, 60), (80, 80)]
BOX = (30, 10, 60, 40)  # inside both images, not cropped away by LLaVA's centre crop
PARTS = ("padding", "system", "image", "question", "template", "last")
# the template tokens around the question, per family: (system, template, last)
TEMPLATE = {
    "llava": (["<s>", "user", ":"], ["assistant"], [":"]),
    "llava-next": (["<s>", "user", ":"], ["assistant"], [":"]),
    "qwen2_5_vl": (
        ["<s>", "<|im_start|>", "system", "you", "are", "a", "helpful", "assistant", ".",
         "<|im_end|>", "<|im_start|>", "user", "<|vision_start|>"],
        ["<|vision_end|>", "<|im_end|>", "<|im_start|>"],
        ["assistant"],
    ),
}


@pytest.fixture(
    scope="module",
    params=["tiny-random-llava", "tiny-random-llava-next", "tiny-random-qwen2.5-vl"],
)
def loaded(request):
    return load_model(request.param)


@pytest.fixture(scope="module")
def inputs(loaded):
    images = [Image.new("RGB", size, (90, 30, 200)) for size in SIZES]
    return loaded.adapter.build_inputs(images, QUESTIONS)


@pytest.fixture(scope="module")
def groups(loaded, inputs) -> list[TokenGroups]:
    return token_groups_batch(loaded.adapter, inputs)


def _tokens(loaded, inputs, row, positions):
    ids = inputs.input_ids[row, positions].tolist()
    return loaded.processor.tokenizer.convert_ids_to_tokens(ids)


def test_groups_partition_every_row(inputs, groups):
    length = inputs.input_ids.shape[1]
    for row, row_groups in enumerate(groups):
        parts = [getattr(row_groups, name) for name in PARTS]
        for part in parts:
            assert part.dtype == np.int64 and np.all(np.diff(part) > 0)  # sorted, unique
        assert sum(part.size for part in parts) == length  # so pairwise disjoint ...
        # ... and, covering every position, a partition
        np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(length))
        padding = np.flatnonzero(inputs.attention_mask[row].numpy() == 0)
        np.testing.assert_array_equal(row_groups.padding, padding)
    assert any(row_groups.padding.size for row_groups in groups)  # padding was exercised


def test_question_decodes_to_the_question(loaded, inputs, groups):
    tokenizer = loaded.processor.tokenizer
    for row, question in enumerate(QUESTIONS):
        positions = groups[row].question
        assert np.all(np.diff(positions) == 1)  # one contiguous run
        ids = inputs.input_ids[row, positions].tolist()
        assert ids == tokenizer(question, add_special_tokens=False)["input_ids"]
        # the word tokenizers lower-case, and decode words joined by spaces
        decoded = tokenizer.decode(ids)
        assert decoded.replace(" ", "") == question.lower().replace(" ", "")


def test_template_groups_hold_the_template(loaded, inputs, groups):
    system, template, last = TEMPLATE[loaded.adapter.family]
    for row, row_groups in enumerate(groups):
        assert _tokens(loaded, inputs, row, row_groups.system) == system
        assert _tokens(loaded, inputs, row, row_groups.template) == template
        assert _tokens(loaded, inputs, row, row_groups.last) == last


def test_image_and_last_match_the_ids(loaded, inputs, groups):
    adapter = loaded.adapter
    length = inputs.input_ids.shape[1]
    for row, row_groups in enumerate(groups):
        ids = inputs.input_ids[row].numpy()
        image = np.flatnonzero(ids == adapter.image_token_id)
        np.testing.assert_array_equal(row_groups.image, image)
        assert row_groups.last.tolist() == [length - 1] == row_groups.get("last").tolist()
        cells = inputs.images[row].layout.token_cells
        separators = row_groups.image[cells[:, 0] == SEPARATOR]
        patches = np.setdiff1d(row_groups.image, separators)
        np.testing.assert_array_equal(row_groups.image_patches, patches)
        # only LLaVA-NeXT has row newlines among its image tokens
        assert (separators.size > 0) == (adapter.family == "llava-next")
        assert row_groups.image_tokens is inputs.images[row]


def test_generated_and_text(inputs, groups):
    length = inputs.input_ids.shape[1]
    clean = groups[0]
    later = clean.with_generated(3)
    assert later.get("generated").tolist() == [length, length + 1, length + 2]
    expected = np.concatenate([clean.question, clean.last, later.generated])
    np.testing.assert_array_equal(later.text, expected)
    np.testing.assert_array_equal(later.get("question,last,generated"), expected)
    assert not np.isin(clean.template, later.text).any()  # the design's text: no template
    assert clean.n_generated == 0 and clean.generated.size == 0  # frozen: a new object
    with pytest.raises(dataclasses.FrozenInstanceError):
        clean.n_generated = 1


def test_box_gives_the_layouts_patches(loaded, inputs):
    for row in range(len(QUESTIONS)):
        found = token_groups(loaded.adapter, inputs, row, box=BOX)
        expected = inputs.images[row].positions_in_box(BOX)
        assert expected.size > 0
        np.testing.assert_array_equal(found.get("object"), np.sort(expected))
        background = found.get("background")
        assert not np.isin(background, found.object).any()
        np.testing.assert_array_equal(
            np.sort(np.concatenate([found.object, background])), found.image_patches
        )


def test_mask_matches_box_and_single_pixels(loaded, inputs):
    x0, y0, x1, y1 = BOX
    for row, (width, height) in enumerate(SIZES):
        # on the 80 px image LLaVA's cells are 10 px: the box's edges are cell edges
        rectangle = np.zeros((height, width), dtype=bool)
        rectangle[y0:y1, x0:x1] = True
        from_mask = token_groups(loaded.adapter, inputs, row, mask=rectangle)
        from_box = token_groups(loaded.adapter, inputs, row, box=BOX)
        np.testing.assert_array_equal(from_mask.object, from_box.object)
        np.testing.assert_array_equal(from_mask.background, from_box.background)
    # one pixel gives the cells containing it: inside LLaVA's crop of row 0, on cell edges of row 1
    pixels = [[(20, 0), (51, 29), (79, 59)], [(0, 0), (30, 10), (59, 39), (79, 79)]]
    for row, (width, height) in enumerate(SIZES):
        for x, y in pixels[row]:
            pixel = np.zeros((height, width), dtype=bool)
            pixel[y, x] = True
            expected = np.sort(inputs.images[row].positions_in_box((x, y, x + 1, y + 1)))
            groups = token_groups(loaded.adapter, inputs, row, mask=pixel)
            np.testing.assert_array_equal(groups.object, expected)


def test_batch_helper_and_for_row(loaded, inputs, groups):
    boxed = token_groups_batch(loaded.adapter, inputs, boxes=[None, (0, 0, 32, 32)])
    assert boxed[0].object.size == 0 and boxed[1].object.size > 0
    again = TokenGroups.for_row(loaded.adapter, inputs, 1, box=(0, 0, 32, 32))
    np.testing.assert_array_equal(again.object, boxed[1].object)
    np.testing.assert_array_equal(boxed[1].question, groups[1].question)


def test_patches(groups):
    image = groups[0].image
    np.testing.assert_array_equal(groups[0].patches(offsets=[2, 0, 2]), image[[0, 2]])
    np.testing.assert_array_equal(groups[0].patches(positions=image[[3, 1]]), image[[1, 3]])
    with pytest.raises(UserError, match="no image tokens"):
        groups[0].patches(positions=[int(groups[0].last[0])])
    with pytest.raises(UserError, match="offsets"):
        groups[0].patches(offsets=[image.size])


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("questions", "unknown token group 'questions'; valid groups are image, "),
        ("question, nope", "unknown token group 'nope'"),
        ("object", "'object' is empty"),
        ("question,generated", "'generated' is empty"),
    ],
)
def test_bad_group_names(groups, name, message):
    with pytest.raises(UserError, match=message) as error:
        groups[0].get(name)
    assert str(error.value).count(". ") == 0 and str(error.value).endswith(".")  # one sentence


@pytest.mark.parametrize(
    "region",
    [
        {"box": (200, 200, 210, 210)},  # no overlap at all
        {"box": (-5, 0, 10, 10)},  # beyond the image's bounds
        {"box": (50, 10, 90, 70)},  # bottom beyond the 60 px height
        {"box": (40, 10, 40, 20)},  # empty
        {"mask": np.ones((10, 10), dtype=bool)},  # not the image's shape
        {"mask": np.zeros((60, 100), dtype=bool)},  # selects nothing
        {"box": BOX, "mask": np.ones((60, 100), dtype=bool)},  # both
    ],
)
def test_bad_regions(loaded, inputs, region):
    with pytest.raises(UserError):
        token_groups(loaded.adapter, inputs, 0, **region)


def test_retokenising_mismatch_is_loud(loaded, inputs):
    # a prompt that does not belong to the ids: the question cannot be located, so refuse
    swapped = dataclasses.replace(inputs, prompts=(inputs.prompts[1], inputs.prompts[0]))
    with pytest.raises(RuntimeError, match="input_ids"):
        token_groups(loaded.adapter, swapped, 0)


def test_module_example_runs():
    assert doctest.testmod(probes.tokens).failed == 0
