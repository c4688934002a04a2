"""``--backend ray`` against the local backend on the same layer-masking run (tiny-llava,
easy-VQA): Ray's fixed start-up cost (a local Ray, the actors, a model load in each), its
per-sample overhead, and 1 vs 2 workers on this machine's CPUs.

    python tests/bench_ray.py [--limit 40]

Fairness: a CPU-only Ray worker runs one torch thread (its share), so the per-sample overhead
compares it with the local backend at one thread too; the 2-worker row compares it with the
local backend at every core's thread (what a user gets without Ray). Start-up is timed apart
from measuring (``model_record()`` starts the actors and waits for their model); the measuring
(both passes, the driver's reading back included) is timed twice on the same workers, the
better time counts. Prints a table and merges its rows into bench-results.json ({name,
baseline, ours, unit, ratio, shape}, ratio = baseline / ours). `make test` runs it only in smoke
mode (``FUSIONLENS_BENCH_SMOKE=1``: 4 samples, one sample on a 2-layer LLaVA-1.5 shape).

The dataset is the one a library caller builds (``load_data``, not prompted) and the Ray
backend is given no data spec: it ships that dataset to its workers
(:mod:`analyses.runner.ray_backend`), so both backends measure the same samples.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from analyses.common import load_data
from analyses.layer_masking import LayerMaskingConfig
from analyses.layer_masking.run import LayerMasking
from analyses.runner.execute import LocalBackend, RunOptions, run
from analyses.runner.ray_backend import RayBackend
from probes.models.loading import load_model

MODEL = {"model": "tiny-llava", "device": "cpu", "dtype": "auto", "trust_remote_code": False,
         "allow_pickle": False, "device_map": None}


sys.path.insert(0, str(Path(__file__).parent))
from bench_engine import llava_15_shape, report, sized  # noqa: E402

REPEATS = sized(2, 1)  # timings of the measuring on the same workers; the best counts


def timed_run(backend, dataset, config) -> tuple[float, float, int]:
    """(start-up s, best measuring s, units measured over both passes)."""
    start = time.perf_counter()
    backend.model_record()  # Ray: starts the actors and waits for the first model
    if isinstance(backend, RayBackend):  # and every other actor's
        backend.placements()
    startup = time.perf_counter() - start
    best = float("inf")
    for _ in range(REPEATS):
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            result = run(LayerMasking(config), backend, dataset, RunOptions(out=Path(out)))
            best = min(best, time.perf_counter() - start)
    measured = len(result.arrays["graded_index"]) + int(result.summary["n_samples"])
    return startup, best, measured


def local(dataset, config, threads: int) -> tuple[float, float, int]:
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        start = time.perf_counter()
        backend = LocalBackend(load_model(**MODEL))
        load = time.perf_counter() - start
        _, seconds, measured = timed_run(backend, dataset, config)
        return load, seconds, measured
    finally:
        torch.set_num_threads(old)


def on_ray(dataset, config, workers: int) -> tuple[float, float, int]:
    start = time.perf_counter()
    backend = RayBackend(MODEL, workers=workers)  # starts a local Ray (this process owns it)
    connect = time.perf_counter() - start
    try:
        startup, seconds, measured = timed_run(backend, dataset, config)
    finally:
        backend.close()
    return connect + startup, seconds, measured


def llava_15_workers(samples: int) -> dict:
    """1 vs 2 Ray workers (one thread each) on the LLaVA-1.5-shape bench model (32 layers, 576
    image tokens; ``bench_engine.llava_15_shape``), every sample swept (the model is random)."""
    config = LayerMaskingConfig(samples="all", n_bootstrap=200)
    dataset = load_data("easy-vqa", "test", samples)
    with tempfile.TemporaryDirectory() as directory:
        llava_15_shape(Path(directory))
        model = {**MODEL, "model": directory}
        layers = load_model(**model).adapter.num_layers
        seconds = {}
        for workers in (1, 2):
            backend = RayBackend(model, workers=workers)
            try:
                _, seconds[workers], _ = timed_run(backend, dataset, config)
            finally:
                backend.close()
    return {"name": "layer masking throughput on the LLaVA-1.5-shape model: ray 1 worker vs "
                    "2 workers (1 thread each)",
            "baseline": seconds[1] / samples, "ours": seconds[2] / samples, "unit": "s/sample",
            "ratio": seconds[1] / seconds[2],
            "shape": f"{layers} layers, width 128, {samples} samples, load average "
                     f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores at the end"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--limit", type=int, default=sized(40, 4))
    parser.add_argument("--llava-samples", type=int, default=sized(6, 1),
                        help="samples of the LLaVA-1.5-shape row (0: leave it out)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    dataset = load_data("easy-vqa", "test", args.limit)
    config = LayerMaskingConfig(n_bootstrap=200)
    cores = os.cpu_count()
    load1, local1, n = local(dataset, config, 1)
    _, local_all, _ = local(dataset, config, cores)
    start1, ray1, _ = on_ray(dataset, config, 1)
    start2, ray2, _ = on_ray(dataset, config, 2)
    load = f"load average {os.getloadavg()[0]:.1f} on {cores} cores at the end"
    shape = f"tiny-llava, easy-VQA, {args.limit} samples ({n} units over both passes), {load}"
    rows = [
        {"name": "ray start-up: local Ray + 2 actors + a model load each, vs loading the model "
                 "in this process",
         "baseline": load1, "ours": start2, "unit": "s", "ratio": load1 / start2,
         "shape": shape},
        {"name": "layer masking per unit: local backend (1 thread) vs ray, 1 worker (1 thread)",
         "baseline": local1 / n, "ours": ray1 / n, "unit": "s/unit", "ratio": local1 / ray1,
         "shape": shape + f"; ray overhead {(ray1 - local1) / n * 1e3:+.1f} ms/unit"},
        {"name": "layer masking throughput: ray 1 worker vs 2 workers (1 thread each)",
         "baseline": ray1 / n, "ours": ray2 / n, "unit": "s/unit", "ratio": ray1 / ray2,
         "shape": shape + f"; ray start-up 1 worker {start1:.1f} s, 2 workers {start2:.1f} s"},
        {"name": f"layer masking per unit: local backend ({cores} threads) vs ray, 2 workers "
                 "(1 thread each)",
         "baseline": local_all / n, "ours": ray2 / n, "unit": "s/unit",
         "ratio": local_all / ray2, "shape": shape},
        {"name": "layer masking, whole run incl. start-up: local backend (1 thread) vs ray, "
                 "2 workers",
         "baseline": load1 + local1, "ours": start2 + ray2, "unit": "s",
         "ratio": (load1 + local1) / (start2 + ray2), "shape": shape},
    ]
    if args.llava_samples:
        rows.append(llava_15_workers(args.llava_samples))
    report(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
