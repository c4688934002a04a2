"""The sinks analysis (analyses.sinks): every per-sample number against an independent
computation from the model's own eager ``output_attentions`` and ``output_hidden_states`` on
three tiny families (LLaVA, Qwen2.5-VL, Gemma 3), the nnsight engine against the fast one; the
sink-dimension rule on hand-built residual vectors where it must and must not fire; the verdict
lines; the CLI end to end on the embedded model, its bad input and its figures."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from analyses.sinks.measure import massive, measure_sample
from analyses.sinks.run import TEXT_SINK, layer_list, verdict
from probes import attention
from probes.models.loading import load_model
from probes.tokens import token_groups

EXACT = 1e-5
FAMILIES = ("tiny-random-llava", "tiny-random-qwen2.5-vl", "tiny-random-gemma3")


@pytest.fixture(scope="module")
def easy():
    from analyses.data import load_dataset

    return load_dataset("easy-vqa", limit=4)


def reference(loaded, sample, tau: float) -> dict:
    """The measures written out from eager ``output_attentions`` and ``output_hidden_states``
    (the last layer's output from a hook: the model's last hidden state is after its final
    norm), token by token and dimension by dimension."""
    inputs = loaded.adapter.build_inputs([sample.image], [sample.ask])
    last_layer = loaded.adapter.decoder_layers(loaded.model)[-1]
    kept = {}
    handle = last_layer.register_forward_hook(
        lambda module, args, output: kept.setdefault("out", output[0] if isinstance(
            output, tuple) else output))
    try:
        with torch.inference_mode(), attention.kept(loaded.model):
            attention.use(loaded.model, edited=False, base="eager")
            output = loaded.model(**inputs.batch, output_attentions=True,
                                  output_hidden_states=True)
    finally:
        handle.remove()
    length = inputs.input_ids.shape[1]
    image = [int(p) for p in inputs.images[0].positions]
    groups = {"first": [0], "image": image, "before": list(range(1, min(image))),
              "after": list(range(max(image) + 1, length))}
    question = token_groups(loaded.adapter, inputs).question
    layers = len(output.attentions)
    hidden = [*output.hidden_states[1:-1], kept["out"]]
    result = {name: np.zeros((layers, 4)) for name in
              ("answer_share", "answer_head_max", "question_share", "question_head_max")}
    result.update(top_ratio=np.zeros((layers, 3)), first_ratio=np.zeros(layers),
                  n_sink_dims=np.zeros(layers, int), first_dim=np.zeros(layers, int),
                  visual_sinks=np.zeros(layers, int),
                  visual_attention=np.zeros(layers))
    for layer in range(layers):
        probs = output.attentions[layer][0].double()  # [heads, query, key]
        for k, keys in enumerate(groups.values()):
            on = probs[:, :, keys].sum(-1)  # [heads, query]
            result["answer_share"][layer, k] = on[:, -1].mean()
            result["answer_head_max"][layer, k] = on[:, -1].max()
            asked = on[:, question].mean(1)
            result["question_share"][layer, k] = asked.mean()
            result["question_head_max"][layer, k] = asked.max()
        states = hidden[layer][0].double()  # [token, hidden]
        ratio = [float(h.abs().max() / torch.quantile(h.abs(), 0.5)) for h in states]
        text = groups["before"] + groups["after"]
        result["top_ratio"][layer] = [ratio[0], max(ratio[p] for p in image),
                                      max(ratio[p] for p in text)]
        rms = [float(h.pow(2).mean().sqrt()) for h in states]
        sink = [d for d in range(states.shape[1]) if abs(float(states[0, d])) >= tau * rms[0]]
        result["first_ratio"][layer] = float(states[0].abs().max()) / rms[0]
        result["first_dim"][layer] = int(states[0].abs().argmax())
        result["n_sink_dims"][layer] = len(sink)
        visual = [p for p in image if any(abs(float(states[p, d])) >= tau * rms[p]
                                          for d in sink)]
        result["visual_sinks"][layer] = len(visual)
        result["visual_attention"][layer] = float(probs[:, -1, visual].sum(-1).mean())
    return result


@pytest.mark.parametrize("name", FAMILIES)
def test_every_number_equals_eager_attentions_and_hidden_states(name, easy):
    loaded = load_model(name)
    sample = easy[0]
    tau = 1.8  # one the random weights reach: visual sinks in every family (2 to 64 a layer)
    expected = reference(loaded, sample, tau)
    assert expected["visual_sinks"].sum() > 0  # the rule fires somewhere, so the test can fail
    record = measure_sample(loaded, sample, tau)
    for key, values in expected.items():
        if key != "first_dim":
            np.testing.assert_allclose(record[key], values, atol=EXACT, rtol=1e-6, err_msg=key)
    assert record["sum_error"] < EXACT  # every row's groups sum to 1
    assert np.allclose(record["answer_share"].sum(-1), 1, atol=EXACT)
    np.testing.assert_array_equal(record["first_dims"][:, 0], expected.pop("first_dim"))
    n_image = len(inputs_image(loaded, sample))
    np.testing.assert_allclose(record["visual_share"], expected["visual_sinks"] / n_image)
    # the nnsight engine reads the same attention and residuals
    other = measure_sample(loaded, sample, tau, "nnsight")
    for key in expected:
        np.testing.assert_allclose(other[key], record[key], atol=EXACT, rtol=1e-6, err_msg=key)


def inputs_image(loaded, sample):
    return loaded.adapter.build_inputs([sample.image], [sample.ask]).images[0].positions


# ----------------------------------------------------------------------------- hand-built
def hand_built(hidden: int = 1024) -> np.ndarray:
    """[1 layer, 6 tokens, hidden]: ±1 everywhere but for the peaks below (|h| median 1)."""
    signs = np.where(np.arange(hidden) % 2, 1.0, -1.0)
    states = np.tile(signs, (6, 1))
    states[0, 7] = 1000.0  # the first token: a sink dimension 7 (1000 / RMS 31.3 = 32.0)
    states[1, 7] = -500.0  # image: peaks in dim 7, 500 / RMS 15.7 = 31.9: a visual sink
    states[2, 8] = 500.0  # image: as large a peak, but in dim 8 (no sink dim): not one
    states[3, 7] = 30.0  # image: 30 / RMS 1.37 = 21.9 >= 20: a visual sink
    states[4, 7] = 15.0  # image: 15 / RMS 1.10 = 13.6 < 20: not one
    states[5] = 0.0  # text: a zero vector (no peak; no NaN)
    return states[None]


def test_sink_dimension_rule_fires_and_does_not():
    states = hand_built()
    image, text = np.array([1, 2, 3, 4]), np.array([5])
    got = massive(states, 0, image, text, tau=20)
    rms = np.sqrt((1000.0**2 + 1023) / 1024)
    assert got["n_sink_dims"].tolist() == [1]
    assert got["first_dims"][0, 0] == 7
    np.testing.assert_allclose(got["first_ratio"], [1000 / rms])
    assert got["visual"].tolist() == [[True, False, True, False]]
    # max |h| / median |h|: 1000, the image's largest 500, the zero vector's 0
    np.testing.assert_allclose(got["top_ratio"], [[1000.0, 500.0, 0.0]])
    # the first token without a sink dimension: no visual sink, however the image peaks
    assert not massive(states, 0, image, text, tau=40)["visual"].any()
    # a tau just above a token's ratio leaves it out, just below takes it in
    ratio3 = 30 / np.sqrt((900 + 1023) / 1024)
    assert massive(states, 0, image, text, tau=ratio3 * 1.001)["visual"][0].tolist() == \
        [True, False, False, False]
    assert massive(states, 0, image, text, tau=ratio3 * 0.999)["visual"][0, 2]


def test_verdict_lines():
    layers = 4
    arrays = {"answer_share": np.zeros((2, layers, 4)), "visual_sinks": np.zeros((2, layers)),
              "visual_share": np.zeros((2, layers)), "visual_attention": np.zeros((2, layers)),
              "first_ratio": np.full((2, layers), 5.0), "hidden": np.array([64, 64])}
    arrays["answer_share"][:, :, 0] = [[0.1, 0.6, 0.7, 0.9], [0.1, 0.4, 0.5, 0.9]]
    arrays["visual_sinks"][0, 2:] = 3
    arrays["visual_share"][0, 2:] = 0.1
    arrays["visual_attention"][0, 2:] = 0.2
    found = verdict(arrays, tau=20)
    assert TEXT_SINK == 0.5
    assert found["text_sink_layers"] == [1, 2, 3]  # means 0.1, 0.5, 0.6, 0.9
    assert "at layers 1-3 (mean 0.667 there)" in found["lines"][0]
    assert found["visual_sink_layers"] == [2, 3]
    assert "layers 2-3 (0.050 of the image tokens" in found["lines"][1]
    assert "receive 0.100 of the answer row's attention" in found["lines"][1]
    arrays["visual_sinks"][:] = 0
    none = verdict(arrays, tau=20)["lines"][1]
    assert none.startswith("visual sink tokens: none") and "sqrt(hidden) = 8.0" in none
    assert layer_list([7, 2, 3, 4, 9]) == "2-4, 7, 9"


# ----------------------------------------------------------------------------- the CLI
@pytest.fixture(scope="module")
def sinks_run(tmp_path_factory):
    from analyses.results import RunResult
    from analyses.sinks.__main__ import main

    out = tmp_path_factory.mktemp("sinks") / "run"
    assert main(["--limit", "4", "--out", str(out), "--bootstrap", "100", "--tau", "3"]) == 0
    return out, RunResult.load(out)


def test_cli_run_equals_the_measure_and_draws(sinks_run, easy, capsys):
    out, result = sinks_run
    summary, arrays = result.summary, result.arrays
    assert summary["analysis"] == "sinks" and summary["n_samples"] == 4
    assert summary["tau"] == 3 and summary["hidden"] == 128 and summary["max_sum_error"] < EXACT
    loaded = load_model("tiny-llava")
    record = measure_sample(loaded, easy[2], 3.0)
    for key in ("answer_share", "question_head_max", "top_ratio", "visual_attention"):
        np.testing.assert_allclose(arrays[key][2], record[key], atol=EXACT, err_msg=key)
    rows = [r for r in summary["per_layer"] if r["series"] == "answer_image"]
    np.testing.assert_allclose([r["mean"] for r in rows], arrays["answer_share"][..., 1].mean(0))
    assert all(r["ci_low"] <= r["mean"] <= r["ci_high"] for r in rows)
    assert len(summary["lines"]) == 2 and summary["lines"][0].startswith("text sink")
    saved = json.loads((out / "summary.json").read_text())
    assert saved["lines"] == summary["lines"]
    for name in ("sinks_attention", "sinks_massive"):
        assert (out / f"{name}.png").stat().st_size > 10_000


@pytest.mark.parametrize("argv, said", [
    (["--batch-size", "2"], "--batch-size must be 1"),
    (["--tau", "0"], "--tau"),
    (["--tau", "nan"], "--tau"),
])
def test_bad_input_is_one_sentence(argv, said, tmp_path, capsys):
    from analyses.sinks.__main__ import main
    from probes.cli import EXIT_BAD_INPUT, run_cli

    assert run_cli(main, [*argv, "--out", str(tmp_path / "run")]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert said in err and len(err.splitlines()) == 1
