"""``make gpu-check`` on the CPU: its refusals (no CUDA, a missing package), its 7B builds on the
meta device, its naive references against the library's and the suite's own, every check's
ability to fail at the bfloat16 tolerances (a knockout or a map one layer off), and whole runs
of ``python -m tests.gpu_check --device cpu --tiny``: the environment first, rows per family
and backend written as they finish, an injected out-of-memory error that costs one part or one
family while the run goes on, the budget, the timings and the tables."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from bench_layer_masking import naive_sweep
from gpu_check import checks
from gpu_check.bench import Meter
from gpu_check.checks import (
    BFLOAT16,
    FLOAT32,
    Check,
    DeviceMaskPlan,
    References,
    bench_sample,
    build_inputs,
    check_executor,
    check_generate,
    check_layer_masking,
    check_recording,
    executor_conditions,
    naive_layer_sweep,
    naive_logits,
    no_cache_logits,
)
from gpu_check.cli import cli
from gpu_check.models import REAL, build_real
from PIL import Image
from test_run import _reference_generate

import probes.run
from probes import attention
from probes.masking import EdgeKnockout, EdgeMaskPlan, Knockout, SetKnockout, parse_flows
from probes.models.loading import load_model
from probes.record import AttentionRecorder
from probes.run import run_knockouts, run_knockouts_naively
from probes.tokens import token_groups

ROOT = Path(__file__).resolve().parents[1]
TINY = {"tiny-random-llava": "llava", "tiny-random-llava-next": "llava_next",
        "tiny-random-qwen2.5-vl": "qwen2_5_vl", "tiny-random-qwen3-vl": "qwen3_vl",
        "tiny-random-qwen2-vl": "qwen2_vl",
        "tiny-random-llava-onevision": "llava_onevision", "tiny-random-mistral3": "mistral3"}
# test_run's input: its greedy continuations never emit the image placeholder token
IMAGE, QUESTION = Image.new("RGB", (90, 60), (200, 30, 30)), "what color is the shape ?"


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models gain nothing from a second thread, and lose much when the cores are busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=list(TINY))
def tiny(request):
    return load_model(request.param)


@pytest.fixture(scope="module")
def llava():
    return load_model("tiny-random-llava")


# --------------------------------------------------------------------------------- refusals
def test_without_cuda_it_is_one_sentence_and_exit_2(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli([]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == ("error: make gpu-check needs a CUDA GPU; this machine has none "
                            "(torch.cuda.is_available() is False).\n")
    assert cli(["--device", "cpu"]) == 2  # the 7B models are not for the CPU
    assert capsys.readouterr().err == ("error: the 7B models need a CUDA GPU; on the CPU run the "
                                       "tiny models (--device cpu --tiny).\n")


def test_a_missing_package_is_one_sentence_naming_it():
    """As on a machine whose Python lacks a dependency (here transformers, blocked)."""
    code = ("import runpy, sys; sys.modules['transformers'] = None; "
            "runpy.run_module('tests.gpu_check', run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert done.stderr == (f"error: the GPU check needs the Python package 'transformers', which "
                           f"{sys.executable} cannot import; install it there, or carry its wheel "
                           "to the device machine.\n")


@pytest.mark.parametrize(("family", "layers", "billions", "tokens"),
                         [("llava", 32, 7.06, 615), ("llava_next", 32, 7.57, 2379),
                          ("qwen2_5_vl", 28, 8.29, 442), ("internvl", 28, 7.94, 3370),
                          ("idefics3", 32, 8.46, 2270), ("smolvlm", 24, 2.25, 1126),
                          ("gemma3", 34, 4.30, 298), ("qwen3_vl", 36, 8.77, 342),
                          ("qwen2_vl", 28, 8.29, 442), ("llava_onevision", 28, 8.03, 2969),
                          ("mistral3", 20, 12.23, 445)])
def test_real_7b_builds_on_the_meta_device_with_real_token_counts(family, layers, billions, tokens):
    loaded = build_real(family, "meta")
    assert loaded.device.type == "meta" and loaded.dtype == torch.bfloat16
    assert loaded.adapter.num_layers == layers
    parameters = sum(p.numel() for p in loaded.model.parameters()) / 1e9
    assert parameters == pytest.approx(billions, abs=0.01)
    shapes = REAL[family].shapes
    inputs = loaded.adapter.build_inputs([Image.new("RGB", shapes.check)], ["what shape ?"])
    # InternVL: 13 views of 256 + <img>, </img>; Idefics3 / SmolVLM: 13 views of 169 / 81
    # + 31 tile tags and line breaks; Gemma 3: 256 soft tokens at 896 x 896; Mistral 3:
    # 17 rows of 23 + 17 breaks
    image_tokens = {"llava": 576, "llava_next": 2340, "qwen2_5_vl": 391, "internvl": 3330,
                    "idefics3": 2228, "smolvlm": 1084, "gemma3": 256, "qwen3_vl": 300,
                    "qwen2_vl": 391, "llava_onevision": 2929, "mistral3": 408}[family]
    assert len(inputs.images[0].positions) == image_tokens
    assert loaded.model.config.image_token_id == loaded.processor.tokenizer.convert_tokens_to_ids(
        {"qwen2_5_vl": "<|image_pad|>", "qwen3_vl": "<|image_pad|>", "qwen2_vl": "<|image_pad|>",
         "internvl": "<IMG_CONTEXT>", "gemma3": "<image_soft_token>",
         "mistral3": "[IMG]"}.get(family, "<image>"))
    # the check's own question: the token count the GPU run uses
    assert build_inputs(loaded, Image.new("RGB", shapes.check)).input_ids.shape[1] == tokens


# ----------------------------------------------------------------------- naive references
def test_device_masks_equal_the_libraries(llava):
    inputs = build_inputs(llava, IMAGE, QUESTION)
    groups = token_groups(llava.adapter, inputs)
    n = llava.adapter.num_layers
    rng = np.random.default_rng(0)
    queries = np.sort(rng.choice(np.arange(60, groups.length), 12))
    knockouts = [Knockout.window("image->question,last", 2, 3, n),
                 Knockout(parse_flows("image->question,last,generated; question->last"), (0, 5)),
                 EdgeKnockout(queries, rng.integers(0, 60, queries.size), (1, 4)),
                 SetKnockout(np.array([70, 71]), np.array([5, 9, 200]), (3,), generated=True)]
    for knockout in knockouts:
        edges = knockout.edges(groups, n)
        ours, theirs = DeviceMaskPlan(edges), EdgeMaskPlan([edges])
        for start, kv in [(0, groups.length), (50, groups.length), (groups.length, groups.length + 3)]:
            positions = torch.arange(start, kv)
            for layer in range(n):
                expected = theirs.blocked(layer, positions, kv)
                got = ours.blocked(layer, positions, kv)
                assert (got is None) == (expected is None)
                if expected is not None:
                    assert torch.equal(got, expected), (knockout, start, layer)


def test_naive_forwards_equal_the_libraries(llava):
    inputs = build_inputs(llava, IMAGE, QUESTION)
    knockouts = executor_conditions(llava.adapter.num_layers)
    ours = naive_logits(llava, inputs, knockouts)
    theirs = run_knockouts_naively(llava, inputs, knockouts[:-1])
    clean = llava.model(**inputs.batch).logits[0, -1].float()
    torch.testing.assert_close(ours, torch.cat([theirs, clean[None]]), rtol=0, atol=1e-6)


def test_no_cache_reference_equals_the_suites(tiny):
    inputs = build_inputs(tiny, IMAGE, QUESTION)
    knockout = Knockout(parse_flows("image->question,last,generated"),
                        tuple(range(tiny.adapter.num_layers)))
    eos = tiny.model.generation_config.eos_token_id
    tiny.model.generation_config.eos_token_id = -1
    attention.enable(tiny.model)  # the suite's loop attaches plans to an enabled model
    try:
        tokens, logits = _reference_generate(tiny, inputs, knockout, 3)
    finally:
        tiny.model.generation_config.eos_token_id = eos
    torch.testing.assert_close(no_cache_logits(tiny, inputs, knockout, tokens), logits,
                               rtol=0, atol=1e-6)


def test_naive_layer_sweep_equals_the_benchmarks(llava):
    """Equal to float32 rounding: ours applies the head to the last position only."""
    sample = bench_sample(IMAGE, QUESTION)
    np.testing.assert_allclose(naive_layer_sweep(llava, sample), naive_sweep(llava, sample, 0, 0),
                               rtol=0, atol=1e-4)


# ------------------------------------------------------------- each check is able to fail
def _shifted(knockout, n):
    """The fault: a knockout applied one layer later (the last layer wraps to the first)."""
    return dataclasses.replace(knockout, layers=tuple(sorted((i + 1) % n for i in knockout.layers)))


def test_every_check_passes_in_float32_and_fails_one_layer_off_at_bf16_tolerance(llava, monkeypatch):
    inputs = build_inputs(llava, IMAGE, QUESTION)
    n = llava.adapter.num_layers
    references = References(llava, inputs)
    sample = bench_sample(IMAGE, QUESTION)
    clean = [check_recording(llava, inputs, references, FLOAT32.attention),
             *check_executor(llava, inputs, references, FLOAT32.logits),
             check_generate(llava, inputs, FLOAT32.logits, steps=3),
             check_layer_masking(llava, sample, FLOAT32.logits)]
    bf16 = [BFLOAT16.attention] + [BFLOAT16.logits] * 4
    for check, tolerance in zip(clean, bf16, strict=True):
        assert check.passed, check.row()
        # what a one-layer fault would show is beyond even the bfloat16 tolerance (only 1.4x
        # for the tiny models' nearly uniform attention maps, 10x and more for the logits)
        for seen in (check.effect, check.shift):
            assert seen is None or seen > tolerance, check.row()

    def shifted_run(loaded, inputs, knockouts, *args, **kwargs):
        return run_knockouts(loaded, inputs, [_shifted(k, n) for k in knockouts], *args, **kwargs)

    class ShiftedRecorder(AttentionRecorder):
        def _store(self, layer, probabilities):  # maps[l] holds layer l + 1's map
            super()._store((layer - 1) % n, probabilities)

    real_generate = checks.masked_generate

    def late_generate(loaded, inputs, knockout, **kwargs):  # the knockout misses layer 0
        if knockout is not None:
            knockout = Knockout(knockout.flows, knockout.layers[1:])
        return real_generate(loaded, inputs, knockout, **kwargs)

    monkeypatch.setattr(checks, "run_knockouts", shifted_run)
    monkeypatch.setattr(probes.run, "run_knockouts", shifted_run)  # sweep_sample's
    monkeypatch.setattr(checks, "AttentionRecorder", ShiftedRecorder)
    monkeypatch.setattr(checks, "masked_generate", late_generate)
    faulty = [check_recording(llava, inputs, references, BFLOAT16.attention),
              *check_executor(llava, inputs, references, BFLOAT16.logits),
              check_generate(llava, inputs, BFLOAT16.logits, steps=3),
              check_layer_masking(llava, sample, BFLOAT16.logits)]
    for check in faulty:
        assert not check.passed and check.worst > check.tolerance, check.row()
        assert check.row()["status"] == "FAIL"


def test_a_check_fails_beyond_its_tolerance_or_when_it_sees_nothing():
    assert Check("x", 0.01, BFLOAT16.logits, "").passed
    assert Check("x", 0.01, BFLOAT16.logits, "").margin == pytest.approx(5)
    assert not Check("x", 0.06, BFLOAT16.logits, "").passed
    assert not Check("x", float("nan"), BFLOAT16.logits, "").passed
    assert not Check("x", 0.0, BFLOAT16.logits, "", effect=0.01).passed
    assert Check("x", 0.0, BFLOAT16.logits, "").margin == math.inf


def test_the_meter_warms_up_times_repeats_and_measures_memory_apart():
    calls = []

    def function():
        calls.append(1)
        return torch.ones(1000)

    measured = Meter(torch.device("cpu"), repeats=5).measure(function)
    assert len(calls) == 1 + 5 + 1  # warm-up, 5 timed runs, the memory run
    assert measured.runs == 5 and measured.seconds > 0 and measured.spread >= 0
    assert measured.peak_mb == pytest.approx(4000 / 2**20, rel=0.5)


# ----------------------------------------------------------------------------- whole runs
def _rows(folder: Path, family: str) -> list[dict]:
    return [json.loads(line) for line in (folder / f"{family}.jsonl").read_text().splitlines()]


def test_a_tiny_run_writes_every_row_and_an_injected_oom_costs_one_part(tmp_path, capsys):
    out = tmp_path / "out"
    code = cli(["--family", "llava", "--device", "cpu", "--tiny", "--out", str(out),
                "--repeats", "2", "--inject-oom", "llava/executor"])
    assert code == 1  # the injected OOM
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("environment: python ") and "torch " in printed[0]
    environment = json.loads((out / "environment.json").read_text())
    assert environment["torch"] == torch.__version__ and environment["device"].startswith("CPU")
    rows = _rows(out, "llava")
    assert len(printed) == 1 + len(rows) + 1  # environment, a line per row, the summary
    parts = [(row["backend"], row["part"], row["status"]) for row in rows]
    assert parts[0] == ("-", "build", "ok")
    assert ("efficient", "backend", "unavailable") in parts  # no efficient kernel on the CPU
    for backend in ("default", "math"):
        ran = [(part, status) for b, part, status in parts
               if b == backend and not part.startswith("bench")]
        assert ran == [("kernels", "ok"), ("recording", "ok"), ("executor", "OOM"),
                       ("generate", "ok"), ("layer-masking", "ok")]
    failure = next(row for row in rows if row["status"] == "OOM")
    assert failure["detail"] == "OutOfMemoryError: CUDA out of memory (injected by --inject-oom llava/executor)"
    kernels = {row["backend"]: row["kernels"] for row in rows if row["part"] == "kernels"}
    assert set(kernels["math"]["masked forward"]) == {"math"}
    assert "math" not in kernels["default"]["clean forward"]  # PyTorch's own (fused) choice
    for row in rows:
        if row["kind"] == "check":
            assert row["status"] == "ok" and row["worst"] <= row["tolerance"]
            assert row["margin"] == pytest.approx(row["tolerance"] / row["worst"])
    bench = [row for row in rows if row["kind"] == "bench"]
    assert [row["part"] for row in bench] == [p for p in ("bench-sweep", "bench-recording",
                                                          "bench-aif", "bench-layer-masking")
                                              for _ in range(2)]
    assert [row["unit"] for row in bench] == ["s", "MB"] * 3 + ["samples/s", "MB"]
    for row in bench:
        for key in ("baseline", "ours", "ratio"):
            assert math.isfinite(row[key]) and row[key] > 0, (row["name"], key)
        assert row["shape"].startswith("tiny llava: ") and "CPU" in row["shape"]
    assert bench[0]["runs"] == 2 and bench[0]["baseline_spread"] >= 0
    assert bench[3]["baseline"] > bench[3]["ours"]  # eager holds every layer's full map
    assert cli(["--table", str(out)]) == 0
    tables = capsys.readouterr().out
    assert "| llava | math | executor | OOM | OutOfMemoryError" in tables
    assert tables.count("\n| tiny llava: ") == len(bench)


def test_an_oom_while_building_costs_that_family_and_the_next_one_runs(tmp_path, capsys):
    out = tmp_path / "out"
    code = cli(["--family", "qwen2_5_vl", "--family", "llava_next", "--device", "cpu", "--tiny",
                "--out", str(out), "--no-bench", "--backend", "math", "--inject-oom", "qwen2_5_vl"])
    assert code == 1
    assert [(r["part"], r["status"]) for r in _rows(out, "qwen2_5_vl")] == [("build", "OOM")]
    ran = [(r["part"], r["status"]) for r in _rows(out, "llava_next")]
    assert ran[0] == ("build", "ok") and len(ran) == 6
    assert all(status == "ok" for _, status in ran)
    assert "[qwen2_5_vl - build] OOM OutOfMemoryError: CUDA out of memory (injected" in \
        capsys.readouterr().out
    assert cli(["--family", "llava", "--device", "cpu", "--tiny", "--out", str(out),
                "--budget", "0"]) == 1
    assert [(r["part"], r["status"]) for r in _rows(out, "llava")] == [("build", "skipped")]
