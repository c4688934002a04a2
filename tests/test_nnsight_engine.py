"""The nnsight engine against the fast engine (and so against the naive references the fast
engine is tested with): a layer-masking sweep, recorded attention at every layer and AIF's
masked decoding, on each tiny family, under sdpa and eager, in float32 to 1e-6; a steering
bias; examples x conditions in one padded invoke; the same traces under nnsight's
``remote="local"`` serialisation; the CLIs on either engine; the version bounds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import TINY_FAMILIES, consistency_inputs
from PIL import Image

from probes import attention
from probes import nnsight as engine
from probes.errors import UserError
from probes.masking import EdgeKnockout, Knockout, SetKnockout, parse_flows
from probes.models.loading import load_model
from probes.record import AttentionRecorder
from probes.run import masked_generate, run_knockouts
from probes.tokens import token_groups

MODELS = list(TINY_FAMILIES)
TOLERANCE = 1e-6


@pytest.fixture(scope="module", params=MODELS)
def setup(request):
    loaded = load_model(request.param)
    return loaded, consistency_inputs(loaded)


def _fast(loaded, implementation):
    attention.enable(loaded.model, implementation)


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_sweep_equals_the_fast_engine(setup, implementation):
    loaded, inputs = setup
    n = loaded.adapter.num_layers
    groups = token_groups(loaded.adapter, inputs)
    sweep = [Knockout.window("image->question,last", layer, 1, n) for layer in range(n)]
    text = np.concatenate([groups.question, groups.last])
    sweep += [EdgeKnockout(text[1:], text[:-1], (layer,)) for layer in range(0, n, 2)]
    _fast(loaded, implementation)
    fast = run_knockouts(loaded, inputs, sweep, batch_size=4)
    ours = engine.run_knockouts(loaded, inputs, sweep, batch_size=5)
    assert loaded.model.config.get_text_config()._attn_implementation == implementation
    assert (ours.logits - fast.logits).abs().max() <= TOLERANCE
    assert (ours.clean_logits - fast.clean_logits).abs().max() <= TOLERANCE
    assert (ours.logits - ours.clean_logits).abs().amax() > 1e-4  # the knockouts do something


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_recording_every_layer_equals_the_fast_engine(setup, implementation):
    loaded, inputs = setup
    n = loaded.adapter.num_layers
    groups = token_groups(loaded.adapter, inputs)
    recorder = AttentionRecorder(queries=groups.get("question,last"))
    sweep = [Knockout.window("image->last", 2, 3, n)]
    _fast(loaded, implementation)
    fast = run_knockouts(loaded, inputs, sweep, record=recorder)
    ours = engine.run_knockouts(loaded, inputs, sweep, record=recorder)
    assert sorted(ours.attentions) == list(range(n))
    for layer in range(n):
        for got, expected in ((ours.attentions, fast.attentions),
                              (ours.clean_attentions, fast.clean_attentions)):
            assert got[layer].shape == expected[layer].shape
            assert (got[layer] - expected[layer]).abs().max() <= TOLERANCE, layer
    # the blocked edges read nothing, and every row still sums to one
    image = torch.from_numpy(groups.image)
    last = list(groups.get("question,last")).index(int(groups.last[0]))
    assert ours.attentions[2][0, :, last, image].sum() == 0.0
    torch.testing.assert_close(ours.attentions[2].sum(-1), torch.ones(ours.attentions[2].shape[:-1]))


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_masked_decoding_equals_the_fast_engine(setup, implementation):
    loaded, inputs = setup
    n = loaded.adapter.num_layers
    groups = token_groups(loaded.adapter, inputs)
    text = np.sort(np.concatenate([groups.question, groups.template, groups.last]))
    aif = SetKnockout(text, groups.image[::2], tuple(range(n)), generated=True)
    conditions = [None, aif, Knockout(parse_flows("image->question,last,generated"),
                                      tuple(range(n)))]
    loaded.model.generation_config.eos_token_id = -1  # decode every step, whatever the token
    _fast(loaded, implementation)
    fast = [masked_generate(loaded, inputs, c, max_new_tokens=4) for c in conditions]
    ours = engine.masked_generate(loaded, inputs, conditions, max_new_tokens=4)
    for got, expected in zip(ours, fast):
        assert got.tokens == expected.tokens
        assert (got.logits - expected.logits).abs().max() <= TOLERANCE
    assert not torch.equal(ours[1].logits, ours[0].logits)


def test_examples_by_conditions_in_one_invoke_equal_each_example_alone(setup):
    loaded, _ = setup
    n = loaded.adapter.num_layers
    images = [Image.new("RGB", (90, 60), (200, 30, 30)), Image.new("RGB", (64, 64), (20, 90, 200))]
    questions = ["what color is the shape ?", "what ?"]  # different lengths: rows are padded
    sweep = [Knockout.window("image->last", layer, 1, n) for layer in range(n)]
    logits, clean = engine.run_examples(loaded, images, questions, sweep, batch_size=8)
    _fast(loaded, "sdpa")
    for e, (image, question) in enumerate(zip(images, questions)):
        inputs = loaded.adapter.build_inputs([image], [question])
        fast = run_knockouts(loaded, inputs, sweep)
        assert (logits[e] - fast.logits).abs().max() <= TOLERANCE
        assert (clean[e] - fast.clean_logits).abs().max() <= TOLERANCE


def test_the_same_trace_passes_remote_local(setup):
    loaded, inputs = setup
    n = loaded.adapter.num_layers
    groups = token_groups(loaded.adapter, inputs)
    planned = engine.edits(loaded, inputs, Knockout.window("image->question,last", 1, 3, n),
                           record=AttentionRecorder(queries=groups.last, layers=[1]))
    local = engine.trace(loaded, inputs, planned)
    remote = engine.trace(loaded, inputs, planned, remote="local")
    assert torch.equal(local[0], remote[0])
    assert torch.equal(local[1][1], remote[1][1])
    # and the generate trace of masked decoding, every step edited
    knockout = Knockout(parse_flows("image->question,last,generated"), tuple(range(n)))
    local = engine.masked_generate(loaded, inputs, [None, knockout], max_new_tokens=2)
    remote = engine.masked_generate(loaded, inputs, [None, knockout], max_new_tokens=2,
                                    remote="local")
    for got, expected in zip(remote, local):
        assert got.tokens == expected.tokens and torch.equal(got.logits, expected.logits)
    assert not torch.equal(local[0].logits, local[1].logits)


def test_the_attention_call_is_found_and_masks_are_normalised(setup):
    loaded, _ = setup
    model = engine.wrap(loaded)
    attention_module = loaded.adapter.attention_modules(model)[0]
    assert engine.attention_call(attention_module).startswith("attention_interface_")
    causal = engine.additive_mask(None, 2, 4, torch.float32, torch.device("cpu"))
    allowed = torch.tensor([[True, True, True, False], [True, True, True, True]])[None, None]
    low = torch.finfo(torch.float32).min
    assert torch.equal(causal, torch.where(allowed, 0.0, low))
    assert torch.equal(engine.additive_mask(allowed, 2, 4, torch.float32, None), causal)
    assert torch.equal(engine.additive_mask(causal, 2, 4, torch.float32, None), causal)


def test_a_bias_steers_as_on_the_fast_engine_and_mixing_is_refused(setup):
    from probes.steer import Steering, SteeringPlan

    loaded, inputs = setup
    groups = token_groups(loaded.adapter, inputs)
    image = groups.image

    def plan(mode):
        values = np.linspace(-3.0, 1.0, image.size) if mode == "bias" else np.ones(image.size)
        return SteeringPlan([[Steering(frozenset({1, 3}), groups.get("question,last"), image,
                                       values, mode)]])

    _fast(loaded, "sdpa")
    with torch.inference_mode(), attention.attach(
            loaded.adapter.attention_modules(loaded.model), plan("bias")):
        expected = loaded.model(**inputs.batch).logits[:, -1].float()
    planned = engine.edits(loaded, inputs, steering=plan("bias"))
    got, _ = engine.trace(loaded, inputs, planned)
    assert (got - expected).abs().max() <= TOLERANCE
    clean, _ = engine.trace(loaded, inputs, engine.edits(loaded, inputs))
    assert (got - clean).abs().max() > 1e-4
    with pytest.raises(UserError, match="bias only"):
        engine.edits(loaded, inputs, steering=plan("mix"))


@pytest.mark.parametrize("installed", ["0.5.0", "0.8.0", "0.9.0", "1.0"])
def test_an_nnsight_outside_the_supported_range_is_refused(installed):
    with pytest.raises(UserError, match=r"nnsight>=0.8.1,<0.9.*nnsight " + installed):
        engine.check_version(installed)
    engine.check_version("0.8.1")
    engine.check_version()  # the installed one


def _summary_numbers(path):
    """summary.json less what differs by nature (timings, versions) and the engine's name."""
    import json

    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items()
                    if k not in ("timing", "versions", "engine") and not k.endswith("seconds")}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return strip(json.loads((path / "summary.json").read_text()))


@pytest.mark.parametrize("analysis, options", [
    ("attention_evolution", ["--examples", "1"]),
    ("layer_masking", ["--all-samples"]),
])
def test_the_cli_on_either_engine_writes_the_same_numbers(analysis, options, tmp_path):
    import importlib
    import json

    from probes.cli import run_cli

    main = importlib.import_module(f"analyses.{analysis}.__main__").main
    common = ["--limit", "1", "--bootstrap", "50", *options]
    assert run_cli(main, [*common, "--out", str(tmp_path / "fast")]) == 0
    assert run_cli(main, [*common, "--engine", "nnsight", "--out", str(tmp_path / "ours")]) == 0
    fast, ours = _summary_numbers(tmp_path / "fast"), _summary_numbers(tmp_path / "ours")
    _assert_close(fast, ours, "summary")  # numbers to float rounding, the rest exactly
    recorded = json.loads((tmp_path / "ours" / "summary.json").read_text())["config"]
    assert recorded["engine"] == "nnsight"
    assert "engine" not in json.loads((tmp_path / "fast" / "summary.json").read_text())["config"]


def _assert_close(expected, actual, where):
    import math

    if isinstance(expected, dict):
        assert expected.keys() == actual.keys(), where
        for key in expected:
            _assert_close(expected[key], actual[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert len(expected) == len(actual), where
        for i, (e, a) in enumerate(zip(expected, actual)):
            _assert_close(e, a, f"{where}[{i}]")
    elif isinstance(expected, float):
        # logits agree to a few 1e-6 on the trained tiny model; a change of p(answer) in %
        # is 100 x that: 1e-3 absolute
        assert math.isclose(expected, actual, rel_tol=1e-4, abs_tol=1e-3) or (
            math.isnan(expected) and math.isnan(actual)), f"{where}: {expected} != {actual}"
    else:
        assert expected == actual, where


def test_the_cli_refuses_an_unsupported_nnsight_in_one_sentence(tmp_path, capsys, monkeypatch):
    from analyses.token_importance.__main__ import main
    from probes.cli import run_cli
    from probes.nnsight import version

    monkeypatch.setattr(version, "package_version", lambda name: "0.9.2")
    assert run_cli(main, ["--engine", "nnsight", "--limit", "1", "--out", str(tmp_path)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error == ["error: the nnsight engine needs nnsight>=0.8.1,<0.9 but this environment "
                     "has nnsight 0.9.2; pip install 'nnsight>=0.8.1,<0.9'."]
