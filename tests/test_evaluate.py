"""``python -m analyses.evaluate``: every benchmark under every method on the same samples.
The numbers of ``table.md`` / ``table.tex`` are those of ``summary.json``; the scores equal an
independent recomputation (greedy answers through ``answer_questions``, AIF answers through
``aif_generate``, graded by ``analyses.scoring``); oracle's knockout equals a hand-built 4-D
attention mask; bad input is one sentence and exit code 2."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
from benchmark_fixtures import build_mmstar, build_own_jsonl, build_pope, build_vstar, hub_cache

from analyses import scoring
from analyses.data import load_dataset
from analyses.evaluate.__main__ import main
from analyses.evaluate.methods import oracle_reply, outside_region, sample_inputs
from analyses.evaluate.table import percent
from analyses.results import RunResult
from analyses.stats import mcnemar_exact, wilson_interval
from analyses.token_importance.aif import AIFConfig, aif_generate
from probes.cli import run_cli
from probes.models.answer import answer_questions
from probes.models.loading import load_model

BENCHMARKS = ("vstar", "mmstar", "pope")
LIMIT = 3


@pytest.fixture(scope="module")
def loaded():
    return load_model("tiny-llava")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    cache = hub_cache(root)
    patch = pytest.MonkeyPatch()
    patch.setenv("HF_HUB_CACHE", str(cache))
    patch.delenv("HF_HOME", raising=False)
    build_vstar(root), build_mmstar(root), build_pope(root)
    out = root / "run"
    code = run_cli(main, ["--data", ",".join(BENCHMARKS), "--limit", str(LIMIT),
                          "--methods", "clean,aif", "--bootstrap", "200", "--out", str(out)])
    yield code, out
    patch.undo()


def test_the_run_finishes_with_every_file(run):
    code, out = run
    assert code == 0
    for name in ("summary.json", "arrays.npz", "table.md", "table.tex",
                 "evaluate_scores.png", "evaluate_scores.pdf"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["benchmarks"] == list(BENCHMARKS) and summary["failed"] == []
    assert summary["method_names"] == ["clean", "aif"]
    assert [row["method"] for row in summary["methods"]] == ["clean", "aif"] * 3
    for row in summary["methods"]:  # DESIGN.md's methods contract
        assert {"method", "accuracy", "ci_low", "ci_high", "n", "p_value_vs_clean"} <= set(row)
    assert set(summary["prompts"]) == set(BENCHMARKS)


def test_tables_show_the_numbers_of_summary_json(run):
    _, out = run
    summary = json.loads((out / "summary.json").read_text())
    markdown = (out / "table.md").read_text().splitlines()
    latex = (out / "table.tex").read_text()
    assert "\\toprule" in latex and "\\midrule" in latex and "\\bottomrule" in latex
    for method in summary["method_names"]:
        rows = {r["benchmark"]: r for r in summary["methods"] if r["method"] == method}
        expected = [(percent(rows[b]["accuracy"]), percent(rows[b]["ci_low"]),
                     percent(rows[b]["ci_high"])) for b in BENCHMARKS]
        line = next(line for line in markdown if line.startswith(f"| {method} |"))
        assert re.findall(r"(-?[\d.]+) \[(-?[\d.]+), (-?[\d.]+)\]", line) == expected
        tex = next(line for line in latex.splitlines() if line.startswith(f"{method} &"))
        assert re.findall(r"(-?[\d.]+)\{\\scriptsize\\,\[(-?[\d.]+), (-?[\d.]+)\]\}",
                          tex) == expected


def test_the_printed_table_has_a_header_over_its_columns(run, capsys):
    from analyses.evaluate.table import text_table

    _, out = run
    summary = json.loads((out / "summary.json").read_text())
    lines = text_table(summary).splitlines()
    assert "change = method - clean in points" in lines[0]
    for name in BENCHMARKS:
        start = next(i for i, line in enumerate(lines) if line.startswith(name))
        header = lines[start + 1].split()
        assert header == ["method", "score", "95%", "CI", "n", "change", "95%", "CI",
                          "p", "vs", "clean"]
        for row, line in zip(summary["results"][name]["methods"], lines[start + 2:]):
            cells = line.split()
            assert cells[0] == row["method"] and cells[1] == percent(row["accuracy"])
            assert cells[4] == str(row["n"])
            if row["method"] != "clean":  # a signed change, as its column says
                assert cells[5] == f"{100 * row['delta']:+.1f}"
                assert cells[-1] == f"{row['p_value_vs_clean']:.3f}"


def test_scores_equal_an_independent_recomputation(run, loaded):
    _, out = run
    result = RunResult.load(out)
    summary = result.summary
    for name in BENCHMARKS:
        samples = list(load_dataset(name, limit=LIMIT).prompted("llava"))
        clean = [answer_questions(loaded, [s.image], [s.ask], max_new_tokens=16)[0].text
                 for s in samples]
        aif = [aif_generate(loaded, s.image, s.ask, AIFConfig(max_new_tokens=16)).answer
               for s in samples]
        chosen = result.arrays["benchmark"] == name
        assert result.arrays["replies"][chosen].tolist() == [list(p) for p in zip(clean, aif)]
        rows = {r["method"]: r for r in summary["results"][name]["methods"]}
        verdicts = {}
        for method, replies in (("clean", clean), ("aif", aif)):
            verdicts[method] = [scoring.judge(r, s) for r, s in zip(replies, samples)]
            expected = scoring.summarize(samples, verdicts[method])
            assert rows[method]["accuracy"] == pytest.approx(expected["score"])
            assert rows[method]["n"] == LIMIT
            assert summary["results"][name]["metrics"][method]["score"] == pytest.approx(
                expected["score"])
        full = {m: np.array([v.full for v in verdicts[m]]) for m in verdicts}
        assert rows["aif"]["p_value_vs_clean"] == pytest.approx(
            mcnemar_exact(full["clean"], full["aif"]))
        assert rows["aif"]["delta"] == pytest.approx(rows["aif"]["accuracy"]
                                                     - rows["clean"]["accuracy"])
        if summary["results"][name]["summary"] == "mean":  # 0/1 scores, plain mean: Wilson
            low, high = wilson_interval(int(full["aif"].sum()), LIMIT)
            assert (rows["aif"]["ci_low"], rows["aif"]["ci_high"]) == pytest.approx((low, high))
        else:
            assert rows["aif"]["ci"] == "bootstrap"
            assert rows["aif"]["ci_low"] <= rows["aif"]["accuracy"] <= rows["aif"]["ci_high"]
    pope = {r["method"]: r for r in summary["results"]["pope"]["per_category"]}
    assert set(summary["results"]["pope"]["metrics"]["clean"]) >= {"precision", "recall",
                                                                   "f1", "yes_share"}
    assert pope  # per category rows


def _hand_built_outside(sample, loaded, inputs) -> np.ndarray:
    """The image-token positions whose 8x8-pixel cell holds no region pixel: LLaVA-1.5's grid
    on a square image, by arithmetic."""
    region = sample.region()
    side = sample.image.width
    assert sample.image.height == side
    cells = loaded.adapter.image_layout(sample.image.size).grids[0].rows
    step = side // cells
    image = np.flatnonzero(inputs.input_ids[0].numpy() == loaded.adapter.image_token_id)
    inside = [region[r * step:(r + 1) * step, c * step:(c + 1) * step].any()
              for r in range(cells) for c in range(cells)]
    return image[~np.array(inside)]


def test_oracle_knockout_equals_a_hand_built_mask(loaded):
    sample = next(s for s in load_dataset("fine-grained", limit=8) if s.has_region())
    inputs, groups = sample_inputs(loaded, sample)
    masked = _hand_built_outside(sample, loaded, inputs)
    assert 0 < masked.size < groups.image_patches.size
    np.testing.assert_array_equal(outside_region(groups, sample), masked)
    # greedy decoding by hand: every step a full forward with a 4-D mask in which the text
    # after the image (prompt and generated tokens) cannot read the masked image tokens
    ids, first_text = inputs.input_ids, int(groups.image.max()) + 1
    tokens = []
    for _ in range(4):
        length = ids.shape[1]
        mask = torch.full((length, length), float("-inf")).triu(1)
        mask[first_text:, torch.as_tensor(masked)] = float("-inf")
        batch = {**inputs.batch, "input_ids": ids, "attention_mask": mask[None, None]}
        with torch.no_grad():
            token = int(loaded.model(**batch).logits[0, -1].argmax())
        if token in loaded.eos_token_ids():
            break
        tokens.append(token)
        ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    expected = loaded.processor.tokenizer.decode(tokens, skip_special_tokens=True).strip()
    assert oracle_reply(loaded, sample, 4) == expected
    clean = answer_questions(loaded, [sample.image], [sample.ask], 4)[0].text
    assert expected != "" and isinstance(clean, str)


def test_oracle_excludes_samples_without_a_region(tmp_path):
    path = build_own_jsonl(tmp_path)  # one of its four questions has a box
    out = tmp_path / "run"
    assert run_cli(main, ["--data", str(path), "--methods", "oracle",
                          "--bootstrap", "50", "--out", str(out)]) == 0
    result = RunResult.load(out)
    has_region = [s.has_region() for s in load_dataset(str(path))]
    assert 0 < sum(has_region) < 4
    rows = {r["method"]: r for r in result.summary["methods"]}
    assert rows["oracle"]["n"] == sum(has_region)
    assert rows["oracle"]["excluded"] == 4 - sum(has_region)
    assert result.arrays["excluded"][:, 1].tolist() == [not h for h in has_region]
    scores = result.arrays["scores"][:, 1]
    assert all(math.isnan(v) for v, h in zip(scores, has_region) if not h)


def test_vif_method_equals_vif_generate(tmp_path, loaded):
    from probes.models.answer import answer_text
    from probes.vif import VIF, vif_generate

    path = VIF.for_model(loaded).save(tmp_path / "vif.safetensors")
    out = tmp_path / "run"
    assert run_cli(main, ["--data", "easy-vqa", "--limit", "2", "--methods", f"vif:{path}",
                          "--bootstrap", "50", "--out", str(out)]) == 0
    result = RunResult.load(out)
    module = VIF.load(path, loaded)
    for k, sample in enumerate(load_dataset("easy-vqa", limit=2)):
        inputs = loaded.adapter.build_inputs([sample.image], [sample.ask])
        tokens = vif_generate(loaded, module, inputs, 4)[0].tolist()  # exact's budget
        assert result.arrays["replies"][k, 1] == answer_text(loaded, tokens)
    assert result.summary["config"]["vif_sha256"][f"vif:{path}"]


@pytest.mark.parametrize("arguments,expected", [
    (["--methods", "clean,beam"], "unknown method 'beam'"),
    (["--methods", "vif:/no/such/vif.safetensors"], "no VIF module at /no/such"),
    (["--methods", "vif"], "vif:PATH"),
    (["--data", "easy-vqa,no-such-benchmark"], "no-such-benchmark"),
])
def test_bad_input_is_one_sentence(arguments, expected, tmp_path, capsys):
    code = run_cli(main, [*arguments, "--limit", "2", "--out", str(tmp_path / "run")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and lines[-1].startswith("error: ") and expected in lines[-1], lines
    assert not (tmp_path / "run" / "summary.json").exists()


def test_shards_merge_into_the_whole_run_with_its_tables(tmp_path):
    from helpers import assert_same_run

    from analyses.merge import main as merge

    arguments = ["--data", "easy-vqa,fine-grained", "--limit", "3", "--methods",
                 "clean,contrastive", "--bootstrap", "100"]
    assert run_cli(main, [*arguments, "--out", str(tmp_path / "whole")]) == 0
    for i in range(2):
        assert run_cli(main, [*arguments, "--shard", f"{i}/2",
                              "--out", str(tmp_path / f"shard{i}")]) == 0
    assert run_cli(merge, [str(tmp_path / "shard0"), str(tmp_path / "shard1"),
                           "--out", str(tmp_path / "merged")]) == 0
    whole, merged = RunResult.load(tmp_path / "whole"), RunResult.load(tmp_path / "merged")
    assert_same_run(whole, merged)
    layers = whole.summary["contrastive_layers"]
    assert layers["late"] == 5 and layers["refine"] == [4, 5] and layers["early"] in (0, 1, 2)
    for name in ("table.md", "table.tex"):  # the merge writes the paper table too
        assert (tmp_path / "merged" / name).read_text() == (tmp_path / "whole" / name).read_text()
    assert (tmp_path / "merged" / "evaluate_scores.png").is_file()
