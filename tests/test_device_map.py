"""The engine on a model spread over devices with accelerate's hooks: the executor, recording,
masked generation, steering and VIF keep their consistency checks, and equal the undispatched
model. On a CPU every module is mapped to "cpu" but in two groups, so each layer runs behind its
own AlignDevicesHook; with two GPUs the layers really are split over cuda:0 and cuda:1.

Also: ``load_model(device_map=...)`` and ``--device-map`` refuse, in one sentence, what this
machine or install cannot serve."""

from __future__ import annotations

import argparse
import itertools
import sys

import pytest
import torch
from accelerate import dispatch_model
from accelerate.hooks import AlignDevicesHook
from helpers import TINY_FAMILIES, consistency_inputs
from test_run import _eager_attentions, _reference_generate

from probes import attention
from probes.cli import add_model_arguments, run_cli
from probes.devices import module_device
from probes.errors import UserError
from probes.masking import Knockout, parse_flows
from probes.models.loading import load_model
from probes.record import AttentionRecorder
from probes.run import masked_generate, run_knockouts, run_knockouts_naively
from probes.steer import Steering, SteeringPlan
from probes.tokens import token_groups
from probes.vif import VIF, VIFConfig, VIFSession

MODELS = list(TINY_FAMILIES)


def split_device_map(loaded, first: str, second: str) -> dict[str, str]:
    """Every module of the model on ``first`` or ``second``: the first half of the decoder
    layers and everything before them (vision tower, embeddings, rotary tables) on ``first``,
    the second half, the final norm and the head on ``second``."""
    model, adapter = loaded.model, loaded.adapter
    parts = adapter.layers_path.split(".")
    expanded = {".".join(parts[:i]) for i in range(len(parts) + 1)}  # "", "model", ...
    late = {adapter.final_norm_path, adapter.lm_head_path}
    mapping = {}
    for parent in sorted(expanded):
        module = model.get_submodule(parent)
        prefix = f"{parent}." if parent else ""
        for name, _ in module.named_children():
            path = prefix + name
            if path in expanded:
                continue
            if parent == adapter.layers_path:
                mapping[path] = first if int(name) < adapter.num_layers // 2 else second
            else:
                mapping[path] = second if path in late else first
        own = itertools.chain(module.named_parameters(recurse=False),
                              module.named_buffers(recurse=False))
        mapping.update({prefix + name: first for name, _ in own})  # LLaVA-NeXT's image_newline
    return mapping


@pytest.fixture(scope="module", params=MODELS)
def pair(request):
    """(plain model, the same weights dispatched with hooks in two groups, inputs)."""
    plain, dispatched = load_model(request.param), load_model(request.param)
    mapping = split_device_map(dispatched, "cpu", "cpu")
    dispatch_model(dispatched.model, device_map=mapping, main_device="cpu", force_hooks=True,
                   skip_keys=dispatched.model._skip_keys_device_placement)
    for loaded in (plain, dispatched):
        loaded.model.generation_config.eos_token_id = -1  # decode every step asked for
    return plain, dispatched, consistency_inputs(plain)


def test_every_layer_runs_behind_its_own_hook_in_two_groups(pair):
    plain, dispatched, inputs = pair
    layers = dispatched.adapter.decoder_layers(dispatched.model)
    assert all(isinstance(layer._hf_hook, AlignDevicesHook) for layer in layers)
    assert not any(hasattr(layer, "_hf_hook") for layer in plain.adapter.decoder_layers(plain.model))
    assert {module_device(layer) for layer in layers} == {torch.device("cpu")}
    mapping = split_device_map(dispatched, "first", "second")
    halves = [mapping[f"{dispatched.adapter.layers_path}.{i}"] for i in range(len(layers))]
    assert halves == sorted(halves) and set(halves) == {"first", "second"}
    with torch.inference_mode():
        assert torch.equal(dispatched.model(**inputs.batch).logits, plain.model(**inputs.batch).logits)


@pytest.mark.parametrize("flows", ["image->question,last", "question->last"])
def test_executor_on_dispatched_model_equals_full_reruns_and_the_plain_model(pair, flows):
    plain, dispatched, inputs = pair
    n = dispatched.adapter.num_layers
    sweep = [Knockout.window(flows, layer, 1, n) for layer in range(n)]
    sweep.append(Knockout.window(flows, 1, 3, n))
    result = run_knockouts(dispatched, inputs, sweep, batch_size=3, hidden_states=True)
    naive = run_knockouts_naively(dispatched, inputs, sweep)
    torch.testing.assert_close(result.logits, naive, atol=1e-5, rtol=0)
    assert (result.logits - result.clean_logits).abs().amax() > 1e-4  # the knockouts bite
    reference = run_knockouts(plain, inputs, sweep, batch_size=3, hidden_states=True)
    assert torch.equal(result.logits, reference.logits)
    assert torch.equal(result.hidden_states, reference.hidden_states)
    assert result.logits.device.type == result.hidden_states.device.type == "cpu"


def test_recording_on_dispatched_model_equals_eager_output_attentions(pair):
    plain, dispatched, inputs = pair
    n = dispatched.adapter.num_layers
    groups = token_groups(dispatched.adapter, inputs)
    queries = groups.get("question,last")
    sweep = [Knockout.window("image->question,last", layer, 1, n) for layer in (0, n - 1)]
    template = AttentionRecorder(queries=queries)
    result = run_knockouts(dispatched, inputs, sweep, batch_size=2, record=template)
    for condition, knockout in [(None, None), *enumerate(sweep)]:
        maps = _eager_attentions(dispatched, inputs, knockout)
        for layer in range(n):
            got = (result.clean_attentions[layer][0] if condition is None
                   else result.attentions[layer][condition])
            assert got.device.type == "cpu"
            torch.testing.assert_close(got, maps[layer][0][:, queries].float(), atol=1e-5, rtol=0)
    reference = run_knockouts(plain, inputs, sweep, batch_size=2, record=template)
    for layer in range(n):
        assert torch.equal(result.attentions[layer], reference.attentions[layer])
    # a recorder attached around the model's own forward, every query row
    recorder = AttentionRecorder(queries=range(inputs.input_ids.shape[1]))
    with torch.inference_mode(), attention.attach(
            dispatched.adapter.attention_modules(dispatched.model), recorder):
        dispatched.model(**inputs.batch)
    eager = _eager_attentions(dispatched, inputs, None)
    for layer in range(n):
        torch.testing.assert_close(recorder.maps[layer], eager[layer].float(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("flows", [None, "image->question,last,generated"])
def test_masked_generate_on_dispatched_model_equals_the_no_cache_loop(pair, flows):
    plain, dispatched, inputs = pair
    n = dispatched.adapter.num_layers
    knockout = Knockout(parse_flows(flows), tuple(range(n))) if flows else None
    result = masked_generate(dispatched, inputs, knockout, max_new_tokens=4)
    tokens, logits = _reference_generate(dispatched, inputs, knockout, 4)
    assert result.tokens == tokens
    torch.testing.assert_close(result.logits, logits, atol=1e-5, rtol=0)
    reference = masked_generate(plain, inputs, knockout, max_new_tokens=4)
    assert result.tokens == reference.tokens and torch.equal(result.logits, reference.logits)


def test_steering_and_vif_on_dispatched_model_equal_the_plain_model(pair):
    plain, dispatched, inputs = pair
    groups = token_groups(plain.adapter, inputs)
    image = groups.image
    steering = Steering(frozenset({1}), groups.get("question,last"), image,
                        torch.linspace(-3, 1, len(image)).numpy(), mode="bias")
    outputs = []
    for loaded in (plain, dispatched):
        attention.enable(loaded.model)
        module = VIF.for_model(loaded, VIFConfig(alpha=0.7), seed=0)
        modules = loaded.adapter.attention_modules(loaded.model)
        with torch.inference_mode():
            with attention.attach(modules, SteeringPlan([[steering]])):
                steered = loaded.model(**inputs.batch).logits
            with VIFSession(loaded, module, inputs) as session:
                mixed = loaded.model(**inputs.batch).logits
            clean = loaded.model(**inputs.batch).logits
        outputs.append((steered, mixed, session.heatmap, clean))
    for got, expected in zip(outputs[1], outputs[0]):
        assert torch.equal(got, expected)
    steered, mixed, _, clean = outputs[1]
    assert (steered - clean).abs().amax() > 1e-4 and (mixed - clean).abs().amax() > 1e-4


# ----------------------------------------------------------------- loading and the CLI
def _main(argv):
    parser = argparse.ArgumentParser()
    add_model_arguments(parser)
    args = parser.parse_args(argv)
    load_model(args.model, device=args.device, dtype=args.dtype, device_map=args.device_map)


def test_device_map_on_a_machine_without_cuda_is_one_sentence_and_exit_2(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="no CUDA device is available"):
        load_model("tiny-random-llava", device_map="auto")
    assert run_cli(_main, ["--model", "tiny-random-llava", "--device-map", "auto"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: --device-map") and error.count("\n") == 1


def test_device_map_without_accelerate_names_the_extra(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "accelerate", None)  # import accelerate -> ImportError
    with pytest.raises(UserError, match=r"pip install 'fusionlens\[multi-gpu\]'"):
        load_model("tiny-random-llava", device_map="auto")


@pytest.mark.parametrize(("options", "message"), [
    ({"device_map": "everywhere"}, "unknown device map"),
    ({"device_map": ["cuda:0"]}, "a device map is a name"),
    ({"device_map": "auto", "device": "cpu"}, "cannot be combined with --device cpu"),
])
def test_bad_device_maps_are_refused(monkeypatch, options, message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(UserError, match=message):
        load_model("tiny-random-llava", **options)


def test_device_map_argument_defaults_to_one_device():
    parser = argparse.ArgumentParser()
    add_model_arguments(parser)
    assert parser.parse_args([]).device_map is None
    assert parser.parse_args(["--device-map", "auto"]).device_map == "auto"


# ----------------------------------------------------------------- two GPUs
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
@pytest.mark.parametrize("name", MODELS)
def test_split_over_two_gpus_equals_one_gpu(name):
    single = load_model(name, device="cuda", dtype="float32")
    split = load_model(name, dtype="float32",
                       device_map=split_device_map(single, "cuda:0", "cuda:1"))
    layers = split.adapter.decoder_layers(split.model)
    assert {str(module_device(layer)) for layer in layers} == {"cuda:0", "cuda:1"}
    for loaded in (single, split):
        loaded.model.generation_config.eos_token_id = -1
    # the split model takes inputs on the CPU (its top-level hook moves them and brings the
    # outputs back), as the no-cache reference loop needs; the single one takes them on its GPU
    inputs = {id(single): consistency_inputs(single).to("cuda:0"), id(split): consistency_inputs(split)}
    n = split.adapter.num_layers
    groups = token_groups(split.adapter, inputs[id(split)])
    sweep = [Knockout.window("image->question,last", layer, 1, n) for layer in range(n)]
    template = AttentionRecorder(queries=groups.get("question,last"))
    results = [run_knockouts(loaded, inputs[id(loaded)], sweep, batch_size=3, hidden_states=True,
                             record=template) for loaded in (single, split)]
    naive = run_knockouts_naively(split, inputs[id(split)], sweep)
    torch.testing.assert_close(results[1].logits, naive, atol=1e-5, rtol=0)
    torch.testing.assert_close(results[1].logits, results[0].logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(results[1].hidden_states, results[0].hidden_states, atol=1e-5, rtol=0)
    for layer in range(n):
        assert results[1].attentions[layer].device.type == "cpu"
        torch.testing.assert_close(results[1].attentions[layer], results[0].attentions[layer],
                                   atol=1e-5, rtol=0)
    knockout = Knockout(parse_flows("image->question,last,generated"), tuple(range(n)))
    decoded = [masked_generate(loaded, inputs[id(loaded)], knockout, max_new_tokens=4)
               for loaded in (single, split)]
    assert decoded[1].tokens == decoded[0].tokens
    torch.testing.assert_close(decoded[1].logits, decoded[0].logits, atol=1e-5, rtol=0)
    tokens, logits = _reference_generate(split, inputs[id(split)], knockout, 4)
    assert decoded[1].tokens == tokens
    torch.testing.assert_close(decoded[1].logits, logits, atol=1e-5, rtol=0)
