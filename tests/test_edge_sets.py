"""Explicit edge sets (EdgeKnockout) and nested plans, against the flow knockouts they equal and
against recorded attention (blocked pairs get exactly zero, their rows still sum to one)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from probes import attention
from probes.masking import EdgeKnockout, EdgeMaskPlan, Knockout, SetKnockout, parse_flows
from probes.models.loading import load_model
from probes.record import AttentionRecorder
from probes.run import masked_generate, run_knockouts, run_knockouts_naively
from probes.tokens import token_groups


def _setup():
    loaded = load_model("tiny-random-llava")
    inputs = loaded.adapter.build_inputs([Image.new("RGB", (64, 64), (200, 40, 40))],
                                         ["what shape is in the image ?"])
    return loaded, inputs, token_groups(loaded.adapter, inputs)


def test_edge_set_of_a_flows_pairs_equals_the_flow():
    loaded, inputs, groups = _setup()
    queries, keys = groups.get("question,last"), groups.get("image")
    pairs = np.array([(q, k) for q in queries for k in keys])
    explicit = EdgeKnockout(pairs[:, 0], pairs[:, 1], (2,))
    flow = Knockout.window("image->question,last", 2, 1, loaded.adapter.num_layers)
    result = run_knockouts(loaded, inputs, [explicit, flow])
    torch.testing.assert_close(result.logits[0], result.logits[1], rtol=0, atol=1e-6)
    assert (result.logits[0] - result.clean_logits).abs().max() > 1e-4  # it does something


def test_random_edge_set_matches_a_full_rerun_and_zeroes_exactly_its_pairs():
    loaded, inputs, groups = _setup()
    rng = np.random.default_rng(0)
    candidates = np.array([(q, k) for q in range(groups.length) for k in range(1, q)])
    pairs = candidates[rng.choice(len(candidates), 300, replace=False)]
    knockout = EdgeKnockout(pairs[:, 0], pairs[:, 1], (1, 3))
    fast = run_knockouts(loaded, inputs, [knockout]).logits
    torch.testing.assert_close(fast, run_knockouts_naively(loaded, inputs, [knockout]),
                               rtol=0, atol=1e-5)
    recorder = AttentionRecorder(queries=range(groups.length), layers=[1, 2])
    plan = EdgeMaskPlan([knockout.edges(groups, loaded.adapter.num_layers)])
    attention.enable(loaded.model)
    modules = loaded.adapter.attention_modules(loaded.model)
    with torch.inference_mode(), attention.attach(modules, plan), attention.attach(modules, recorder):
        loaded.model(**inputs.batch)
    maps = recorder.maps[1][0]  # [heads, queries, keys]
    assert maps[:, pairs[:, 0], pairs[:, 1]].abs().max() == 0.0
    blocked = np.zeros((groups.length, groups.length), bool)
    blocked[pairs[:, 0], pairs[:, 1]] = True
    open_pairs = np.tril(~blocked, -1).nonzero()
    assert (maps[:, open_pairs[0], open_pairs[1]] > 0).all()
    torch.testing.assert_close(maps.sum(-1), torch.ones_like(maps.sum(-1)))
    assert recorder.maps[2][0][:, pairs[:, 0], pairs[:, 1]].min() > 0  # layer 2 is untouched


def test_nested_plans_act_together_and_the_outer_plan_comes_back():
    loaded, inputs, groups = _setup()
    layers = loaded.adapter.num_layers
    first = Knockout.window("image->question", 1, 1, layers)
    second = Knockout.window("image->last", 1, 1, layers)
    both = Knockout.window("image->question,last", 1, 1, layers)
    attention.enable(loaded.model)
    modules = loaded.adapter.attention_modules(loaded.model)
    outer = EdgeMaskPlan([first.edges(groups, layers)])
    with torch.inference_mode(), attention.attach(modules, outer):
        with attention.attach(modules, EdgeMaskPlan([second.edges(groups, layers)])):
            nested = loaded.model(**inputs.batch).logits[0, -1]
        assert all(getattr(m, attention.PLAN_ATTRIBUTE) is outer for m in modules)
    assert all(getattr(m, attention.PLAN_ATTRIBUTE) is None for m in modules)
    torch.testing.assert_close(nested, run_knockouts_naively(loaded, inputs, [both])[0],
                               rtol=0, atol=1e-6)


def test_set_knockout_is_the_flow_it_spells_out_in_generate_too():
    loaded, inputs, groups = _setup()
    layers = tuple(range(loaded.adapter.num_layers))
    flow = Knockout(parse_flows("image->question,last,generated"), layers)
    explicit = SetKnockout(groups.get("question,last"), groups.get("image"), layers, generated=True)
    by_flow = masked_generate(loaded, inputs, flow, max_new_tokens=4)
    by_set = masked_generate(loaded, inputs, explicit, max_new_tokens=4)
    assert by_flow.tokens == by_set.tokens
    torch.testing.assert_close(by_flow.logits, by_set.logits, rtol=0, atol=1e-6)
    clean = masked_generate(loaded, inputs, None, max_new_tokens=4)
    assert (clean.logits[0] - by_set.logits[0]).abs().max() > 1e-4
