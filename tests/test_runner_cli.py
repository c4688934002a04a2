"""Bad input to the runner, from every analysis CLI: one sentence and exit code 2, before
anything is loaded or trained (an ``--out`` that is a file, cannot be made, or holds a finished
run), and ``analyses.merge`` of runs that are not shards of one run."""

from __future__ import annotations

import importlib
import json

import pytest

from probes.cli import run_cli

CLIS = ["layer_masking", "token_importance", "attention_evolution", "contrastive_attention",
        "attenuation", "train_vif"]


def cli(name: str):
    return importlib.import_module(f"analyses.{name}.__main__").main


def last_error(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines and lines[-1].startswith("error: ")
    return lines[-1]


@pytest.mark.parametrize("name", CLIS)
def test_an_out_that_is_a_file_or_cannot_be_made_is_one_sentence(name, tmp_path, capsys):
    afile = tmp_path / "notes.txt"
    afile.write_text("not a directory")
    assert run_cli(cli(name), ["--limit", "2", "--out", str(afile)]) == 2
    assert "is a file, not a directory" in last_error(capsys)
    assert run_cli(cli(name), ["--limit", "2", "--out", str(afile / "run")]) == 2
    assert "cannot write results into" in last_error(capsys)
    assert afile.read_text() == "not a directory"


@pytest.mark.parametrize("name", CLIS)
def test_a_finished_run_is_not_replaced_without_overwrite(name, tmp_path, capsys):
    finished = json.dumps({"analysis": name})
    (tmp_path / "summary.json").write_text(finished)
    assert run_cli(cli(name), ["--limit", "2", "--out", str(tmp_path)]) == 2
    assert "already holds a finished run; use --overwrite" in last_error(capsys)
    assert run_cli(cli(name), ["--limit", "2", "--out", str(tmp_path), "--resume"]) == 2
    assert "nothing to resume" in last_error(capsys)
    assert (tmp_path / "summary.json").read_text() == finished


def test_merge_refuses_runs_of_another_config_or_missing_shards(tmp_path, capsys):
    main = cli("attenuation")
    base = ["--data", "fine-grained", "--limit", "4", "--bootstrap", "50"]
    for shard, extra in (("0/2", []), ("1/2", ["--small-cells", "2"])):
        out = tmp_path / shard.replace("/", "of")
        assert run_cli(main, [*base, *extra, "--shard", shard, "--out", str(out)]) == 0
    from analyses.merge import main as merge

    assert run_cli(merge, [str(tmp_path / "0of2"), str(tmp_path / "1of2"), "--out",
                           str(tmp_path / "all")]) == 2
    assert "differs from" in (error := last_error(capsys)) and "in its config" in error
    assert run_cli(merge, [str(tmp_path / "0of2"), "--out", str(tmp_path / "all")]) == 2
    assert "merge needs every shard 0/2..1/2 once; got 0/2" in last_error(capsys)
    assert run_cli(merge, [str(tmp_path), "--out", str(tmp_path / "all")]) == 2
    assert "holds no shard records" in last_error(capsys)
