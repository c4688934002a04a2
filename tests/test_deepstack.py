"""DeepStack on tiny Qwen3-VL: the executor adds the vision features after decoder layers 0 and
1 exactly as the model does, and removing them (all, or at chosen layers, alone or with a
knockout) gives what the model's own forward gives with ``_deepstack_process`` patched out,
within 1e-5, on the fast engine, the nnsight engine and in masked decoding with the KV cache."""

from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest
import torch
from helpers import consistency_inputs

from probes import attention
from probes import nnsight as nnsight_engine
from probes.deepstack import DeepStackOff
from probes.errors import UserError
from probes.masking import EdgeMaskPlan, Knockout
from probes.run import masked_generate, run_knockouts
from probes.tokens import token_groups

ATOL = 1e-5


@pytest.fixture(scope="module")
def tiny():
    from probes.models.loading import load_model

    return load_model("tiny-random-qwen3-vl")


@contextlib.contextmanager
def without_deepstack(model, layers):
    """The reference: the model's own ``_deepstack_process`` skipped after ``layers`` (it is
    called once per DeepStack layer, in order, in every forward that carries an image)."""
    language = model.model.language_model
    original = type(language)._deepstack_process
    calls = []

    def patched(self, hidden, masks, embeds):
        layer = len(calls) % len(model.config.vision_config.deepstack_visual_indexes)
        calls.append(layer)
        return hidden if layer in layers else original(self, hidden, masks, embeds)

    type(language)._deepstack_process = patched
    try:
        yield calls
    finally:
        type(language)._deepstack_process = original


def reference_logits(loaded, inputs, layers, knockout=None) -> torch.Tensor:
    """One full forward with the additions after ``layers`` skipped and ``knockout``'s edges
    blocked (the existing naive mechanism for edges)."""
    groups = token_groups(loaded.adapter, inputs)
    plan = EdgeMaskPlan([[] if knockout is None else knockout.edges(groups, 4)])
    attention.enable(loaded.model)
    with without_deepstack(loaded.model, layers) as calls, \
            attention.attach(loaded.adapter.attention_modules(loaded.model), plan), \
            torch.no_grad():
        logits = loaded.model(**inputs.batch).logits[0, -1].float()
    assert calls == [0, 1]  # the patch saw both DeepStack additions of the one forward
    return logits


CASES = [(None, (0, 1)), ([0], (0,)), ([1], (1,))]


@pytest.mark.parametrize(("chosen", "layers"), CASES)
def test_removing_deepstack_equals_the_models_forward_without_it(tiny, chosen, layers):
    inputs = consistency_inputs(tiny)
    condition = DeepStackOff.of(tiny.adapter, chosen)
    result = run_knockouts(tiny, inputs, [condition])
    reference = reference_logits(tiny, inputs, layers)
    torch.testing.assert_close(result.logits[0], reference, atol=ATOL, rtol=0)
    # the additions matter: the answer's logit moves by far more than the tolerance
    answer = int(result.clean_logits.argmax())
    assert abs(float(result.logits[0, answer] - result.clean_logits[answer])) > 100 * ATOL


@pytest.mark.parametrize("flow", ["image->question,last", "system->image", "image->image"])
def test_knockouts_with_and_without_deepstack_equal_naive_reruns_at_every_layer(tiny, flow):
    """Knockouts at every layer (DeepStack on), and the same with DeepStack off: flows whose
    queries are image tokens recompute positions that receive the additions."""
    inputs = consistency_inputs(tiny)
    knockouts = [Knockout.window(flow, layer, 1, 4) for layer in range(4)]
    conditions = knockouts + [DeepStackOff.of(tiny.adapter, knockout=k) for k in knockouts]
    if flow == "image->image":  # the first image token would keep no key: a window of 2 rows
        conditions = [DeepStackOff.of(tiny.adapter, [1])]
    result = run_knockouts(tiny, inputs, conditions, batch_size=3)
    for row, condition in enumerate(conditions):
        layers = tuple(sorted(getattr(condition, "removed", ())))
        knockout = getattr(condition, "knockout", condition)
        expected = reference_logits(tiny, inputs, layers, knockout)
        torch.testing.assert_close(result.logits[row], expected, atol=ATOL, rtol=0)


def test_nnsight_engine_equals_the_fast_engine(tiny):
    inputs = consistency_inputs(tiny)
    knockout = Knockout.window("system->image", 1, 1, 4)
    conditions = [DeepStackOff.of(tiny.adapter), DeepStackOff.of(tiny.adapter, [1], knockout),
                  knockout]
    fast = run_knockouts(tiny, inputs, conditions)
    traced = nnsight_engine.run_knockouts(tiny, inputs, conditions, batch_size=2)
    torch.testing.assert_close(traced.logits, fast.logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(traced.clean_logits, fast.clean_logits, atol=ATOL, rtol=0)


@pytest.mark.parametrize("chosen", [None, [0]])
def test_masked_decoding_with_the_cache_equals_generate_without_deepstack(tiny, chosen):
    """The executor's decode (prompt keys and values from the clean pass, DeepStack dropped in
    the recomputed suffix) against the model's own ``generate`` with the additions patched out,
    and the nnsight engine's decode."""
    inputs = consistency_inputs(tiny)
    condition = DeepStackOff.of(tiny.adapter, chosen)
    steps = 4
    decoded = masked_generate(tiny, inputs, condition, max_new_tokens=steps)
    with without_deepstack(tiny.model, tuple(sorted(condition.removed))), torch.no_grad():
        generated = tiny.model.generate(**inputs.batch, max_new_tokens=steps, do_sample=False,
                                        output_logits=True, return_dict_in_generate=True)
    reference = torch.cat(generated.logits).float()[: len(decoded.tokens)]
    prompt = inputs.input_ids.shape[1]
    assert decoded.tokens == generated.sequences[0, prompt:prompt + len(decoded.tokens)].tolist()
    torch.testing.assert_close(decoded.logits, reference, atol=ATOL, rtol=0)
    [traced] = nnsight_engine.masked_generate(tiny, inputs, [condition], steps)
    assert traced.tokens == decoded.tokens
    torch.testing.assert_close(traced.logits, decoded.logits, atol=ATOL, rtol=0)


def test_deepstack_condition_refused_where_there_is_none(tiny):
    from probes.models.loading import load_model

    llava = load_model("tiny-random-llava")
    with pytest.raises(UserError, match="the llava model has no DeepStack"):
        DeepStackOff.of(llava.adapter)
    with pytest.raises(UserError, match=r"layer 3 names no DeepStack addition: this model adds "
                                        r"them after decoder layers 0\.\.1\."):
        DeepStackOff.of(tiny.adapter, [3])


def test_layer_masking_deepstack_rows_equal_reference_forwards(tiny):
    """``--deepstack``: the extra rows of a sample's sweep are the metrics of the reference
    forwards (DeepStack patched out, flows blocked at every layer), in deepstack_names' order."""
    from analyses.data import load_dataset
    from analyses.layer_masking.sweep import compare, deepstack_names, sweep_sample

    sample = load_dataset("easy-vqa", "test", limit=1)[0]
    flows = ["image->question,last"]
    sweep = sweep_sample(tiny, sample, flows, 1, 0, 0, deepstack=True)
    inputs = tiny.adapter.build_inputs([sample.image], [sample.ask])
    blocked = Knockout.window(flows[0], 1, 4, 4)  # every layer
    expected = torch.stack([reference_logits(tiny, inputs, layers, knockout) for layers, knockout
                            in [((0, 1), None), ((0,), None), ((1,), None), ((), blocked),
                                ((0, 1), blocked)]])
    with torch.no_grad():
        clean = tiny.model(**inputs.batch).logits[0, -1].float()
    assert deepstack_names(flows, 2)[-1] == "image->question,last at every layer + DeepStack off"
    np.testing.assert_allclose(sweep.deepstack, compare(clean, expected, sweep.answer_token),
                               atol=1e-3, rtol=1e-4)


def test_layer_masking_deepstack_cli(tmp_path, capsys):
    """The CLI reports the DeepStack rows on Qwen3-VL and refuses --deepstack elsewhere, in one
    sentence with exit code 2, before any sample is swept."""
    from analyses.layer_masking.__main__ import main
    from probes.cli import run_cli

    common = ["--limit", "2", "--all-samples", "--bootstrap", "20", "--deepstack"]
    assert run_cli(main, ["--model", "tiny-random-qwen3-vl", *common, "--out",
                          str(tmp_path / "q")]) == 0
    summary = json.loads((tmp_path / "q" / "summary.json").read_text())
    assert summary["deepstack"]["conditions"][0] == "DeepStack off"
    assert summary["config"]["deepstack"] is True
    assert "DeepStack (--deepstack)" in capsys.readouterr().out
    assert run_cli(main, ["--model", "tiny-random-llava", *common, "--out",
                          str(tmp_path / "l")]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error == ("error: the llava model has no DeepStack (only Qwen3-VL adds vision "
                     "features to the residual stream after its first layers), so a DeepStack "
                     "condition does not apply to it.")
