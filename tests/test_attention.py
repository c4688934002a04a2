"""The attention engine against references: eager ``output_attentions`` for recording, the
clean run for knockouts (earlier layers bit-identical), sdpa against eager, on each family."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
from helpers import TINY_FAMILIES
from PIL import Image

from probes import attention
from probes.attention import CombinedPlan, attach
from probes.errors import UserError
from probes.masking import EdgeMaskPlan, Knockout
from probes.models.loading import load_model
from probes.record import AttentionRecorder
from probes.tokens import token_groups_batch

MODELS = list(TINY_FAMILIES)


@pytest.fixture(scope="module", params=MODELS)
def setup(request):
    loaded = load_model(request.param)
    inputs = loaded.adapter.build_inputs(
        [Image.new("RGB", (64, 64), (200, 40, 40)), Image.new("RGB", (90, 60), (20, 90, 200))],
        ["what shape is in the image ?", "what color ?"],
    )
    return loaded, inputs


def _forward(loaded, inputs, plan=None, implementation="sdpa", **kwargs):
    attention.enable(loaded.model, implementation)
    modules = loaded.adapter.attention_modules(loaded.model)
    with torch.inference_mode(), attach(modules, plan) if plan else contextlib.nullcontext():
        return loaded.model(**inputs.batch, **kwargs)


def test_passthrough_and_recording_are_bit_identical(setup):
    loaded, inputs = setup
    loaded.model.set_attn_implementation({"text_config": "sdpa"})
    with torch.inference_mode():
        plain = loaded.model(**inputs.batch).logits
    assert torch.equal(_forward(loaded, inputs).logits, plain)
    recorder = AttentionRecorder(queries=range(inputs.input_ids.shape[1]))
    assert torch.equal(_forward(loaded, inputs, recorder).logits, plain)


def test_recording_equals_eager_output_attentions(setup):
    loaded, inputs = setup
    loaded.model.set_attn_implementation({"text_config": "eager"})
    with torch.inference_mode():
        reference = loaded.model(**inputs.batch, output_attentions=True).attentions
    length = inputs.input_ids.shape[1]
    recorder = AttentionRecorder(queries=range(length))
    _forward(loaded, inputs, recorder, "sdpa")
    assert sorted(recorder.maps) == list(range(loaded.adapter.num_layers))
    real = inputs.attention_mask.bool()
    for layer, expected in enumerate(reference):
        got = recorder.maps[layer]
        assert got.shape == expected.shape  # [batch, heads, queries, keys]
        # padding query rows are undefined in both; compare every real query row
        for b in range(got.shape[0]):
            torch.testing.assert_close(got[b][:, real[b]], expected[b][:, real[b]].float(),
                                       atol=1e-5, rtol=0)


def test_recording_reductions_and_key_subset(setup):
    loaded, inputs = setup
    keys = inputs.images[0].positions[:5]
    full = AttentionRecorder(queries=[inputs.input_ids.shape[1] - 1], layers=[1])
    reduced = AttentionRecorder(queries=[inputs.input_ids.shape[1] - 1], keys=keys, layers=[1],
                                reduce="max_heads")
    _forward(loaded, inputs, CombinedPlan((full, reduced)))
    expected = full.maps[1][..., torch.from_numpy(keys)].amax(1, keepdim=True)
    torch.testing.assert_close(reduced.maps[1], expected)


def _knockout_plan(loaded, inputs, layer):
    groups = token_groups_batch(loaded.adapter, inputs)
    knockout = Knockout.window("image->question,last", layer, 1, loaded.adapter.num_layers)
    padding = [int((~inputs.attention_mask[b].bool()).sum()) for b in range(len(groups))]
    return EdgeMaskPlan([knockout.edges(g, loaded.adapter.num_layers) for g in groups], padding), groups


def test_knockout_changes_only_blocked_rows_from_its_layer_on(setup):
    loaded, inputs = setup
    layer = 1
    clean = _forward(loaded, inputs, output_hidden_states=True).hidden_states
    plan, groups = _knockout_plan(loaded, inputs, layer)
    blocked = _forward(loaded, inputs, plan, output_hidden_states=True).hidden_states
    # hidden_states[i] is the input of layer i: layers before the knockout are bit-identical
    for i in range(layer + 1):
        assert torch.equal(blocked[i], clean[i]), i
    # the output of the knockout layer differs exactly on the blocked query rows (left-padding
    # rows read nothing real; their values are undefined in both runs and never read)
    for b, g in enumerate(groups):
        differs = (blocked[layer + 1][b] != clean[layer + 1][b]).any(-1)
        differs &= inputs.attention_mask[b].bool()
        changed = differs.nonzero()[:, 0].numpy()
        np.testing.assert_array_equal(changed, g.get("question,last"))


def test_blocked_edges_get_exactly_zero_attention(setup):
    loaded, inputs = setup
    plan, groups = _knockout_plan(loaded, inputs, 1)
    recorder = AttentionRecorder(queries=range(inputs.input_ids.shape[1]), layers=[0, 1])
    _forward(loaded, inputs, CombinedPlan((plan, recorder)))
    for b, g in enumerate(groups):
        rows = torch.from_numpy(g.get("question,last"))
        image = torch.from_numpy(g.image)
        assert recorder.maps[1][b][:, rows][..., image].sum() == 0.0
        assert recorder.maps[0][b][:, rows][..., image].sum() > 0.0  # layer 0 untouched
        totals = recorder.maps[1][b][:, rows].sum(-1)
        torch.testing.assert_close(totals, torch.ones_like(totals))  # rows renormalise


def test_sdpa_and_eager_agree_under_a_knockout(setup):
    loaded, inputs = setup
    plan, _ = _knockout_plan(loaded, inputs, 2)
    real = inputs.attention_mask.bool()  # padding positions are undefined in both
    sdpa = _forward(loaded, inputs, plan, "sdpa").logits[real]
    eager = _forward(loaded, inputs, plan, "eager").logits[real]
    torch.testing.assert_close(sdpa, eager, atol=1e-5, rtol=0)


def test_mix_with_alpha_zero_is_identity_and_alpha_one_is_the_given_distribution(setup):
    loaded, inputs = setup
    last = inputs.input_ids.shape[1] - 1
    image = torch.from_numpy(inputs.images[0].positions)

    class MixPlan:
        def __init__(self, alpha):
            self.alpha = alpha

        def for_layer(self, layer, query_positions, kv_length):
            if layer != 1:
                return None
            mix = torch.zeros(2, len(query_positions), kv_length)
            mix[0, query_positions == last, image] = 1.0
            return attention.LayerEdit(mix=mix, mix_alpha=self.alpha)

    clean = _forward(loaded, inputs).logits
    assert torch.equal(_forward(loaded, inputs, MixPlan(0.0)).logits, clean)
    mixed = _forward(loaded, inputs, MixPlan(1.0)).logits
    assert not torch.equal(mixed[0, -1], clean[0, -1])
    real = inputs.attention_mask[1].bool()  # row 1 carries no mix
    torch.testing.assert_close(mixed[1][real], clean[1][real], atol=1e-5, rtol=0)


def test_layer_out_of_range_and_empty_rows_are_refused(setup):
    loaded, inputs = setup
    n = loaded.adapter.num_layers
    with pytest.raises(UserError, match="out of range"):
        Knockout.window("image->last", n, 1, n)
    with pytest.raises(UserError, match="does not fit"):
        Knockout.window("image->last", 0, n + 1, n)
    groups = token_groups_batch(loaded.adapter, inputs)
    # every key group the prompt has (Mistral's "[INST]<image>question[/INST]" has no template)
    names = ["system", "image", "question", "template", "last"]
    everything = ",".join(name for name in names if all(getattr(g, name).size for g in groups))
    knockout = Knockout.window(f"{everything}->last", 0, 1, n)
    plan = EdgeMaskPlan([knockout.edges(g, n) for g in groups])
    with pytest.raises(UserError, match="no key to attend to"):
        _forward(loaded, inputs, plan)


def test_flash_attention_is_refused_clearly(setup):
    loaded, _ = setup
    with pytest.raises(UserError, match="sdpa or eager"):
        attention.enable(loaded.model, "flash_attention_2")
