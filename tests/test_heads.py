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
    # at an image position too (Qwen3-VL's DeepStack additions are parts there)
    image = int(groups.image[0])
    at_image = decompose(loaded, inputs, image)
    there = residuals(loaded, inputs, "image", [loaded.adapter.num_layers - 1])[0, 0].double()
    assert float((at_image.total() - there).abs().max()) <= TOLERANCE * float(there.abs().max())
    assert bool(at_image.deepstack.any()) == bool(loaded.adapter.deepstack_layers)
    assert not parts.deepstack.any()  # last is text: nothing added there
    logits = loaded.model(**inputs.batch).logits[0, -1].double()
    answer, other = logits.topk(2).indices.tolist()
    for against, difference in ((other, logits[answer] - logits[other]),
                                (None, logits[answer] - logits.mean())):
        attributed = logit_attribution(loaded, parts, answer, against)
        total = sum(float(value.sum()) for value in attributed.values())
        assert abs(total - float(difference)) <= 1e-4 * max(1.0, float(logits.abs().max()))
    # by hand for one head: its write through the clean norm's scale onto the direction
    norm = loaded.adapter.final_norm(loaded.model)
    rms = float(final.pow(2).mean().add(_eps(norm)).sqrt())
    unembedding = loaded.adapter.lm_head(loaded.model).weight.double()
    head = parts.heads[1, 0] * _gain(norm) / rms
    by_hand = float(head @ (unembedding[answer] - unembedding[other]))
    one = logit_attribution(loaded, parts, answer, other)["heads"][1, 0]
    assert abs(float(one) - by_hand) <= 1e-6 * max(1.0, abs(by_hand))


def _gain(norm) -> torch.Tensor:
    """An RMSNorm's per-coordinate gain read from the norm itself (whatever its weight
    convention, Gemma's 1 + w included): its output on a vector of ones, times rms(ones)."""
    ones = torch.ones(1, norm.weight.shape[0], dtype=norm.weight.dtype)
    return norm(ones)[0].double() * (1 + _eps(norm)) ** 0.5


def _eps(norm) -> float:
    return getattr(norm, "variance_epsilon", None) or norm.eps


def test_each_layer_adds_its_heads_and_its_mlp_part_to_the_stream(setup):
    """Per layer, what the layer adds to the stream at the last position (its output minus its
    input, read by hand from the decoder layers) is its heads' writes + bias + its MLP part:
    with Gemma's sandwich norms, the heads sum to the normalised attention output."""
    loaded, inputs, _ = setup
    parts = decompose(loaded, inputs)
    layers = loaded.adapter.decoder_layers(loaded.model)
    seen = {}
    handles = [layer.register_forward_hook(
        lambda module, args, kwargs, output, i=i: seen.__setitem__(
            i, ((args[0] if args else kwargs["hidden_states"])[0, -1].double(),
                (output[0] if isinstance(output, tuple) else output)[0, -1].double())),
        with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        with torch.inference_mode():
            loaded.model(**inputs.batch, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    for i in range(len(layers)):
        added = seen[i][1] - seen[i][0]
        ours = parts.heads[i].sum(0) + parts.biases[i] + parts.mlps[i]
        assert float((ours - added).abs().max()) <= TOLERANCE * float(added.abs().max())
    if loaded.adapter.norm_layout.post_norms is not None:  # the norm is really in the parts
        attention = layers[1].post_attention_layernorm
        assert float(_gain(attention).sub(1).abs().max()) > 0.05


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


# ----------------------------------------------------------------------------- the analysis
@pytest.fixture(scope="module")
def easy():
    from analyses.data import load_dataset

    return load_dataset("easy-vqa", limit=4)


@pytest.fixture(scope="module")
def heads_run(tmp_path_factory):
    """The CLI on the embedded model, in process: 4 samples, a head set."""
    from analyses.heads.__main__ import main
    from analyses.results import RunResult

    out = tmp_path_factory.mktemp("heads") / "run"
    assert main(["--limit", "4", "--out", str(out), "--bootstrap", "100", "--heads", "0.3,1.0",
                 "--controls", "3", "--all-samples"]) == 0
    return out, RunResult.load(out)


def test_cli_run_equals_the_heads_by_hand(heads_run, easy):
    out, result = heads_run
    arrays, summary = result.arrays, result.summary
    loaded = load_model("tiny-llava")
    sample = easy[1]
    inputs = loaded.adapter.build_inputs([sample.image], [sample.ask])
    groups = token_groups(loaded.adapter, inputs)
    clean = reference_logits(loaded, inputs, {})
    answer = int(clean.argmax())
    assert arrays["answer_token"][1] == answer
    p_clean = float(clean.double().softmax(-1)[answer])
    for layer, head in [(0, 3), (5, 1)]:
        knocked = reference_logits(loaded, inputs, _zeroed(groups, "image->last", layer,
                                                           (head,), 4))
        change = 100 * (float(knocked.double().softmax(-1)[answer]) - p_clean) / p_clean
        assert abs(arrays["prob_change_pct"][1, layer, head] - change) <= 1e-3
    # the control is the mean of the drawn heads' own changes, and the table the mean drops
    drawn = arrays["control_heads"][1]
    control = arrays["prob_change_pct"][1][drawn[:, 0], drawn[:, 1]].mean()
    row = next(r for r in summary["heads"] if (r["layer"], r["head"]) == (0, 3))
    assert abs(row["drop"] + arrays["prob_change_pct"][:, 0, 3].mean()) <= 1e-9
    assert abs(row["control_drop"] + np.mean([
        arrays["prob_change_pct"][s][arrays["control_heads"][s][:, 0],
                                     arrays["control_heads"][s][:, 1]].mean()
        for s in range(4)])) <= 1e-9
    assert np.isfinite(control)
    total = (arrays["dla_heads"].sum((1, 2)) + arrays["dla_mlps"].sum(1)
             + arrays["dla_biases"].sum(1) + arrays["dla_embedding"])
    np.testing.assert_allclose(total, arrays["logit_difference"], atol=1e-4)
    assert summary["head_set"]["heads"] == ["0.3", "1.0"]
    assert arrays["set_control_prob_change_pct"].shape == (4, 3)
    assert len(summary["top_heads"]) == 10 and summary["num_heads"] == 4


def test_figures_are_drawn_and_redraw_without_a_model(heads_run, tmp_path):
    from figures.paper import main as paper

    out, _ = heads_run
    names = {"heads_heatmaps", "heads_top"}
    assert {p.stem for p in out.glob("*.png")} == names
    assert paper([str(out), "--out", str(tmp_path)]) == 0
    assert {p.stem for p in (tmp_path / out.name).glob("*.png")} == names


def test_shards_merge_into_the_whole_run(easy, tmp_path):
    from helpers import assert_same_run

    from analyses.heads import Heads, HeadsConfig
    from analyses.merge import merge
    from analyses.runner import LocalBackend, RunOptions, run

    backend = LocalBackend(load_model("tiny-llava"))
    analysis = Heads(HeadsConfig(n_bootstrap=50, controls=2, heads=((1, 0),)))
    whole = run(analysis, backend, easy)
    directories = []
    for index in range(2):
        out = tmp_path / f"shard{index}"
        part = run(analysis, backend, easy, RunOptions(out=out, shard=(index, 2)))
        directories.append(part.save(out))
    assert_same_run(whole, merge(directories))


@pytest.mark.parametrize("argv, message", [
    (["--heads", "1.4"], "head 4 is out of range: the layers have heads 0..3"),
    (["--heads", "7.0"], "layer 7 is out of range"),
    (["--heads", "3"], "takes heads as LAYER.HEAD"),
    (["--flow", "image->answer"], "unknown token group 'answer'"),
    (["--flow", "image"], "is not of the form SRC->DST"),
    (["--flow", "image->last;question->last"], "--flow takes one flow"),
    (["--flow", "object->last", "--data", "NO_BOXES"], "none of the 2 samples marks a region"),
])
def test_bad_input_gets_one_sentence_and_exit_2(argv, message, tmp_path, capsys, easy):
    import json

    from analyses.heads.__main__ import main
    from probes.cli import run_cli

    if "NO_BOXES" in argv:
        rows = []
        for i, sample in enumerate(list(easy)[:2]):
            sample.image.save(tmp_path / f"image{i}.png")
            rows.append({"image": f"image{i}.png", "question": sample.question,
                         "answer": sample.answer, "id": f"q{i}"})
        (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        argv = [str(tmp_path / "data.jsonl") if a == "NO_BOXES" else a for a in argv]
    code = run_cli(main, [*argv, "--limit", "2", "--out", str(tmp_path / "x")])
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line.lower()]
    assert code == 2 and len(errors) == 1 and errors[0].startswith("error: ")
    assert message in errors[0]


def test_both_engines_measure_the_same_sample_records(easy):
    from analyses.heads import HeadsConfig, measure_sample

    loaded = load_model("tiny-llava")
    config = HeadsConfig(heads=((0, 3), (2, 1)), controls=2)
    for index, sample in enumerate(list(easy)[:2]):
        fast = measure_sample(loaded, sample, config, index, FAST)
        other = measure_sample(loaded, sample, config, index, NNSIGHT)
        assert fast["answer_token"] == other["answer_token"]
        for name in ("prob_change_pct", "set_prob_change_pct", "set_control_prob_change_pct",
                     "dla_heads", "image_share"):
            np.testing.assert_allclose(other[name], fast[name], atol=1e-4, rtol=1e-5,
                                       err_msg=name)
        np.testing.assert_array_equal(other["control_heads"], fast["control_heads"])
