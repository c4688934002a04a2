"""analyses.attention_evolution and analyses.contrastive_attention against references: recorded
maps equal maps computed from eager ``output_attentions``; localisation scores equal a hand
computation; a planted sink is found and only it; the refinement's decode equals a no-cache
greedy loop recomputing the full masked or biased forward at each step; ratio 0 is the clean
run exactly; the stated rules; determinism; resume (in either contrastive pass) gives the
uninterrupted result; shards merged give the unsharded result; the CLIs and every bad input's
one sentence."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from helpers import assert_same_run, interrupt_at

from analyses.attention_evolution import (
    AttentionEvolution,
    EvolutionConfig,
    auroc,
    normalised_entropy,
    pointing,
    record_sample,
    region_share,
    run_attention_evolution,
    sink_scores,
)
from analyses.attention_evolution.__main__ import main as evolution_main
from analyses.contrastive_attention import (
    ContrastiveConfig,
    Suppression,
    choose_early_layer,
    contrastive_map,
    least_shift,
    refined_generate,
    resolve_layers,
    run_contrastive_attention,
)
from analyses.contrastive_attention.__main__ import main as contrastive_main
from analyses.data import load_dataset
from analyses.merge import merge
from analyses.results import RunResult
from analyses.runner import PARTIAL, RunInfo
from probes import attention
from probes.cli import run_cli
from probes.errors import UserError
from probes.masking import EdgeMaskPlan
from probes.models.loading import load_model
from probes.run import masked_generate
from probes.steer import Steering, SteeringPlan


@pytest.fixture(scope="module")
def trained():
    return load_model("tiny-llava")


@pytest.fixture(scope="module")
def easy():
    return load_dataset("easy-vqa", "test", limit=12)


@pytest.fixture(scope="module")
def fine():
    return load_dataset("fine-grained", "test", limit=8)


# ----------------------------------------------------------------- recording vs eager
@pytest.mark.parametrize("name", ["tiny-llava", "tiny-random-qwen2.5-vl"])
def test_recorded_maps_equal_maps_from_eager_output_attentions(name, fine):
    loaded = load_model(name)
    sample = fine[1]
    attention.enable(loaded.model, "sdpa")  # recording runs without eager
    maps, _, groups, inputs = record_sample(loaded, sample, heads=True)
    loaded.model.set_attn_implementation({"text_config": "eager"})
    try:
        with torch.inference_mode():
            reference = loaded.model(**inputs.batch, output_attentions=True).attentions
    finally:
        attention.enable(loaded.model, "sdpa")
    patches = groups.image_patches
    for layer, probabilities in enumerate(reference):
        rows = probabilities[0].double()  # [heads, queries, keys]
        for s, queries in enumerate((groups.question, groups.last)):
            per_head = rows[:, queries].mean(1)  # [heads, keys]: mean over the series' rows
            mean = per_head.mean(0)
            expected_share = float(mean[groups.image].sum())
            expected_map = (mean[patches] / mean[patches].sum()).numpy()
            expected_heads = (per_head[:, patches] / per_head[:, patches].sum(-1, keepdim=True)).numpy()
            assert abs(maps.image_share[s, layer] - expected_share) < 1e-5
            np.testing.assert_allclose(maps.maps[s, layer], expected_map, atol=1e-5, rtol=0)
            np.testing.assert_allclose(maps.head_maps[s, layer], expected_heads, atol=1e-5, rtol=0)
    assert maps.relevant.sum() > 0 and maps.relevant.size == patches.size
    plain = record_sample(loaded, sample, heads=True, keep_clean=False)[0]  # no cache kept
    np.testing.assert_array_equal(plain.maps, maps.maps)


# ----------------------------------------------------------------- scores by hand
def test_localisation_scores_equal_a_hand_computation():
    attention_map = np.array([0.05, 0.30, 0.10, 0.30, 0.15, 0.10])
    relevant = np.array([False, True, False, False, True, True])
    # pairs (relevant, irrelevant): 0.30 beats 0.05, 0.10, ties 0.30 -> 2.5; 0.15 beats 0.05,
    # 0.10 -> 2; 0.10 beats 0.05, ties 0.10 -> 1.5; total 6 of 9
    assert auroc(attention_map, relevant) == pytest.approx(6 / 9)
    assert region_share(attention_map, relevant) == pytest.approx(0.55)
    assert pointing(attention_map, relevant) == 1.0  # the first maximum (patch 1) is relevant
    assert pointing(attention_map, ~relevant) == 0.0
    expected = -sum(p * math.log(p) for p in attention_map) / math.log(6)
    assert normalised_entropy(attention_map) == pytest.approx(expected)
    assert math.isnan(auroc(attention_map, np.zeros(6, bool)))
    assert math.isnan(region_share(attention_map, np.zeros(6, bool)))
    # sink scores: patch 0 is top-1 in all 4 maps, but relevant in one sample: counted over the
    # other sample's 2 maps only -> 1.0; patch 2 is top-1 in one of the 4 maps -> 0.25
    maps = np.array([[[0.7, 0.2, 0.1], [0.6, 0.3, 0.1]], [[0.5, 0.1, 0.4], [0.2, 0.1, 0.7]]])
    scores = sink_scores(maps, np.array([[True, False, False], [False, False, False]]), 0.3)
    np.testing.assert_allclose(scores, [1 / 2, 0.0, 1 / 4])


# ----------------------------------------------------------------- planted sink
def test_a_planted_sink_is_found_and_only_it(trained, easy):
    """One image patch's key gets +6 on every text query's logits at every layer (a key made to
    dominate): the detector must report that patch, and no other, as the sink."""
    clean = run_attention_evolution(trained, easy, EvolutionConfig(n_bootstrap=100))
    assert clean.summary["sinks"]["patches"] == []  # the tiny model has none of its own
    _, _, groups, _ = record_sample(trained, easy[0])
    planted = 10  # row 1, col 2 of the 8x8 grid
    key = groups.image_patches[planted:planted + 1]
    text = np.arange(int(groups.image.max()) + 1, 200)  # every text position of any sample
    plan = SteeringPlan([[Steering(frozenset(range(6)), text, key, np.array([6.0]), "bias")]])
    attention.enable(trained.model)
    with attention.attach(trained.adapter.attention_modules(trained.model), plan):
        result = run_attention_evolution(trained, easy, EvolutionConfig(n_bootstrap=100))
    assert result.summary["sinks"]["patches"] == [planted]
    assert result.summary["sinks"]["cells"] == [[0, 1, 2]]
    share = [r["mean"] for r in result.summary["per_layer"]
             if r["metric"] == "sink_share" and r["series"] == "last"]
    assert len(share) == 6 and min(share) > 0.2  # the sink takes a large share at every layer


# ----------------------------------------------------------------- refinement vs reference
def _no_cache_greedy(loaded, inputs, plan, steps):
    """The reference: the full forward of prompt + tokens so far, plan attached, per step."""
    ids, mask = inputs.batch["input_ids"], inputs.batch["attention_mask"]
    tokens, logits = [], []
    attention.enable(loaded.model)
    for _ in range(steps):
        with torch.inference_mode(), attention.attach(loaded.adapter.attention_modules(loaded.model), plan):
            row = loaded.model(**{**inputs.batch, "input_ids": ids, "attention_mask": mask}).logits[0, -1]
        token = int(row.argmax())
        tokens.append(token)
        logits.append(row.float())
        if token in loaded.eos_token_ids():
            break
        ids = torch.cat([ids, torch.tensor([[token]])], 1)
        mask = torch.cat([mask, torch.ones(1, 1, dtype=mask.dtype)], 1)
    return tokens, torch.stack(logits)


@pytest.mark.parametrize("mode, bias", [("hard", 0.0), ("soft", -2.0), ("soft", -30.0)])
def test_refined_decode_equals_a_no_cache_masked_loop(trained, fine, mode, bias):
    layers = trained.adapter.num_layers
    for index in (0, 3):
        _, clean, groups, inputs = record_sample(trained, fine[index])
        suppression = Suppression(groups.image_patches[::2], (3, 4, 5), mode, bias)
        refined = refined_generate(trained, inputs, suppression, clean, groups, max_new_tokens=4)
        plan = (EdgeMaskPlan([suppression.knockout(groups).edges(groups, layers)])
                if mode == "hard" else suppression.steering(groups))
        tokens, logits = _no_cache_greedy(trained, inputs, plan, 4)
        assert refined.tokens == tokens
        torch.testing.assert_close(refined.logits, logits, atol=1e-5, rtol=0)
        # and the suppression did act on the answer's distribution
        plain = masked_generate(trained, inputs, None, 4, clean=clean.clean, groups=groups)
        assert (refined.logits[0] - plain.logits[0]).abs().max() > 1e-3


def test_refinement_with_ratio_zero_is_the_clean_run_exactly(trained, fine):
    _, clean, groups, inputs = record_sample(trained, fine[2])
    plain = masked_generate(trained, inputs, None, 4, clean=clean.clean, groups=groups)
    for mode in ("soft", "hard"):
        nothing = Suppression(groups.image_patches[:0], (4, 5), mode)
        refined = refined_generate(trained, inputs, nothing, clean, groups, 4)
        assert refined.tokens == plain.tokens and torch.equal(refined.logits, plain.logits)
    result = run_contrastive_attention(trained, fine, ContrastiveConfig(ratio=0.0, n_bootstrap=100))
    answers = result.arrays["answers"]
    np.testing.assert_array_equal(answers[:, 1], answers[:, 0])
    assert result.summary["methods"][1]["accuracy"] == result.summary["methods"][0]["accuracy"]
    assert result.summary["methods"][1]["p_value_vs_clean"] == 1.0
    assert not result.arrays["suppressed"].any() and not result.arrays["random_suppressed"].any()


# ----------------------------------------------------------------- rules
def test_contrastive_rules_on_planted_maps():
    late = np.array([0.1, 0.2, 0.3, 0.4])
    early = np.array([0.4, 0.3, 0.2, 0.1])
    np.testing.assert_allclose(contrastive_map(late, early), [-0.3, -0.1, 0.1, 0.3])
    np.testing.assert_array_equal(least_shift(contrastive_map(late, early), ratio=0.5), [0, 1])
    np.testing.assert_array_equal(
        least_shift(contrastive_map(late, early), threshold=-0.5), [0])  # < -0.5 / 4
    # layer 1's maps are farthest from the late layer's (layer 5); layer 3 is not a candidate
    maps = np.tile(late, (3, 6, 1))
    maps[:, 1] = early
    maps[:, 3] = [1.0, 0.0, 0.0, 0.0]  # farther still, but not an early candidate
    layer, distances = choose_early_layer(maps, late_layer=5)
    assert layer == 1 and sorted(distances) == [0, 1, 2]
    masking = {"fusion_layers": [2, 3, 5], "review": {"detected": True, "layers": [5]}}
    chosen = resolve_layers(ContrastiveConfig(), 6, masking)
    assert (chosen["early"], chosen["refine"]) == (2, [5])
    chosen = resolve_layers(ContrastiveConfig(refine_layers=(3,)), 6, None)
    assert (chosen["early"], chosen["refine"]) == (None, [3])  # early: from the maps, later
    assert resolve_layers(ContrastiveConfig(), 6, None)["refine"] == [4, 5]


def test_runs_are_deterministic(trained, fine):
    config = ContrastiveConfig(mode="hard", ratio=0.3, n_bootstrap=100)
    first = run_contrastive_attention(trained, fine, config)
    second = run_contrastive_attention(trained, fine, config)
    for name in first.arrays:
        np.testing.assert_array_equal(first.arrays[name], second.arrays[name], err_msg=name)
    a = run_attention_evolution(trained, fine, EvolutionConfig(n_bootstrap=100))
    b = run_attention_evolution(trained, fine, EvolutionConfig(n_bootstrap=100))
    for name in a.arrays:
        np.testing.assert_array_equal(a.arrays[name], b.arrays[name], err_msg=name)
    assert a.summary["per_layer"] == b.summary["per_layer"]


def test_attention_evolution_resumes_to_the_uninterrupted_result(trained, fine, tmp_path):
    config = EvolutionConfig(n_bootstrap=100, examples=5)  # examples from both halves
    whole = run_attention_evolution(trained, fine, config)
    with pytest.raises(KeyboardInterrupt):
        run_attention_evolution(trained, fine, config, out=tmp_path, on_sample=interrupt_at(3))
    assert len(list((tmp_path / PARTIAL / "samples").glob("*.npz"))) == 3
    seen = []
    resumed = run_attention_evolution(trained, fine, config, out=tmp_path, resume=True,
                                      on_sample=seen.append)
    assert seen[0] == 4  # it went on from the kept samples, not from the start
    assert_same_run(whole, resumed)
    assert not (tmp_path / PARTIAL).exists()


def test_contrastive_attention_resumes_in_either_pass_to_the_uninterrupted_result(
        trained, fine, tmp_path, monkeypatch):
    import analyses.contrastive_attention.run as contrastive_run

    config = ContrastiveConfig(mode="hard", ratio=0.3, n_bootstrap=100)  # early layer: 2 passes
    whole = run_contrastive_attention(trained, fine, config)
    calls, stop = [], [4]

    def counted(*args, **kwargs):
        calls.append(1)
        if len(calls) == stop[0]:
            raise KeyboardInterrupt
        return record_sample(*args, **kwargs)

    monkeypatch.setattr(contrastive_run, "record_sample", counted)
    with pytest.raises(KeyboardInterrupt):  # in the first pass, after 3 samples
        run_contrastive_attention(trained, fine, config, out=tmp_path)
    assert len(list((tmp_path / PARTIAL / "early").glob("*.npz"))) == 3
    calls.clear()
    stop[0] = None
    with pytest.raises(KeyboardInterrupt):  # in the second pass, after 2 samples
        run_contrastive_attention(trained, fine, config, out=tmp_path, resume=True,
                                  on_sample=interrupt_at(2))
    assert len(calls) == 5 + 2  # the first pass went on from its 4th sample
    assert len(list((tmp_path / PARTIAL / "samples").glob("*.npz"))) == 2
    calls.clear()
    resumed = run_contrastive_attention(trained, fine, config, out=tmp_path, resume=True)
    assert len(calls) == 6  # neither pass started over
    assert_same_run(whole, resumed)
    assert not (tmp_path / PARTIAL).exists()


def test_attention_evolution_shards_merge_into_the_unsharded_result(trained, fine, tmp_path):
    config = EvolutionConfig(n_bootstrap=100, examples=5)  # examples from both shards
    whole = run_attention_evolution(trained, fine, config)
    directories = []
    for index in range(2):
        out = tmp_path / f"shard{index}"
        part = run_attention_evolution(trained, fine, config, shard=(index, 2), out=out)
        assert part.arrays["sample_index"].tolist() == list(range(index, len(fine), 2))
        directories.append(part.save(out))
    merged = merge(directories)
    assert merged.arrays["example_index"].tolist() == [0, 1, 2, 3, 4]
    assert_same_run(whole, merged)


def test_contrastive_attention_shards_merge_into_the_unsharded_result(trained, fine, tmp_path):
    config = ContrastiveConfig(mode="hard", ratio=0.3, n_bootstrap=100)  # early layer: 2 passes
    whole = run_contrastive_attention(trained, fine, config)
    directories = []
    for index in range(2):
        out = tmp_path / f"shard{index}"
        part = run_contrastive_attention(trained, fine, config, shard=(index, 2), out=out)
        # every shard reads every sample's maps for the early-layer rule, so all agree on it
        assert len(list((out / "records" / "early").glob("*.npz"))) == len(fine)
        assert len(list((out / "records" / "samples").glob("*.npz"))) == len(fine) // 2
        assert part.summary["layers"] == whole.summary["layers"]
        directories.append(part.save(out))
    assert_same_run(whole, merge(directories))
    with pytest.raises(UserError, match="every shard"):
        merge(directories[:1])


def test_attention_evolution_refuses_samples_with_another_patch_grid():
    cells = np.zeros((4, 3), dtype=np.int64)
    other = np.stack([np.zeros(6, np.int64), np.arange(6) // 3, np.arange(6) % 3], 1)
    records = {"samples": {0: {"cells": cells}, 3: {"cells": other}}}
    info = RunInfo(model={"layers": 6}, data={"name": "mixed"}, device="cpu",
                   seconds_per_sample=0.0)
    with pytest.raises(UserError, match="sample 3 of mixed has another patch grid than sample "
                                        "0") as error:
        AttentionEvolution().aggregate(records, info)
    assert str(error.value).count(". ") == 0 and str(error.value).endswith(".")


# ----------------------------------------------------------------- CLIs
def test_clis_write_results_and_figures_that_redraw_without_a_model(tmp_path, capsys):
    from figures.paper import main as paper_main

    evolution, contrastive = tmp_path / "evolution", tmp_path / "contrastive"
    assert run_cli(evolution_main, ["--limit", "6", "--out", str(evolution),
                                    "--bootstrap", "100"]) == 0
    assert "sinks:" in capsys.readouterr().out
    masking = tmp_path / "masking"
    masking.mkdir()
    (masking / "summary.json").write_text(json.dumps({
        "analysis": "layer_masking", "model": {"id": "tiny-llava"}, "num_layers": 6,
        "fusion_layers": [1, 5], "review": {"detected": True, "layers": [5]}}))
    assert run_cli(contrastive_main, ["--data", "fine-grained", "--limit", "6", "--out",
                                      str(contrastive), "--bootstrap", "100", "--mode", "hard",
                                      "--layer-masking", str(masking)]) == 0
    table = capsys.readouterr().out
    assert "early layer 1 (first fusion layer" in table and "random_control" in table
    for directory, names in ((evolution, ("attention_maps", "attention_curves", "sink_scores")),
                             (contrastive, ("contrastive_maps", "contrastive_localisation",
                                            "refinement_accuracy"))):
        result = RunResult.load(directory)
        for key in ("analysis", "model", "data", "n_samples", "config", "versions", "seed",
                    "per_layer"):
            assert key in result.summary
        for name in names:
            assert (directory / f"{name}.png").stat().st_size > 5_000
            assert b"/FontFile2" in (directory / f"{name}.pdf").read_bytes()
        assert run_cli(paper_main, [str(directory), "--out", str(tmp_path / "redrawn")]) == 0
    methods = RunResult.load(contrastive).to_dataframe("methods")
    assert list(methods.method) == ["clean", "refined", "random_control"]
    assert RunResult.load(contrastive).summary["layers"]["refine"] == [5]


@pytest.mark.parametrize("main, argv, message", [
    (evolution_main, ["--limit", "0"], "--limit takes a whole number of at least 1"),
    (evolution_main, ["--figure-layers", "2,9"], "layer 9 is out of range"),
    (evolution_main, ["--figure-layers", "a"], "takes layer numbers separated by commas"),
    (evolution_main, ["--top-share", "1.5"], "--top-share takes a number in (0, 1)"),
    (evolution_main, ["--data", "nowhere"], "nowhere"),
    (contrastive_main, ["--late-layer", "6"], "layer 6 is out of range"),
    (contrastive_main, ["--early-layer", "5"], "must come before the late layer"),
    (contrastive_main, ["--late-layer", "0"], "no early layer can precede late layer 0"),
    (contrastive_main, ["--ratio", "1.0"], "--ratio takes a number in [0, 1)"),
    (contrastive_main, ["--ratio", "0.2", "--threshold", "-1"], "either --ratio or --threshold"),
    (contrastive_main, ["--mode", "gentle"], "--mode must be one of soft, hard"),
    (contrastive_main, ["--bias", "1"], "--bias takes a number of at most 0"),
    (contrastive_main, ["--series", "image"], "--series must be one of question, last"),
    (contrastive_main, ["--refine-layers", "4,x"], "takes layer numbers separated by commas"),
    (contrastive_main, ["--layer-masking", "/nonexistent"], "cannot read a layer-masking result"),
])
def test_bad_input_gets_one_sentence_and_exit_2(main, argv, message, tmp_path, capsys):
    assert run_cli(main, [*argv, "--limit", "2", "--out", str(tmp_path)] if "--limit" not in argv
                   else [*argv, "--out", str(tmp_path)]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: ") and message in error


@pytest.mark.parametrize("main, argv", [
    (evolution_main, ["--bootstrap", "100"]),
    (contrastive_main, ["--data", "fine-grained", "--no-refine", "--bootstrap", "100"]),
])
def test_a_second_run_into_a_finished_out_needs_overwrite(main, argv, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(main, [*argv, "--limit", "2", "--out", str(out)]) == 0
    first = (out / "arrays.npz").read_bytes()
    capsys.readouterr()
    assert run_cli(main, [*argv, "--limit", "2", "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]  # after the model's loading bar
    assert error.startswith("error: ") and error.count(". ") == 0
    assert "already holds a finished run; use --overwrite" in error
    assert (out / "arrays.npz").read_bytes() == first  # left as it was
    assert run_cli(main, [*argv, "--limit", "2", "--out", str(out), "--overwrite"]) == 0


def test_a_layer_masking_run_of_another_depth_is_refused(tmp_path, capsys):
    (tmp_path / "summary.json").write_text(json.dumps({
        "analysis": "layer_masking", "model": {"id": "llava"}, "num_layers": 32,
        "fusion_layers": [3], "review": {"detected": False, "layers": []}}))
    assert run_cli(contrastive_main, ["--layer-masking", str(tmp_path), "--limit", "2",
                                      "--out", str(tmp_path / "out")]) == 2
    assert "with 32 layers, this model has 6" in capsys.readouterr().err
