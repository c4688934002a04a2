"""analyses.layer_masking against references: the sweep equals a full masked re-run per
condition, a planted one-layer model is found exactly, resume and shards give the result of an
uninterrupted run, the stated rules, the control's edges, and every bad input's one sentence."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from analyses.data import load_dataset
from analyses.layer_masking import LayerMaskingConfig, review, run_layer_masking
from analyses.layer_masking.__main__ import main as cli_main
from analyses.layer_masking.findings import significance
from analyses.layer_masking.sweep import (
    causal_edge_count,
    conditions,
    control_edges,
    flow_control,
    sweep_sample,
)
from analyses.merge import merge
from analyses.results import RunResult
from probes import attention
from probes.cli import run_cli
from probes.errors import UserError
from probes.masking import EdgeMaskPlan, Edges
from probes.models.loading import load_model
from probes.run import first_blocked_position, run_knockouts_naively
from probes.tokens import token_groups

FLOWS = ("image->question,last", "question->last")


@pytest.fixture(scope="module")
def trained():
    return load_model("tiny-llava")


@pytest.fixture(scope="module")
def easy():
    return load_dataset("easy-vqa", "test", limit=24)


def _reference_metrics(clean: torch.Tensor, logits: torch.Tensor, token: int) -> np.ndarray:
    """The four metrics written out one by one, in float64, from a full re-run's logits."""
    rows = []
    p = torch.softmax(clean.double(), -1)
    for row in logits.double():
        q = torch.softmax(row, -1)
        rows.append([100 * (q[token] - p[token]) / p[token], row[token] - clean[token].double(),
                     float((p * (p.log() - q.log())).sum()), float(row.argmax() != token)])
    return np.array(rows, dtype=np.float64)


def test_sweep_equals_a_full_masked_rerun_per_condition(trained, easy):
    layers = trained.adapter.num_layers
    for index in (0, 5):
        sample = easy[index]
        sweep = sweep_sample(trained, sample, FLOWS, window=3, seed=7, sample_index=index)
        inputs = trained.adapter.build_inputs([sample.image], [sample.question])
        groups = token_groups(trained.adapter, inputs)
        clean = trained.model(**inputs.batch).logits[0, -1].detach().float()
        token = int(clean.argmax())
        assert token == sweep.answer_token
        for f, flow_conditions in enumerate(conditions(FLOWS, 3, layers)):
            naive = run_knockouts_naively(trained, inputs, flow_conditions)
            np.testing.assert_allclose(sweep.metrics[f], _reference_metrics(clean, naive, token),
                                       rtol=1e-4, atol=1e-4)
            # the control: same edge count, same layers, recomputed from its drawn edges
            count = causal_edge_count(groups.get(FLOWS[f].split("->")[1]),
                                      groups.get(FLOWS[f].split("->")[0]))
            assert sweep.flow_edges[f] == sweep.control_edges[f] == count
            _, controls = flow_control(groups, flow_conditions, layers,
                                       np.random.default_rng([7, index, f]))
            assert [c.layers for c in controls] == [c.layers for c in flow_conditions]
            naive = run_knockouts_naively(trained, inputs, controls)
            np.testing.assert_allclose(sweep.metrics[len(FLOWS) + f],
                                       _reference_metrics(clean, naive, token),
                                       rtol=1e-4, atol=1e-4)
    assert np.abs(sweep.metrics[0, :, 0]).max() > 1.0  # blocking the image does something


def _reference_pool(groups, flow_edges: set) -> dict[int, list[int]]:
    """The control pool written out edge by edge: query -> the keys it may lose."""
    text = {int(p) for name in ("system", "question", "template", "last") for p in groups.get(name)}
    image = {int(p) for p in groups.image}
    sink = int(groups.padding.size)
    pool = {}
    for q in range(groups.length):
        same = text if q in text else image if q in image else set()
        pool[q] = [k for k in range(q) if k in same and k != sink and (q, k) not in flow_edges]
    return pool


@pytest.mark.parametrize("flow", FLOWS)
def test_the_control_blocks_as_many_edges_as_the_flow_late_and_none_into_text(trained, easy,
                                                                               flow):
    """Against a pool enumerated edge by edge: the control blocks exactly the flow's number of
    edges, each in the pool (no image->text or text->image edge, no sink key, never self,
    none of the flow's own), and is the latest such set: every pool edge of the rows after
    its earliest row, the rest drawn from that row (seeded: same seed, same edges)."""
    layers = trained.adapter.num_layers
    inputs = trained.adapter.build_inputs([easy[0].image], [easy[0].question])
    groups = token_groups(trained.adapter, inputs)
    flow_conditions = conditions([flow], 1, layers)[0]
    blocked = {(int(q), int(k)) for e in flow_conditions[0].edges(groups, layers)
               for q in e.queries for k in e.keys if k <= q}
    count, controls = flow_control(groups, flow_conditions, layers, np.random.default_rng(3))
    assert count == len(blocked)
    drawn = list(zip(controls[0].queries.tolist(), controls[0].keys.tolist()))
    assert len(drawn) == len(set(drawn)) == count  # without repeats
    pool = _reference_pool(groups, blocked)
    image = set(groups.image.tolist())
    for q, k in drawn:
        assert k in pool[q]
        assert (q in image) == (k in image)  # no image information into text
    first = min(q for q, _ in drawn)
    later = {(q, k) for q in range(first + 1, groups.length) for k in pool[q]}
    assert later <= set(drawn)  # every row after the first is taken whole
    assert 0 < sum(q == first for q, _ in drawn) <= len(pool[first])
    assert len(later) < count  # ... and the first row is needed: nothing later would do
    assert first_blocked_position(groups, controls, layers) == first
    if flow.startswith("image"):  # late: after most of the image, as its text flow's rows
        assert first > groups.image[len(groups.image) * 3 // 4]
        assert any(q not in image for q, _ in drawn)  # both kinds of edge are used
    again = flow_control(groups, flow_conditions, layers, np.random.default_rng(3))[1][0]
    np.testing.assert_array_equal(again.keys, controls[0].keys)
    for condition, control in zip(flow_conditions, controls):
        assert control.layers == condition.layers


def test_a_control_never_asks_for_more_edges_than_its_pool_has(trained, easy):
    inputs = trained.adapter.build_inputs([easy[0].image], [easy[0].question])
    groups = token_groups(trained.adapter, inputs)
    total = sum(len(keys) for keys in _reference_pool(groups, set()).values())
    drawn = control_edges(groups, 10 * total, np.random.default_rng(0))
    assert drawn.edge_count == total  # all there are
    assert control_edges(groups, 0, np.random.default_rng(0)).edge_count == 0


def test_a_planted_single_fusion_layer_is_found_and_only_it(trained, easy):
    """The image may reach text only at layer 3 (blocked at every other layer, as part of the
    model): the sweep must report layer 3, and no other, as a fusion layer. (Planted at layer
    4 the trained model's answers move by only 1.5% on these 24 samples, below the rule's 2%
    minimal effect; at layers 0-1 random image->image edges cost more than the image does.)"""
    planted_layer, layers = 3, trained.adapter.num_layers
    groups = token_groups(trained.adapter, trained.adapter.build_inputs([easy[0].image], ["?"]))
    after_image = int(groups.image.max()) + 1
    plant = EdgeMaskPlan([[Edges(np.zeros(0, np.int64), groups.image,
                                 frozenset(set(range(layers)) - {planted_layer}),
                                 queries_from=after_image)]])
    attention.enable(trained.model)
    with attention.attach(trained.adapter.attention_modules(trained.model), plant):
        result = run_layer_masking(trained, easy, LayerMaskingConfig(samples="all"))
    assert result.summary["fusion_layers"] == [planted_layer]
    effects = np.array([r["effect"] for r in result.summary["tests"]])
    assert effects[planted_layer] > 1.0
    others = np.delete(result.arrays["prob_change_pct"][:, 0], planted_layer, axis=1)
    assert np.abs(others).max() < 1e-3  # elsewhere the flow is already cut: no change (to rounding)


def test_significance_and_review_rules_on_planted_numbers():
    rng = np.random.default_rng(0)
    samples, layers = 30, 16
    change = rng.normal(0, 1, (samples, 2, layers))  # flow and control: noise around 0
    change[:, 0, [3, 4]] -= 40  # fusion
    change[:, 0, 14] -= 20  # review after 9 quiet layers
    change[:, 1, 8] -= 60  # the control hurts at 8: the flow is not "larger" there
    change[:, 0, 6] = -1.0 + rng.normal(0, 0.01, samples)  # sure, but below the 2% minimum
    rows = significance({"prob_change_pct": change}, ["image->last"], 500, 0)
    assert [r["layer"] for r in rows if r["significant"]] == [3, 4, 14]
    assert rows[6]["p_holm"] < 0.05  # layer 6 fails only the minimal effect
    relaxed = significance({"prob_change_pct": change}, ["image->last"], 500, 0, min_effect=0.5)
    assert [r["layer"] for r in relaxed if r["significant"]] == [3, 4, 6, 14]
    assert review([3, 4, 14], layers) == {"detected": True, "layers": [14], "late_start": 12,
                                          "stretch": 2}
    assert not review([3, 4, 11, 12], layers)["detected"]  # no quiet stretch before layer 12
    assert not review([3, 4], layers)["detected"]


def _comparable(result: RunResult) -> tuple[dict, dict]:
    summary = {k: v for k, v in result.summary.items() if k not in ("timing", "versions")}
    return json.loads(json.dumps(summary)), result.arrays


def _assert_same(a: RunResult, b: RunResult) -> None:
    summary_a, arrays_a = _comparable(a)
    summary_b, arrays_b = _comparable(b)
    assert summary_a == summary_b
    assert arrays_a.keys() == arrays_b.keys()
    for name in arrays_a:
        np.testing.assert_array_equal(arrays_a[name], arrays_b[name], err_msg=name)


def test_resume_after_an_interruption_gives_the_uninterrupted_result(trained, easy, tmp_path):
    config = LayerMaskingConfig(n_bootstrap=300)
    whole = run_layer_masking(trained, easy, config)

    def interrupt(done):
        if done == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_layer_masking(trained, easy, config, out=tmp_path, on_sample=interrupt)
    assert len(list((tmp_path / ".partial" / "samples").glob("*.npz"))) == 5  # each kept as it ended
    seen = []
    resumed = run_layer_masking(trained, easy, config, out=tmp_path, resume=True,
                                on_sample=seen.append)
    assert seen[0] == 6  # it went on from the saved state, not from the start
    _assert_same(whole, resumed)
    assert not (tmp_path / ".partial").exists()


def test_shards_merge_into_the_unsharded_result(trained, easy, tmp_path):
    config = LayerMaskingConfig(n_bootstrap=300)
    whole = run_layer_masking(trained, easy, config)
    directories = []
    for index in range(3):
        out = tmp_path / f"shard{index}"
        part = run_layer_masking(trained, easy, config, shard=(index, 3), out=out)
        directories.append(part.save(out))
    _assert_same(whole, merge(directories))
    with pytest.raises(Exception, match="every shard"):
        merge(directories[:2])


def test_cli_writes_results_and_figures_and_figures_redraw_without_a_model(tmp_path, capsys):
    out = tmp_path / "run"
    code = run_cli(cli_main, ["--limit", "12", "--window", "3", "--out", str(out),
                              "--bootstrap", "200"])
    assert code == 0
    table = capsys.readouterr().out
    assert "fusion layers:" in table and "window 3" in table
    result = RunResult.load(out)
    for key in ("analysis", "model", "data", "n_samples", "config", "versions", "seed",
                "per_layer", "fusion_layers", "review"):
        assert key in result.summary
    assert set(result.summary["review"]) >= {"detected", "layers"}
    assert result.arrays["prob_change_pct"].shape == (result.summary["n_samples"], 2, 6)
    for name in ("layer_effect", "layer_heatmap", "layer_metrics"):
        assert (out / f"{name}.png").stat().st_size > 10_000
        pdf = (out / f"{name}.pdf").read_bytes()
        assert b"/FontFile2" in pdf and b"/Type3" not in pdf  # TrueType fonts, embedded
    from figures.paper import main as paper_main

    redrawn = tmp_path / "redrawn"
    assert run_cli(paper_main, [str(out), "--out", str(redrawn)]) == 0
    assert (redrawn / "run" / "layer_effect.pdf").is_file()


@pytest.mark.parametrize("argv, message", [
    (["--flows", "image->nowhere"], "unknown token group 'nowhere'"),
    (["--flows", "image-question"], "is not of the form SRC->DST"),
    (["--window", "7"], "a window of 7 layers does not fit a model with 6 layers"),
    (["--limit", "0"], "--limit takes a whole number of at least 1"),
    (["--shard", "3/2"], "--shard takes i/n with 0 <= i < n"),
])
def test_bad_input_gets_one_sentence_and_exit_2(argv, message, tmp_path, capsys):
    assert run_cli(cli_main, [*argv, "--out", str(tmp_path)]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: ") and message in error


def test_nothing_to_sweep_completes_with_the_sweep_skipped(tmp_path, capsys):
    """A model that answers nothing right: graded, nothing swept, said why (issue #25)."""
    out = tmp_path / "run"
    argv = ["--model", "tiny-random-llava", "--limit", "3", "--bootstrap", "20"]
    assert run_cli(cli_main, [*argv, "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["graded"] == {"n": 3, "correct": 0, "selected": "correct"}
    assert summary["skipped"][0]["part"] == "sweep"
    assert "answers none of the 3 samples" in summary["skipped"][0]["reason"]
    assert all(math.isnan(r["mean"]) and r["n"] == 0 for r in summary["per_layer"])
    assert "skipped: sweep (the model answers none" in capsys.readouterr().out


def test_region_flows_leave_out_samples_without_a_visible_target(trained):
    data = load_dataset("fine-grained", "test", limit=32)
    visible = [i for i in range(len(data)) if data[i].mask.any()]  # 26, 30 count zero objects
    assert 0 < len(visible) < len(data)  # the slice has questions about nothing visible
    config = LayerMaskingConfig(flows=("object->last",), samples="all",
                                n_bootstrap=200)
    result = run_layer_masking(trained, data, config)
    assert result.arrays["sample_index"].tolist() == visible


def test_fusion_layers_per_question_kind_on_planted_numbers():
    from analyses.layer_masking.run import _fusion_by_kind, kinds_below_minimum

    rng = np.random.default_rng(1)
    kinds = np.array(["colour"] * 25 + ["shape"] * 25 + ["rare"] * 5)
    change = rng.normal(0, 0.5, (kinds.size, 2, 6))
    change[:25, 0, 2] -= 50  # colour reads the image at layer 2
    change[25:50, 0, 0] -= 30  # shape at layer 0
    arrays = {"kind": kinds, "prob_change_pct": change, "logit_change": change,
              "kl": change, "flipped": change}
    by_kind = _fusion_by_kind(arrays, LayerMaskingConfig(flows=("image->last",),
                                                         n_bootstrap=300), 6)
    assert by_kind.keys() == {"colour", "shape"}  # "rare" has too few samples
    assert by_kind["colour"]["fusion_layers"] == [2] and by_kind["shape"]["fusion_layers"] == [0]
    assert by_kind["colour"]["n"] == 25
    assert kinds_below_minimum(arrays, 20) == {"rare": 5}  # listed, not silently dropped
    assert kinds_below_minimum(arrays, 26) == {"colour": 25, "rare": 5, "shape": 25}
    fewer = _fusion_by_kind(arrays, LayerMaskingConfig(flows=("image->last",), n_bootstrap=300,
                                                       min_kind_samples=5), 6)
    assert fewer.keys() == {"colour", "shape", "rare"} and fewer["rare"]["n"] == 5


def test_every_flow_is_in_the_table_the_headline_and_the_figures_as_a_drop(trained, easy):
    from analyses.layer_masking.table import format_table
    from figures.layer_masking import effect_curves, metric_panels, sample_heatmap

    flows = ("image->question,last", "image->last", "question->last")
    config = LayerMaskingConfig(flows=flows, n_bootstrap=100, min_kind_samples=8)
    result = run_layer_masking(trained, load_dataset("easy-vqa", "test", limit=12), config)
    summary = result.summary
    table = format_table(summary)
    for flow in flows:
        assert f"block {flow}: effect = drop of p(answer) in %" in table
        fusion = summary["fusion_layers_by_flow"][flow]
        assert f"  {flow}: {fusion or 'none'}; review: " in table  # the headline, per flow
    assert summary["config"]["min_kind_samples"] == 8
    small = summary["kinds_below_minimum"]
    counts = dict(zip(*np.unique(result.arrays["kind"].astype(str), return_counts=True)))
    assert small == {k: int(n) for k, n in counts.items() if n < 8} and small
    assert ", ".join(f"{k} n={n}" for k, n in small.items()) in table
    assert set(summary["fusion_layers_by_kind"]) == {k for k, n in counts.items() if n >= 8}
    curves = effect_curves(summary)
    assert [a.get_title() for a in curves.axes] == list(flows)
    for axes, flow in zip(curves.axes, flows):  # drawn as the table's drop: -mean change
        change = [r["mean"] for r in summary["per_layer"]
                  if r["series"] == flow and r["metric"] == "prob_change_pct"]
        np.testing.assert_allclose(axes.lines[2].get_ydata(), -np.array(change))
        effect = [r["effect"] for r in summary["tests"] if r["flow"] == flow]
        np.testing.assert_allclose(axes.lines[2].get_ydata(), effect, atol=1e-9)
    panels = metric_panels(summary)
    for axes in panels.axes:
        labels = [line.get_label() for line in axes.lines]
        assert labels == [name for flow in flows for name in (f"control({flow})",
                                                             f"block {flow}")]
    assert panels.axes[0].get_ylabel() == "drop of p(answer) (%)"
    heatmap = sample_heatmap(summary, result.arrays)
    titles = [a.get_title() for a in heatmap.axes if a.get_title()]
    assert titles == [f"block {flow}, per sample" for flow in flows]
    order = np.lexsort((result.arrays["sample_index"], result.arrays["kind"].astype(str)))
    for index, axes in enumerate(heatmap.axes[:3]):
        shown = np.asarray(axes.collections[0].get_array()).reshape(len(order), -1)
        np.testing.assert_allclose(shown, -result.arrays["prob_change_pct"][order, index])


def test_a_region_flow_on_data_without_boxes_names_the_cause_before_the_model(
        trained, easy, tmp_path, capsys, monkeypatch):
    import analyses.runner.cli as runner_cli

    rows = []
    for index in range(4):
        sample = easy[index]
        sample.image.save(tmp_path / f"{index}.png")
        rows.append({"image": f"{index}.png", "question": sample.question,
                     "answer": sample.answer, "kind": sample.kind})
    data = tmp_path / "noboxes.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    monkeypatch.setattr(runner_cli, "make_backend", lambda args: pytest.fail("model loaded"))
    argv = ["--data", str(data), "--flows", "image->last;object->last", "--out",
            str(tmp_path / "run")]
    assert run_cli(cli_main, argv) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: --flows 'image->last;object->last' blocks the 'object' tokens, but none of the "
        "4 samples marks a region (boxes or a mask) to find them in; give data with boxes, or "
        "flows without 'object'.")
    config = LayerMaskingConfig(flows=("object->last",), samples="all", n_bootstrap=50)
    with pytest.raises(UserError, match="none of the 4 samples marks a region"):
        run_layer_masking(trained, load_dataset(str(data)), config)  # the library's sentence
