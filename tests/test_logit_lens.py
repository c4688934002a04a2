"""The logit lens (probes.logit_lens) against ``output_hidden_states`` through the final norm
and head by hand on the three tiny families, its last layer against the model's own logits,
the readout against the whole vocabulary, the nnsight engine against the hooks; and the
analysis (analyses.logit_lens): end to end on the embedded model, shards + merge, bad input,
figures."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from probes.logit_lens import lens_logits, lens_readout, residuals
from probes.models.loading import load_model

FAMILIES = ("tiny-random-llava", "tiny-random-llava-next", "tiny-random-qwen2.5-vl")
EXACT = 1e-5


def shape_image(size=(90, 60)) -> Image.Image:
    image = Image.new("RGB", size, "white")
    ImageDraw.Draw(image).ellipse((10, 8, 50, 44), fill=(200, 30, 30))
    return image


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    loaded = load_model(request.param)
    inputs = loaded.adapter.build_inputs([shape_image()], ["what color is the shape ?"])
    return loaded, inputs


def by_hand(loaded, inputs, positions):
    """[layers, positions, vocab]: every decoder layer's output from ``output_hidden_states``
    (entry l + 1 leaves layer l; the last entry is already normed by the model) through
    ``model.model.language_model.norm`` and ``model.lm_head``, written out here."""
    model = loaded.model
    with torch.inference_mode():
        output = model(**inputs.batch, output_hidden_states=True)
        states = output.hidden_states
        layers = len(states) - 1
        rows = [model.model.language_model.norm(states[layer + 1][0, positions])
                for layer in range(layers - 1)]
        rows.append(states[layers][0, positions])  # the model's own final norm, applied
        return model.lm_head(torch.stack(rows)).float(), output.logits[0].float()


def test_lens_equals_hidden_states_through_norm_and_head(family):
    loaded, inputs = family
    image = inputs.images[0].positions
    positions = np.concatenate([image[:5], image[-3:], [inputs.input_ids.shape[1] - 1]])
    expected, logits = by_hand(loaded, inputs, torch.from_numpy(positions))
    lens = lens_logits(loaded, inputs, positions)
    assert lens.shape == (loaded.adapter.num_layers, positions.size, expected.shape[-1])
    torch.testing.assert_close(lens, expected, atol=EXACT, rtol=0)
    # the last layer's lens is the model's own next-token logits at every position read
    torch.testing.assert_close(lens[-1], logits[torch.from_numpy(positions)], atol=EXACT, rtol=0)
    # and the layers differ: the lens reads each layer, not one of them many times
    assert (lens[0] - lens[-1]).abs().max() > 1e-2


def test_groups_negative_positions_and_chosen_layers(family):
    loaded, inputs = family
    whole = lens_logits(loaded, inputs, "image,last")
    some = lens_logits(loaded, inputs, [-1], layers=[2, 0])
    torch.testing.assert_close(some, whole[[2, 0], -1:], atol=EXACT, rtol=0)


def test_readout_equals_the_whole_vocabulary(family, monkeypatch):
    loaded, inputs = family
    monkeypatch.setattr("probes.logit_lens.CHUNK", 7)  # several chunks of image tokens
    tokens = [0, 3, int(inputs.input_ids[0, -1])]
    readout = lens_readout(loaded, inputs, "image", tokens=tokens, top_k=4)
    log_probs = lens_logits(loaded, inputs, "image").log_softmax(-1)
    top = log_probs.topk(4, dim=-1)
    torch.testing.assert_close(readout.top_log_probs, top.values, atol=EXACT, rtol=0)
    assert torch.equal(readout.top_ids[..., 0], log_probs.argmax(-1))
    torch.testing.assert_close(readout.token_log_probs, log_probs[..., tokens], atol=EXACT, rtol=0)
    # rank by counting, token by token: how many tokens have a strictly larger log-probability
    for t, token in enumerate(tokens):
        counted = (log_probs > log_probs[..., token:token + 1]).sum(-1)
        assert torch.equal(readout.token_ranks[..., t], counted)
    assert readout.layers == tuple(range(loaded.adapter.num_layers))


def test_nnsight_engine_reads_the_same_residuals(family):
    from probes.nnsight.lens import residuals as traced

    loaded, inputs = family
    fast = residuals(loaded, inputs, "image,last", layers=[3, 0, 1])
    other = traced(loaded, inputs, "image,last", layers=[3, 0, 1])
    torch.testing.assert_close(other, fast, atol=EXACT, rtol=0)
    a = lens_readout(loaded, inputs, "last", states=fast, layers=[3, 0, 1], tokens=[5])
    b = lens_readout(loaded, inputs, "last", states=other, layers=[3, 0, 1], tokens=[5])
    torch.testing.assert_close(a.token_log_probs, b.token_log_probs, atol=EXACT, rtol=0)


def test_refuses_bad_arguments(tiny_llava):
    from probes.errors import UserError

    inputs = tiny_llava.adapter.build_inputs([shape_image()], ["what color ?"])
    with pytest.raises(UserError, match="out of range"):
        lens_logits(tiny_llava, inputs, "last", layers=[9])
    with pytest.raises(UserError, match="empty"):
        lens_logits(tiny_llava, inputs, "object")
    with pytest.raises(ValueError, match="positions"):
        lens_logits(tiny_llava, inputs, [10_000])
    two = tiny_llava.adapter.build_inputs([shape_image()] * 2, ["what color ?"] * 2)
    with pytest.raises(ValueError, match="one input row"):
        lens_logits(tiny_llava, two, "last")
    assert json  # (used by the analysis tests below)
