"""The HTML report (``python -m figures.report``) built from saved runs and opened in a real
headless Chromium (Debian's package, driven by Playwright; ``make browser`` installs it): the
numbers shown equal summary.json, the layer slider changes the overlay's pixels, the filter
changes the list, the page makes no network request (each one blocked and counted) and logs no
console error. Screenshots of each view go to runs/report-screens/.

These tests fail, never skip, where Chromium is missing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from analyses.results import RunResult
from figures.report import write_report

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden"
SCREENS = ROOT / "runs" / "report-screens"
CHROMIUM = (os.environ.get("FUSIONLENS_CHROMIUM") or shutil.which("chromium")
            or shutil.which("chromium-browser"))


# ---------- shared with tests/bench_report.py ----------

def synthetic_run(out: Path, samples: int, layers: int, tokens: int = 576, heads: int = 0,
                  seed: int = 0) -> Path:
    """An attention-evolution run of ``samples`` easy-VQA samples at LLaVA-1.5 geometry
    (``tokens`` image tokens on a square grid; per-head maps when ``heads``), written as files
    without a model: random maps, their image shares and the summary's per-layer means."""
    from analyses.common import data_record
    from analyses.data import load_dataset
    from analyses.results import provenance

    rng = np.random.default_rng(seed)
    side = int(round(tokens ** 0.5))
    dataset = load_dataset("easy-vqa", "test", limit=samples)
    shape = (samples, 2, layers, tokens)
    head_maps = rng.dirichlet(np.full(tokens, 0.3), size=(*shape[:3], heads)).astype(np.float32) \
        if heads else None
    maps = head_maps.mean(3) if heads else rng.dirichlet(np.full(tokens, 0.3), size=shape[:3])
    share = rng.uniform(0.1, 0.9, size=shape[:3])
    summary = provenance("attention_evolution", {"id": "synthetic", "family": "llava",
                                                 "layers": layers}, data_record(dataset),
                         samples, {"heads": bool(heads)}, 0)
    summary.update(series=["question", "last"], metrics=["image_share"], num_layers=layers,
                   per_layer=[{"series": name, "metric": "image_share", "layer": layer,
                               "mean": float(share[:, s, layer].mean()),
                               "ci_low": float(np.percentile(share[:, s, layer], 2.5)),
                               "ci_high": float(np.percentile(share[:, s, layer], 97.5)),
                               "n": samples}
                              for s, name in enumerate(["question", "last"])
                              for layer in range(layers)])
    cells = np.array([[0, r, c] for r in range(side) for c in range(side)])
    arrays = {"sample_index": np.arange(samples), "sample_id": np.array([s.id for s in dataset]),
              "kind": np.array([s.kind for s in dataset]), "maps": maps.astype(np.float32),
              "cells": cells, "image_share": share, "relevant": np.zeros((samples, tokens), bool)}
    if heads:
        arrays["head_maps"] = head_maps
    return RunResult(summary, arrays).save(out)


def synthetic_heads_run(out: Path, samples: int, layers: int, heads: int,
                        key_heads: tuple = (), seed: int = 0) -> Path:
    """A heads run of ``samples`` easy-VQA samples of a model with ``layers`` x ``heads``,
    written as files without a model: random per-sample measures (every sample answered
    correctly; the heads of ``key_heads`` drop the answer by 10-12 %, the others by N(0, 0.5)),
    the summary computed from them by the analysis's own :func:`analyses.heads.run.summarize`."""
    from analyses.common import data_record
    from analyses.data import load_dataset
    from analyses.heads.measure import random_heads
    from analyses.heads.run import HeadsConfig, summarize
    from analyses.results import provenance

    rng = np.random.default_rng(seed)
    dataset = load_dataset("easy-vqa", "test", limit=samples)
    drop = rng.normal(0, 0.5, size=(samples, layers, heads))
    for layer, head in key_heads:
        drop[:, layer, head] = rng.uniform(10, 12, size=samples)
    parts = {"dla_heads": rng.normal(0, 0.3, size=(samples, layers, heads)),
             "dla_mlps": rng.normal(0, 0.3, size=(samples, layers)),
             "dla_biases": np.zeros((samples, layers)), "dla_embedding": rng.normal(size=samples)}
    arrays = {"sample_index": np.arange(samples), "sample_id": np.array([s.id for s in dataset]),
              "kind": np.array([s.kind for s in dataset]), "correct": np.ones(samples, bool),
              "answer_token": np.zeros(samples, np.int64),
              "other_token": np.ones(samples, np.int64),
              "clean_probability": rng.uniform(0.3, 1, size=samples),
              "prob_change_pct": -drop, "logit_change": -drop / 10, **parts,
              "logit_difference": parts["dla_heads"].sum((1, 2)) + parts["dla_mlps"].sum(1)
              + parts["dla_embedding"],
              "image_share": rng.uniform(0, 1, size=(samples, 2, layers, heads)),
              "control_heads": np.stack([random_heads(rng, 8, layers, heads)
                                         for _ in range(samples)])}
    config = HeadsConfig(n_bootstrap=200)
    summary = provenance("heads", {"id": "synthetic", "family": "llava", "layers": layers},
                         data_record(dataset), samples, config.recorded(), 0)
    summary.update(summarize(arrays, config))
    return RunResult(summary, arrays).save(out)


def synthetic_patching_run(out: Path, samples: int, layers: int, heads: int,
                           sites: tuple = ("residual", "attn", "mlp"), seed: int = 0) -> Path:
    """A patching run of ``samples`` easy-VQA samples of a model with ``layers`` x ``heads``
    (``sites`` patched at image, question and last, and every head at last), written as files
    without a model: random per-sample effects (every tenth sample skipped as unchanged), the
    summary computed from them by the analysis's own :func:`analyses.patching.run.summarize`."""
    from analyses.common import data_record
    from analyses.data import load_dataset
    from analyses.patching.run import Patching, PatchingConfig, summarize
    from analyses.results import provenance

    rng = np.random.default_rng(seed)
    dataset = load_dataset("easy-vqa", "test", limit=samples)
    config = PatchingConfig(sites=(*sites, "head"), n_bootstrap=200)
    skipped = np.where(np.arange(samples) % 10 == 9, "unchanged", "")
    effect = rng.normal(0.2, 0.4, size=(samples, len(sites), layers, 3))
    head_effect = rng.normal(0, 0.1, size=(samples, layers, heads))
    effect[skipped != ""], head_effect[skipped != ""] = np.nan, np.nan
    arrays = {"sample_index": np.arange(samples), "sample_id": np.array([s.id for s in dataset]),
              "kind": np.array([s.kind for s in dataset]),
              "answer": np.array([s.answer for s in dataset]),
              "counterpart": np.array([""] * samples),
              "clean_token": np.full(samples, 7), "corrupt_token": np.full(samples, 9),
              "clean_text": np.array(["red"] * samples),
              "corrupt_text": np.array(["blue"] * samples),
              "skipped": skipped, "ld_clean": rng.uniform(2, 6, samples),
              "ld_corrupt": rng.uniform(-4, 0, samples), "effect": effect,
              "head_effect": head_effect}
    summary = provenance("patching", {"id": "synthetic", "family": "llava", "layers": layers},
                         data_record(dataset), samples, Patching(config).recorded(), 0)
    summary.update(summarize(arrays, config, layers))
    return RunResult(summary, arrays).save(out)


class Opened:
    """A report open in Chromium with every request but the page's own blocked and counted,
    and every console error and page error collected."""

    def __init__(self, browser, path: Path, width: int = 1400, height: int = 950):
        self.url = path.resolve().as_uri()
        self.blocked: list[str] = []
        self.errors: list[str] = []
        self.context = browser.new_context(viewport={"width": width, "height": height})
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.on("request", self._request)
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.goto(self.url)
        self.page.wait_for_selector("body[data-ready='1']")

    def _route(self, route):
        if route.request.url == self.url:
            route.continue_()
        else:
            self.blocked.append(route.request.url)
            route.abort()

    def _request(self, request):
        if request.url != self.url and not request.url.startswith("data:"):
            self.blocked.append(request.url)

    def first_view_ms(self) -> float:
        # a JavaScript number that happens to be whole arrives as a Python int
        return float(self.page.evaluate("window.reportFirstView"))

    def close(self) -> None:
        assert not self.blocked, f"the report made requests: {self.blocked[:5]}"
        assert not self.errors, f"the report logged errors: {self.errors[:5]}"
        self.context.close()


def launch(playwright):
    if not CHROMIUM:
        pytest.fail("Chromium is missing: `make browser` installs it (apt-get install chromium); "
                    "the report's tests need a real browser and never skip.")
    return playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])


# ---------- fixtures ----------

@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = launch(playwright)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """name -> report of the golden run of that analysis."""
    folder = tmp_path_factory.mktemp("reports")
    names = ["layer_masking", "token_importance", "attention_evolution",
             "contrastive_attention", "attenuation", "train_vif"]
    return {name: write_report([GOLDEN / name], folder / f"{name}.html") for name in names}


def shot(opened: Opened, name: str) -> Path:
    SCREENS.mkdir(parents=True, exist_ok=True)
    path = SCREENS / f"{name}.png"
    opened.page.screenshot(path=str(path), full_page=True)
    return path


def tab(opened: Opened, name: str) -> None:
    opened.page.click(f"[data-tab={name}]")
    opened.page.wait_for_selector(f"#view-{name}")


# ---------- the page against the run ----------

@pytest.mark.parametrize("name", ["layer_masking", "token_importance", "attention_evolution",
                                  "contrastive_attention", "attenuation", "train_vif"])
def test_every_view_opens_and_shows_the_summary_numbers(browser, reports, name):
    summary = json.loads((GOLDEN / name / "summary.json").read_text())
    opened = Opened(browser, reports[name])
    page = opened.page
    points = page.eval_on_selector_all(
        "circle.pt", "cs => cs.map(c => [c.closest('.chart').dataset.title, c.dataset.line, "
        "+c.dataset.layer, +c.dataset.mean])")
    rows = [r for r in summary.get("per_layer", []) if r["mean"] == r["mean"]]  # NaN: not drawn
    assert len(points) == len(rows)
    expected = sorted(r["mean"] for r in rows)
    assert sorted(p[3] for p in points) == expected  # exact: the page holds the summary's floats
    if points:  # the hover text shows a point's mean and CI to 4 significant digits
        page.hover("circle.pt >> nth=-1")  # drawn last: on top of any point it overlaps
        text = page.inner_text("#tip")
        title, line, layer, mean = points[-1]
        row = next(r for r in rows if r["layer"] == layer and r["mean"] == mean)
        shown = [float(x) for x in text.split(": ")[1].replace("[", " ").replace("]", " ")
                 .replace(",", " ").split()[:1]]
        assert shown[0] == pytest.approx(row["mean"], rel=1e-3, abs=1e-9)
        assert f"n = {row['n']}" in text
    for key in ("fusion_layers", "num_layers", "n_patches", "suppressed_per_sample"):
        if key in summary:
            cell = page.inner_text(f"#view-overview dd[data-key={key}]")
            assert json.loads(cell) == summary[key] or float(cell) == summary[key]
    tables = page.eval_on_selector_all("#view-overview table", "ts => ts.length")
    assert tables == sum(1 for v in summary.values() if isinstance(v, list) and v
                         and all(isinstance(r, dict) for r in v)) - ("per_layer" in summary) \
        - bool(summary.get("failed")) - bool(summary.get("skipped"))
    shot(opened, f"{name}-overview")
    tab(opened, "provenance")
    assert summary["model"]["id"] in page.inner_text("#view-provenance")
    assert summary["versions"]["torch"] in page.inner_text("#view-provenance")
    shot(opened, f"{name}-provenance")
    tab(opened, "samples")
    if name == "layer_masking":  # the first sample's per-layer effect curve, each flow a line
        change = RunResult.load(GOLDEN / name).arrays["prob_change_pct"][0]  # [series, layer]
        shown = page.eval_on_selector_all("#sample-detail .chart >> nth=0",
                                          "cs => [...cs[0].querySelectorAll('circle.pt')]"
                                          ".map(c => +c.dataset.mean)")
        np.testing.assert_allclose(shown, change[np.isfinite(change)], rtol=1e-4)
    shot(opened, f"{name}-samples")
    opened.close()


def test_the_layer_slider_changes_the_overlay_and_decodes_the_saved_maps(browser, reports):
    run = RunResult.load(GOLDEN / "attention_evolution")
    opened = Opened(browser, reports["attention_evolution"])
    page = opened.page
    tab(opened, "samples")
    page.wait_for_function("document.querySelector('canvas.overlay').width > 1")
    pixels = "document.querySelector('canvas.overlay').toDataURL()"
    before = page.evaluate(pixels)
    page.fill("[data-control=layer]", "3")
    page.dispatch_event("[data-control=layer]", "input")
    after = page.evaluate(pixels)
    assert before != after
    # the page's decoded map = the run's float map within the uint8 quantisation step
    maps = run.arrays["maps"]  # [sample, series, layer, patch]
    for sample, series, layer in [(0, 0, 0), (3, 1, 5), (9, 0, 2)]:
        shown = np.array(page.evaluate(
            "([i, m]) => fusionReport.values(0, 'attention on the image (heads averaged)', i, m)",
            [sample, series * maps.shape[2] + layer]))
        truth = maps[sample, series, layer]
        step = (truth.max() - truth.min()) / 255
        assert np.abs(shown - truth).max() <= step / 2 + 1e-6
    shot(opened, "attention_evolution-samples-layer3")
    opened.close()


def test_the_filters_change_the_sample_list(browser, reports):
    arrays = RunResult.load(GOLDEN / "token_importance").arrays
    opened = Opened(browser, reports["token_importance"])
    page = opened.page
    tab(opened, "samples")
    listed = "document.querySelectorAll('#sample-list [data-sample]').length"
    assert page.evaluate(listed) == len(arrays["kind"])
    kind = str(arrays["kind"][0])
    page.select_option("[data-filter=kind]", kind)
    assert page.evaluate(listed) == int((arrays["kind"] == kind).sum())
    page.select_option("[data-filter=kind]", "")
    page.select_option("[data-filter=method]", "clean")
    page.select_option("[data-filter=verdict]", "wrong")
    assert page.evaluate(listed) == int((~arrays["correct"][:, 0]).sum())
    page.select_option("[data-filter=verdict]", "correct")
    assert page.evaluate(listed) == int(arrays["correct"][:, 0].sum())
    first = page.inner_text("#sample-list [data-sample] >> nth=0")
    page.click("#sample-list [data-sample] >> nth=0")
    assert first.split(" ")[0] in page.inner_text("#sample-detail")
    verdicts = page.inner_text("#sample-detail table.verdicts")
    assert "aif" in verdicts and "clean" in verdicts
    shot(opened, "token_importance-samples-filtered")
    opened.close()


# ---------- runs on each family, several runs, broken runs ----------

@pytest.fixture(scope="module")
def family_runs(tmp_path_factory):
    """An attention-evolution run (with heads) on the tiny model of each family of
    tests/helpers.py TINY_FAMILIES (a family added there is covered here)."""
    from helpers import TINY_FAMILIES

    from analyses.attention_evolution.__main__ import main
    from probes.cli import run_cli

    folder = tmp_path_factory.mktemp("families")
    runs = {}
    for model in TINY_FAMILIES:
        out = folder / model
        assert run_cli(main, ["--model", model, "--limit", "2", "--bootstrap", "20", "--heads",
                              "--out", str(out)]) == 0
        runs[model] = out
    return runs


def test_a_run_of_each_family_loads_with_heads(browser, family_runs, tmp_path):
    for model, run in family_runs.items():
        path = write_report([run, GOLDEN / "attention_evolution"], tmp_path / f"{model}.html")
        opened = Opened(browser, path)
        page = opened.page
        assert page.eval_on_selector_all("[data-run]", "ns => new Set(ns.map(n => n.dataset.run)).size") == 2
        legend = page.inner_text(".chart .legend >> nth=0")  # both runs' lines in one panel
        assert f"{model}: question" in legend and "attention_evolution: question" in legend
        tab(opened, "samples")
        page.wait_for_function("document.querySelector('canvas.overlay').width > 1")
        heads = page.eval_on_selector_all("[data-control=head] option", "os => os.length")
        assert heads == 1 + RunResult.load(run).arrays["head_maps"].shape[3]  # mean + each
        before = page.evaluate("document.querySelector('canvas.overlay').toDataURL()")
        page.select_option("[data-control=head] >> nth=0", "2")
        assert page.evaluate("document.querySelector('canvas.overlay').toDataURL()") != before
        shot(opened, f"family-{model}-samples")
        opened.close()


def test_a_logit_lens_run_of_each_family_draws_its_map_on_the_token_boxes(browser, tmp_path):
    """The lens's image tokens (LLaVA-NeXT's row newlines among them: no cell) placed on each
    family's token boxes; the map's values are the saved top tokens' = the answer."""
    from helpers import TINY_FAMILIES

    from analyses.logit_lens.__main__ import main
    from probes.cli import run_cli

    name = "image tokens whose top token is the answer (names the answer)"
    for model in TINY_FAMILIES:
        out = tmp_path / model
        assert run_cli(main, ["--model", model, "--limit", "1", "--bootstrap", "20", "--out",
                              str(out)]) == 0
        arrays = RunResult.load(out).arrays
        opened = Opened(browser, write_report([out], tmp_path / f"{model}.html"))
        tab(opened, "samples")
        opened.page.wait_for_selector("[data-placement=exact]")
        last = arrays["answer_rank"].shape[1] - 1
        shown = opened.page.evaluate("([m, n]) => fusionReport.values(0, n, 0, m)", [last, name])
        truth = arrays["image_top1"][:, last] == arrays["answer_token"][0]
        np.testing.assert_array_equal(np.array(shown), truth.astype(float))
        boxes = shown_boxes(opened, 0)
        separators = arrays["image_cells"][:, 0] < 0
        assert np.isnan(boxes[separators]).all() and np.isfinite(boxes[~separators]).all()
        shot(opened, f"family-{model}-logit_lens")
        opened.close()


def test_an_unfinished_run_and_a_run_without_arrays_say_what_is_missing(browser, tmp_path):
    partial = tmp_path / "unfinished"
    (partial / ".partial" / "samples").mkdir(parents=True)
    (partial / ".partial" / "key.json").write_text(json.dumps({"analysis": "layer_masking"}))
    np.savez(partial / ".partial" / "samples" / "0.npz", curve=np.zeros(3))
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(GOLDEN / "layer_masking" / "summary.json", bare / "summary.json")
    path = write_report([partial, bare], tmp_path / "broken.html")
    opened = Opened(browser, path)
    text = opened.page.inner_text("#view-overview")
    assert "unfinished (1 samples done in its samples pass)" in text and "--resume" in text
    assert "no arrays.npz" in text
    assert opened.page.eval_on_selector_all("circle.pt", "cs => cs.length") > 0  # bare's curves
    shot(opened, "broken-runs-overview")
    tab(opened, "samples")
    assert "no per-sample records" in opened.page.inner_text("#view-samples")
    opened.close()


def test_failed_samples_damaged_arrays_and_older_runs_say_what_is_missing(browser, tmp_path):
    failed = tmp_path / "failed"
    shutil.copytree(GOLDEN / "attenuation", failed)
    summary = json.loads((failed / "summary.json").read_text())
    summary["failed"] = [{"index": 7, "id": "x", "pass": "samples",
                          "reason": "its image cannot be read"}]
    (failed / "summary.json").write_text(json.dumps(summary))
    damaged = tmp_path / "damaged"
    shutil.copytree(GOLDEN / "attenuation", damaged)
    (damaged / "arrays.npz").write_bytes(b"not a zip")
    lacking = tmp_path / "lacking"
    shutil.copytree(GOLDEN / "attenuation", lacking)
    arrays = dict(np.load(lacking / "arrays.npz"))
    np.savez(lacking / "arrays.npz", **{k: v for k, v in arrays.items() if k != "curves"})
    opened = Opened(browser, write_report([failed, damaged, lacking], tmp_path / "r.html"))
    text = opened.page.inner_text("#view-overview")
    assert "sample 7 failed (its image cannot be read)" in text
    assert "arrays.npz cannot be read" in text
    assert "the run's arrays lack curves" in text
    tab(opened, "samples")
    assert opened.page.eval_on_selector_all("canvas.overlay", "cs => cs.length") == 0
    opened.close()
    # a token importance run saved before prompt tokens were recorded: the rest shows, and a
    # note says what is missing
    opened = Opened(browser, write_report([GOLDEN / "token_importance"], tmp_path / "ti.html"))
    tab(opened, "samples")
    assert "predates prompt token importance" in opened.page.inner_text("#view-samples")
    assert opened.page.query_selector("[data-prompt]") is None
    assert opened.page.query_selector("canvas.overlay") is not None
    opened.close()


def test_bad_input_is_one_sentence_and_exit_2(tmp_path, capsys):
    from figures.report.__main__ import main
    from probes.cli import run_cli

    not_a_run = tmp_path / "empty"
    not_a_run.mkdir()
    (tmp_path / "file").write_text("")
    cases = {
        "is not a fusionlens run": [str(not_a_run), "--out", str(tmp_path / "r.html")],
        "runs of different analyses cannot be compared": [
            str(GOLDEN / "layer_masking"), str(GOLDEN / "attenuation"), "--out",
            str(tmp_path / "r.html")],
        "cannot write the report": [str(GOLDEN / "attenuation"), "--out",
                                    str(tmp_path / "file" / "r.html")],
        "is a folder": [str(GOLDEN / "attenuation"), "--out", str(tmp_path)],
    }
    for words, args in cases.items():
        assert run_cli(main, args) == 2
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r.html").exists()
    # the command as a user runs it: prints the report's path
    done = subprocess.run([sys.executable, "-m", "figures.report", str(GOLDEN / "attenuation"),
                           "--out", str(tmp_path / "ok.html")], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and str(tmp_path / "ok.html") in done.stdout, done.stderr


def test_report_size_and_first_view_at_llava_geometry_smoke(browser, tmp_path):
    """A smoke-sized run at LLaVA-1.5 geometry (576 tokens, 32 layers, 32 heads): the file
    holds the maps at one byte a value (base64) plus small images, and opens with no error;
    tests/bench_report.py measures the full 200 samples."""
    samples, layers, heads = 8, 32, 32
    run = synthetic_run(tmp_path / "run", samples, layers, heads=heads)
    started = time.perf_counter()
    path = write_report([run], tmp_path / "bench.html")
    build = time.perf_counter() - started
    values = samples * 2 * layers * 576 * (1 + heads)  # maps + per-head maps, one byte each
    size = path.stat().st_size
    assert values < size < values * 4 / 3 + 1.5e6  # base64 of the bytes, + images and summary
    opened = Opened(browser, path)
    first = opened.first_view_ms()
    tab(opened, "samples")
    opened.page.wait_for_function("document.querySelector('canvas.overlay').width > 1")
    print(f"\nreport of {samples} samples x {layers} layers x 576 tokens x {heads} heads: "
          f"{size / 2**20:.1f} MB, built in {build:.1f} s, first view at {first:.0f} ms")
    opened.close()


def test_an_evaluate_run_shows_each_methods_reply_and_score(browser, tmp_path):
    from analyses.evaluate.__main__ import main
    from probes.cli import run_cli

    out = tmp_path / "evaluate"
    assert run_cli(main, ["--limit", "3", "--bootstrap", "20", "--out", str(out)]) == 0
    run = RunResult.load(out)
    opened = Opened(browser, write_report([out], tmp_path / "evaluate.html"))
    tab(opened, "samples")
    rows = opened.page.eval_on_selector_all(
        "#sample-detail table.verdicts tr", "rs => rs.slice(1).map(r => "
        "[...r.children].map(c => c.textContent))")
    methods = run.summary["method_names"]
    assert [r[0] for r in rows] == methods
    assert [r[1] for r in rows] == run.arrays["replies"][0].tolist()
    assert [float(r[2]) for r in rows] == run.arrays["scores"][0].tolist()
    shot(opened, "evaluate-samples")
    opened.close()


# ---------- maps on each token's pixel box ----------

SIZES = [(96, 64), (64, 128)]  # a landscape and a portrait image: LLaVA-1.5 centre-crops both


@pytest.fixture(scope="module")
def placed_runs(tmp_path_factory):
    """An attention-evolution run on two white non-square images, on each family's tiny model."""
    from PIL import Image

    from analyses.attention_evolution.__main__ import main
    from probes.cli import run_cli

    folder = tmp_path_factory.mktemp("placed")
    rows = []
    for k, size in enumerate(SIZES):
        Image.new("RGB", size, "white").save(folder / f"white{k}.png")
        rows.append({"image": f"white{k}.png", "question": "what is it?", "answer": "white"})
    (folder / "white.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    runs = {}
    # LLaVA-1.5 crops both to one grid; the others' grids differ by size: the first image only
    for model, limit in (("tiny-llava", 2), ("tiny-random-llava-next", 1),
                         ("tiny-random-qwen2.5-vl", 1)):
        out = folder / model
        assert run_cli(main, ["--model", model, "--data", str(folder / "white.jsonl"),
                              "--limit", str(limit), "--bootstrap", "20", "--out", str(out)]) == 0
        runs[model] = out
    return runs


def opaque_overlay(opened: Opened) -> np.ndarray:
    """The sample's overlay canvas at opacity 1, as uint8 [H, W, 4]."""
    page = opened.page
    tab(opened, "samples")
    page.wait_for_selector("[data-placement=exact]")
    page.fill("[data-control=opacity]", "100")
    page.dispatch_event("[data-control=opacity]", "input")
    width, height, data = page.evaluate(
        "(() => { const c = document.querySelector('canvas.overlay'); "
        "return [c.width, c.height, Array.from(c.getContext('2d').getImageData(0, 0, c.width, "
        "c.height).data)]; })()")
    return np.array(data, dtype=np.uint8).reshape(height, width, 4)


def shown_boxes(opened: Opened, sample: int) -> np.ndarray:
    """The page's boxes of ``sample`` in pixels of the embedded image, NaN where none."""
    flat = opened.page.evaluate("([i]) => fusionReport.boxes(0, i)", [sample])
    return np.array([np.nan if v is None else v for v in flat]).reshape(-1, 4)


def test_llava_maps_fall_inside_the_centre_crop(browser, placed_runs, tmp_path):
    run = placed_runs["tiny-llava"]
    cells = RunResult.load(run).arrays["cells"]
    opened = Opened(browser, write_report([run], tmp_path / "llava.html"))
    # the 64 px shortest-edge resize and 64 px centre crop of the tiny CLIP processor, 8 px
    # patches: the crop's origin is (16, 0) in the 96x64 image and (0, 32) in the 64x128 one
    for sample, (dx, dy) in enumerate([(16, 0), (0, 32)]):
        expected = np.array([[dx + 8 * c, dy + 8 * r, dx + 8 * c + 8, dy + 8 * r + 8]
                             for _, r, c in cells], dtype=float)
        np.testing.assert_array_equal(shown_boxes(opened, sample), expected)
    pixels = opaque_overlay(opened)  # sample 0: 96x64 drawn on a 300x200 canvas
    assert pixels.shape[:2] == (200, 300)
    coloured = (pixels[..., :3] < 235).any(-1)  # the image is white; the colour map never is
    columns = np.flatnonzero(coloured.any(0))
    # the crop x in [16, 80) of 96 px: canvas columns [50, 250) (x 3.125), edges as raster's
    assert columns.min() == 50 and columns.max() == 249
    assert coloured[:, 50:250].all() and not coloured[:, :50].any() and not coloured[:, 250:].any()
    shot(opened, "placed-llava-crop")
    opened.close()


@pytest.mark.parametrize("model", ["tiny-random-llava-next", "tiny-random-qwen2.5-vl"])
def test_next_and_qwen_maps_are_each_tokens_value_on_its_box(browser, placed_runs, tmp_path,
                                                             model):
    from PIL import Image

    from figures.overlay import raster
    from probes.inputs import build_inputs, token_boxes
    from probes.models.loading import load_model

    run = placed_runs[model]
    cells = RunResult.load(run).arrays["cells"]
    opened = Opened(browser, write_report([run], tmp_path / f"{model}.html"))
    # the boxes: the loaded model's inputs' token boxes of each cell, in the 96x64 image
    inputs = build_inputs(load_model(model, device="cpu"), Image.new("RGB", SIZES[0], "white"),
                          "what is it?")
    where = {tuple(c): k for k, c in enumerate(inputs.images[0].layout.token_cells.tolist())}
    truth = token_boxes(inputs)[[where[tuple(c)] for c in cells.tolist()]]
    truth = np.clip(truth, 0, [96, 64, 96, 64])
    boxes = shown_boxes(opened, 0)
    assert np.abs(boxes - truth).max() <= 1 / 16  # stored in 1/8 pixels
    pixels = opaque_overlay(opened)
    height, width = pixels.shape[:2]
    values = np.array(opened.page.evaluate(
        "() => fusionReport.values(0, 'attention on the image (heads averaged)', 0, 0)"))
    scale = np.array([width / 96, height / 64] * 2)
    painted = raster(values, boxes * scale, (width, height))
    covered = np.isfinite(painted)
    assert covered.mean() > 0.9
    low, high = values.min(), values.max()
    rng = np.random.default_rng(0)
    ys, xs = np.nonzero(covered)
    pick = rng.choice(len(ys), 300, replace=False)
    colours = np.array(opened.page.evaluate(
        "ts => ts.map(t => fusionReport.colormap(t, false))",
        ((painted[ys[pick], xs[pick]] - low) / (high - low)).tolist()))
    assert np.abs(pixels[ys[pick], xs[pick], :3].astype(int) - colours).max() <= 1
    assert (pixels[~covered][:, :3] >= 235).all()  # no box there: the white image
    if model == "tiny-random-llava-next":  # base grid and tiles overlap: pixels show a mean
        tiles = cells[:, 0] > 0
        assert tiles.any() and (~tiles).any()
        base = np.isfinite(raster(values[~tiles], boxes[~tiles] * scale, (width, height)))
        assert (base & np.isfinite(raster(values[tiles], boxes[tiles] * scale,
                                          (width, height)))).mean() > 0.5
    shot(opened, f"placed-{model}")
    opened.close()


def test_a_logit_lens_run_shows_its_curves_and_the_tokens_naming_the_answer(browser, tmp_path):
    from analyses.logit_lens.__main__ import main
    from probes.cli import run_cli

    out = tmp_path / "logit_lens"
    assert run_cli(main, ["--limit", "3", "--bootstrap", "20", "--out", str(out)]) == 0
    run = RunResult.load(out)
    arrays = run.arrays
    opened = Opened(browser, write_report([out], tmp_path / "logit_lens.html"))
    page = opened.page
    means = page.eval_on_selector_all("#view-overview circle.pt", "cs => cs.map(c => +c.dataset.mean)")
    rows = [r["mean"] for r in run.summary["per_layer"] if r["mean"] == r["mean"]]
    assert sorted(means) == sorted(rows)
    titles = page.eval_on_selector_all("#view-overview .chart", "cs => cs.map(c => c.dataset.title)")
    assert {"answer_prob", "answer_rank", "answer_top1", "image_names_answer"} <= set(titles)
    tab(opened, "samples")
    shown = page.eval_on_selector_all(
        "#sample-detail .chart", "cs => cs.map(c => [...c.querySelectorAll('circle.pt')]"
        ".map(p => +p.dataset.mean))")
    np.testing.assert_allclose(shown[0], arrays["answer_prob"][0], rtol=1e-4)
    assert shown[1] == arrays["answer_rank"][0].tolist()
    verdict = page.inner_text("#sample-detail table.verdicts")
    assert ("correct" if arrays["correct"][0] else "wrong") in verdict
    values = page.inner_text("#sample-detail dl.kv")
    assert f"first top-1 layer\n{arrays['first_top1'][0]}" in values
    # the map of sample 0 at each layer: 1 where the image token's top token is the answer
    start, stop = arrays["image_offsets"][:2]
    names = arrays["image_top1"][start:stop].T == arrays["answer_token"][0]  # [layer, token]
    name = "image tokens whose top token is the answer (names the answer)"
    for layer in range(names.shape[0]):
        decoded = page.evaluate("([i, m, n]) => fusionReport.values(0, n, i, m)", [0, layer, name])
        np.testing.assert_array_equal(np.array(decoded), names[layer].astype(float))
    page.wait_for_selector("[data-placement=exact]")
    counts = names.sum(1)
    low, high = int(np.argmin(counts)), int(np.argmax(counts))
    assert counts[low] < counts[high]  # the answer spreads over the image with depth
    pixels = "document.querySelector('canvas.overlay').toDataURL()"
    drawn = {}
    for layer in (low, high):
        page.fill("[data-control=layer]", str(layer))
        page.dispatch_event("[data-control=layer]", "input")
        drawn[layer] = page.evaluate(pixels)
    assert drawn[low] != drawn[high]
    shot(opened, "logit_lens-samples")
    opened.close()


def test_a_sinks_run_groups_its_curves_and_browses_each_samples(browser, tmp_path):
    from analyses.sinks.__main__ import main
    from analyses.sinks.measure import GROUPS, RATIO_GROUPS
    from probes.cli import run_cli

    out = tmp_path / "sinks"
    assert run_cli(main, ["--limit", "3", "--bootstrap", "20", "--out", str(out)]) == 0
    run = RunResult.load(out)
    arrays = run.arrays
    opened = Opened(browser, write_report([out], tmp_path / "sinks.html"))
    page = opened.page
    assert not page.query_selector_all("div.missing")  # the sample browser reads sinks runs
    points = page.eval_on_selector_all(
        "#view-overview circle.pt", "cs => cs.map(c => [c.closest('.chart').dataset.title, "
        "c.dataset.line, +c.dataset.layer, +c.dataset.mean])")
    answer, question = "the answer row (last)", "the question's rows"
    truth = {}  # (panel, line) -> [layer] means over the samples, from the arrays by hand
    for k, group in enumerate(GROUPS):
        truth[(f"attention of {answer} on each key group", group)] = arrays["answer_share"][..., k]
        truth[(f"attention of {question}, largest head", group)] = \
            arrays["question_head_max"][..., k]
    for k, group in enumerate(RATIO_GROUPS):
        truth[("massive activations: max |h_d| / median |h_d| of the group's tokens", group)] = \
            arrays["top_ratio"][..., k]
    truth[("visual sink tokens", "the answer row's attention on them")] = \
        arrays["visual_attention"]
    drawn = {}
    for title, line, layer, mean in points:
        drawn.setdefault((title, line), {})[layer] = mean
    assert len({title for title, _, _, _ in points}) == 8  # not 23 panels of one line each
    for key, values in truth.items():
        np.testing.assert_allclose([drawn[key][layer] for layer in range(values.shape[1])],
                                   values.mean(0), rtol=1e-6, atol=1e-9, err_msg=str(key))
    found = page.inner_text("#view-overview table")
    assert all(line in found for line in run.summary["lines"])
    tab(opened, "samples")
    shown = page.eval_on_selector_all(
        "#sample-detail .chart", "cs => cs.map(c => [...c.querySelectorAll('circle.pt')]"
        ".map(p => [p.dataset.line, +p.dataset.layer, +p.dataset.mean]))")
    for chart, values, names in zip(shown, (arrays["answer_share"][0], arrays["question_share"][0],
                                             arrays["top_ratio"][0]), (GROUPS, GROUPS, RATIO_GROUPS)):
        by_point = {(line, layer): mean for line, layer, mean in chart}
        for k, name in enumerate(names):
            np.testing.assert_allclose([by_point[(name, layer)] for layer in range(len(values))],
                                       values[:, k], rtol=1e-4, atol=1e-6)
    assert len(shown) == 3
    values = page.inner_text("#sample-detail dl.kv")
    assert f"layers with visual sink tokens\n{int((arrays['visual_sinks'][0] > 0).sum())}" in values
    shot(opened, "sinks-samples")
    opened.close()


def test_token_importance_colours_the_prompts_tokens_by_importance(browser, tmp_path):
    from analyses.token_importance.__main__ import main
    from probes.cli import run_cli

    out = tmp_path / "token_importance"
    assert run_cli(main, ["--limit", "2", "--timed-samples", "0", "--bootstrap", "20", "--out",
                          str(out)]) == 0
    arrays = RunResult.load(out).arrays
    opened = Opened(browser, write_report([out], tmp_path / "ti.html"))
    page = opened.page
    tab(opened, "samples")
    for sample in (0, 1):
        page.click(f"#sample-list [data-sample] >> nth={sample}")
        tokens = page.eval_on_selector_all(
            "[data-prompt] .tok", "ts => ts.map(t => [t.textContent, +t.dataset.value, "
            "t.dataset.group, getComputedStyle(t).backgroundColor])")
        start, stop = arrays["prompt_offsets"][sample:sample + 2]
        texts = [t if t.strip() else "\u2423" for t in arrays["prompt_tokens"][start:stop]]
        assert [t[0] for t in tokens] == texts
        values = arrays["prompt_importance"][start:stop]
        np.testing.assert_allclose([t[1] for t in tokens], values, rtol=1e-4)
        groups = arrays["prompt_groups"][start:stop]
        question = groups == 1
        assert [t[2] == "question" for t in tokens] == question.tolist()
        # the colour: the value over the largest of the question's tokens, on the colour map
        top = values[question].max()
        expected = page.evaluate("ts => ts.map(t => fusionReport.colormap(t, false))",
                                 np.minimum(values / top, 1).tolist())
        assert [t[3] for t in tokens] == [f"rgb({r}, {g}, {b})" for r, g, b in expected]
        page.hover(f"[data-prompt] .tok >> nth={int(np.argmax(np.where(question, values, -1)))}")
        tip = page.inner_text("#tip")
        assert "(question): " in tip
        assert float(tip.split("(question): ")[1].split()[0]) == pytest.approx(top, rel=1e-3)
    shot(opened, "token_importance-samples-prompt")
    opened.close()


# ---------- the heads analysis: layer x head grids ----------

KEY_HEADS = ((1, 2), (4, 0))
HEAD_GRIDS = {  # the summary's per-head field and the arrays' per-sample values of each grid
    "drop of p(answer), % ({flow}); outlined: key heads": "drop",
    "direct logit attribution": "dla",
    "attention on the image from last": "image_share_last",
    "attention on the image from the question": "image_share_question",
}


def sample_grids(arrays, i: int) -> list[np.ndarray]:
    """Sample ``i``'s per-head grids in the page's order: drop, DLA, image share (last, question)."""
    return [-arrays["prob_change_pct"][i], arrays["dla_heads"][i], arrays["image_share"][i, 0],
            arrays["image_share"][i, 1]]


def shown_grids(page, scope: str, run: str | None = None) -> list[np.ndarray]:
    """The values of every grid under ``scope`` (of the run labelled ``run``, if given), each
    [rows, cols] with row 0 = layer 0, as the page holds them (NaN where none)."""
    found = page.eval_on_selector_all(
        f"{scope} .chart.grid", "(gs, run) => gs.filter(g => !run || g.dataset.run === run)"
        ".map(g => [...g.querySelectorAll('rect.cell')].map(c => [+c.dataset.row, "
        "+c.dataset.col, c.dataset.value]))", run)
    out = []
    for cells in found:
        values = np.full((max(c[0] for c in cells) + 1, max(c[1] for c in cells) + 1), np.nan)
        for r, c, v in cells:
            values[r, c] = float(v) if v != "" else np.nan
        out.append(values)
    return out


@pytest.fixture(scope="module")
def heads_run(tmp_path_factory):
    """A synthetic heads run of 10 samples, 6 layers x 4 heads, with two key heads."""
    return synthetic_heads_run(tmp_path_factory.mktemp("heads") / "heads", 10, 6, 4, KEY_HEADS)


def test_a_heads_run_shows_its_grids_top_heads_and_tables(browser, heads_run, tmp_path):
    summary = json.loads((heads_run / "summary.json").read_text())
    assert summary["key_heads"] == ["1.2", "4.0"]  # the analysis's rule found the planted ones
    rows = {(r["layer"], r["head"]): r for r in summary["heads"]}
    opened = Opened(browser, write_report([heads_run], tmp_path / "heads.html"))
    page = opened.page
    titles = page.eval_on_selector_all("#view-overview .chart.grid", "gs => gs.map(g => g.dataset.title)")
    assert titles == [t.format(flow=summary["flow"]) for t in HEAD_GRIDS]
    for shown, field in zip(shown_grids(page, "#view-overview"), HEAD_GRIDS.values()):
        truth = np.array([[rows[(layer, head)][field] for head in range(4)] for layer in range(6)])
        np.testing.assert_array_equal(shown, truth)  # exact: the page holds the summary's floats
    marks = page.eval_on_selector_all("#view-overview .chart.grid >> nth=0",
                                      "gs => [...gs[0].querySelectorAll('rect.mark')]"
                                      ".map(m => [+m.dataset.row, +m.dataset.col])")
    assert sorted(map(tuple, marks)) == sorted(KEY_HEADS)
    # the hover of a key head's cell: its drop, CI, control and verdict
    page.hover("#view-overview .chart.grid >> nth=0 >> rect.cell[data-row='4'][data-col='0']")
    tip = page.inner_text("#tip")
    row = rows[(4, 0)]
    assert tip.startswith("layer 4 · head 0\n") and "key head: yes" in tip
    value = float(tip.split("key heads: ")[1].split()[0])
    assert value == pytest.approx(row["drop"], rel=1e-3)
    assert float(tip.split("control: ")[1].split()[0]) == pytest.approx(row["control_drop"],
                                                                        rel=1e-3)
    # the top heads: bars with the summary's drops, the control as a dashed line
    bars = page.eval_on_selector_all("rect.bar", "bs => bs.map(b => [b.dataset.name, +b.dataset.value])")
    assert [b[0] for b in bars] == summary["top_heads"]
    names = {f"{r['layer']}.{r['head']}": r for r in summary["heads"]}
    assert [b[1] for b in bars] == [names[n]["drop"] for n in summary["top_heads"]]
    line = float(page.get_attribute("line.ref", "data-value"))
    assert line == names[summary["top_heads"][0]]["control_drop"]
    page.hover("rect.bar >> nth=0")
    tip = page.inner_text("#tip")
    top = names[summary["top_heads"][0]]
    assert tip.startswith(f"{summary['top_heads'][0]}: ") and "key head" in tip
    low, high = (float(x) for x in tip.split("[")[1].split("]")[0].split(", "))
    assert (low, high) == (pytest.approx(top["drop_ci_low"], rel=1e-3),
                           pytest.approx(top["drop_ci_high"], rel=1e-3))
    # the tables: the top heads by drop, |DLA| and image share, in the summary's order
    heads = page.eval_on_selector_all(
        "#view-overview table", "ts => ts.map(t => [...t.querySelectorAll('tr')].slice(1)"
        ".map(r => r.firstChild.textContent))")
    assert heads == [summary["top_heads"], summary["top_dla_heads"], summary["top_visual_heads"]]
    assert json.loads(page.inner_text("dd[data-key=key_heads]")) == summary["key_heads"]
    cells = page.eval_on_selector_all("#view-overview td", "ts => ts.length")
    assert cells < 400  # not the 24-row table of every head
    shot(opened, "heads-overview")
    opened.close()


def test_a_heads_run_shows_each_samples_grids(browser, heads_run, tmp_path):
    from analyses.heads.measure import control_change

    arrays = RunResult.load(heads_run).arrays
    opened = Opened(browser, write_report([heads_run], tmp_path / "heads.html"))
    page = opened.page
    tab(opened, "samples")
    control = -control_change(arrays["prob_change_pct"], arrays["control_heads"])
    for i in (0, 7):
        page.click(f"#sample-list [data-sample] >> nth={i}")
        shown = shown_grids(page, "#sample-detail")
        assert len(shown) == 4
        for grid, truth in zip(shown, sample_grids(arrays, i)):  # float32, as the page keeps them
            np.testing.assert_array_equal(grid, truth.astype(np.float32))
        values = page.inner_text("#sample-detail dl.kv")
        assert float(values.split("random-head control drop, %\n")[1].split()[0]) == \
            pytest.approx(control[i], rel=1e-3)  # shown to 4 significant digits
        marks = page.eval_on_selector_all("#sample-detail rect.mark",
                                          "ms => ms.map(m => [+m.dataset.row, +m.dataset.col])")
        assert sorted(map(tuple, marks)) == sorted(KEY_HEADS)  # the run's key heads
    page.hover("#sample-detail .chart.grid >> nth=1 >> rect.cell[data-row='2'][data-col='3']")
    tip = page.inner_text("#tip")
    assert tip.startswith("layer 2 · head 3\ndirect logit attribution: ")
    assert float(tip.split(": ")[1]) == pytest.approx(arrays["dla_heads"][7, 2, 3], rel=1e-3)
    shot(opened, "heads-samples")
    opened.close()


def test_heads_report_size_and_first_view_at_32_layers_x_32_heads_smoke(browser, tmp_path):
    """A smoke-sized heads run of a 32 x 32 model: each sample's four grids are float32 (base64)
    and the summary's grids a few hundred kB; tests/bench_report.py measures 200 samples."""
    samples, layers, heads = 8, 32, 32
    run = synthetic_heads_run(tmp_path / "run", samples, layers, heads)
    path = write_report([run], tmp_path / "heads.html")
    grids = samples * 4 * layers * heads * 4  # float32 bytes
    size = path.stat().st_size
    assert grids * 4 / 3 < size < grids * 4 / 3 + 1.5e6
    opened = Opened(browser, path)
    cells = "cs => cs.length"
    assert opened.page.eval_on_selector_all("#view-overview rect.cell", cells) == 4 * layers * heads
    first = opened.first_view_ms()
    tab(opened, "samples")
    assert opened.page.eval_on_selector_all("#sample-detail rect.cell", cells) == 4 * layers * heads
    print(f"\nheads report of {samples} samples x {layers} layers x {heads} heads: "
          f"{size / 2**20:.2f} MB, first view at {first:.0f} ms")
    opened.close()


# ---------- the patching analysis: group x layer and layer x head grids ----------

def grid_cells(page, scope: str) -> list[tuple[str, np.ndarray, list]]:
    """(title, values [rows, cols] as the page holds them, outlined [row, col]) of every grid
    under ``scope``."""
    titles = page.eval_on_selector_all(f"{scope} .chart.grid", "gs => gs.map(g => g.dataset.title)")
    marks = page.eval_on_selector_all(
        f"{scope} .chart.grid", "gs => gs.map(g => [...g.querySelectorAll('rect.mark')]"
        ".map(m => [+m.dataset.row, +m.dataset.col]))")
    return list(zip(titles, shown_grids(page, scope), marks))


@pytest.fixture(scope="module")
def patching_run(tmp_path_factory):
    """A real patching run on tiny-llava: 4 samples, image noise at 10 x the embeddings' std
    (one sample's answer survives it: skipped), the residual stream and every head patched."""
    from analyses.patching.__main__ import main
    from probes.cli import run_cli

    out = tmp_path_factory.mktemp("patching") / "patching"
    assert run_cli(main, ["--limit", "4", "--corrupt", "noise", "--noise-scale", "10",
                          "--sites", "residual,attn,head", "--bootstrap", "50", "--out",
                          str(out)]) == 0
    return out


def test_a_patching_run_shows_its_grids_restoring_layers_and_provenance(browser, patching_run,
                                                                         tmp_path):
    summary = json.loads((patching_run / "summary.json").read_text())
    sites, groups, layers = summary["sites"], summary["groups"], summary["num_layers"]
    assert sites == ["residual", "attn"] and summary["heads"]
    opened = Opened(browser, write_report([patching_run], tmp_path / "patching.html"))
    page = opened.page
    rows = {(r["site"], r["group"], r["layer"]): r for r in summary["per_layer"]}
    grids = grid_cells(page, "#view-overview")
    assert [g[0] for g in grids] == [f"{site}: share restored; outlined: restoring layers"
                                     for site in sites] + ["heads at last: share restored"]
    for site, (_, shown, marks) in zip(sites, grids):
        truth = np.array([[rows[(site, group, layer)]["mean"] for layer in range(layers)]
                          for group in groups])
        np.testing.assert_array_equal(shown, truth)  # exact: the page holds the summary's floats
        restoring = {(g, layer) for g, group in enumerate(groups)
                     for layer in summary["restoring_layers"][f"{site}:{group}"]}
        assert set(map(tuple, marks)) == restoring
    assert any(grid[2] for grid in grids)  # the noise run restores somewhere
    heads = {(r["layer"], r["head"]): r for r in summary["heads"]}
    count = 1 + max(h for _, h in heads)
    np.testing.assert_array_equal(grids[-1][1], np.array(
        [[heads[(layer, h)]["mean"] for h in range(count)] for layer in range(layers)]))
    # the hover of a cell: its group and layer, mean, CI and n
    row = rows[("residual", "last", layers - 1)]
    page.hover(f"#view-overview .chart.grid >> nth=0 >> rect.cell[data-row='{groups.index('last')}']"
               f"[data-col='{layers - 1}']")
    tip = page.inner_text("#tip")
    assert tip.startswith(f"group last · layer {layers - 1}\n")
    assert float(tip.split("restoring layers: ")[1].split()[0]) == pytest.approx(row["mean"],
                                                                                 rel=1e-3)
    for label, field in (("95% CI low", "ci_low"), ("95% CI high", "ci_high")):
        assert float(tip.split(f"{label}: ")[1].split()[0]) == pytest.approx(row[field], rel=1e-3)
    assert f"n: {row['n']}" in tip
    page.hover("#view-overview .chart.grid >> nth=2 >> rect.cell[data-row='3'][data-col='2']")
    tip = page.inner_text("#tip")
    assert tip.startswith("layer 3 · head 2\n") and f"n: {heads[(3, 2)]['n']}" in tip
    # the curves: one panel per site, one line per group, the summary's means
    points = page.eval_on_selector_all(
        "#view-overview circle.pt", "cs => cs.map(c => [c.closest('.chart').dataset.title, "
        "c.dataset.line, +c.dataset.layer, +c.dataset.mean])")
    assert sorted(points) == sorted(
        [f"{r['site']}: share of the logit difference restored (clean into corrupt)",
         r["group"], r["layer"], r["mean"]] for r in summary["per_layer"] if r["n"])
    # the findings: the restoring layers per site and group; the summary's table of every
    # head is not repeated (the grid's hovers hold it)
    table = page.eval_on_selector_all("#view-overview table >> nth=0", "ts => [...ts[0]."
                                      "querySelectorAll('tr')].slice(1).map(r => [...r.cells]"
                                      ".map(c => c.textContent))")
    assert table == [[series, ", ".join(map(str, found)) or "none"]
                     for series, found in summary["restoring_layers"].items()]
    assert page.inner_text("#view-overview dd[data-key=n_used]") == str(summary["n_used"])
    assert page.eval_on_selector_all("#view-overview td", "ts => ts.length") < 60
    shot(opened, "patching-overview")
    tab(opened, "provenance")
    text = page.inner_text("#view-provenance")
    assert "noise on the image embeddings, 10.0 x their std" in text
    skipped = ", ".join(f"{n} {r}" for r, n in summary["skipped_by_reason"].items())
    assert f"skipped\n{skipped}" in text and f"samples used\n{summary['n_used']}" in text
    shot(opened, "patching-provenance")
    opened.close()


def test_a_patching_run_shows_each_samples_grids_answers_and_skip_reason(browser, patching_run,
                                                                          tmp_path):
    run = RunResult.load(patching_run)
    arrays, summary = run.arrays, run.summary
    opened = Opened(browser, write_report([patching_run], tmp_path / "patching.html"))
    page = opened.page
    tab(opened, "samples")
    used = np.flatnonzero(arrays["skipped"] == "")
    assert 0 < used.size < 4
    for i in range(4):
        page.click(f"#sample-list [data-sample] >> nth={i}")
        values = page.inner_text("#sample-detail dl.kv")
        clean = f"{str(arrays['clean_text'][i])!r} (token {arrays['clean_token'][i]})"
        assert f"clean answer\n{clean}" in values
        grids = grid_cells(page, "#sample-detail")
        if arrays["skipped"][i]:
            assert "skipped\nunchanged: the corruption leaves the answer token as it is" in values
            assert not grids and not page.query_selector("#sample-detail circle.pt")
            continue
        corrupt = f"{str(arrays['corrupt_text'][i])!r} (token {arrays['corrupt_token'][i]})"
        assert f"corrupt answer\n{corrupt}" in values and "skipped\nno (patched)" in values
        for label, name in (("clean", "ld_clean"), ("corrupt", "ld_corrupt")):
            shown = float(values.split(f"logit difference, {label}\n")[1].split()[0])
            assert shown == pytest.approx(arrays[name][i], rel=1e-3)  # 4 significant digits
        assert len(grids) == 3
        for s, (_, shown, marks) in enumerate(grids[:2]):  # float32, as the page keeps them
            np.testing.assert_array_equal(shown, arrays["effect"][i, s].T.astype(np.float32))
            site = summary["sites"][s]
            assert {tuple(m) for m in marks} == {
                (g, layer) for g, group in enumerate(summary["groups"])
                for layer in summary["restoring_layers"][f"{site}:{group}"]}
        np.testing.assert_array_equal(grids[2][1], arrays["head_effect"][i].astype(np.float32))
        curve = page.eval_on_selector_all(
            "#sample-detail .chart:not(.grid) >> nth=0", "cs => [...cs[0].querySelectorAll("
            "'circle.pt')].map(c => [c.dataset.line, +c.dataset.layer, +c.dataset.mean])")
        truth = [[g, layer, arrays["effect"][i, 0, layer, k]] for k, g in
                 enumerate(summary["groups"]) for layer in range(summary["num_layers"])]
        assert [c[:2] for c in curve] == [t[:2] for t in truth]
        np.testing.assert_allclose([c[2] for c in curve], [t[2] for t in truth], rtol=1e-4,
                                   atol=1e-9)
    page.click(f"#sample-list [data-sample] >> nth={int(used[0])}")
    page.hover("#sample-detail .chart.grid >> nth=2 >> rect.cell[data-row='1'][data-col='3']")
    tip = page.inner_text("#tip")
    assert tip.startswith("layer 1 · head 3\nheads at last: share restored: ")
    assert float(tip.split(": ")[-1]) == pytest.approx(arrays["head_effect"][used[0], 1, 3],
                                                       rel=1e-3)
    shot(opened, "patching-samples")
    opened.close()
    # a run saved before the answers' text: token ids and a note
    older = tmp_path / "older"
    shutil.copytree(patching_run, older)
    np.savez(older / "arrays.npz", **{k: v for k, v in arrays.items()
                                       if k not in ("clean_text", "corrupt_text")})
    opened = Opened(browser, write_report([older], tmp_path / "older.html"))
    tab(opened, "samples")
    assert "predates its answers' text" in opened.page.inner_text("#view-samples")
    assert f"clean answer\ntoken {arrays['clean_token'][0]}" in opened.page.inner_text(
        "#sample-detail dl.kv")
    opened.close()


def test_patching_report_size_and_first_view_at_32_layers_x_32_heads_smoke(browser, tmp_path):
    """A smoke-sized patching run of a 32 x 32 model, three sites: each used sample's grids are
    float32 (base64); tests/bench_report.py measures 200 samples."""
    samples, layers, heads = 10, 32, 32
    run = synthetic_patching_run(tmp_path / "run", samples, layers, heads)
    path = write_report([run], tmp_path / "patching.html")
    grids = (samples - 1) * (3 * 3 * layers + layers * heads) * 4  # float32 bytes, 1 skipped
    size = path.stat().st_size
    assert grids * 4 / 3 < size < grids * 4 / 3 + 1.5e6
    opened = Opened(browser, path)
    cells = "cs => cs.length"
    assert opened.page.eval_on_selector_all("#view-overview rect.cell", cells) == \
        3 * 3 * layers + layers * heads
    first = opened.first_view_ms()
    tab(opened, "samples")
    assert opened.page.eval_on_selector_all("#sample-detail rect.cell", cells) == \
        3 * 3 * layers + layers * heads
    print(f"\npatching report of {samples} samples x {layers} layers x {heads} heads: "
          f"{size / 2**20:.2f} MB, first view at {first:.0f} ms")
    opened.close()


# ---------- a run and its shards; make demo's last step ----------

def test_a_run_and_its_shards_open_side_by_side_with_the_merged_runs_numbers(browser, tmp_path):
    from analyses.heads.__main__ import main
    from analyses.merge import main as merge
    from probes.cli import run_cli

    options = ["--limit", "4", "--all-samples", "--bootstrap", "50", "--controls", "2"]
    for name, shard in (("whole", "0/1"), ("shard0", "0/2"), ("shard1", "1/2")):
        assert run_cli(main, [*options, "--shard", shard, "--out", str(tmp_path / name)]) == 0
    assert run_cli(merge, [str(tmp_path / "shard0"), str(tmp_path / "shard1"), "--out",
                           str(tmp_path / "merged")]) == 0
    labels = ["whole", "merged", "shard0", "shard1"]
    whole = RunResult.load(tmp_path / "whole")
    rows = {(r["layer"], r["head"]): r for r in whole.summary["heads"]}
    layers, heads = whole.arrays["prob_change_pct"].shape[1:]
    opened = Opened(browser, write_report([tmp_path / n for n in labels], tmp_path / "r.html"))
    page = opened.page
    assert page.eval_on_selector_all(".card[data-run]", "cs => cs.map(c => c.dataset.run)") == labels
    grids = {label: shown_grids(page, "#view-overview", label) for label in labels}
    for field, shown in zip(HEAD_GRIDS.values(), grids["whole"]):
        truth = np.array([[rows[(layer, head)][field] for head in range(heads)]
                          for layer in range(layers)])
        np.testing.assert_array_equal(shown, truth)
    for a, b in zip(grids["merged"], grids["whole"], strict=True):
        np.testing.assert_array_equal(a, b)  # the merged run shows the whole run's numbers
    assert not np.array_equal(grids["shard0"][0], grids["whole"][0])  # a shard's own
    bars = {label: page.eval_on_selector_all(
        f".chart.bars[data-run={label}] rect.bar", "bs => bs.map(b => [b.dataset.name, "
        "+b.dataset.value])") for label in labels}
    assert bars["merged"] == bars["whole"] and len(bars["whole"]) == 10
    shot(opened, "heads-shards-overview")
    # the samples: sample 3 is in the whole run, the merged run and shard 1 (strided shards)
    tab(opened, "samples")
    page.click("#sample-list [data-sample] >> nth=3")
    cards = page.eval_on_selector_all("#sample-detail > .card", "cs => cs.map(c => c.textContent)")
    assert "shard0: sample not in this run" in cards[2]
    per_run = [shown_grids(page, "#sample-detail", label) for label in ("whole", "merged",
                                                                        "shard1")]
    truth = sample_grids(whole.arrays, 3)
    for shown in per_run:
        for grid, expected in zip(shown, truth, strict=True):
            np.testing.assert_array_equal(grid, expected.astype(np.float32))
    shot(opened, "heads-shards-samples")
    opened.close()


def test_make_demos_last_step_writes_the_report_and_prints_its_path(browser, tmp_path):
    """The demo target's last command, run as written on a small run of the demo's analysis (the
    golden layer masking run in runs/demo of a fresh folder) instead of its 100 samples."""
    makefile = (ROOT / "Makefile").read_text()
    recipe = [line.strip() for line in makefile.split("\ndemo:")[1].split("\n\n")[0]
              .splitlines()[1:] if line.startswith("\t")]
    first, last = recipe[0].split(), recipe[-1]
    assert first[:3] == ["$(PY)", "-m", "analyses.layer_masking"]
    assert first[first.index("--out") + 1] == "runs/demo"  # the report reads what the demo ran
    assert last == "$(PY) -m figures.report runs/demo --out runs/demo/report.html"
    shutil.copytree(GOLDEN / "layer_masking", tmp_path / "runs" / "demo")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(last.replace("$(PY)", sys.executable), shell=True, cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = tmp_path / "runs" / "demo" / "report.html"
    assert report.is_file()
    assert done.stdout.startswith("report in runs/demo/report.html (")
    opened = Opened(browser, report)
    assert opened.page.eval_on_selector_all("circle.pt", "cs => cs.length") > 0
    opened.close()
