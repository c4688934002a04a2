"""Every analysis CLI reads benchmarks and users' own files (``--data NAME:PATH``, a file),
asks each sample as the model's family is asked (or as ``--prompt`` says), records the
template and Qwen2.5-VL's pixel budget in ``summary.json``, and refuses bad input in one
sentence with exit code 2."""

from __future__ import annotations

import importlib
import json

import pytest
from benchmark_fixtures import build_own_jsonl, build_pope, hub_cache, pope_rows

from analyses.data import load_dataset
from analyses.data.prompts import render, template_for
from analyses.results import RunResult
from probes.cli import run_cli


def cli(name: str):
    return importlib.import_module(f"analyses.{name}.__main__").main


def summary(out) -> dict:
    return json.loads((out / "summary.json").read_text())


def last_error(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines and lines[-1].startswith("error: ")
    return lines[-1]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache(tmp_path)))
    monkeypatch.delenv("HF_HOME", raising=False)
    hub_cache(tmp_path).mkdir(parents=True, exist_ok=True)
    return tmp_path


def test_layer_masking_on_pope_from_a_folder_asks_the_pope_prompt(cache, tmp_path):
    folder = build_pope(cache)
    out = tmp_path / "run"
    assert run_cli(cli("layer_masking"), ["--data", f"pope:{folder}", "--limit", "20",
                                          "--bootstrap", "50", "--out", str(out)]) == 0
    result = summary(out)
    template = template_for("pope", "llava")
    assert result["data"]["name"] == "pope" and result["data"]["size"] == len(pope_rows())
    assert result["data"]["prompt"] == template
    assert result["data"]["split"] == load_dataset(f"pope:{folder}").split  # the default split
    assert "Answer the question using a single word or phrase." in template
    # the run measured the samples it found correct under POPE's own rule: some, not none
    assert 0 < result["n_samples"] <= len(pope_rows())


def test_layer_masking_on_own_jsonl_with_object_flows(tmp_path):
    path = build_own_jsonl(tmp_path)
    out = tmp_path / "run"
    assert run_cli(cli("layer_masking"), ["--data", str(path), "--all-samples",
                                          "--flows", "object->last;background->last",
                                          "--bootstrap", "50", "--out", str(out)]) == 0
    result = summary(out)
    boxed = [s for s in load_dataset(str(path)) if s.has_region()]
    assert result["data"]["size"] == 4 and result["n_samples"] == len(boxed) >= 1
    assert [row["series"] for row in result["per_layer"]][:1] == ["object->last"]


@pytest.mark.parametrize("name,extra", [
    ("token_importance", ["--timed-samples", "0"]),
    ("attention_evolution", []),
    ("contrastive_attention", ["--early-layer", "1"]),
    ("attenuation", []),
])
def test_other_analyses_on_an_own_data_file(name, extra, tmp_path):
    path = build_own_jsonl(tmp_path)
    out = tmp_path / "run"
    assert run_cli(cli(name), ["--data", str(path), "--bootstrap", "50", *extra,
                               "--out", str(out)]) == 0, name
    result = summary(out)
    assert result["data"]["size"] == 4 and result["n_samples"] + len(result["failed"]) >= 1


def test_prompt_override_is_asked_and_recorded(tmp_path, monkeypatch):
    import analyses.token_importance.run as token_run

    path = build_own_jsonl(tmp_path)
    asked = []
    original = token_run.prepare

    def spy(loaded, image, question, *args, **kwargs):
        asked.append(question)
        return original(loaded, image, question, *args, **kwargs)

    monkeypatch.setattr(token_run, "prepare", spy)
    template = "Q: {question}\n{choices}\nShort answer:"
    out = tmp_path / "run"
    assert run_cli(cli("token_importance"), ["--data", str(path), "--limit", "3",
                                             "--prompt", template, "--timed-samples", "0",
                                             "--bootstrap", "50", "--out", str(out)]) == 0
    samples = load_dataset(str(path), limit=3)
    assert asked == [render(template, s.question, s.choices) for s in samples]
    assert summary(out)["data"]["prompt"] == template


def test_qwen_pixel_budget_is_used_and_recorded(tmp_path):
    path = build_own_jsonl(tmp_path)
    out = tmp_path / "run"
    assert run_cli(cli("token_importance"), [
        "--model", "tiny-random-qwen2.5-vl", "--data", str(path), "--limit", "2",
        "--min-pixels", str(28 * 28 * 4), "--max-pixels", str(28 * 28 * 9),
        "--timed-samples", "0", "--bootstrap", "50", "--out", str(out)]) == 0
    result = summary(out)
    assert result["model"]["pixels"] == {"min_pixels": 28 * 28 * 4, "max_pixels": 28 * 28 * 9}
    # the budget reached the image processor: between 4 and 9 merged 28-pixel cells per image
    assert result["n_samples"] == 2
    assert all(4 <= n <= 9 for n in RunResult.load(out).arrays["n_tokens"].tolist())


@pytest.mark.parametrize("arguments,expected", [
    (["--data", "no-such-benchmark"], "no-such-benchmark"),
    (["--data", "pope:/no/such/folder"], "/no/such/folder"),
    (["--data", "/no/such/mine.jsonl"], "mine.jsonl"),
    (["--prompt", "no placeholder"], "{question}"),
    (["--max-pixels", "50000"], "pixel budget"),
])
def test_bad_data_prompt_or_pixels_is_one_sentence(arguments, expected, tmp_path, capsys):
    code = run_cli(cli("layer_masking"), [*arguments, "--limit", "2",
                                          "--out", str(tmp_path / "run")])
    error = last_error(capsys)
    assert code == 2 and expected in error, error
    assert not (tmp_path / "run" / "summary.json").exists()


def test_shards_of_an_own_data_run_merge_into_the_whole_run(tmp_path):
    """merge reloads the data for the figures' example images from the recorded spec (a file
    here, not a registered name) and prompts it as the run did."""
    from analyses.merge import main as merge

    path = build_own_jsonl(tmp_path)
    common = ["--data", str(path), "--prompt", "Q: {question}", "--bootstrap", "50"]
    main = cli("attention_evolution")
    assert run_cli(main, [*common, "--out", str(tmp_path / "whole")]) == 0
    for shard in ("0/2", "1/2"):
        out = tmp_path / shard.replace("/", "of")
        assert run_cli(main, [*common, "--shard", shard, "--out", str(out)]) == 0
    assert run_cli(merge, [str(tmp_path / "0of2"), str(tmp_path / "1of2"),
                           "--out", str(tmp_path / "merged")]) == 0
    whole, merged = summary(tmp_path / "whole"), summary(tmp_path / "merged")
    assert merged["data"] == whole["data"] and whole["data"]["spec"] == str(path)
    assert merged["data"]["prompt"] == "Q: {question}"
    assert json.dumps(merged["per_layer"]) == json.dumps(whole["per_layer"])


def test_an_unreadable_image_is_recorded_skipped_and_counted(cache, tmp_path, capsys):
    """A benchmark row whose image no decoder reads fails that sample only: the run finishes,
    the sample is a `failed` row with the reason, the table counts it."""
    folder = build_pope(cache, corrupt=(1,))
    out = tmp_path / "run"
    assert run_cli(cli("evaluate"), ["--data", f"pope:{folder}", "--limit", "6", "--methods",
                                     "clean", "--out", str(out)]) == 0
    result = summary(out)
    [failed] = result["failed"]
    assert failed["index"] == 1 and failed["reason"].startswith("cannot read the image of sample")
    assert result["n_samples"] == result["data"]["size"] - 1
    assert "1 sample(s) failed and were skipped" in capsys.readouterr().out


def test_an_unreadable_image_of_a_sample_with_a_box_fails_that_sample_only(tmp_path):
    """The box check at load reads each boxed sample's image header: an image that cannot be
    read there is not a refusal of the whole file, it fails its own sample when measured."""
    path = build_own_jsonl(tmp_path)
    (path.parent / "images" / "c.png").write_bytes(b"not an image at all")  # the boxed sample
    out = tmp_path / "run"
    assert run_cli(cli("attenuation"), ["--data", str(path), "--bootstrap", "50",
                                        "--out", str(out)]) == 0
    result = summary(out)
    [failed] = result["failed"]
    assert failed["index"] == 3 and "boxed" in failed["reason"]
    assert failed["reason"].startswith("cannot read the image of sample")
    assert result["n_samples"] == 3
