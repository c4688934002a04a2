"""Layer masking per sample: our sweep (flow + control at every layer, prefix shared, suffixes
batched) against the naive way (one full masked forward per condition, batch 1), side by side,
and the nnsight engine's sweep (``--engine nnsight``: full forwards in nnsight traces) next to
both. The three take turns, three times, and each keeps its best time.

    make bench        (or: python tests/bench_layer_masking.py)

Prints a table and merges its rows into bench-results.json ({name, baseline, ours, unit,
ratio, shape}, ratio = baseline / ours). One thread, float32. `make test` runs it only in smoke
mode (``FUSIONLENS_BENCH_SMOKE=1``: 2 samples, a 2-layer LLaVA-1.5-shape model).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))

from bench_engine import QUESTION, llava_15_shape, report, side_by_side, sized  # noqa: E402

from analyses.data import Sample, load_dataset  # noqa: E402
from analyses.layer_masking.sweep import compare, conditions, flow_control, sweep_sample  # noqa: E402
from probes.engines import named  # noqa: E402
from probes.models.loading import load_model  # noqa: E402
from probes.run import run_knockouts_naively  # noqa: E402
from probes.tokens import token_groups  # noqa: E402

FLOW = ("image->question,last",)


def naive_sweep(loaded, sample, seed: int, index: int) -> np.ndarray:
    """The same numbers the slow way: a clean forward, then one full forward per condition."""
    inputs = loaded.adapter.build_inputs([sample.image], [sample.question])
    groups = token_groups(loaded.adapter, inputs)
    with torch.inference_mode():
        clean = loaded.model(**inputs.batch).logits[0, -1].float()
    token = int(clean.argmax())
    flow_conditions = conditions(FLOW, 1, loaded.adapter.num_layers)[0]
    _, controls = flow_control(groups, flow_conditions, loaded.adapter.num_layers,
                               np.random.default_rng([seed, index, 0]))
    flow = compare(clean, run_knockouts_naively(loaded, inputs, flow_conditions), token)
    control = compare(clean, run_knockouts_naively(loaded, inputs, controls), token)
    return np.stack([flow, control])


def bench(loaded, samples, label: str, repeats: int) -> list[dict]:
    """Rows: the fast engine against the naive way, and the nnsight engine (every condition a
    full forward inside an nnsight trace, 8 conditions a trace) against both. Each side sweeps
    every sample; the three take turns, ``repeats`` times, and each keeps its best time
    (:func:`side_by_side`), so load on the machine hits every side alike."""
    results = {}

    def ours():
        results["ours"] = [sweep_sample(loaded, sample, FLOW, 1, 0, index, batch_size=8)
                           for index, sample in enumerate(samples)]

    def traced():
        results["nnsight"] = [sweep_sample(loaded, sample, FLOW, 1, 0, index, batch_size=8,
                                           engine=named("nnsight"))
                              for index, sample in enumerate(samples)]

    def naive():
        results["naive"] = [naive_sweep(loaded, sample, 0, index)
                            for index, sample in enumerate(samples)]

    ours_s, nnsight_s, naive_s = side_by_side(ours, traced, naive, repeats=repeats)
    worst = worst_nnsight = 0.0
    for sweep, other, reference in zip(results["ours"], results["nnsight"], results["naive"]):
        worst = max(worst, float(np.abs(sweep.metrics[..., 1] - reference[..., 1]).max()))  # logits
        worst_nnsight = max(worst_nnsight,
                            float(np.abs(other.metrics[..., 1] - reference[..., 1]).max()))
    if max(worst, worst_nnsight) > 1e-3:
        raise AssertionError(f"the sweep differs from the naive way by {worst} (fast) and "
                             f"{worst_nnsight} (nnsight) in logits")
    n = len(samples)
    shape = f"{loaded.adapter.num_layers} layers, {n} samples, best of {repeats}"
    name = f"layer masking, one sample: flow + control at every layer ({label})"
    return [{"name": name, "baseline": naive_s / n, "ours": ours_s / n, "unit": "s/sample",
             "ratio": naive_s / ours_s, "shape": f"{shape}, max |logit diff| {worst:.1e}"},
            {"name": f"{name}, nnsight engine against the naive way", "baseline": naive_s / n,
             "ours": nnsight_s / n, "unit": "s/sample", "ratio": naive_s / nnsight_s,
             "shape": f"{shape}, max |logit diff| {worst_nnsight:.1e}"},
            {"name": f"{name}, fast engine against the nnsight engine",
             "baseline": nnsight_s / n, "ours": ours_s / n, "unit": "s/sample",
             "ratio": nnsight_s / ours_s, "shape": shape}]


def main() -> int:
    torch.set_num_threads(1)
    samples = sized(20, 2)
    rows = bench(load_model("tiny-llava"), load_dataset("easy-vqa", "test", limit=samples),
                 "tiny-llava, easy-VQA", sized(3, 1))
    with tempfile.TemporaryDirectory() as directory:
        llava_15_shape(Path(directory))
        image = Image.new("RGB", (336, 336), (200, 30, 30))
        sample = Sample(id="bench/0", image=image, question=QUESTION, answer="", kind="bench",
                        boxes=(), target=(), mask=None, dataset="bench")
        rows += bench(load_model(directory), [sample], "LLaVA-1.5 shape", sized(3, 1))
    report(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
