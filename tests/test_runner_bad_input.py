"""A bad sample fails only itself, at the runner (issue #26): an unreadable first image (read
by a warm-up), shards with no unit or only failed samples (finish empty, merge accepts them),
half-written records left by a killed node (measured again on ``--resume``; records fsynced
before the rename), a shard without its summary (merges), a too-long ``--out`` name, and the
sentence when nothing could be measured."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from test_runner import Toy, ToyDataset, toy_run

from analyses import results
from analyses.attention_evolution.__main__ import main as evolution_main
from analyses.evaluate.__main__ import main as evaluate_main
from analyses.merge import main as merge_main
from analyses.results import RunResult
from analyses.runner.store import PARTIAL, RecordStore, check_out
from analyses.token_importance.__main__ import main as token_importance_main
from probes.cli import run_cli
from probes.errors import UserError


@pytest.fixture(scope="module")
def own_data(tmp_path_factory) -> str:
    """Three easy-VQA questions as the user's own file; the first image is no image."""
    from analyses.data import load_dataset

    folder = tmp_path_factory.mktemp("own")
    rows = []
    for i, sample in enumerate(load_dataset("easy-vqa", "test", limit=3)):
        sample.image.save(folder / f"image{i}.png")
        rows.append({"image": f"image{i}.png", "question": sample.question,
                     "answer": sample.answer, "id": f"q{i}"})
    (folder / "image0.png").write_bytes(b"not an image")
    (folder / "data.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(folder / "data.jsonl")


def last_error(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    return lines[-1] if lines else ""


MODEL = ["--model", "tiny-llava", "--device", "cpu", "--bootstrap", "20"]


@pytest.mark.parametrize("main, extra", [
    (token_importance_main, ["--max-new-tokens", "2", "--ratios", "0.5", "--fixed-ratios",
                             "0.5", "--timed-samples", "2"]),
    (evaluate_main, ["--max-new-tokens", "2", "--methods", "clean"]),
])
def test_an_unreadable_first_image_fails_only_itself(main, extra, own_data, tmp_path):
    """The warm-ups (token importance's timing, evaluate's box check) read the first
    sample that reads, not sample 0."""
    out = tmp_path / "run"
    assert run_cli(main, [*MODEL, *extra, "--data", own_data, "--out", str(out)]) == 0
    summary = RunResult.load(out).summary
    assert [row["index"] for row in summary["failed"]] == [0]
    assert "cannot read the image" in summary["failed"][0]["reason"]
    assert summary["n_samples"] == 2


def test_shards_with_no_unit_or_only_failures_finish_empty_and_merge(own_data, tmp_path,
                                                                    capsys):
    """Four shards of three samples: shard 0 holds only the unreadable one, shard 3 none.
    Every shard exits 0; the merge equals the run in one piece, also when a shard kept its
    records but lost its summary."""
    whole = tmp_path / "whole"
    assert run_cli(evolution_main, [*MODEL, "--data", own_data, "--out", str(whole)]) == 0
    shards = [tmp_path / f"{i}of4" for i in range(4)]
    for i, out in enumerate(shards):
        capsys.readouterr()
        assert run_cli(evolution_main, [*MODEL, "--data", own_data, "--shard", f"{i}/4",
                                        "--out", str(out)]) == 0
        said = capsys.readouterr().out
        if i == 0:
            assert "every sample of data.jsonl/all in shard 0/4 failed" in said
        if i == 3:
            assert "shard 3/4 holds no sample: the data's 3 sample(s) make 3 unit(s)" in said
    assert RunResult.load(shards[3]).summary["n_samples"] == 0
    (shards[2] / "summary.json").unlink()  # a node stopped after keeping its records
    merged = tmp_path / "merged"
    assert run_cli(merge_main, [*map(str, shards), "--out", str(merged)]) == 0
    one, parts = RunResult.load(whole), RunResult.load(merged)
    assert parts.summary["n_samples"] == one.summary["n_samples"] == 2
    assert parts.summary["failed"] == one.summary["failed"]
    assert parts.arrays.keys() == one.arrays.keys()
    for name in one.arrays:
        if one.arrays[name].dtype.kind == "f":
            np.testing.assert_allclose(parts.arrays[name], one.arrays[name], rtol=1e-6,
                                       err_msg=name)


def test_evaluate_with_more_shards_than_batches(tmp_path, capsys):
    """Evaluate's unit is a batch of --batch-size samples: 3 samples, batch 8, 2 shards."""
    out = tmp_path / "1of2"
    argv = [*MODEL, "--data", "easy-vqa", "--limit", "3", "--methods", "clean",
            "--max-new-tokens", "2", "--shard", "1/2", "--out", str(out)]
    assert run_cli(evaluate_main, argv) == 0
    assert "shard 1/2 holds no sample" in capsys.readouterr().out
    assert json.loads((out / "records" / "key.json").read_text())["shard"] == [1, 2]


def _interrupted(out: Path, after: int) -> None:
    def stop(count):
        if count >= after:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        toy_run(Toy(), ToyDataset(8, broken=5), out=out, on_sample=stop)


def test_damaged_records_are_measured_again_on_resume(tmp_path):
    out = tmp_path / "run"
    _interrupted(out, after=3)
    partial = out / PARTIAL
    square = sorted((partial / "square").glob("*.npz"))
    assert len(square) == 7 and (partial / "square" / "0000005.failed.json").is_file()
    square[1].write_bytes(b"")  # empty: the rename reached the disk, the data did not
    square[3].write_bytes(square[3].read_bytes()[:40])  # cut short
    (partial / "square" / "0000005.failed.json").write_text('{"index": 5, "id"')
    analysis = Toy()
    resumed = toy_run(analysis, ToyDataset(8, broken=5), out=out, resume=True)
    measured_again = sorted({i for step, unit in analysis.calls if step == "square"
                             for i in unit})
    assert measured_again == [1, 3]  # sample 5 fails at its read again: no measure call
    fresh = toy_run(Toy(), ToyDataset(8, broken=5))
    np.testing.assert_array_equal(resumed.arrays["value"], fresh.arrays["value"])
    assert [r["index"] for r in resumed.summary["failed"]] == [5]


def test_a_damaged_key_is_named_on_resume(tmp_path):
    out = tmp_path / "run"
    _interrupted(out, after=3)
    (out / PARTIAL / "key.json").write_text('{"analysis": ')
    with pytest.raises(UserError, match=r"has a damaged key.json .*start over with --overwrite"):
        toy_run(Toy(), ToyDataset(8, broken=5), out=out, resume=True)


def test_records_are_fsynced_before_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace",
                        lambda a, b: (events.append(("replace", Path(b).name)),
                                      real_replace(a, b))[1])
    store = RecordStore(tmp_path / PARTIAL, {})
    store.put("samples", 4, {"value": [1.0, 2.0]})
    store.fail("samples", 5, "toy-5", "unreadable")
    assert events == ["fsync", ("replace", "0000004.npz"),
                      "fsync", ("replace", "0000005.failed.json")]
    assert results.load_arrays(tmp_path / PARTIAL / "samples" / "0000004.npz")[
        "value"].tolist() == [1.0, 2.0]


def test_a_too_long_out_name_is_refused_like_an_unwritable_one(tmp_path, capsys):
    too_long = tmp_path / ("x" * 300)
    with pytest.raises(UserError, match="cannot write results into .* choose another --out"):
        check_out(too_long)
    assert run_cli(evolution_main, [*MODEL, "--out", str(too_long / "run")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "File name too long" in error[0]
    assert run_cli(merge_main, [str(tmp_path), "--out", str(too_long)]) == 2


def test_when_nothing_can_be_measured_the_sentence_names_the_cause():
    with pytest.raises(UserError) as error:
        toy_run(Toy(bad=range(6)), ToyDataset(6))
    assert str(error.value) == (
        "every sample of toy/test failed in the square pass (6 of them); the most common "
        "reason (1 of 6): RuntimeError: CUDA out of memory on sample [0].")
    assert "--strict" not in str(error.value)
