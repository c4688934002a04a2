"""TransformerLens interop: the export against eager ``output_attentions``, the cross-check on
each family (patterns and knockouts for LLaVA and LLaVA-NeXT, patterns for Qwen2.5-VL and Qwen3-VL, within
1e-5), the user's model and environment untouched by the bridge, no subprocess started, and
one sentence (exit 2) without the extra."""

from __future__ import annotations

import copy
import doctest
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from huggingface_hub import constants as hub_constants
from PIL import Image

import probes.lens
import probes.lens.compare as lens_compare
import probes.lens.export
import probes.lens.extra
from probes import attention
from probes.cli import run_cli
from probes.errors import UserError
from probes.lens import crosscheck, to_activation_cache
from probes.lens.__main__ import main
from probes.masking import Knockout
from probes.models.loading import load_model
from probes.record import AttentionRecorder
from probes.run import run_knockouts
from probes.tokens import token_groups

TOLERANCE = 1e-5
IMAGE = Image.new("RGB", (64, 64), (200, 40, 40))
QUESTION = "what shape is in the image ?"


@pytest.fixture(scope="module")
def llava():
    return load_model("tiny-random-llava")


def _module_tree(model):
    return [(name, type(module), id(module)) for name, module in model.named_modules()]


def _logits(loaded, inputs):
    with torch.no_grad():
        return loaded.model(**inputs.batch).logits


@pytest.mark.parametrize("name", ["probes.lens", "probes.lens.export", "probes.lens.extra"])
def test_docstring_examples(name):
    module = sys.modules[name]
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_export_equals_eager_output_attentions_under_tl_hook_names(llava):
    inputs = llava.adapter.build_inputs([IMAGE], [QUESTION])
    groups = token_groups(llava.adapter, inputs)
    reference_model = copy.deepcopy(llava.model)
    reference_model.set_attn_implementation({"text_config": "eager"})
    with torch.no_grad():
        reference = reference_model(**inputs.batch, output_attentions=True).attentions
    everything = AttentionRecorder(queries=range(groups.length))
    some = AttentionRecorder(queries=groups.last, keys=groups.image, layers=[1, 4])
    attention.enable(llava.model)
    with torch.no_grad(), attention.attach(llava.adapter.attention_modules(llava.model),
                                           attention.CombinedPlan((everything, some))):
        llava.model(**inputs.batch)

    full = to_activation_cache(everything, groups)
    for layer, expected in enumerate(reference):
        exported = full.cache[f"blocks.{layer}.attn.hook_pattern"]
        assert exported.shape == expected.shape  # [batch, head, query, key]
        torch.testing.assert_close(exported, expected.float(), atol=1e-6, rtol=0)
        assert torch.equal(full.cache["pattern", layer], exported)  # TL's own key lookup
    for group in ("image", "question", "last", "system"):
        np.testing.assert_array_equal(full.positions[group], groups.get(group))

    partial = to_activation_cache(some, groups)
    assert sorted(partial.cache.keys()) == ["blocks.1.attn.hook_pattern", "blocks.4.attn.hook_pattern"]
    for layer in (1, 4):
        pattern = partial.cache[f"blocks.{layer}.attn.hook_pattern"]
        rows, keys = np.ix_(groups.last, groups.image)
        recorded = pattern[:, :, rows, keys]
        torch.testing.assert_close(recorded, reference[layer][:, :, rows, keys], atol=1e-6, rtol=0)
        assert int(pattern.isnan().sum()) == pattern.numel() - recorded.numel()
    np.testing.assert_array_equal(partial.query_positions, groups.last)
    np.testing.assert_array_equal(partial.key_positions, groups.image)


def test_export_of_knockout_recordings_has_one_row_per_condition(llava):
    inputs = llava.adapter.build_inputs([IMAGE], [QUESTION])
    groups = token_groups(llava.adapter, inputs)
    knockouts = [Knockout.window("image->question,last", layer, 1, 6) for layer in (1, 3)]
    recorder = AttentionRecorder(queries=groups.get("question,last"))
    result = run_knockouts(llava, inputs, knockouts, record=recorder)
    view = to_activation_cache(recorder, groups, maps=result.attentions)
    rows, image = np.ix_(groups.get("question,last"), groups.image)
    for condition, knocked in enumerate((1, 3)):
        for layer in range(6):
            pattern = view.cache[f"blocks.{layer}.attn.hook_pattern"][condition]
            reads_image = float(pattern[:, rows, image].sum())
            assert (reads_image == 0.0) == (layer == knocked)  # blocked edges: exactly zero
            sums = pattern[:, torch.from_numpy(groups.get("question,last"))].sum(-1)
            torch.testing.assert_close(sums, torch.ones_like(sums))


def test_export_refuses_reduced_or_empty_recordings(llava):
    inputs = llava.adapter.build_inputs([IMAGE], [QUESTION])
    groups = token_groups(llava.adapter, inputs)
    with pytest.raises(UserError, match="reduce='none'"):
        to_activation_cache(AttentionRecorder(queries=groups.last, reduce="mean_heads"), groups)
    with pytest.raises(UserError, match="holds no attention"):
        to_activation_cache(AttentionRecorder(queries=groups.last), groups)


@pytest.mark.parametrize("model", ["tiny-random-llava", "tiny-random-llava-next",
                                   "tiny-random-idefics3", "tiny-random-gemma3",
                                   "tiny-random-llava-onevision", "tiny-random-mistral3"])
def test_crosscheck_patterns_and_knockouts_agree_with_transformer_lens(model):
    loaded = load_model(model)
    report = crosscheck(loaded, IMAGE, QUESTION)
    layers = list(range(loaded.adapter.num_layers))
    assert list(report.patterns) == layers and list(report.knockouts) == layers
    assert report.largest <= TOLERANCE, str(report)
    assert report.note == ""
    assert "largest difference" in str(report)


@pytest.mark.parametrize("model", ["tiny-random-internvl", "tiny-random-smolvlm"])
def test_crosscheck_refuses_families_transformer_lens_cannot_bridge(model):
    with pytest.raises(UserError, match="TransformerLens cannot bridge"):
        crosscheck(load_model(model), IMAGE, QUESTION)


def test_crosscheck_detects_a_knockout_at_the_wrong_layer_and_bounds_memory(llava, monkeypatch):
    """The comparison can fail: our knockouts shifted by one layer differ from TL's. With a
    memory budget too small for every row's maps, the text rows are compared."""
    run = lens_compare.run_knockouts

    def shifted(loaded, inputs, knockouts, **kwargs):
        return run(loaded, inputs, knockouts[1:] + knockouts[:1], **kwargs)

    monkeypatch.setattr(lens_compare, "run_knockouts", shifted)
    monkeypatch.setattr(lens_compare, "MAX_RECORDED_BYTES", 0)
    report = crosscheck(llava, IMAGE, QUESTION)
    assert max(report.patterns.values()) <= TOLERANCE
    assert min(report.knockouts.values()) > 1e-3
    assert "no image tokens" in report.rows
    groups = token_groups(llava.adapter, llava.adapter.build_inputs([IMAGE], [QUESTION]))
    rows, _ = lens_compare.compared_rows(groups, heads=4, layers=6)
    np.testing.assert_array_equal(rows, np.setdiff1d(np.arange(groups.length), groups.image))
    assert rows.size < groups.length and np.isin(groups.get("question,last"), rows).all()


@pytest.mark.parametrize("name", ["tiny-random-qwen2.5-vl", "tiny-random-qwen3-vl"])
def test_crosscheck_on_qwen_compares_patterns_only_and_says_so(name):
    loaded = load_model(name)
    report = crosscheck(loaded, IMAGE, QUESTION)
    assert list(report.patterns) == list(range(loaded.adapter.num_layers))
    assert max(report.patterns.values()) <= TOLERANCE and report.logits <= TOLERANCE
    assert report.knockouts == {}
    assert "patterns only" in report.note and "patterns only" in str(report)


def test_crosscheck_leaves_the_users_model_and_environment_as_they_were(llava):
    inputs = llava.adapter.build_inputs([IMAGE], [QUESTION])
    llava.model.set_attn_implementation({"text_config": "sdpa"})
    implementation = llava.model.config.get_text_config()._attn_implementation
    tree, before = _module_tree(llava.model), _logits(llava, inputs)
    state = {name: tensor.clone() for name, tensor in llava.model.state_dict().items()}
    tokenizer = llava.processor.tokenizer
    tokenizer_settings = (tokenizer.padding_side, tokenizer.pad_token, len(tokenizer))
    environment, popen = dict(os.environ), subprocess.Popen
    offline = hub_constants.HF_HUB_OFFLINE

    crosscheck(llava, IMAGE, QUESTION)

    assert llava.model.config.get_text_config()._attn_implementation == implementation == "sdpa"
    assert _module_tree(llava.model) == tree
    assert torch.equal(_logits(llava, inputs), before)
    after = llava.model.state_dict()
    assert after.keys() == state.keys()
    assert all(torch.equal(after[name], tensor) for name, tensor in state.items())
    assert (tokenizer.padding_side, tokenizer.pad_token, len(tokenizer)) == tokenizer_settings
    assert dict(os.environ) == environment
    assert subprocess.Popen is popen and hub_constants.HF_HUB_OFFLINE == offline


def test_no_subprocess_is_started_even_without_pip_constraint(llava, monkeypatch):
    """TL falls back to ``pip install torchvision`` when the processor it loads by name fails;
    the control shows it does so here, the cross-check shows that nothing starts."""
    import transformers
    from transformer_lens.model_bridge import TransformerBridge

    started = []

    def refuse(args, *rest, **kwargs):
        started.append(args)
        raise OSError("subprocess creation is disabled in this test")

    def unloadable(*args, **kwargs):
        raise OSError("no processor here")

    monkeypatch.delenv("PIP_CONSTRAINT", raising=False)
    monkeypatch.setattr(subprocess, "Popen", refuse)
    monkeypatch.setitem(sys.modules, "torchvision", None)  # as on a machine without it
    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", unloadable)

    TransformerBridge.boot_transformers(llava.source.location, hf_model=copy.deepcopy(llava.model),
                                        tokenizer=copy.deepcopy(llava.processor.tokenizer))
    assert any("torchvision" in " ".join(map(str, args)) for args in started)  # the control

    started.clear()
    report = crosscheck(llava, IMAGE, QUESTION)
    assert started == []
    assert report.largest <= TOLERANCE


def test_cli_prints_the_crosscheck_and_honours_its_tolerance(tmp_path, capsys):
    image = tmp_path / "red.png"
    IMAGE.save(image)
    argv = ["crosscheck", "--model", "tiny-random-llava-next", "--image", str(image),
            "--question", QUESTION, "--device", "cpu"]
    assert run_cli(main, [*argv, "--tolerance", str(TOLERANCE)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "knockout image->question,last" in lines[2]
    layer_rows = [line.split() for line in lines[3:7]]
    assert [int(row[0]) for row in layer_rows] == [0, 1, 2, 3]
    assert all(float(value) <= TOLERANCE for row in layer_rows for value in row[1:])


def test_cli_refuses_bad_input_in_one_sentence(tmp_path, capsys):
    image = tmp_path / "red.png"
    IMAGE.save(image)
    argv = ["crosscheck", "--image", str(image), "--question", QUESTION]
    assert run_cli(main, [*argv, "--flows", "image"]) == 2
    assert "not of the form SRC->DST" in capsys.readouterr().err
    assert run_cli(main, ["crosscheck", "--image", str(tmp_path / "none.png"),
                          "--question", QUESTION]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_without_the_extra_one_sentence_names_it(llava, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformer_lens", None)  # import fails as if absent
    image = tmp_path / "red.png"
    IMAGE.save(image)
    code = run_cli(main, ["crosscheck", "--image", str(image), "--question", QUESTION])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "fusionlens[lens]" in err and "transformer-lens" in err
    with pytest.raises(UserError, match=r"fusionlens\[lens\]"):
        crosscheck(llava, IMAGE, QUESTION)


def test_an_unsupported_transformer_lens_version_is_named(monkeypatch):
    monkeypatch.setattr(probes.lens.extra.metadata, "version", lambda name: "3.9.0")
    with pytest.raises(UserError, match="3.9.0 is installed"):
        probes.lens.extra.require_transformer_lens()
