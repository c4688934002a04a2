"""analyses.attenuation against references: attention shares and the image's value contribution
vs a hand computation from eager ``output_attentions`` and the hooked value projection and
o_proj input; the logit lens vs the model's own logits; the small/large rule; the CLI, figures
redrawn without a model, determinism, resume (and its state), shards merged, the overwrite
guard and every bad input's one sentence."""

from __future__ import annotations

import doctest
import importlib

import numpy as np
import pytest
import torch
from helpers import assert_same_run, interrupt_at

from analyses.attenuation import AttenuationConfig, measure_sample, run_attenuation
from analyses.attenuation.__main__ import main as cli_main
from analyses.attenuation.measure import METRICS, answer_lens, answer_token
from analyses.attenuation.run import difference_ci, subset_masks
from analyses.data import load_dataset
from analyses.layer_masking.sweep import has_region, sample_groups
from analyses.merge import merge
from analyses.results import RunResult
from analyses.runner import PARTIAL, RecordStore
from probes.cli import run_cli
from probes.errors import UserError
from probes.models.loading import load_model
from probes.run import clean_pass
from probes.tokens import token_groups


@pytest.fixture(scope="module")
def fine():
    return load_dataset("fine-grained", "test", limit=6)


def _reference(name: str, sample) -> np.ndarray:
    """The first six metrics written out from eager attention probabilities, the hooked value
    projections and the hooked input of o_proj (= concat over heads of P V)."""
    loaded = load_model(name)
    model, adapter = loaded.model, loaded.adapter
    model.set_attn_implementation({"text_config": "eager"})
    inputs = adapter.build_inputs([sample.image], [sample.question])
    groups = sample_groups(loaded, inputs, sample) if has_region(sample) else \
        token_groups(adapter, inputs)
    modules = adapter.attention_modules(model)
    values, concat = {}, {}
    hooks = []
    for layer, module in enumerate(modules):
        hooks.append(module.v_proj.register_forward_hook(
            lambda m, a, out, layer=layer: values.__setitem__(layer, out[0].detach())))
        hooks.append(module.o_proj.register_forward_pre_hook(
            lambda m, a, layer=layer: concat.__setitem__(layer, a[0][0].detach())))
    with torch.no_grad():
        output = model(**inputs.batch, output_attentions=True)
    for hook in hooks:
        hook.remove()
    heads, kv_heads, dim = adapter.num_heads, adapter.num_kv_heads, adapter.head_dim
    image, region = groups.image_patches, groups.object
    reference = np.full((6, adapter.num_layers), np.nan)
    for layer in range(adapter.num_layers):
        probs = output.attentions[layer][0].double()  # [heads, seq, seq]
        v = values[layer].double().reshape(-1, kv_heads, dim)  # [seq, kv_heads, dim]
        weight = modules[layer].o_proj.weight.double()
        for slot, rows in ((0, groups.last), (1, groups.question)):
            shares, regions, ratios = [], [], []
            for row in rows:
                p = probs[:, row]  # [heads, seq]
                shares.append(float(p[:, image].sum(-1).mean()))
                if region.size:
                    regions.append(float(p[:, region].sum(-1).mean() / p[:, image].sum(-1).mean()))
                image_part = torch.cat([p[h, image] @ v[image, h // (heads // kv_heads)]
                                        for h in range(heads)])
                whole = concat[layer][row].double()
                ratios.append(float((weight @ image_part).norm() / (weight @ whole).norm()))
            reference[slot, layer] = np.mean(shares)
            reference[2 + slot, layer] = np.mean(regions) if regions else np.nan
            reference[4 + slot, layer] = np.mean(ratios)
    return reference


@pytest.mark.parametrize("name", ["tiny-llava", "tiny-random-qwen2.5-vl"])
def test_shares_and_value_ratio_equal_a_hand_computation_from_eager(name, fine):
    loaded = load_model(name)
    for index in (0, 3):  # a colour question and a two-object relation question
        sample = fine[index]
        measured = measure_sample(loaded, sample)
        reference = _reference(name, sample)
        np.testing.assert_allclose(measured.values[:6], reference, atol=1e-5, rtol=0)
        assert np.isfinite(measured.values[:6]).all()


def test_logit_lens_at_the_last_layer_is_the_models_output(fine):
    loaded = load_model("tiny-llava")
    sample = fine[1]
    inputs = loaded.adapter.build_inputs([sample.image], [sample.question])
    with torch.no_grad():
        output = loaded.model(**inputs.batch, output_hidden_states=True)
    lens = answer_lens(loaded, clean_pass(loaded, inputs))
    assert lens.shape == (loaded.adapter.num_layers, loaded.model.config.text_config.vocab_size)
    torch.testing.assert_close(lens[-1], output.logits[0, -1].float().log_softmax(-1),
                               atol=1e-5, rtol=0)
    norm, head = loaded.adapter.final_norm(loaded.model), loaded.adapter.lm_head(loaded.model)
    with torch.no_grad():  # an intermediate layer: norm + unembedding of the residual stream
        middle = head(norm(output.hidden_states[3][0, -1])).log_softmax(-1)
    torch.testing.assert_close(lens[2], middle, atol=1e-5, rtol=0)
    measured = measure_sample(loaded, sample)
    token = answer_token(loaded, sample.answer)
    probs = output.logits[0, -1].float().softmax(-1)
    assert measured.values[METRICS.index("answer_prob"), -1] == pytest.approx(
        float(probs[token]), abs=1e-6)
    assert measured.values[METRICS.index("answer_rank"), -1] == int((probs > probs[token]).sum())
    assert measured.correct == bool(probs.argmax() == token)


def test_small_and_large_follow_the_stated_rule():
    cells = np.array([0.0, 0.5, 0.99, 1.0, 3.0])
    masks = subset_masks(cells, 1.0)
    assert masks["small"].tolist() == [False, True, True, False, False]
    assert masks["large"].tolist() == [False, False, False, True, True]
    assert masks["all"].all()
    difference, low, high = difference_ci(np.array([1.0, 2.0, 3.0]), np.array([0.0, 0.0]),
                                          1000, 0)
    assert difference == 2.0 and 1.0 <= low <= difference <= high <= 3.0


def test_run_is_deterministic_and_its_subsets_partition_visible_targets(fine):
    loaded = load_model("tiny-llava")
    config = AttenuationConfig(n_bootstrap=200)
    first = run_attenuation(loaded, fine, config)
    second = run_attenuation(loaded, fine, config)
    np.testing.assert_array_equal(first.arrays["curves"], second.arrays["curves"])
    assert first.summary["per_layer"] == second.summary["per_layer"]
    visible = sum(has_region(fine[i]) for i in range(len(fine)))
    subsets = first.summary["subsets"]
    assert subsets["small"] + subsets["large"] == visible and subsets["all"] == len(fine)
    shares = first.arrays["curves"][:, :2]
    assert (shares >= 0).all() and (shares <= 1).all()


def test_resume_after_an_interruption_gives_the_uninterrupted_result(fine, tmp_path):
    loaded = load_model("tiny-llava")
    config = AttenuationConfig(n_bootstrap=200)
    whole = run_attenuation(loaded, fine, config)
    with pytest.raises(KeyboardInterrupt):
        run_attenuation(loaded, fine, config, out=tmp_path, on_sample=interrupt_at(3))
    kept = sorted(p.name for p in (tmp_path / PARTIAL / "samples").glob("*.npz"))
    assert kept == ["0000000.npz", "0000001.npz", "0000002.npz"]  # kept as they finished
    with pytest.raises(UserError, match="another config"):
        run_attenuation(loaded, fine, AttenuationConfig(n_bootstrap=200, small_cells=2.0),
                        out=tmp_path, resume=True)
    seen = []
    resumed = run_attenuation(loaded, fine, config, out=tmp_path, resume=True,
                              on_sample=seen.append)
    assert seen == [4, 5, 6]  # it went on from the kept samples, not from the start
    assert_same_run(whole, resumed)
    assert not (tmp_path / PARTIAL).exists()
    resumed.save(tmp_path)
    with pytest.raises(UserError, match="holds a finished run"):
        run_attenuation(loaded, fine, config, out=tmp_path, resume=True)


def test_shards_merge_into_the_unsharded_result(fine, tmp_path):
    loaded = load_model("tiny-llava")
    config = AttenuationConfig(n_bootstrap=200)
    whole = run_attenuation(loaded, fine, config)
    directories = []
    for index in range(2):
        out = tmp_path / f"shard{index}"
        part = run_attenuation(loaded, fine, config, shard=(index, 2), out=out)
        assert part.summary["n_samples"] == 3 and part.summary["shard"] == f"{index}/2"
        directories.append(part.save(out))
    merged = merge(directories)
    assert_same_run(whole, merged)
    assert merged.arrays["kind"].tolist() == [fine[i].kind for i in range(len(fine))]
    np.testing.assert_array_equal(merged.arrays["curves"][1::2],
                                  RunResult.load(directories[1]).arrays["curves"])
    with pytest.raises(UserError, match="every shard"):
        merge(directories[1:])


def test_resume_state_keeps_ragged_samples_and_refuses_another_key(tmp_path):
    key = {"analysis": "demo", "model": {"id": "m"}, "data": {"size": 3}, "config": {"seed": 0}}
    store = RecordStore.open(tmp_path, key)
    for index, n in ((4, 5), (1, 2)):  # ragged: each sample its own file, by index
        store.put("samples", index, {"curve": np.arange(n, dtype=np.float32), "kind": "x" * n,
                                     "ok": n > 3})
    store.put("first", 0, {"maps": np.ones(3)})
    store.fail("samples", 2, "s2", "ValueError: broken")
    with pytest.raises(TypeError, match="pickle"):
        store.put("samples", 3, {"bad": np.array([None, 1], dtype=object)})
    assert sorted(p.name for p in (tmp_path / PARTIAL / "samples").iterdir()) == [
        "0000001.npz", "0000002.failed.json", "0000004.npz"]
    again = RecordStore.open(tmp_path, dict(key, config={"seed": 0}), resume=True)
    back = again.records("samples")
    assert list(back) == [1, 4]  # ascending by sample index, the failed one left out
    assert [row["curve"].tolist() for row in back.values()] == [[0.0, 1.0],
                                                                [0.0, 1.0, 2.0, 3.0, 4.0]]
    assert back[4]["curve"].dtype == np.float32 and str(back[4]["kind"]) == "xxxxx"
    assert back[4]["ok"].dtype == bool and bool(back[4]["ok"]) and not bool(back[1]["ok"])
    assert again.failures() == [{"index": 2, "id": "s2", "pass": "samples",
                                 "reason": "ValueError: broken"}]
    assert again.has("samples", 2) and not again.has("samples", 3)
    for other in (dict(key, config={"seed": 1}), dict(key, model={"id": "n"})):
        with pytest.raises(UserError, match="used another (config|model)"):
            RecordStore.open(tmp_path, other, resume=True)
    with pytest.raises(UserError, match="holds an unfinished run"):
        RecordStore.open(tmp_path, key)  # neither --resume nor --overwrite: refused
    fresh = RecordStore.open(tmp_path, key, overwrite=True)  # start over
    assert fresh.records("samples") == {} and fresh.records("first") == {}
    assert fresh.failures() == []
    fresh.clear()
    assert not (tmp_path / PARTIAL).exists()
    assert RecordStore.open(tmp_path, key, resume=True).records("samples") == {}  # nothing kept


def test_cli_writes_results_and_figures_and_figures_redraw_without_a_model(tmp_path, capsys):
    out = tmp_path / "run"
    code = run_cli(cli_main, ["--data", "fine-grained", "--limit", "8", "--out", str(out),
                              "--bootstrap", "100"])
    assert code == 0
    table = capsys.readouterr().out
    assert "region_share(last)" in table and "small" in table
    result = RunResult.load(out)
    for key in ("analysis", "model", "data", "n_samples", "config", "versions", "seed",
                "per_layer", "small_minus_large", "attenuation", "accuracy"):
        assert key in result.summary
    row = result.summary["per_layer"][0]
    assert set(row) >= {"series", "layer", "mean", "ci_low", "ci_high", "n"}
    assert result.arrays["curves"].shape == (8, len(METRICS), 6)
    assert set(result.to_dataframe()["subset"]) == {"all", "small", "large"}
    for name in ("attenuation_curves", "attenuation_question", "attenuation_small_vs_large"):
        assert (out / f"{name}.png").stat().st_size > 10_000
        pdf = (out / f"{name}.pdf").read_bytes()
        assert b"/FontFile2" in pdf and b"/Type3" not in pdf
    from figures.paper import main as paper_main

    redrawn = tmp_path / "redrawn"
    assert run_cli(paper_main, [str(out), "--out", str(redrawn)]) == 0
    assert (redrawn / "run" / "attenuation_curves.pdf").is_file()


def test_cli_refuses_to_replace_a_finished_run_without_overwrite(tmp_path, capsys):
    argv = ["--data", "fine-grained", "--limit", "2", "--bootstrap", "50", "--out",
            str(tmp_path)]
    assert run_cli(cli_main, argv) == 0
    first = (tmp_path / "summary.json").read_bytes()
    capsys.readouterr()
    assert run_cli(cli_main, argv) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error[-1].startswith("error: ") and "already holds a finished run" in error[-1]
    assert "--overwrite" in error[-1]
    assert (tmp_path / "summary.json").read_bytes() == first  # left as it was
    assert run_cli(cli_main, [*argv, "--overwrite"]) == 0
    assert RunResult.load(tmp_path).summary["n_samples"] == 2


@pytest.mark.parametrize("argv, message", [
    (["--limit", "0"], "--limit takes a whole number of at least 1"),
    (["--small-cells", "0"], "--small-cells takes a number above 0"),
    (["--bootstrap", "0"], "--bootstrap takes a whole number from 1 to 1000000"),
    (["--batch-size", "4"], "--batch-size must be 1"),
    (["--data", "nowhere"], "nowhere"),
    (["--model", "no-such-model"], "no-such-model"),
])
def test_bad_input_gets_one_sentence_and_exit_2(argv, message, tmp_path, capsys):
    assert run_cli(cli_main, [*argv, "--limit", "2", "--out", str(tmp_path)]
                   if "--limit" not in argv else [*argv, "--out", str(tmp_path)]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: ") and message in error


@pytest.mark.parametrize("name", ["analyses.attenuation", "analyses.attenuation.run",
                                  "figures.attenuation"])
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
