"""The public entry points (probes.build_inputs, record_attention, decode, top_tokens) and the
trap they close: inputs built with a box carry their token groups, so every later call uses
the box without groups=, and gives what the explicit old way gives."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

import probes
from probes.errors import UserError
from probes.masking import Knockout
from probes.models.answer import answer_text
from probes.run import masked_generate, run_knockouts
from probes.tokens import token_groups

BOX = (8, 12, 41, 45)
QUESTION = "what color is the circle?"


@pytest.fixture(scope="module")
def image():
    picture = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(picture).ellipse((8, 12, 40, 44), fill="red")
    return picture


@pytest.fixture(scope="module")
def carried(tiny_llava, image):
    return probes.build_inputs(tiny_llava, image, QUESTION, box=BOX)


@pytest.fixture(scope="module")
def explicit(tiny_llava, image):
    """The old way: plain adapter inputs and groups built with the box by hand."""
    inputs = tiny_llava.adapter.build_inputs([image], [QUESTION])
    return inputs, token_groups(tiny_llava.adapter, inputs, box=BOX)


def _sweep(loaded):
    n = loaded.adapter.num_layers
    return [Knockout.window("object->question,last", layer, 1, n) for layer in range(n)]


def test_public_names_resolve():
    for name in probes.__all__:
        assert getattr(probes, name) is not None
    assert callable(probes.record_attention) and callable(probes.load_model)
    with pytest.raises(AttributeError):
        probes.no_such_name  # noqa: B018


def test_inputs_carry_the_box(tiny_llava, carried, explicit):
    groups = carried.groups[0]
    np.testing.assert_array_equal(groups.object, explicit[1].object)
    assert token_groups(tiny_llava.adapter, carried) is groups
    # a region given explicitly still wins over the carried one
    other = token_groups(tiny_llava.adapter, carried, box=(48, 48, 64, 64))
    assert not np.isin(other.object, groups.object).any()


def test_run_knockouts_uses_the_carried_box(tiny_llava, carried, explicit):
    inputs, groups = explicit
    ours = run_knockouts(tiny_llava, carried, _sweep(tiny_llava))
    reference = run_knockouts(tiny_llava, inputs, _sweep(tiny_llava), groups=groups)
    torch.testing.assert_close(ours.logits, reference.logits, rtol=0, atol=1e-5)
    assert (ours.logits - ours.clean_logits).abs().max() > 1e-3  # the box's flow mattered
    # groups= passed explicitly overrides the carried ones
    corner = token_groups(tiny_llava.adapter, carried, box=(48, 48, 64, 64))
    moved = run_knockouts(tiny_llava, carried, _sweep(tiny_llava), groups=corner)
    torch.testing.assert_close(moved.logits, run_knockouts(
        tiny_llava, inputs, _sweep(tiny_llava), groups=corner).logits, rtol=0, atol=1e-5)
    assert (moved.logits - ours.logits).abs().max() > 1e-3


def test_decode_uses_the_box_and_returns_text(tiny_llava, carried, explicit):
    inputs, groups = explicit
    knockout = Knockout.window("object->question,last", 1, 1, tiny_llava.adapter.num_layers)
    reply = probes.decode(tiny_llava, carried, knockout, max_new_tokens=4)
    reference = masked_generate(tiny_llava, inputs, knockout, 4, groups=groups)
    assert reply.tokens == reference.tokens
    torch.testing.assert_close(reply.logits, reference.logits, rtol=0, atol=1e-5)
    assert reply.text == answer_text(tiny_llava, reference.tokens) != ""
    # flows as text are blocked at every layer
    every = Knockout(knockout.flows, tuple(range(tiny_llava.adapter.num_layers)))
    assert probes.decode(tiny_llava, carried, "object->question,last", 4).tokens == \
        masked_generate(tiny_llava, inputs, every, 4, groups=groups).tokens


def test_nnsight_engine_uses_the_carried_box(tiny_llava, carried, explicit):
    from probes import nnsight as engine

    inputs, groups = explicit
    ours = engine.run_knockouts(tiny_llava, carried, _sweep(tiny_llava)[:2])
    reference = run_knockouts(tiny_llava, inputs, _sweep(tiny_llava)[:2], groups=groups)
    torch.testing.assert_close(ours.logits, reference.logits, rtol=0, atol=1e-4)


def test_record_attention_equals_eager_output_attentions(carried, image):
    eager = probes.load_model("tiny-random-llava", attn_implementation="eager")
    inputs = probes.build_inputs(eager, image, QUESTION, box=BOX)
    groups = inputs.groups[0]
    recording = probes.record_attention(eager, inputs, queries="question,last", keys="object")
    with torch.inference_mode():
        reference = eager.model(**inputs.batch, output_attentions=True).attentions
    queries = groups.get("question,last")
    np.testing.assert_array_equal(recording.keys, groups.object)
    for layer, maps in recording.maps.items():
        expected = reference[layer][0][:, queries][:, :, groups.object].float()
        torch.testing.assert_close(maps, expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(recording.values(2), recording.maps[2].mean(0).mean(0).numpy())
    np.testing.assert_allclose(recording.values(2, head=1), recording.maps[2][1].mean(0).numpy())
    # under a knockout: the executor's own recording of that condition
    knockout = Knockout.window("object->last", 1, 1, eager.adapter.num_layers)
    blocked = probes.record_attention(eager, inputs, "last", "image", knockout=knockout)
    template = probes.AttentionRecorder(groups.last, groups.image)
    executor = run_knockouts(eager, inputs, [knockout], record=template).attentions
    for layer, maps in blocked.maps.items():
        torch.testing.assert_close(maps, executor[layer][0])
    assert blocked.maps[1][:, 0, np.isin(groups.image, groups.object)].max() == 0


def test_top_tokens(tiny_llava):
    logits = torch.tensor([[0.0, 2.0, 1.0, -1.0], [3.0, 0.0, 0.0, 0.0]])
    rows = probes.top_tokens(tiny_llava, logits, k=2)
    decode = tiny_llava.processor.tokenizer.decode
    assert [token for token, _ in rows[0]] == [decode([1]), decode([2])]
    probabilities = logits.softmax(-1)
    assert rows[1][0] == (decode([0]), pytest.approx(float(probabilities[1, 0])))
    assert sum(p for _, p in probes.top_tokens(tiny_llava, logits[0], k=4)) == pytest.approx(1.0)


def test_build_inputs_reads_files_and_refuses_what_it_cannot(tiny_llava, image, tmp_path):
    path = tmp_path / "circle.png"
    image.save(path)
    from_file = probes.build_inputs(tiny_llava, str(path), QUESTION, box=BOX)
    np.testing.assert_array_equal(from_file.groups[0].object,
                                  probes.build_inputs(tiny_llava, image, QUESTION, box=BOX).groups[0].object)
    with pytest.raises(UserError, match="PIL image or an image file"):
        probes.build_inputs(tiny_llava, np.zeros((64, 64, 3)), QUESTION)
    with pytest.raises(UserError, match="not a non-empty"):
        probes.build_inputs(tiny_llava, image, QUESTION, box=(0, 0, 90, 10))
    assert probes.build_inputs(tiny_llava, image, QUESTION).groups[0].object.size == 0
