"""The shared runner on a toy analysis whose records are a formula of the sample (so every
expected value is written out by hand): units and shards, per-sample failures (recorded,
skipped, counted; ``strict`` stops), a batched unit with one bad sample, resume after Ctrl-C,
the overwrite guard and bad ``--out`` values, and the model revision of sharded checkpoints."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from analyses.common import weights_revision
from analyses.results import RunResult
from analyses.runner import Analysis, LocalBackend, Pass, Plan, RunOptions, run
from analyses.runner.execute import shard_samples, units_of
from analyses.runner.store import RecordStore
from probes.errors import UserError


class ToyDataset:
    """Sample i is i; sample ``broken`` cannot be read (like an unreadable image)."""

    name, split = "toy", "test"

    def __init__(self, length: int, broken: int | None = None) -> None:
        self.length, self.broken = length, broken

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        if index == self.broken:
            raise OSError(f"cannot identify image file 'toy-{index}.png'")
        return SimpleNamespace(id=f"toy-{index}", value=index)

    def fingerprint(self) -> str:
        return f"toy{self.length}"


class Toy(Analysis):
    """Pass 1 (scope all) squares every sample; pass 2 keeps the even squares and adds the
    mean of *all* pass-1 squares (a decision that reads every sample, like contrastive
    attention's early layer). ``bad``: samples whose measurement raises."""

    name = "toy"

    def __init__(self, bad=(), batch: int = 1) -> None:
        self.bad, self.calls = set(bad), []
        self.passes = (Pass("square", batch=batch, scope="all"), Pass("samples", batch=batch))

    def recorded(self):
        return {"bad": sorted(self.bad)}

    def plan(self, step, candidates, earlier):
        if step == "square":
            return Plan(candidates)
        squares = earlier["square"]
        mean = float(np.mean([r["square"] for r in squares.values()])) if squares else 0.0
        return Plan([i for i in candidates if squares[i]["square"] % 2 == 0], {"mean": mean})

    def measure(self, step, loaded, samples, indices, context):
        self.calls.append((step, tuple(indices)))
        if self.bad & set(indices):
            raise RuntimeError(f"CUDA out of memory on sample {sorted(self.bad & set(indices))}")
        if step == "square":
            return [{"square": s.value ** 2} for s in samples]
        return [{"value": s.value ** 2 + context["mean"], "id": s.id} for s in samples]

    def aggregate(self, records, info):
        rows = records["samples"]
        return RunResult({"analysis": self.name, "n_samples": len(rows)},
                         {"index": np.array(list(rows), dtype=np.int64),
                          "value": np.array([float(r["value"]) for r in rows.values()])})


class ToyBackend(LocalBackend):
    def model_record(self):
        return {"id": "toy-model", "layers": 2}

    @property
    def device(self):
        return "cpu"


def toy_run(analysis, dataset, **options):
    return run(analysis, ToyBackend(None), dataset, RunOptions(**options))


def test_records_follow_the_hand_written_formula():
    result = toy_run(Toy(), ToyDataset(7))
    mean = np.mean([i * i for i in range(7)])  # 13.0
    assert result.arrays["index"].tolist() == [0, 2, 4, 6]
    np.testing.assert_array_equal(result.arrays["value"], [0 + mean, 4 + mean, 16 + mean,
                                                           36 + mean])
    assert result.summary["failed"] == []


def test_units_and_shards_split_the_first_pass_into_whole_units():
    assert units_of([3, 4, 5, 6, 7], 2) == [[3, 4], [5, 6], [7]]
    passes = (Pass("a", batch=2),)
    assert shard_samples(7, passes, (0, 2)) == [0, 1, 4, 5]
    assert shard_samples(7, passes, (1, 2)) == [2, 3, 6]
    assert sorted(shard_samples(7, passes, (0, 2)) + shard_samples(7, passes, (1, 2))) == \
        list(range(7))


def test_shards_measure_their_own_samples_but_every_sample_of_a_scope_all_pass():
    whole = toy_run(Toy(), ToyDataset(9))
    parts = [toy_run(Toy(), ToyDataset(9), shard=(i, 3)) for i in range(3)]
    # each shard decided with the mean of all nine squares, so its values are the whole run's
    merged = sorted(zip(np.concatenate([p.arrays["index"] for p in parts]),
                        np.concatenate([p.arrays["value"] for p in parts])))
    assert [int(i) for i, _ in merged] == whole.arrays["index"].tolist()
    np.testing.assert_array_equal([v for _, v in merged], whole.arrays["value"])
    assert parts[1].summary["shard"] == "1/3"


def test_a_failing_sample_is_recorded_skipped_and_counted_and_the_run_goes_on():
    result = toy_run(Toy(bad={4}), ToyDataset(7))
    assert result.arrays["index"].tolist() == [0, 2, 6]
    assert result.summary["failed"] == [
        {"index": 4, "id": "toy-4", "pass": "square",
         "reason": "RuntimeError: CUDA out of memory on sample [4]"}]


def test_an_unreadable_sample_is_recorded_and_skipped():
    result = toy_run(Toy(), ToyDataset(5, broken=2))
    assert result.arrays["index"].tolist() == [0, 4]
    (row,) = result.summary["failed"]
    assert row["index"] == 2 and "cannot identify image file" in row["reason"]


def test_strict_stops_at_the_first_failure_with_one_sentence():
    with pytest.raises(UserError, match=r"sample 4 \(toy-4\) failed in the square pass: "
                                        r"RuntimeError: CUDA out of memory"):
        toy_run(Toy(bad={4}), ToyDataset(7), strict=True)


def test_a_batched_unit_with_one_bad_sample_measures_its_neighbours_alone():
    analysis = Toy(bad={5}, batch=4)
    result = toy_run(analysis, ToyDataset(8))
    assert [row["index"] for row in result.summary["failed"]] == [5]
    assert ("square", (4, 5, 6, 7)) in analysis.calls
    assert {("square", (4,)), ("square", (6,)), ("square", (7,))} <= set(analysis.calls)
    assert result.arrays["index"].tolist() == [0, 2, 4, 6]


def test_resume_after_ctrl_c_goes_on_and_gives_the_uninterrupted_result(tmp_path):
    whole = toy_run(Toy(), ToyDataset(12))

    def interrupt(done):
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        toy_run(Toy(), ToyDataset(12), out=tmp_path, on_sample=interrupt)
    assert len(list((tmp_path / ".partial" / "samples").glob("*.npz"))) == 3
    again = Toy()
    resumed = toy_run(again, ToyDataset(12), out=tmp_path, resume=True)
    assert [c for c in again.calls if c[0] == "samples"] == [("samples", (6,)), ("samples", (8,)),
                                                             ("samples", (10,))]
    assert not [c for c in again.calls if c[0] == "square"]  # the first pass was finished
    np.testing.assert_array_equal(resumed.arrays["value"], whole.arrays["value"])
    assert not (tmp_path / ".partial").exists()


def test_resume_with_another_config_is_refused(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        toy_run(Toy(), ToyDataset(6), out=tmp_path,
                on_sample=lambda done: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(UserError, match="used another config"):
        toy_run(Toy(bad={1}), ToyDataset(6), out=tmp_path, resume=True)


def test_a_finished_run_is_not_replaced_without_overwrite(tmp_path):
    toy_run(Toy(), ToyDataset(4), out=tmp_path).save(tmp_path)
    with pytest.raises(UserError, match="already holds a finished run; use --overwrite"):
        toy_run(Toy(), ToyDataset(4), out=tmp_path)
    with pytest.raises(UserError, match="nothing to resume"):
        toy_run(Toy(), ToyDataset(4), out=tmp_path, resume=True)
    assert toy_run(Toy(), ToyDataset(4), out=tmp_path, overwrite=True).summary["n_samples"] == 2


def test_an_out_that_is_a_file_or_cannot_be_made_is_one_sentence(tmp_path):
    afile = tmp_path / "results.txt"
    afile.write_text("not a directory")
    with pytest.raises(UserError, match="is a file, not a directory"):
        toy_run(Toy(), ToyDataset(4), out=afile)
    with pytest.raises(UserError, match="cannot write results into"):
        toy_run(Toy(), ToyDataset(4), out=afile / "inside")


def test_an_empty_dataset_and_a_run_where_everything_failed_are_one_sentence():
    with pytest.raises(UserError, match="holds no samples"):
        toy_run(Toy(), ToyDataset(0))
    with pytest.raises(UserError, match=r"every sample of toy/test failed in the square pass \(2 of them\)"):
        toy_run(Toy(bad={0, 1}), ToyDataset(2))


def test_the_store_writes_each_record_atomically_and_reads_it_back(tmp_path):
    store = RecordStore.open(tmp_path, {"config": {}})
    store.put("samples", 7, {"curve": np.arange(3.0), "kind": "color"})
    store.put("samples", 7, {"curve": np.arange(3.0), "kind": "color"})  # idempotent
    store.fail("samples", 9, "s9", "RuntimeError: boom")
    back = store.records("samples")
    assert list(back) == [7] and back[7]["curve"].tolist() == [0.0, 1.0, 2.0]
    assert store.has("samples", 9) and not store.has("samples", 8)
    assert store.failures() == [{"index": 9, "id": "s9", "pass": "samples",
                                 "reason": "RuntimeError: boom"}]
    assert not list((tmp_path / ".partial").rglob(".*.npz.*"))  # no temporary file left
    with pytest.raises(TypeError, match="need pickle"):
        store.put("samples", 8, {"bad": np.array([object()])})


def test_revision_of_a_sharded_checkpoint_reads_headers_not_weights(tmp_path):
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    for name in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"):
        (tmp_path / name).write_bytes(len(header).to_bytes(8, "little") + header + bytes(8))
    (tmp_path / "model.safetensors.index.json").write_text('{"weight_map": {}}')
    first = weights_revision(tmp_path)
    assert first.startswith("files:")
    shard = tmp_path / "model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-8] + bytes([1]) * 8)  # same size, other weights
    assert weights_revision(tmp_path) == first  # the weights themselves are not read
    shard.write_bytes(shard.read_bytes() + bytes(4))  # another size: another revision
    assert weights_revision(tmp_path) != first
    assert weights_revision(tmp_path / "missing") is None


def test_an_unfinished_run_with_records_is_resumed_or_overwritten_never_dropped(tmp_path):
    def interrupt(done):
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        toy_run(Toy(), ToyDataset(12), out=tmp_path, on_sample=interrupt)
    with pytest.raises(UserError, match=r"holds an unfinished run \(12 samples done in its "
                                        r"square pass, 2 in its samples pass\); add --resume"):
        toy_run(Toy(), ToyDataset(12), out=tmp_path)
    assert len(list((tmp_path / ".partial" / "samples").glob("*.npz"))) == 2  # kept
    again = Toy()
    assert toy_run(again, ToyDataset(12), out=tmp_path, overwrite=True).summary["n_samples"] == 6
    assert ("samples", (0,)) in again.calls  # started over


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_result_files_get_the_mode_of_the_users_umask(tmp_path, umask, mode):
    import os
    import stat

    from analyses.results import write_atomic

    before = os.umask(umask)
    try:
        RunResult({"analysis": "demo"}, {"x": np.arange(2.0)}).save(tmp_path)
        write_atomic(tmp_path / "table.md", b"| a |\n")
        reference = tmp_path / "plain.txt"  # a file made the ordinary way
        reference.write_text("x")
    finally:
        os.umask(before)
    assert stat.S_IMODE(reference.stat().st_mode) == mode
    for name in ("summary.json", "arrays.npz", "table.md"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name
