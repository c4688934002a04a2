"""The executor against the naive way (one full masked forward per condition, batch 1)."""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch
from PIL import Image

from probes.masking import Knockout, parse_flows
from probes.models.loading import load_model
from probes.run import run_knockouts, run_knockouts_naively

MODELS = ["tiny-random-llava", "tiny-random-llava-next", "tiny-random-qwen2.5-vl"]


@pytest.fixture(scope="module", params=MODELS)
def setup(request):
    loaded = load_model(request.param)
    inputs = loaded.adapter.build_inputs([Image.new("RGB", (90, 60), (30, 160, 60))],
                                         ["what shape is in the image ?"])
    return loaded, inputs


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
