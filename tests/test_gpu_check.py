"""``make gpu-check`` on the CPU: its refusal without CUDA, its 7B builds on the meta device, its
references against the test suite's own, and its checks and table code on the tiny random models
in float32 (the same functions the GPU run calls with a 7B model in bfloat16)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from bench_layer_masking import naive_sweep
from gpu_check import (
    BFLOAT16,
    FLOAT32,
    REAL,
    Check,
    Context,
    Meter,
    Shapes,
    bench_sample,
    bench_table,
    build_inputs,
    build_real,
    cli,
    format_table,
    merge_rows,
    naive_layer_sweep,
    no_cache_logits,
    run_checks,
)
from PIL import Image
from test_run import _reference_generate

from probes import attention
from probes.masking import Knockout, parse_flows
from probes.models.loading import load_model

TINY = {"tiny-random-llava": "llava", "tiny-random-llava-next": "llava_next",
        "tiny-random-qwen2.5-vl": "qwen2_5_vl"}
# test_run's input: its greedy continuations never emit the image placeholder token
IMAGE, QUESTION = Image.new("RGB", (90, 60), (200, 30, 30)), "what color is the shape ?"
ROW_KEYS = {"name", "baseline", "ours", "unit", "ratio", "shape"}


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


def test_without_cuda_it_is_one_sentence_and_exit_2(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli([]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == ("error: make gpu-check needs a CUDA GPU; this machine has none "
                            "(torch.cuda.is_available() is False).\n")


@pytest.mark.parametrize(("family", "layers", "billions", "tokens"),
                         [("llava", 32, 7.06, 615), ("llava_next", 32, 7.57, 2379),
                          ("qwen2_5_vl", 28, 8.29, 442)])
def test_real_7b_builds_on_the_meta_device_with_real_token_counts(family, layers, billions, tokens):
    loaded = build_real(family, "meta")
    assert loaded.device.type == "meta" and loaded.dtype == torch.bfloat16
    assert loaded.adapter.num_layers == layers
    parameters = sum(p.numel() for p in loaded.model.parameters()) / 1e9
    assert parameters == pytest.approx(billions, abs=0.01)
    shapes = REAL[family].shapes
    inputs = loaded.adapter.build_inputs([Image.new("RGB", shapes.check)], ["what shape ?"])
    image_tokens = {"llava": 576, "llava_next": 2340, "qwen2_5_vl": 391}[family]
    assert len(inputs.images[0].positions) == image_tokens
    assert loaded.model.config.image_token_id == loaded.processor.tokenizer.convert_tokens_to_ids(
        "<|image_pad|>" if family == "qwen2_5_vl" else "<image>")
    # the check's own question: the token count the GPU run uses
    assert build_inputs(loaded, Image.new("RGB", shapes.check)).input_ids.shape[1] == tokens


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
                               atol=0, rtol=0)


def test_naive_layer_sweep_equals_the_benchmarks():
    loaded = load_model("tiny-random-llava")
    sample = bench_sample(IMAGE, QUESTION)
    np.testing.assert_allclose(naive_layer_sweep(loaded, sample), naive_sweep(loaded, sample, 0, 0),
                               rtol=0, atol=0)


def test_checks_pass_in_float32_and_the_table_has_finite_positive_rows(tiny, tmp_path):
    family = TINY[tiny.source.name]
    checks = run_checks(tiny, IMAGE, FLOAT32, steps=3, layer_masking=family == "llava",
                        question=QUESTION)
    assert [c.name.split()[0] for c in checks] == ["recording", "executor", "masked"] + (
        ["layer"] if family == "llava" else [])
    for check in checks:
        assert check.passed, check.line()
    executor = checks[1]
    assert executor.effect > 1e3 * executor.tolerance  # the all-layer knockouts move the logits
    meter = Meter(torch.device("cpu"), repeats=1)
    context = Context(f"tiny {family}", "CPU, float32")
    shapes = Shapes(check=(90, 60), bench=(64, 64), record=(90, 60), steps=2)
    rows = bench_table(tiny, meter, shapes, context, layer_masking=family == "llava")
    assert len(rows) == 8 if family == "llava" else 6
    for row in rows:
        assert set(row) == ROW_KEYS
        for key in ("baseline", "ours", "ratio"):
            assert math.isfinite(row[key]) and row[key] > 0, (row["name"], key)
        assert row["shape"].startswith(f"tiny {family}: ") and row["shape"].count("CPU, float32")
    units = [row["unit"] for row in rows]
    assert units[:6] == ["s", "MB"] * 3
    # the eager baseline holds every layer's full map: more memory than the recorder
    assert rows[3]["baseline"] > rows[3]["ours"]
    if family == "llava":
        assert units[6:] == ["samples/s", "MB"]
        assert rows[6]["ratio"] == pytest.approx(rows[6]["ours"] / rows[6]["baseline"])
    out = tmp_path / "bench-results.json"
    out.write_text(json.dumps([{**rows[0], "baseline": -1.0}, {**rows[0], "name": "other"}]))
    merge_rows(out, rows)
    merged = json.loads(out.read_text())
    assert [r["name"] for r in merged] == ["other"] + [r["name"] for r in rows]
    assert format_table(rows).count("\n") == len(rows) + 1


def test_a_check_fails_beyond_its_tolerance_or_when_it_sees_nothing():
    assert Check("x", 0.01, BFLOAT16.logits, "").passed
    assert not Check("x", 0.06, BFLOAT16.logits, "").passed
    assert not Check("x", float("nan"), BFLOAT16.logits, "").passed
    assert not Check("x", 0.0, BFLOAT16.logits, "", effect=0.01).passed
    assert "FAIL" in Check("x", 0.0, BFLOAT16.logits, "", effect=0.01).line()
