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


def _unfinished(out, samples: int = 3) -> None:
    """An interrupted run's state in ``out``: its key and ``samples`` finished records."""
    (out / ".partial" / "samples").mkdir(parents=True)
    (out / ".partial" / "key.json").write_text("{}")
    for index in range(samples):
        (out / ".partial" / "samples" / f"{index:07d}.npz").write_bytes(b"")


@pytest.mark.parametrize("name", [*CLIS, "evaluate"])
def test_an_unfinished_run_is_not_thrown_away_without_overwrite(name, tmp_path, capsys):
    _unfinished(tmp_path)
    assert run_cli(cli(name), ["--limit", "2", "--out", str(tmp_path)]) == 2
    assert last_error(capsys) == (
        f"error: {tmp_path} holds an unfinished run (3 samples done in its samples pass); add "
        "--resume to continue it, or --overwrite to start over.")
    assert len(list((tmp_path / ".partial" / "samples").iterdir())) == 3  # kept


def test_the_count_names_every_pass_and_an_empty_state_is_no_run(tmp_path):
    from analyses.runner.store import check_unfinished, finished_counts

    _unfinished(tmp_path, 2)
    (tmp_path / ".partial" / "graded").mkdir()
    for index in range(5):
        (tmp_path / ".partial" / "graded" / f"{index:07d}.npz").write_bytes(b"")
    (tmp_path / ".partial" / "graded" / "0000009.failed.json").write_text("{}")
    (tmp_path / ".partial" / "graded" / ".0000010.npz.tmp").write_bytes(b"")  # a half write
    assert finished_counts(tmp_path) == {"graded": 6, "samples": 2}
    with pytest.raises(Exception, match=r"\(6 samples done in its graded pass, 2 in its "
                                        r"samples pass\)"):
        check_unfinished(tmp_path, resume=False, overwrite=False)
    check_unfinished(tmp_path, resume=True, overwrite=False)
    check_unfinished(tmp_path, resume=False, overwrite=True)
    empty = tmp_path / "empty"
    (empty / ".partial" / "samples").mkdir(parents=True)  # interrupted before any sample
    assert finished_counts(empty) == {} and finished_counts(tmp_path / "none") == {}
    check_unfinished(empty, resume=False, overwrite=False)


def test_the_resume_command_is_the_command_run_with_resume(monkeypatch):
    import sys
    from types import ModuleType, SimpleNamespace

    from analyses.runner.cli import resume_command

    main = ModuleType("__main__")
    main.__spec__ = SimpleNamespace(name="analyses.layer_masking.__main__")
    monkeypatch.setitem(sys.modules, "__main__", main)
    assert resume_command(["--limit", "150", "--out", "runs/my demo", "--overwrite"]) == (
        "python -m analyses.layer_masking --limit 150 --out 'runs/my demo' --resume")
    assert resume_command(["--resume", "--out", "x"]).endswith("--resume --out x")


def test_ctrl_c_names_what_is_kept_and_the_command_that_continues(tmp_path, capsys,
                                                                  monkeypatch):
    import sys

    import analyses.runner.cli as runner_cli

    out = tmp_path / "run"

    def interrupted(analysis, backend, dataset, options):
        _unfinished(options.out, 127)
        raise KeyboardInterrupt

    monkeypatch.setattr(runner_cli, "run", interrupted)
    argv = ["--limit", "2", "--out", str(out), "--overwrite"]
    monkeypatch.setattr(sys, "argv", ["layer_masking", *argv])
    assert run_cli(cli("layer_masking"), argv) == 130
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"interrupted: the run in {out} has 127 samples done in its "
                            "samples pass; continue it with: ")
    assert error.endswith(f"--limit 2 --out {out} --resume") and "--overwrite" not in error


def test_threads_default_leaves_a_core_and_the_option_sets_torch(monkeypatch, capsys):
    import os

    import torch

    from analyses.results import versions
    from probes import cli as probes_cli

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(probes_cli, "Path", lambda path: _Quota("max 100000"))
    assert probes_cli.available_cpus() == 4 and probes_cli.default_threads() == 3
    monkeypatch.setattr(probes_cli, "Path", lambda path: _Quota("150000 100000"))
    assert probes_cli.available_cpus() == 2 and probes_cli.default_threads() == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert probes_cli.default_threads() == 1  # never 0
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    assert probes_cli.default_threads() == 5  # the user's setting wins
    before = torch.get_num_threads()
    try:
        assert probes_cli.set_threads(2) == 2 and torch.get_num_threads() == 2
        assert versions()["torch_threads"] == 2  # recorded where the golden test ignores it
    finally:
        torch.set_num_threads(before)
    from probes.models.__main__ import main as models_main

    assert run_cli(models_main, ["answer", "--image", "x.png", "--question", "q?",
                                 "--threads", "0"]) == 2
    assert "--threads takes a whole number from 1 to 1024, not '0'" in capsys.readouterr().err


class _Quota:
    def __init__(self, text: str) -> None:
        self.text = text

    def read_text(self) -> str:
        return self.text


@pytest.mark.parametrize("module", ["analyses.layer_masking.__main__",
                                    "analyses.token_importance.__main__",
                                    "analyses.attention_evolution.__main__",
                                    "analyses.contrastive_attention.__main__",
                                    "analyses.attenuation.__main__", "analyses.evaluate.__main__",
                                    "analyses.train_vif.__main__", "analyses.train_tiny",
                                    "probes.lens.__main__"])
def test_every_cli_that_runs_a_model_takes_threads(module, capsys):
    main = importlib.import_module(module).main
    with pytest.raises(SystemExit):
        main(["crosscheck", "--help"] if module.startswith("probes.lens") else ["--help"])
    assert "--threads N" in capsys.readouterr().out
