"""analyses.token_importance (AIF) against references: token dynamics and entropies from eager
``output_attentions`` computed in numpy, the ratio scan against a brute-force loop, aif_generate
against a no-cache greedy loop that recomputes the full masked forward at every step, ratio 0
against clean decoding, exact zeros on the masked edges with image->image attention unchanged,
on LLaVA, LLaVA-NeXT and Qwen2.5-VL; determinism; resume and shards merged give the
uninterrupted result; the CLI, its overwrite guard and every bad input's one sentence."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import assert_same_run, interrupt_at
from PIL import Image

from analyses.data import load_dataset
from analyses.merge import merge
from analyses.results import RunResult
from analyses.runner import PARTIAL
from analyses.token_importance import (
    AIFConfig,
    aif_generate,
    curve_entropy,
    mask_count,
    mask_order,
    prepare,
    scan_ratios,
)
from analyses.token_importance.__main__ import main as cli_main
from analyses.token_importance.aif import image_patches
from analyses.token_importance.run import TokenImportanceConfig, run_token_importance
from probes import attention
from probes.cli import run_cli
from probes.masking import EdgeMaskPlan, Edges
from probes.models.loading import load_model
from probes.record import AttentionRecorder
from probes.run import masked_generate

MODELS = ["tiny-llava", "tiny-random-llava-next", "tiny-random-qwen2.5-vl"]
QUESTION = "what color is the circle ?"


def _image() -> Image.Image:
    image = Image.new("RGB", (96, 72), (240, 240, 240))
    for x in range(20, 44):
        for y in range(10, 30):
            image.putpixel((x, y), (200, 30, 30))
    return image


@pytest.fixture(scope="module", params=MODELS)
def model(request):
    return load_model(request.param)


@pytest.fixture(scope="module")
def trained():
    return load_model("tiny-llava")


RUN_CONFIG = TokenImportanceConfig(timed_samples=0, n_bootstrap=100)


@pytest.fixture(scope="module")
def five():
    return load_dataset("fine-grained", "test", limit=5)


@pytest.fixture(scope="module")
def whole(trained, five):
    """The uninterrupted, unsharded run of the first five fine-grained samples."""
    return run_token_importance(trained, five, RUN_CONFIG)


def _eager_attentions(loaded, inputs, extra_tokens=()):
    """Eager ``output_attentions`` of the prompt (plus ``extra_tokens``), float64 numpy."""
    batch = dict(inputs.batch)
    if extra_tokens:
        batch = _extended(batch, list(extra_tokens))
    attention.enable(loaded.model, "eager")
    try:
        with torch.inference_mode():
            output = loaded.model(**batch, output_attentions=True)
    finally:
        attention.enable(loaded.model, "sdpa")
    return [a[0].double().numpy() for a in output.attentions]  # [heads, queries, keys]


def _extended(batch: dict, tokens: list[int]) -> dict:
    batch = dict(batch)
    extra = torch.tensor([tokens], dtype=batch["input_ids"].dtype)
    batch["input_ids"] = torch.cat([batch["input_ids"], extra], 1)
    batch["attention_mask"] = torch.cat([batch["attention_mask"], torch.ones_like(extra)], 1)
    if "mm_token_type_ids" in batch:
        batch["mm_token_type_ids"] = torch.cat([batch["mm_token_type_ids"],
                                                torch.zeros_like(extra)], 1)
    return batch


@pytest.mark.parametrize("heads", ["mean", "max"])
@pytest.mark.parametrize("text_rows", ["question,last", "last"])
def test_dynamics_and_entropy_equal_numpy_from_eager_output_attentions(model, heads, text_rows):
    config = AIFConfig(heads=heads, text_rows=text_rows)
    prepared = prepare(model, _image(), QUESTION, config)
    groups, importance = prepared.groups, prepared.importance
    rows = groups.get(text_rows)
    keys, _ = image_patches(groups)
    maps = _eager_attentions(model, prepared.inputs)
    expected = np.zeros((keys.size, len(maps)))
    for layer, probabilities in enumerate(maps):
        block = probabilities[:, rows][:, :, keys]  # [heads, rows, keys]
        per_head = block.mean(0) if heads == "mean" else block.max(0)
        expected[:, layer] = per_head.max(0)
    np.testing.assert_allclose(importance.dynamics, expected, rtol=0, atol=1e-6)
    p = expected / expected.sum(1, keepdims=True)
    entropy = -(p * np.log(p)).sum(1)
    np.testing.assert_allclose(importance.entropy, entropy, rtol=0, atol=1e-6)
    np.testing.assert_allclose(importance.mu, expected.mean(1), rtol=0, atol=1e-6)
    assert np.ptp(importance.entropy) > 1e-5  # the curves differ between tokens


@pytest.mark.parametrize("heads", ["mean", "max"])
@pytest.mark.parametrize("text_rows", ["question,last", "question"])
def test_prompt_token_importance_equals_the_answer_rows_eager_attention(model, heads, text_rows):
    """Each prompt text token's importance = the answer position's eager attention to it
    (heads reduced), averaged over layers; recording it leaves the dynamics those of the rows
    alone, also where the answer position is not one of them."""
    config = AIFConfig(heads=heads, text_rows=text_rows)
    prepared = prepare(model, _image(), QUESTION, config)
    groups, importance = prepared.groups, prepared.importance
    maps = _eager_attentions(model, prepared.inputs)
    image = set(groups.image.tolist())
    text = [p for p in range(groups.length) if p not in image and p not in groups.padding]
    last = int(groups.last[-1])
    expected = np.mean([(m[:, last, text].mean(0) if heads == "mean" else m[:, last, text].max(0))
                        for m in maps], axis=0)
    assert importance.prompt.tolist() == text
    np.testing.assert_allclose(importance.prompt_importance, expected, rtol=0, atol=1e-6)
    assert np.ptp(expected) > 1e-4  # the answer reads some words more than others
    named = {name: getattr(groups, name).tolist() for name in ("system", "question", "template",
                                                               "last")}
    codes = importance.prompt_groups.tolist()
    assert [p for p, c in zip(text, codes) if c == 1] == named["question"]
    assert [p for p, c in zip(text, codes) if c == 3] == named["last"]
    keys, _ = image_patches(groups)
    rows = groups.get(text_rows)
    dynamics = np.stack([(m[:, rows][:, :, keys].mean(0) if heads == "mean"
                          else m[:, rows][:, :, keys].max(0)).max(0) for m in maps], axis=1)
    np.testing.assert_allclose(importance.dynamics, dynamics, rtol=0, atol=1e-6)


@pytest.mark.parametrize("text_rows", ["question,last", "question"])
def test_the_profile_records_the_same_on_the_nnsight_engine(trained, text_rows):
    from probes import engines

    config = AIFConfig(text_rows=text_rows)
    fast = prepare(trained, _image(), QUESTION, config).importance
    other = prepare(trained, _image(), QUESTION, config, engine=engines.named("nnsight")).importance
    np.testing.assert_allclose(other.prompt_importance, fast.prompt_importance, rtol=0, atol=1e-6)
    np.testing.assert_allclose(other.dynamics, fast.dynamics, rtol=0, atol=1e-6)
    assert other.prompt.tolist() == fast.prompt.tolist()


def _brute_force_ratio(dynamics, ratios, normalized=False):
    """The published rule written out with Python loops and math.log."""
    n, layers = dynamics.shape
    entropy = []
    for i in range(n):
        total = sum(dynamics[i])
        entropy.append(-sum(d / total * math.log(d / total) for d in dynamics[i] if d > 0))
    mu = [sum(dynamics[i]) / layers for i in range(n)]
    order = sorted(range(n), key=lambda i: (-entropy[i], i))  # background first

    def s_of(values):
        if normalized and len(values) < 2:
            return math.nan  # one token left: no normalised entropy
        total = sum(values)
        s = -sum(v / total * math.log(v / total) for v in values if v > 0)
        return s / math.log(len(values)) if normalized else s

    s0 = s_of(mu)
    best, best_shift = None, -1.0
    for ratio in ratios:
        count = int(math.floor(ratio * n + 0.5 + 1e-9))
        kept = [mu[i] for i in order[count:]]
        shift = abs(s_of(kept) - s0)
        if shift > best_shift + 1e-12:
            best, best_shift = ratio, shift
    return best, sorted(order[: int(math.floor(best * n + 0.5 + 1e-9))])


@pytest.mark.parametrize("normalized", [False, True])
def test_ratio_selection_equals_a_brute_force_reference(normalized):
    rng = np.random.default_rng(3)
    chosen = set()
    for trial in range(60):
        n = int(rng.integers(12, 80))
        dynamics = rng.gamma(0.5 + trial % 3, size=(n, 6)) + 1e-4
        if trial % 4 == 0:  # plant sink-like tokens that take most attention everywhere
            dynamics[rng.choice(n, 3, replace=False)] *= 40
        if trial % 5 == 0:  # ties in entropy: identical curves
            dynamics[1::2] = dynamics[0]
        ratios = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
        order = mask_order(curve_entropy(dynamics))
        scan = scan_ratios(dynamics.mean(1), order, ratios, normalized=normalized)
        ratio, masked = _brute_force_ratio(dynamics, ratios, normalized)
        assert scan.ratio == ratio
        assert sorted(order[: scan.counts[scan.index]].tolist()) == masked
        chosen.add(scan.ratio)
    if normalized:
        assert len(chosen) > 1  # the reference is exercised on more than one answer


def _reference_decode(loaded, inputs, groups, masked, steps):
    """No cache: the full masked forward of prompt + generated tokens at every step, with the
    mask written out as one Edges (text after the image, then every generated token)."""
    layers = frozenset(range(loaded.adapter.num_layers))
    after_image = np.arange(groups.image.max() + 1, groups.length)
    edges = Edges(after_image, np.asarray(masked), layers, queries_from=groups.length)
    modules = loaded.adapter.attention_modules(loaded.model)
    tokens, logits = [], []
    for _ in range(steps):
        batch = _extended(inputs.batch, tokens) if tokens else dict(inputs.batch)
        with torch.inference_mode(), attention.attach(modules, EdgeMaskPlan([[edges]])):
            step = loaded.model(**batch).logits[0, -1].float()
        tokens.append(int(step.argmax()))
        logits.append(step)
    return tokens, torch.stack(logits)


@pytest.mark.parametrize("ratio", [None, 0.5])
def test_aif_generate_equals_a_no_cache_greedy_loop(model, ratio):
    config = AIFConfig(ratio=ratio, max_new_tokens=4)
    result = aif_generate(model, _image(), QUESTION, config)
    prepared = prepare(model, _image(), QUESTION, config)
    assert result.masked.size == mask_count(ratio or result.ratio, result.importance.positions.size)
    tokens, logits = _reference_decode(model, prepared.inputs, prepared.groups, result.masked,
                                       len(result.generation.tokens))
    assert result.generation.tokens == tokens
    torch.testing.assert_close(result.generation.logits, logits, atol=1e-5, rtol=0)
    clean = masked_generate(model, prepared.inputs, None, max_new_tokens=4)
    assert (clean.logits[0] - result.generation.logits[0]).abs().max() > 1e-5  # it acts


def test_ratio_zero_gives_the_clean_answer_and_logits_exactly(model):
    result = aif_generate(model, _image(), QUESTION, AIFConfig(ratio=0.0))
    assert result.masked.size == 0
    inputs = model.adapter.build_inputs([_image()], [QUESTION])
    clean = masked_generate(model, inputs, None, max_new_tokens=4)
    assert result.generation.tokens == clean.tokens
    torch.testing.assert_close(result.generation.logits, clean.logits, atol=0, rtol=0)


def test_masked_tokens_get_zero_attention_from_text_and_image_rows_are_unchanged(model):
    result = aif_generate(model, _image(), QUESTION, AIFConfig(ratio=0.7))
    prepared = prepare(model, _image(), QUESTION)
    groups, masked = prepared.groups, result.masked
    generated = result.generation.tokens[:-1]  # the tokens that were queries while decoding
    batch = _extended(prepared.inputs.batch, generated) if generated else prepared.inputs.batch
    length = batch["input_ids"].shape[1]
    layers = range(model.adapter.num_layers)
    modules = model.adapter.attention_modules(model.model)
    edges = Edges(np.arange(groups.image.max() + 1, groups.length), masked, frozenset(layers),
                  queries_from=groups.length)
    clean, cut = AttentionRecorder(queries=range(length)), AttentionRecorder(queries=range(length))
    with torch.inference_mode():
        with attention.attach(modules, clean):
            model.model(**batch)
        with attention.attach(modules, EdgeMaskPlan([[edges]])), attention.attach(modules, cut):
            model.model(**batch)
    text = np.arange(groups.image.max() + 1, length)
    kept = np.setdiff1d(groups.image, masked)
    for layer in layers:
        maps, reference = cut.maps[layer][0], clean.maps[layer][0]  # [heads, queries, keys]
        assert maps[:, text][:, :, masked].abs().max() == 0.0
        assert maps[:, text][:, :, kept].min() > 0
        image_rows = groups.image
        assert torch.equal(maps[:, image_rows], reference[:, image_rows])
        assert reference[:, text][:, :, masked].min() > 0


def test_a_run_is_deterministic_and_its_recall_matches_the_masks(trained):
    dataset = load_dataset("fine-grained", "test", limit=4)
    config = TokenImportanceConfig(timed_samples=0, n_bootstrap=100)
    first = run_token_importance(trained, dataset, config)
    second = run_token_importance(trained, dataset, config)
    assert first.arrays.keys() == second.arrays.keys()
    for name, values in first.arrays.items():
        np.testing.assert_array_equal(values, second.arrays[name], err_msg=name)
    assert first.summary["methods"] == second.summary["methods"]
    methods = first.summary["method_names"]
    assert methods[0] == "clean" and first.summary["methods"][0]["p_value_vs_clean"] is None
    correct = first.arrays["correct"]
    for row, column in zip(first.summary["methods"], correct.T):  # one row per method
        assert (row["n"], row["correct"]) == (4, int(column.sum()))
    counts = first.arrays["masked_count"]
    aif, random_ = methods.index("aif"), methods.index("random")
    np.testing.assert_array_equal(counts[:, aif], counts[:, random_])
    # recall by hand: the object tokens among the lowest-entropy 20% of the 64 tokens
    for s in range(4):
        is_object = first.arrays["is_object"][s]
        top = np.argsort(first.arrays["entropy"][s], kind="stable")[:13]
        expected = is_object[top].sum() / is_object.sum() if is_object.any() else np.nan
        np.testing.assert_allclose(first.arrays["recall_entropy"][s], expected)


def test_resume_after_an_interruption_gives_the_uninterrupted_result(trained, five, whole,
                                                                    tmp_path):
    with pytest.raises(KeyboardInterrupt):
        run_token_importance(trained, five, RUN_CONFIG, out=tmp_path, on_sample=interrupt_at(2))
    kept = sorted(p.name for p in (tmp_path / PARTIAL / "samples").glob("*.npz"))
    assert kept == ["0000000.npz", "0000001.npz"]  # each sample kept as it finished
    seen = []
    resumed = run_token_importance(trained, five, RUN_CONFIG, out=tmp_path, resume=True,
                                   on_sample=seen.append)
    assert seen == [3, 4, 5]  # it went on from the kept samples, not from the start
    assert_same_run(whole, resumed)
    assert resumed.arrays["sample_index"].tolist() == [0, 1, 2, 3, 4]
    assert not (tmp_path / PARTIAL).exists()


def test_shards_merge_into_the_unsharded_result(trained, five, whole, tmp_path):
    directories = []
    for index in range(2):
        out = tmp_path / f"shard{index}"
        part = run_token_importance(trained, five, RUN_CONFIG, shard=(index, 2), out=out)
        assert part.summary["shard"] == f"{index}/2"
        directories.append(part.save(out))
    assert [RunResult.load(d).arrays["sample_index"].tolist() for d in directories] == [
        [0, 2, 4], [1, 3]]  # every other sample: the units of the unsharded run, dealt out
    merged = merge(directories)
    assert_same_run(whole, merged)
    assert merged.summary["methods"] == whole.summary["methods"]
    with pytest.raises(Exception, match="every shard"):
        merge(directories[:1])


def test_cli_writes_results_and_figures_and_figures_redraw_without_a_model(tmp_path, capsys):
    out = tmp_path / "run"
    code = run_cli(cli_main, ["--limit", "8", "--out", str(out), "--timed-samples", "2",
                              "--bootstrap", "200"])
    assert code == 0
    table = capsys.readouterr().out
    assert "low_entropy_first" in table and "object-token recall" in table
    result = RunResult.load(out)
    for key in ("analysis", "model", "data", "n_samples", "config", "versions", "seed",
                "methods", "per_layer", "recall", "timing", "chosen_ratios"):
        assert key in result.summary
    config = result.summary["config"]["aif"]
    assert (config["heads"], config["text_rows"], config["mask_generated"]) == (
        "mean", "question,last", True)
    row = result.summary["methods"][0]
    assert set(row) >= {"method", "accuracy", "ci_low", "ci_high", "n", "p_value_vs_clean"}
    assert result.to_dataframe("methods").shape[0] == len(result.summary["method_names"])
    assert result.arrays["dynamics"].shape == (8, 64, 6)
    for name in ("aif_accuracy", "aif_entropy_map", "aif_dynamics", "aif_s_curve"):
        assert (out / f"{name}.png").stat().st_size > 10_000
        pdf = (out / f"{name}.pdf").read_bytes()
        assert b"/FontFile2" in pdf and b"/Type3" not in pdf
    from figures.paper import main as paper_main

    redrawn = tmp_path / "redrawn"
    assert run_cli(paper_main, [str(out), "--out", str(redrawn)]) == 0
    assert (redrawn / "run" / "aif_s_curve.pdf").is_file()


def test_cli_refuses_to_replace_a_finished_run_without_overwrite(tmp_path, capsys):
    argv = ["--limit", "1", "--timed-samples", "0", "--bootstrap", "50", "--out", str(tmp_path)]
    assert run_cli(cli_main, argv) == 0
    first = (tmp_path / "summary.json").read_bytes()
    capsys.readouterr()
    assert run_cli(cli_main, argv) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error[-1].startswith("error: ") and "already holds a finished run" in error[-1]
    assert "--overwrite" in error[-1]
    assert (tmp_path / "summary.json").read_bytes() == first  # left as it was
    assert run_cli(cli_main, [*argv, "--overwrite"]) == 0


@pytest.mark.parametrize("argv, message", [
    (["--heads", "median"], "--heads must be one of mean, max"),
    (["--text-rows", "image"], "--text-rows takes prompt text groups"),
    (["--ratio", "1.5"], "--ratio takes a number in [0, 1]"),
    (["--ratios", "0,0.5"], "candidate mask ratios must lie strictly between 0 and 1"),
    (["--fixed-ratios", "a,b"], "--fixed-ratios takes numbers separated by commas"),
    (["--scan", "best"], "--scan must be one of published, normalized"),
    (["--top-fraction", "0"], "--top-fraction takes a number in (0, 1]"),
    (["--max-new-tokens", "0"], "--max-new-tokens takes a whole number of at least 1"),
    (["--limit", "0"], "--limit takes a whole number of at least 1"),
    (["--batch-size", "4"], "--batch-size must be 1"),
    (["--data", "nope"], "nope"),
])
def test_bad_input_gets_one_sentence_and_exit_2(argv, message, tmp_path, capsys):
    assert run_cli(cli_main, [*argv, "--out", str(tmp_path)]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: ") and message in error


@pytest.mark.parametrize("name", ["analyses.token_importance.dynamics",
                                  "analyses.token_importance.aif", "figures.token_importance"])
def test_docstring_examples(name):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(name),
                             optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
