"""probes.vif against references: the renderer's map sums to 1, the mix lands exactly on
(question, last) rows x image columns at the apply layers in the prefill only, alpha 0 is the
clean model bit for bit, the VIF forward equals an eager reference that overwrites probability
rows by hand, KL and sparsity equal direct computations, save -> load -> identical outputs,
determinism, training lowers the loss; on LLaVA and Qwen2.5-VL; the evaluation through the
shared runner (resume, shards merged, its recorded config and weights file); the CLI and its
bad inputs."""

from __future__ import annotations

import dataclasses
import doctest
import importlib
import json

import numpy as np
import pytest
import torch
from helpers import assert_same_run, interrupt_at
from PIL import Image

from analyses.data import load_dataset
from analyses.merge import merge
from analyses.registry import rebuild
from analyses.results import RunResult
from analyses.runner import PARTIAL, LocalBackend, RunOptions, run
from analyses.runner.execute import RECORDS
from analyses.train_vif import TrainConfig, VIFEvaluation, run_train_vif, train_vif
from analyses.train_vif.__main__ import main as cli_main
from analyses.train_vif.run import WEIGHTS, train_module, training_record
from probes import attention
from probes.cli import run_cli
from probes.errors import UserError
from probes.models.answer import answer_questions
from probes.models.loading import load_model
from probes.steer import Steering, SteeringPlan
from probes.tokens import token_groups
from probes.vif import VIF, VIFConfig, VIFSession, kl_divergence, sparsity, vif_generate

QUESTIONS = ["what color is the shape ?", "is there a red circle in the image ?"]


@pytest.fixture(scope="module", params=["tiny-llava", "tiny-random-qwen2.5-vl"])
def setup(request):
    torch.manual_seed(0)
    loaded = load_model(request.param)
    images = [Image.new("RGB", (64, 64), (200, 160, 20)), Image.new("RGB", (64, 64), (20, 60, 200))]
    inputs = loaded.adapter.build_inputs(images, QUESTIONS)
    module = VIF.for_model(loaded, VIFConfig(), seed=3)
    return loaded, inputs, module


def _vif_forward(loaded, module, inputs, **kwargs):
    with torch.no_grad(), VIFSession(loaded, module, inputs, **kwargs) as session:
        output = loaded.model(**inputs.batch, output_hidden_states=True)
    return output, session


def test_heatmap_sums_to_one_over_the_image_patches(setup):
    loaded, inputs, module = setup
    _, session = _vif_forward(loaded, module, inputs)
    heat = session.heatmap
    assert heat.shape == session.layout.image.shape and (heat >= 0).all()
    torch.testing.assert_close(heat.sum(-1), torch.ones(2), atol=1e-6, rtol=0)
    assert (heat[~session.layout.image_mask] == 0).all()


def test_mix_lands_only_on_steered_rows_and_image_columns_at_apply_layers(setup):
    loaded, inputs, module = setup
    _, session = _vif_forward(loaded, module, inputs)
    length = inputs.input_ids.shape[1]
    prefill = torch.arange(length)
    for layer in range(loaded.adapter.num_layers):
        edit = session.for_layer(layer, prefill, length)
        if layer not in module.apply_layers:
            assert edit is None
            continue
        assert edit.mix_alpha == module.config.alpha and edit.mix.shape == (2, length, length)
        for row in range(2):
            groups = token_groups(loaded.adapter, inputs, row)
            expected = np.zeros((length, length), dtype=bool)
            expected[np.ix_(groups.get("question,last"), groups.image_patches)] = True
            np.testing.assert_array_equal(edit.mix[row].numpy() != 0, expected)
            # every steered row carries the heatmap, in the order of the image patches
            for query in groups.get("question,last"):
                torch.testing.assert_close(edit.mix[row, query, groups.image_patches],
                                           session.heatmap[row], atol=0, rtol=0)
    # decoding steps (one query after the prompt) are never steered: prefill only
    assert session.for_layer(module.apply_layers[0], torch.tensor([length]), length + 1) is None


def test_only_steered_rows_change_and_only_from_the_apply_layer(setup):
    loaded, inputs, module = setup
    with torch.no_grad():
        clean = loaded.model(**inputs.batch, output_hidden_states=True).hidden_states
    steered = _vif_forward(loaded, module, inputs)[0].hidden_states
    first = module.apply_layers[0]
    assert all(torch.equal(steered[i], clean[i]) for i in range(first + 1))
    for row in range(2):
        changed = (steered[first + 1][row] != clean[first + 1][row]).any(-1).nonzero()[:, 0]
        groups = token_groups(loaded.adapter, inputs, row)
        real = set(changed.tolist()) - set(groups.padding.tolist())  # padding rows mean nothing
        assert real and real <= set(groups.get("question,last").tolist())


def test_alpha_zero_leaves_the_logits_unchanged_exactly(setup):
    loaded, inputs, module = setup
    with torch.no_grad():
        clean = loaded.model(**inputs.batch).logits
    assert torch.equal(_vif_forward(loaded, module, inputs, alpha=0.0)[0].logits, clean)
    tokens = vif_generate(loaded, module, inputs, max_new_tokens=3, alpha=0.0)
    plain = answer_questions(loaded, [Image.new("RGB", (64, 64), (200, 160, 20)),
                                      Image.new("RGB", (64, 64), (20, 60, 200))], QUESTIONS, 3)
    for row, answer in zip(tokens.tolist(), plain):
        assert tuple(row[:len(answer.token_ids)]) == answer.token_ids


def _reference_attention(apply_layers, rows_per_batch, image_per_batch, heatmap, alpha):
    """Eager attention whose probability rows at the apply layers are overwritten with
    (1 - alpha) P + alpha H, H the heatmap on the image columns, written out per batch row."""

    def function(module, query, key, value, attention_mask, scaling=None, **_):
        probs = attention.eager_attention(module, query, key, value, attention_mask, scaling)[1]
        if module.layer_idx in apply_layers and query.shape[2] == key.shape[2]:
            probs = probs.clone()
            for b in range(probs.shape[0]):
                target = torch.zeros(probs.shape[-1])
                target[image_per_batch[b]] = heatmap[b]
                rows = torch.from_numpy(rows_per_batch[b])
                probs[b][:, rows] = (1 - alpha) * probs[b][:, rows] + alpha * target
        output = probs @ attention.repeat_kv(value, module.num_key_value_groups)
        return output.transpose(1, 2).contiguous(), probs

    return function


def test_vif_forward_equals_a_hand_written_mixing_reference(setup):
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    loaded, inputs, module = setup
    output, session = _vif_forward(loaded, module, inputs)
    groups = [token_groups(loaded.adapter, inputs, row) for row in range(2)]
    heat = session.heatmap.detach()
    function = _reference_attention(set(module.apply_layers),
                                    [g.get("question,last") for g in groups],
                                    [torch.from_numpy(g.image_patches) for g in groups], heat,
                                    module.config.alpha)
    AttentionInterface.register("reference_vif", function)
    AttentionMaskInterface.register("reference_vif", eager_mask)
    loaded.model.set_attn_implementation({"text_config": "reference_vif"})
    try:
        with torch.no_grad():
            reference = loaded.model(**inputs.batch).logits
    finally:
        loaded.model.set_attn_implementation({"text_config": "sdpa"})
    real = inputs.attention_mask.bool()  # padding rows mean nothing
    torch.testing.assert_close(output.logits[real], reference[real], atol=1e-5, rtol=0)
    # and it is the engine's own steering mix with the same distribution, row by row
    plan = SteeringPlan([[Steering(frozenset(module.apply_layers), g.get("question,last"),
                                   g.image_patches, heat[row].numpy(), "mix",
                                   module.config.alpha)] for row, g in enumerate(groups)])
    attention.enable(loaded.model)
    with torch.no_grad(), attention.attach(loaded.adapter.attention_modules(loaded.model), plan):
        steered = loaded.model(**inputs.batch).logits
    torch.testing.assert_close(output.logits, steered, atol=1e-6, rtol=0)
    with torch.no_grad():
        clean = loaded.model(**inputs.batch).logits
    assert (output.logits - clean).abs().max() > 1e-4


def test_kl_and_sparsity_equal_direct_computations():
    generator = torch.Generator().manual_seed(0)
    mu_q, mu_p = torch.randn(3, 5, generator=generator), torch.randn(3, 5, generator=generator)
    lv_q, lv_p = torch.randn(3, 5, generator=generator), torch.randn(3, 5, generator=generator)
    q = torch.distributions.Normal(mu_q, (0.5 * lv_q).exp())
    p = torch.distributions.Normal(mu_p, (0.5 * lv_p).exp())
    expected = torch.distributions.kl_divergence(q, p).sum(-1)
    torch.testing.assert_close(kl_divergence(mu_q, lv_q, mu_p, lv_p), expected, atol=1e-5,
                               rtol=1e-5)
    heat = torch.tensor([[0.5, 0.25, 0.25, 0.0]])
    widths, weights = torch.tensor([[0.1, 0.2]]), torch.tensor([[0.3, 0.7]])
    entropy = -(0.5 * np.log(0.5) + 2 * 0.25 * np.log(0.25))
    volume = 0.3 * 0.01 + 0.7 * 0.04
    assert float(sparsity(heat, widths, weights)[0]) == pytest.approx(entropy + volume, abs=1e-6)


def test_save_load_gives_identical_outputs_and_refuses_a_wrong_model(setup, tmp_path):
    loaded, inputs, module = setup
    path = module.save(tmp_path / "vif.safetensors")
    back = VIF.load(path, loaded)
    assert back.config == module.config
    assert back.apply_layers == module.apply_layers
    first, _ = _vif_forward(loaded, module, inputs)
    second, _ = _vif_forward(loaded, back, inputs)
    assert torch.equal(first.logits, second.logits)
    other = load_model("tiny-random-llava-next")
    if other.adapter.num_layers != loaded.adapter.num_layers or \
            other.adapter.hidden_size != loaded.adapter.hidden_size:
        with pytest.raises(UserError, match="was trained for a model"):
            VIF.load(path, other)
    with pytest.raises(UserError, match="no VIF module"):
        VIF.load(tmp_path / "missing.safetensors")


def test_same_seed_same_module_and_same_posterior_sample(setup):
    loaded, inputs, _ = setup
    first, second = (VIF.for_model(loaded, VIFConfig(), seed=5) for _ in range(2))
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)
    answers = torch.tensor([5, 6])
    maps = []
    for module in (first, second):
        session = _vif_forward(loaded, module, inputs, mode="posterior", answers=answers,
                               generator=torch.Generator().manual_seed(1))[1]
        maps.append((session.heatmap, session.kl))
    assert torch.equal(maps[0][0], maps[1][0]) and torch.equal(maps[0][1], maps[1][1])


def test_layer_fractions_follow_the_public_setting_and_bad_layers_are_refused():
    assert VIFConfig().layers(32) == ((11, 13, 15, 17), (25, 26, 27, 28, 29, 30, 31))
    with pytest.raises(UserError, match="out of range"):
        VIFConfig(apply_layers=(9,)).layers(6)
    with pytest.raises(UserError, match="must all come before"):
        VIFConfig(learn_layers=(4,), apply_layers=(3,)).layers(6)


def test_training_lowers_the_loss_and_leaves_the_base_model_unchanged():
    loaded = load_model("tiny-llava")
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    easy = load_dataset("easy-vqa", "train", limit=16)
    fine = load_dataset("fine-grained", "train", limit=16)
    module = VIF.for_model(loaded, VIFConfig(), seed=0)
    history = train_vif(loaded, module, easy, fine, TrainConfig(steps=24, batch_size=8))
    assert history["loss"][-4:].mean() < history["loss"][:4].mean()
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(value, before[key])


def test_cli_trains_saves_evaluates_and_reloads(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["--steps", "3", "--batch-size", "4", "--limit", "6", "--out", str(out)]
    assert run_cli(cli_main, argv) == 0
    assert "vif" in capsys.readouterr().out
    result = RunResult.load(out)
    for key in ("analysis", "model", "data", "n_samples", "config", "versions", "seed",
                "methods", "localisation", "base_model"):
        assert key in result.summary
    assert [r["method"] for r in result.summary["methods"]] == ["clean", "vif"]
    for name in ("vif_accuracy", "vif_training", "vif_heatmaps"):
        assert (out / f"{name}.png").stat().st_size > 5_000
    again = tmp_path / "again"
    assert run_cli(cli_main, ["--load", str(out / "vif.safetensors"), "--limit", "6",
                              "--out", str(again)]) == 0
    reloaded = RunResult.load(again)
    np.testing.assert_array_equal(reloaded.arrays["vif_correct"], result.arrays["vif_correct"])
    np.testing.assert_array_equal(reloaded.arrays["example_heatmaps"],
                                  result.arrays["example_heatmaps"])
    from figures.paper import main as paper_main

    assert run_cli(paper_main, [str(out), "--out", str(tmp_path / "redrawn")]) == 0


@pytest.fixture(scope="module")
def trained():
    """tiny-llava, a module trained for two steps, its training data and a small test set."""
    loaded = load_model("tiny-llava")
    easy = load_dataset("easy-vqa", "train", limit=8)
    fine = load_dataset("fine-grained", "train", limit=8)
    config = TrainConfig(steps=2, batch_size=4)
    module, _ = train_module(loaded, easy, fine, config)
    return loaded, easy, fine, load_dataset("fine-grained", "test", limit=6), config, module


def test_evaluation_in_batches_equals_one_batch_per_unit_and_resumes(trained, tmp_path):
    loaded, easy, fine, test, config, module = trained
    weights = tmp_path / WEIGHTS
    whole, _ = run_train_vif(loaded, easy, fine, test, config, module, batch_size=2,
                             weights=weights)
    assert [r["method"] for r in whole.summary["methods"]] == ["clean", "vif"]
    assert whole.summary["methods"][0]["p_value_vs_clean"] is None
    assert whole.summary["n_samples"] == 6 and whole.arrays["vif_correct"].shape == (6,)
    assert not whole.summary["training"]["trained_here"]
    assert whole.arrays["history_loss"].shape == (0,)
    kinds = sorted(set(whole.arrays["kind"].tolist()))
    assert [r["kind"] for r in whole.summary["methods_by_kind"]] == [k for k in kinds
                                                                     for _ in range(2)]
    assert whole.summary["methods"][1]["correct"] == int(whole.arrays["vif_correct"].sum())
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run_train_vif(loaded, easy, fine, test, config, module, batch_size=2, out=out,
                      weights=weights, on_sample=interrupt_at(4))
    assert len(list((out / PARTIAL / "samples").glob("*.npz"))) == 4  # two units kept
    seen = []
    resumed, _ = run_train_vif(loaded, easy, fine, test, config, module, batch_size=2,
                               out=out, resume=True, weights=weights, on_sample=seen.append)
    assert seen == [6]  # only the last unit was measured again
    assert_same_run(whole, resumed)
    assert not (out / PARTIAL).exists()


def test_shards_merge_into_the_unsharded_result(trained, tmp_path):
    loaded, easy, fine, test, config, module = trained
    weights = tmp_path / WEIGHTS
    whole, _ = run_train_vif(loaded, easy, fine, test, config, module, batch_size=2,
                             weights=weights)
    directories = []
    for index in range(2):
        out = tmp_path / f"shard{index}"
        part, _ = run_train_vif(loaded, easy, fine, test, config, module, batch_size=2,
                                out=out, shard=(index, 2), weights=weights)
        assert part.summary["n_samples"] == 4 - 2 * index  # units 0, 2 and unit 1
        assert (out / RECORDS / "samples").is_dir()
        directories.append(part.save(out))
    assert_same_run(whole, merge(directories))


def test_the_recorded_config_rebuilds_the_evaluation_and_names_the_weights(trained, tmp_path):
    import pickle

    loaded, easy, fine, test, config, module = trained
    path = module.save(tmp_path / WEIGHTS)
    analysis = VIFEvaluation.for_weights(path, config, training_record(False, 0.0, easy, fine),
                                         loaded, batch_size=3)
    recorded = analysis.recorded()
    assert recorded["weights"] == str(path.resolve()) and len(recorded["weights_sha256"]) == 64
    assert analysis.passes[0].batch == 3
    plain = json.loads(json.dumps(recorded))  # as key.json and merge hold it
    back = rebuild("train_vif", plain)
    assert json.loads(json.dumps(back.recorded())) == plain and back.config == analysis.config
    analysis.warm_up(loaded, test)  # loads the module once, in this process
    assert analysis._module is not None
    assert pickle.loads(pickle.dumps(analysis))._module is None  # workers load their own
    direct = run(analysis, LocalBackend(loaded), test)
    rebuilt = run(back, LocalBackend(loaded), test)
    assert_same_run(direct, rebuilt)
    # a summary's config (the training config alone) rebuilds what draws the table
    table = rebuild("train_vif", json.loads(json.dumps(direct.summary["config"]))).table(
        direct.summary)
    assert "vif" in table and "clean" in table
    # a changed file is another run: a worker refuses it before measuring
    VIF.for_model(loaded, config.vif, seed=9).save(path)
    with pytest.raises(UserError, match="changed since this run recorded it"):
        run(rebuild("train_vif", recorded), LocalBackend(loaded), test,
            RunOptions(out=tmp_path / "changed"))


def test_cli_refuses_a_finished_run_before_training_and_resumes_without_training(
        tmp_path, capsys, monkeypatch):
    import analyses.train_vif.__main__ as cli

    out = tmp_path / "run"
    argv = ["--steps", "1", "--batch-size", "2", "--limit", "3", "--out", str(out)]
    interrupted = cli.options_from_args

    def options(args):  # the first run stops once its one unit (of 64) is kept
        return dataclasses.replace(interrupted(args), on_sample=interrupt_at(3))

    monkeypatch.setattr(cli, "options_from_args", options)
    assert run_cli(cli_main, argv) == 130
    monkeypatch.setattr(cli, "options_from_args", interrupted)
    weights = (out / WEIGHTS).read_bytes()
    key = json.loads((out / PARTIAL / "key.json").read_text())["config"]

    def refuse(*args, **kwargs):
        raise AssertionError("measured or trained again")

    monkeypatch.setattr(cli, "train_module", refuse)
    monkeypatch.setattr(VIFEvaluation, "measure", refuse)
    assert run_cli(cli_main, [*argv, "--resume"]) == 0
    result = RunResult.load(out)
    assert result.summary["training"]["trained_here"] and result.summary["n_samples"] == 3
    np.testing.assert_array_equal(result.arrays["history_loss"], key["training"]["history"]["loss"])
    assert (out / WEIGHTS).read_bytes() == weights and not (out / PARTIAL).exists()
    capsys.readouterr()
    for again in (argv, [*argv, "--resume"]):  # refused before training overwrites the weights
        assert run_cli(cli_main, again) == 2
        error = capsys.readouterr().err.strip().splitlines()
        assert len(error) == 1 and error[0].startswith("error: ") and "finished run" in error[0]
    assert (out / WEIGHTS).read_bytes() == weights


@pytest.mark.parametrize("argv, message", [
    (["--apply-layers", "9"], "out of range"),
    (["--learn-layers", "4", "--apply-layers", "3"], "must all come before"),
    (["--apply-layers", "x"], "--apply-layers takes layer numbers separated by commas"),
    (["--alpha", "2"], "--alpha takes a number in [0, 1]"),
    (["--steps", "-1"], "--steps takes a whole number of at least 0"),
    (["--fine-fraction", "2"], "--fine-fraction takes a number in [0, 1]"),
    (["--load", "nowhere.safetensors"], "no VIF module"),
    (["--shard", "1/2"], "train it once"),
    (["--resume", "--overwrite"], "give one"),
    (["--limit", "0"], "--limit takes a whole number of at least 1"),
])
def test_bad_input_gets_one_sentence_and_exit_2(argv, message, tmp_path, capsys):
    assert run_cli(cli_main, [*argv, "--out", str(tmp_path)]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: ") and message in error


@pytest.mark.parametrize("name", ["probes.vif", "analyses.train_vif", "figures.vif"])
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
