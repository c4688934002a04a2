"""The executor against the naive way (one full masked forward per condition, batch 1)."""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import pytest
import torch
from helpers import TINY_FAMILIES, consistency_inputs

from probes.masking import Knockout, parse_flows
from probes.models.loading import load_model
from probes.run import run_knockouts, run_knockouts_naively

MODELS = list(TINY_FAMILIES)


@pytest.fixture(scope="module", params=MODELS)
def setup(request):
    loaded = load_model(request.param)
    return loaded, consistency_inputs(loaded)


def _sweep(n, flows, window):
    return [Knockout.window(flows, layer, window, n) for layer in range(n)]


@pytest.mark.parametrize("flows", ["image->question,last", "image->last", "question->last",
                                   "system->image"])
@pytest.mark.parametrize("window", [1, 3])
def test_executor_equals_naive_full_reruns(setup, flows, window):
    loaded, inputs = setup
    sweep = _sweep(loaded.adapter.num_layers, flows, window)
    result = run_knockouts(loaded, inputs, sweep, batch_size=3)
    naive = run_knockouts_naively(loaded, inputs, sweep)
    torch.testing.assert_close(result.logits, naive, atol=1e-5, rtol=0)
    # the knockouts do something, and the prefix really is shared
    assert (result.logits - result.clean_logits).abs().amax() > 1e-4
    assert 0 < result.prefix_length < inputs.input_ids.shape[1]


def test_mixed_flows_in_one_batch(setup):
    loaded, inputs = setup
    n = loaded.adapter.num_layers
    sweep = [Knockout.window("image->last", n - 1, 1, n), Knockout.window("question->last", 0, 2, n),
             Knockout.window("image->question", 1, 1, n)]
    result = run_knockouts(loaded, inputs, sweep, batch_size=8)
    torch.testing.assert_close(result.logits, run_knockouts_naively(loaded, inputs, sweep),
                               atol=1e-5, rtol=0)


def _reference_generate(loaded, inputs, knockout, steps):
    """No cache: recompute the full masked forward of prompt + generated tokens at every step."""
    from probes import attention
    from probes.masking import EdgeMaskPlan
    from probes.tokens import token_groups

    n = loaded.adapter.num_layers
    groups = token_groups(loaded.adapter, inputs)
    batch = dict(inputs.batch)
    tokens, logits = [], []
    modules = loaded.adapter.attention_modules(loaded.model)
    for _ in range(steps):
        plan = EdgeMaskPlan([knockout.edges(groups, n)]) if knockout else None
        with torch.inference_mode(), attention.attach(modules, plan) if plan else nullcontext():
            step = loaded.model(**batch).logits[0, -1].float()
        tokens.append(int(step.argmax()))
        logits.append(step)
        extra = torch.tensor([[tokens[-1]]])
        batch["input_ids"] = torch.cat([batch["input_ids"], extra], 1)
        batch["attention_mask"] = torch.cat([batch["attention_mask"], torch.ones_like(extra)], 1)
        if "mm_token_type_ids" in batch:
            batch["mm_token_type_ids"] = torch.cat(
                [batch["mm_token_type_ids"], torch.zeros_like(extra)], 1)
    return tokens, torch.stack(logits)


@pytest.mark.parametrize("flows", [None, "image->question,last,generated", "image->generated"])
def test_masked_generate_equals_no_cache_greedy_loop(setup, flows):
    from probes.run import masked_generate

    loaded, inputs = setup
    n = loaded.adapter.num_layers
    knockout = Knockout(parse_flows(flows), tuple(range(n))) if flows else None
    steps = 4
    loaded.model.generation_config.eos_token_id = -1  # decode all steps, whatever they are
    result = masked_generate(loaded, inputs, knockout, max_new_tokens=steps)
    tokens, logits = _reference_generate(loaded, inputs, knockout, steps)
    assert result.tokens == tokens
    torch.testing.assert_close(result.logits, logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("flows", [None, "image->question,last,generated"])
def test_donated_clean_pass_decodes_as_the_reference_and_is_then_spent(setup, flows):
    from probes.run import clean_pass, masked_generate

    loaded, inputs = setup
    n = loaded.adapter.num_layers
    knockout = Knockout(parse_flows(flows), tuple(range(n))) if flows else None
    steps = 4
    loaded.model.generation_config.eos_token_id = -1
    clean = clean_pass(loaded, inputs, reserve=steps)
    plain = clean_pass(loaded, inputs)
    # the reserved buffers hold the same keys and values, and the same logits come out
    assert clean.buffers is not None and clean.buffers[0][0].shape[-2] == inputs.input_ids.shape[1] + steps
    assert torch.equal(clean.logits, plain.logits)
    for (k, v), (k0, v0) in zip(clean.keys_values, plain.keys_values):
        assert torch.equal(k, k0) and torch.equal(v, v0)
    donated = masked_generate(loaded, inputs, knockout, steps, clean=clean, donate=True)
    assert clean.donated
    tokens, logits = _reference_generate(loaded, inputs, knockout, steps)
    assert donated.tokens == tokens
    torch.testing.assert_close(donated.logits, logits, atol=1e-5, rtol=0)
    copied = masked_generate(loaded, inputs, knockout, steps, clean=plain)
    assert torch.equal(donated.logits, copied.logits)  # no copy, same numbers
    with pytest.raises(ValueError, match="cannot be shared again"):
        masked_generate(loaded, inputs, knockout, steps, clean=clean)
    with pytest.raises(ValueError, match="cannot be shared again"):
        run_knockouts(loaded, inputs, [Knockout.window("image->last", 0, 1, n)], clean=clean)


def test_reserved_layer_grows_past_its_room_like_a_dynamic_layer():
    from probes.cache import ReservedLayer

    layer = ReservedLayer(reserve=2)
    chunks = [torch.randn(1, 2, length, 4) for length in (5, 1, 2, 3)]  # 5 + 1 + 2 fill, then grow
    for chunk in chunks:
        keys, values = layer.update(chunk, -chunk)
    expected = torch.cat(chunks, 2)
    assert torch.equal(keys, expected) and torch.equal(values, -expected)
    assert layer.get_seq_length() == 11 and layer.buffers[0].shape[-2] == 13


def _masked_forward(loaded, inputs, knockout, **kwargs):
    """The reference: one full forward under the knockout's EdgeMaskPlan (the plan path)."""
    from probes import attention
    from probes.masking import EdgeMaskPlan
    from probes.tokens import token_groups

    groups = token_groups(loaded.adapter, inputs)
    plan = EdgeMaskPlan([knockout.edges(groups, loaded.adapter.num_layers)]) if knockout else None
    modules = loaded.adapter.attention_modules(loaded.model)
    with torch.inference_mode(), attention.attach(modules, plan) if plan else nullcontext():
        return loaded.model(**inputs.batch, **kwargs)


@pytest.mark.parametrize("flows", ["image->question,last", "question->last"])
def test_hidden_states_per_condition_equal_a_masked_forward(setup, flows):
    loaded, inputs = setup
    n = loaded.adapter.num_layers
    sweep = _sweep(n, flows, 1) + [Knockout.window(flows, 1, 3, n)]
    result = run_knockouts(loaded, inputs, sweep, batch_size=3, hidden_states=True)
    clean = torch.stack([h[0, -1] for h in _masked_forward(
        loaded, inputs, None, output_hidden_states=True).hidden_states]).float()
    assert result.hidden_states.shape == (len(sweep), n + 1, clean.shape[-1])
    for condition, knockout in enumerate(sweep):
        reference = _masked_forward(loaded, inputs, knockout, output_hidden_states=True)
        expected = torch.stack([h[0, -1] for h in reference.hidden_states]).float()
        torch.testing.assert_close(result.hidden_states[condition], expected, atol=1e-5, rtol=0)
        # entering the first blocked layer nothing differs yet; leaving it, `last` does
        first = min(knockout.layers)
        assert torch.equal(result.hidden_states[condition, : first + 1], clean[: first + 1])
        assert (result.hidden_states[condition, first + 1] - clean[first + 1]).abs().max() > 1e-6
    # the logits stay what they were without the option
    torch.testing.assert_close(result.logits, run_knockouts(loaded, inputs, sweep, batch_size=3).logits,
                               atol=0, rtol=0)


def _eager_attentions(loaded, inputs, knockout):
    """output_attentions of eager attention under the knockout: the recording reference."""
    from probes import attention

    attention.enable(loaded.model, "eager")
    try:
        return _masked_forward(loaded, inputs, knockout, output_attentions=True).attentions
    finally:
        attention.enable(loaded.model, "sdpa")


@pytest.mark.parametrize("rows", ["question,last", "image_tail"])
def test_recorded_attention_per_condition_equals_eager_output_attentions(setup, rows):
    from probes.record import AttentionRecorder
    from probes.tokens import token_groups

    loaded, inputs = setup
    n = loaded.adapter.num_layers
    groups = token_groups(loaded.adapter, inputs)
    sweep = [Knockout.window("image->question,last", layer, 1, n) for layer in (0, n // 2, n - 1)]
    sweep.append(Knockout.window("image->last", 1, 3, n))
    if rows == "image_tail":  # query rows before the first blocked query, reduced over heads
        queries = np.concatenate([groups.image[-2:], groups.last])
        template = AttentionRecorder(queries=queries, keys=groups.image, reduce="mean_heads")
    else:
        queries = groups.get("question,last")
        template = AttentionRecorder(queries=queries)
    result = run_knockouts(loaded, inputs, sweep, batch_size=2, record=template)
    assert template.maps == {}  # a template only
    assert sorted(result.attentions) == list(range(n))
    keys = slice(None) if template.keys is None else groups.image

    def expected(maps, layer):
        reference = maps[layer][0][:, queries][..., keys].float()
        return reference.mean(0, keepdim=True) if template.reduce == "mean_heads" else reference

    clean = _eager_attentions(loaded, inputs, None)
    for layer in range(n):
        torch.testing.assert_close(result.clean_attentions[layer][0], expected(clean, layer),
                                   atol=1e-5, rtol=0)
    for condition, knockout in enumerate(sweep):
        maps = _eager_attentions(loaded, inputs, knockout)
        for layer in range(n):
            torch.testing.assert_close(result.attentions[layer][condition], expected(maps, layer),
                                       atol=1e-5, rtol=0)
        # the blocked edges carry exactly nothing: `last` reads no image key where it is blocked
        first = min(knockout.layers)
        last_row = result.attentions[first][condition][:, -1]
        image = slice(None) if template.keys is not None else groups.image
        assert last_row[..., image].abs().max() == 0
        assert result.clean_attentions[first][0][:, -1][..., image].abs().max() > 0


def test_optional_results_are_off_by_default(setup):
    loaded, inputs = setup
    result = run_knockouts(loaded, inputs, [Knockout.window("image->last", 0, 1, 2)])
    assert result.hidden_states is None and result.attentions is None
    assert result.clean_attentions is None
