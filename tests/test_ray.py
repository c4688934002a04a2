"""``--backend ray`` (analyses.runner.ray_backend) gives exactly the files of the local backend:
for every ported analysis, sharded + merged, with a worker killed mid-run, interrupted and
resumed, on a library caller's own dataset (shipped to the workers); a sample that kills every
worker is recorded as failed without an endless retry loop; actors on a two-node cluster each
see their own GPU; bad input gets one sentence and exit 2.

Bitwise equality needs the same torch thread count on both sides: a CPU-only Ray worker runs
one thread (its share of the CPUs), so the local runs compared against run with one too (the
float sums of two threads differ in the last bits). One local Ray (2 CPUs, 2 pretend GPUs) for
the module; the two-node test makes its own cluster and runs last."""

from __future__ import annotations

import importlib
import sys
import time

import pytest
import torch

ray = pytest.importorskip("ray")

from helpers import assert_same_run, interrupt_at  # noqa: E402

from analyses.common import data_record, load_data, prompt_data  # noqa: E402
from analyses.data.dataset import Dataset  # noqa: E402
from analyses.layer_masking import LayerMaskingConfig  # noqa: E402
from analyses.layer_masking.run import LayerMasking  # noqa: E402
from analyses.merge import merge  # noqa: E402
from analyses.results import RunResult  # noqa: E402
from analyses.runner.execute import LocalBackend, RunOptions, run  # noqa: E402
from analyses.runner.ray_backend import KILL_SWITCH, NEEDS_RAY, RayBackend  # noqa: E402
from analyses.runner.store import RecordStore  # noqa: E402
from probes.cli import run_cli  # noqa: E402
from probes.errors import UserError  # noqa: E402
from probes.models.loading import load_model  # noqa: E402

# (analysis CLI module, arguments): each runs local and ray; the first also as 2 ray shards +
# merge (the shards of the others go through the same runner code). Add an analysis once its
# port passes tests/test_golden.py (the arguments are its golden run's, smaller where cheap).
CLIS = [
    ("analyses.layer_masking", ["--limit", "12", "--bootstrap", "200"]),
    ("analyses.token_importance", ["--limit", "6", "--timed-samples", "0", "--bootstrap", "200"]),
    ("analyses.attention_evolution", ["--limit", "10", "--bootstrap", "200"]),
    ("analyses.contrastive_attention", ["--data", "fine-grained", "--limit", "8", "--ratio",
                                        "0.5", "--bootstrap", "200"]),
    ("analyses.attenuation", ["--data", "fine-grained", "--limit", "10", "--bootstrap", "200"]),
    # trains in the driver (one thread, as the local run), then evaluates on the workers in
    # units of 4 samples, each worker loading the saved module
    ("analyses.train_vif", ["--limit", "12", "--steps", "3", "--batch-size", "4"]),
]
IDS = [module.split(".")[-1] for module, _ in CLIS]
LIMIT = 12
MODEL = {"model": "tiny-llava", "device": "auto", "dtype": "auto", "trust_remote_code": False,
         "allow_pickle": False, "device_map": None}
DATA = {"name": "easy-vqa", "split": "test", "limit": LIMIT}
CONFIG = LayerMaskingConfig(n_bootstrap=200)  # = CLIS[0]'s arguments


@pytest.fixture(scope="module")
def local_ray():
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False,
             logging_level="ERROR")
    yield
    ray.shutdown()


def one_thread(function):
    def call(*args, **kwargs):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return function(*args, **kwargs)
        finally:
            torch.set_num_threads(threads)
    return call


def cli(module: str, argv: list[str]) -> int:
    return run_cli(importlib.import_module(f"{module}.__main__").main, argv)


@pytest.fixture(scope="module")
def local_result(tmp_path_factory):
    """The local backend's run of a CLIS row (one thread), made once."""
    made = {}

    def result(module: str, argv: list[str]) -> RunResult:
        key = (module, tuple(argv))
        if key not in made:
            out = tmp_path_factory.mktemp("local")
            assert one_thread(cli)(module, [*argv, "--out", str(out)]) == 0
            made[key] = RunResult.load(out)
        return made[key]

    return result


def lm_run(backend, out, **options) -> RunResult:
    """Layer masking as CLIS[0] runs it (the data prompted for the model's family, as the CLI
    does), on ``backend``, saved and loaded back."""
    data = prompt_data(load_data("easy-vqa", "test", LIMIT), "llava")
    result = run(LayerMasking(CONFIG), backend, data,
                 RunOptions(out=out, **options))
    return RunResult.load(result.save(out))


@pytest.mark.parametrize("module, argv", CLIS, ids=IDS)
def test_ray_equals_local(local_ray, local_result, module, argv, tmp_path):
    ray_argv = [*argv, "--backend", "ray", "--workers", "2", "--out", str(tmp_path)]
    assert one_thread(cli)(module, ray_argv) == 0
    assert_same_run(local_result(module, argv), RunResult.load(tmp_path))
    assert not (tmp_path / ".partial").exists()


@pytest.mark.parametrize("module, argv", CLIS[:1], ids=IDS[:1])
def test_ray_shards_merge_into_the_local_run(local_ray, local_result, module, argv, tmp_path):
    expected = local_result(module, argv)
    ray_argv = [*argv, "--backend", "ray", "--workers", "2"]
    shards = [tmp_path / f"shard{i}" for i in range(2)]
    for i, out in enumerate(shards):
        assert cli(module, [*ray_argv, "--shard", f"{i}/2", "--out", str(out)]) == 0
    assert_same_run(expected, merge(shards))


def test_a_worker_killed_once_is_replaced_and_the_files_are_the_same(
        local_ray, local_result, tmp_path, monkeypatch):
    monkeypatch.setenv(KILL_SWITCH, "3:once")
    backend = RayBackend(MODEL, DATA, workers=2)
    try:
        result = lm_run(backend, tmp_path)
    finally:
        backend.close()
    assert backend.restarts == 1
    assert_same_run(local_result(*CLIS[0]), result)
    assert result.summary["failed"] == []


def test_a_sample_that_kills_every_worker_is_recorded_as_failed(local_ray, tmp_path,
                                                                monkeypatch):
    monkeypatch.setenv(KILL_SWITCH, "3")
    backend = RayBackend(MODEL, DATA, workers=2)
    started = time.perf_counter()
    try:
        result = lm_run(backend, tmp_path)
    finally:
        backend.close()
    # the exact check is the count of restarts; the time is only a backstop against an endless
    # retry loop, loose because a shared CI box can be slow (about 20 s on an idle 2-core one)
    assert time.perf_counter() - started < 180
    assert backend.restarts == 2  # killed twice, then given up
    [failed] = result.summary["failed"]
    assert (failed["index"], failed["pass"]) == (3, "graded")
    assert failed["reason"].startswith("killed its worker twice")
    assert 3 not in result.arrays["graded_index"].tolist()
    assert len(result.arrays["graded_index"]) == LIMIT - 1


def test_a_library_callers_own_dataset_is_shipped_to_the_workers(local_ray, tmp_path):
    """A Dataset no data spec reloads (the caller's own, built in memory) and one the workers'
    spec loads otherwise (unprompted, while they prompt for the family) are measured by the
    workers as handed over: the files equal the local backend's on the same dataset."""
    easy = prompt_data(load_data("easy-vqa", "test", LIMIT), "llava")
    own = Dataset("mine", "test", {"order": "reversed"}, 8, lambda i: easy[LIMIT - 1 - i],
                  content="the last 8 easy-VQA samples, last first")
    unprompted = load_data("easy-vqa", "test", LIMIT)
    local = LocalBackend(load_model(**MODEL))
    for data, dataset in ((None, own), (DATA, unprompted)):
        expected = one_thread(run)(LayerMasking(CONFIG), local, dataset, RunOptions())
        backend = RayBackend(MODEL, data, workers=2)
        try:
            if data is not None:  # the workers hold the spec's dataset, not this one
                assert backend._ask()["data"] != data_record(dataset)
            out = tmp_path / dataset.name
            result = RunResult.load(run(LayerMasking(CONFIG), backend, dataset,
                                        RunOptions(out=out)).save(out))
        finally:
            backend.close()
        assert result.summary["data"] == data_record(dataset)
        assert result.arrays["sample_id"].tolist() == [dataset[int(i)].id for i in
                                                       result.arrays["sample_index"]]
        assert_same_run(RunResult.load(expected.save(tmp_path / "local")), result)


def test_ctrl_c_then_resume_gives_the_same_files(local_ray, local_result, tmp_path):
    backend = RayBackend(MODEL, DATA, workers=2)
    try:
        with pytest.raises(KeyboardInterrupt):
            lm_run(backend, tmp_path, on_sample=interrupt_at(4))
        assert backend._actors == []  # killed at once, not left running
        kept = len(list((tmp_path / ".partial" / "samples").glob("*.npz")))
        assert kept >= 4
        seen = []
        result = lm_run(backend, tmp_path, resume=True, on_sample=seen.append)
        with pytest.raises(UserError, match="needs --out"):  # in memory: nowhere to write
            backend.measure(LayerMasking(CONFIG), load_data("easy-vqa", "test", LIMIT),
                            RecordStore(None, {}), LayerMasking.passes[0], [[0]], {}, False,
                            lambda unit: None)
    finally:
        backend.close()
    # it went on from the saved state (the other worker's unit in flight may have landed
    # between the kill and the count)
    assert kept + 1 <= seen[0] <= kept + 2
    assert_same_run(local_result(*CLIS[0]), result)


def test_bad_input_gets_one_sentence_and_exit_2(local_ray, tmp_path, capsys, monkeypatch):
    module, argv = CLIS[0]
    assert cli(module, [*argv, "--backend", "ray", "--gpus-per-worker", "8",
                        "--out", str(tmp_path)]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: --gpus-per-worker 8 asks for more GPUs than any node")
    # an error inside an actor (here: loading the model) reaches the driver as its sentence
    assert cli(module, [*argv, "--backend", "ray", "--workers", "1", "--model",
                        str(tmp_path / "no-model"), "--out", str(tmp_path)]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error == f"error: model directory '{tmp_path / 'no-model'}' does not exist."
    monkeypatch.setitem(sys.modules, "ray", None)  # Ray not installed
    assert cli(module, [*argv, "--backend", "ray", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"error: {NEEDS_RAY}"


def test_two_nodes_each_actor_sees_its_own_gpu(local_result, tmp_path):
    """Last: it replaces the module's local Ray with a simulated two-node cluster."""
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 1})
    try:
        cluster.add_node(num_cpus=1, num_gpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
        backend = RayBackend(MODEL, DATA)  # defaults: 1 GPU per worker, one per GPU
        try:
            assert (backend.workers, backend.gpus_per_worker) == (2, 1.0)
            placements = backend.placements()
            assert len({p["node"] for p in placements}) == 2
            for p in placements:
                assert len(p["gpu_ids"]) == 1
                assert p["cuda_visible_devices"] == p["gpu_ids"][0]
            assert_same_run(local_result(*CLIS[0]), lm_run(backend, tmp_path))
        finally:
            backend.close()
    finally:
        ray.shutdown()
        cluster.shutdown()
