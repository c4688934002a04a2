"""Head attribution (:mod:`probes.heads`, :mod:`analyses.heads`): per-head knockouts against a
naive re-run whose attention function is written here from scratch (textbook eager attention,
the blocked edges of the knocked heads zeroed in the attention *probabilities* and each row
renormalised: no fusionlens mask code involved), on every tiny family and tiny-llava; the fast
and nnsight engines against each other; and the direct logit attribution's decomposition of
the final residual stream."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import TINY_FAMILIES, consistency_inputs
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from probes import attention
from probes.engines import named
from probes.errors import UserError
from probes.heads import decompose, image_shares, logit_attribution
from probes.logit_lens import residuals
from probes.masking import EdgeMaskPlan, HeadKnockout, Knockout
from probes.models.loading import load_model
from probes.record import AttentionRecorder
from probes.run import run_knockouts, run_knockouts_naively
from probes.tokens import token_groups

MODELS = [*TINY_FAMILIES, "tiny-llava"]
TOLERANCE = 1e-5
REFERENCE = "heads_test_reference"
FAST, NNSIGHT = named("fast"), named("nnsight")

# what the reference attention zeroes: {layer: [(heads, queries, keys)]}, set per forward
_ZEROED: dict[int, list[tuple]] = {}


def _reference_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                         **_):
    groups = query.shape[1] // key.shape[1]
    key = key.repeat_interleave(groups, 1).float()
    value = value.repeat_interleave(groups, 1).float()
    scores = query.float() @ key.transpose(2, 3) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask[..., : key.shape[2]].float()
    weights = scores.softmax(-1)
    offset = key.shape[2] - query.shape[2]
    for heads, queries, keys in _ZEROED.get(module.layer_idx, []):
        for head in heads:
            for q in queries:
                if q - offset >= 0:
                    weights[:, head, q - offset, keys] = 0.0
        weights = weights / weights.sum(-1, keepdim=True)
    output = (weights @ value).to(query.dtype)
    return output.transpose(1, 2).contiguous(), weights


AttentionInterface.register(REFERENCE, _reference_attention)
AttentionMaskInterface.register(REFERENCE, eager_mask)


@torch.inference_mode()
def reference_logits(loaded, inputs, edits: dict[int, list[tuple]]) -> torch.Tensor:
    """[vocab]: one full forward with ``edits`` applied by the reference attention."""
    _ZEROED.clear()
    _ZEROED.update(edits)
    try:
        with attention.kept(loaded.model):
            loaded.model.set_attn_implementation({"text_config": REFERENCE})
            return loaded.model(**inputs.batch, use_cache=False).logits[0, -1].float()
    finally:
        _ZEROED.clear()


@pytest.fixture(scope="module", params=MODELS)
def setup(request):
    loaded = load_model(request.param)
    inputs = consistency_inputs(loaded)
    return loaded, inputs, token_groups(loaded.adapter, inputs)


def _conditions(loaded):
    """(knockouts, what the reference zeroes for each): single heads, a set, a layer's every
    head and a plain all-heads knockout, two flows, mixed in one batch."""
    heads, last = loaded.adapter.num_heads, loaded.adapter.num_layers - 1
    chosen = [("image->last", 0, (0,)), ("image->question,last", 1, (heads - 1,)),
              ("image->last", last, (1, 2)), ("image->question,last", last, tuple(range(heads))),
              ("image->last", 1, None)]
    knockouts = []
    for flow, layer, among in chosen:
        plain = Knockout.window(flow, layer, 1, loaded.adapter.num_layers)
        knockouts.append(plain if among is None else HeadKnockout(plain, among, heads))
    return knockouts, chosen


def _zeroed(groups, flow: str, layer: int, among, heads: int) -> dict[int, list[tuple]]:
    source, _, target = flow.partition("->")
    keys = groups.get(source)
    queries = groups.get(target)
    return {layer: [(range(heads) if among is None else among, queries.tolist(), keys)]}


def test_per_head_knockouts_equal_a_naive_rerun(setup):
    loaded, inputs, groups = setup
    knockouts, chosen = _conditions(loaded)
    heads = loaded.adapter.num_heads
    expected = torch.stack([reference_logits(loaded, inputs, _zeroed(groups, *c, heads))
                            for c in chosen])
    clean = reference_logits(loaded, inputs, {})
    fast = run_knockouts(loaded, inputs, knockouts, batch_size=3)
    naive = run_knockouts_naively(loaded, inputs, knockouts)
    for got in (fast.logits, naive):
        assert float((got - expected).abs().max()) <= TOLERANCE
    # the knockouts matter: each condition moves the logits away from the clean run
    assert all(float((row - clean).abs().max()) > 100 * TOLERANCE for row in expected)
    # one head is not all heads: the single-head conditions differ from the layer's
    assert float((expected[3] - expected[2]).abs().max()) > 100 * TOLERANCE


def test_the_engines_agree_on_per_head_knockouts(setup):
    loaded, inputs, groups = setup
    knockouts, _ = _conditions(loaded)
    fast = FAST.knockouts(FAST.prefill(loaded, inputs, groups), knockouts, batch_size=2)
    nnsight = NNSIGHT.knockouts(NNSIGHT.prefill(loaded, inputs, groups), knockouts, batch_size=2)
    assert float((fast.logits - nnsight.logits).abs().max()) <= TOLERANCE


def test_the_all_heads_mask_keeps_its_shape_and_per_head_masks_cover_chosen_heads(setup):
    loaded, inputs, groups = setup
    heads, layers = loaded.adapter.num_heads, loaded.adapter.num_layers
    plain = Knockout.window("image->last", 0, 1, layers)
    positions = torch.arange(groups.length)
    shared = EdgeMaskPlan([plain.edges(groups, layers)]).blocked(0, positions, groups.length)
    assert shared.dim() == 3  # the all-heads case is unchanged
    one = HeadKnockout(plain, (1,), heads).edges(groups, layers)
    per_head = EdgeMaskPlan([one, plain.edges(groups, layers)]).blocked(0, positions,
                                                                         groups.length)
    assert per_head.shape == (2, heads, groups.length, groups.length)
    assert torch.equal(per_head[0, 1], shared[0]) and not per_head[0, 0].any()
    assert all(torch.equal(per_head[1, h], shared[0]) for h in range(heads))


def test_a_head_out_of_range_is_refused_in_one_sentence():
    with pytest.raises(UserError, match="head 4 is out of range: the layers have heads 0..3"):
        HeadKnockout(Knockout(("image->last",), (0,)), (4,), 4)


def test_the_parts_sum_to_the_final_residual_and_their_attributions_to_the_logit_difference(setup):
    loaded, inputs, groups = setup
    parts = decompose(loaded, inputs)
    final = residuals(loaded, inputs, "last", [loaded.adapter.num_layers - 1])[0, 0].double()
    scale = float(final.abs().max())
    assert float((parts.final - final).abs().max()) <= TOLERANCE * scale
    assert float((parts.total() - final).abs().max()) <= TOLERANCE * scale
    # every head writes something: the parts are not a split of zeros
    assert bool((parts.heads.norm(dim=-1) > 1e-3 * scale).all())
    logits = loaded.model(**inputs.batch).logits[0, -1].double()
    answer, other = logits.topk(2).indices.tolist()
    for against, difference in ((other, logits[answer] - logits[other]),
                                (None, logits[answer] - logits.mean())):
        attributed = logit_attribution(loaded, parts, answer, against)
        total = sum(float(value.sum()) for value in attributed.values())
        assert abs(total - float(difference)) <= 1e-4 * max(1.0, float(logits.abs().max()))
    # by hand for one head: its write through the clean norm's scale onto the direction
    norm = loaded.adapter.final_norm(loaded.model)
    rms = float(final.pow(2).mean().add(norm.variance_epsilon).sqrt())
    unembedding = loaded.adapter.lm_head(loaded.model).weight.double()
    head = parts.heads[1, 0] * norm.weight.double() / rms
    by_hand = float(head @ (unembedding[answer] - unembedding[other]))
    one = logit_attribution(loaded, parts, answer, other)["heads"][1, 0]
    assert abs(float(one) - by_hand) <= 1e-9


def test_image_shares_sum_each_heads_attention_on_the_image(setup):
    loaded, inputs, groups = setup
    queries = {"last": groups.last, "question": groups.question}
    recorder = AttentionRecorder(queries=np.concatenate(list(queries.values())),
                                 keys=groups.image)
    FAST.record(loaded, inputs, recorder)
    shares = image_shares(recorder, queries, loaded.adapter.num_layers)
    assert shares.shape == (2, loaded.adapter.num_layers, loaded.adapter.num_heads)
    full = AttentionRecorder(queries=groups.last)  # every key: the share by hand
    FAST.record(loaded, inputs, full)
    for layer in range(loaded.adapter.num_layers):
        by_hand = full.maps[layer][0, :, 0, groups.image].double().sum(-1).numpy()
        np.testing.assert_allclose(shares[0, layer], by_hand, atol=1e-6)
    assert ((shares > 0) & (shares < 1)).all()
