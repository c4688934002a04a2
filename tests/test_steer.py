"""Steering against references: a huge negative bias equals a hard cut, mix alpha 0 is the
identity, a bias changes only the steered rows from its layer on, a mix with alpha 1 makes the
recorded probabilities equal the given distribution."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from probes import attention
from probes.masking import EdgeMaskPlan, Knockout
from probes.models.loading import load_model
from probes.steer import Steering, SteeringPlan
from probes.tokens import token_groups


@pytest.fixture(scope="module", params=["tiny-random-llava", "tiny-random-qwen2.5-vl"])
def setup(request):
    loaded = load_model(request.param)
    inputs = loaded.adapter.build_inputs([Image.new("RGB", (90, 60), (200, 160, 20))],
                                         ["what color is the shape ?"])
    return loaded, inputs, token_groups(loaded.adapter, inputs)


def _forward(loaded, inputs, plan):
    attention.enable(loaded.model)
    with torch.inference_mode(), attention.attach(loaded.adapter.attention_modules(loaded.model), plan):
        return loaded.model(**inputs.batch, output_hidden_states=True)


def _steering(groups, mode, values, layer=1, alpha=0.5):
    keys = groups.image
    return Steering(frozenset({layer}), groups.get("question,last"), keys,
                    np.full(len(keys), values, dtype=np.float32), mode, alpha)


def test_huge_negative_bias_equals_a_hard_cut(setup):
    loaded, inputs, groups = setup
    n = loaded.adapter.num_layers
    cut = EdgeMaskPlan([Knockout.window("image->question,last", 1, 1, n).edges(groups, n)])
    biased = SteeringPlan([[_steering(groups, "bias", -1e9)]])
    torch.testing.assert_close(_forward(loaded, inputs, biased).logits,
                               _forward(loaded, inputs, cut).logits, atol=1e-5, rtol=0)


def test_bias_changes_only_steered_rows_from_its_layer(setup):
    loaded, inputs, groups = setup
    clean = _forward(loaded, inputs, SteeringPlan([[]])).hidden_states
    steered = _forward(loaded, inputs, SteeringPlan([[_steering(groups, "bias", 3.0)]])).hidden_states
    assert all(torch.equal(steered[i], clean[i]) for i in range(2))
    changed = (steered[2][0] != clean[2][0]).any(-1).nonzero()[:, 0].numpy()
    np.testing.assert_array_equal(changed, groups.get("question,last"))


def _reference_mix_attention(layer, rows, keys, distribution, alpha):
    """Independent reference: eager attention whose probability rows are overwritten with
    (1 - alpha) P + alpha D in probability space (the engine instead mixes outputs)."""

    def function(module, query, key, value, attention_mask, scaling=None, **_):
        probs = attention.eager_attention(module, query, key, value, attention_mask, scaling)[1]
        if module.layer_idx == layer:
            target = torch.zeros(probs.shape[-1])
            target[keys] = distribution / distribution.sum()
            probs = probs.clone()
            probs[:, :, rows] = (1 - alpha) * probs[:, :, rows] + alpha * target
        groups = module.num_key_value_groups
        output = probs @ attention.repeat_kv(value, groups)
        return output.transpose(1, 2).contiguous(), probs

    return function


@pytest.mark.parametrize("alpha", [0.5, 1.0])
def test_mix_equals_overwriting_probabilities(setup, alpha):
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    loaded, inputs, groups = setup
    keys, rows = groups.image, groups.get("question,last")
    values = np.linspace(1.0, 2.0, len(keys), dtype=np.float32)
    steering = Steering(frozenset({1}), rows, keys, values, "mix", alpha)
    mixed = _forward(loaded, inputs, SteeringPlan([[steering]])).logits
    reference_fn = _reference_mix_attention(1, torch.from_numpy(rows), torch.from_numpy(keys),
                                            torch.from_numpy(values), alpha)
    AttentionInterface.register("reference_mix", reference_fn)
    AttentionMaskInterface.register("reference_mix", eager_mask)
    loaded.model.set_attn_implementation({"text_config": "reference_mix"})
    with torch.inference_mode():
        reference = loaded.model(**inputs.batch).logits
    loaded.model.set_attn_implementation({"text_config": "sdpa"})
    torch.testing.assert_close(mixed, reference, atol=1e-5, rtol=0)
    assert (mixed - _forward(loaded, inputs, SteeringPlan([[]])).logits).abs().max() > 1e-4


def test_mix_alpha_zero_is_exactly_clean(setup):
    loaded, inputs, groups = setup
    clean = _forward(loaded, inputs, SteeringPlan([[]])).logits
    zero = SteeringPlan([[_steering(groups, "mix", 1.0, alpha=0.0)]])
    assert torch.equal(_forward(loaded, inputs, zero).logits, clean)
