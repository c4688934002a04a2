"""The benchmark rows: the engine vs the naive way at the real shapes, as absolute times (one
warm-up, then ``repeats`` timed runs: the median and the spread) and peak memory above the
loaded model (measured in a run of its own, so measuring costs the timing nothing).

Rows ``{kind, name, baseline, ours, unit, ratio, baseline_spread, ours_spread, runs, shape}``:
ratio > 1 = ours better; a spread is (slowest - fastest) / median of the timed runs."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from PIL import Image

from analyses.layer_masking.sweep import sweep_sample
from analyses.token_importance import AIFConfig, aif_generate
from probes import attention
from probes.masking import Knockout
from probes.models.loading import LoadedModel
from probes.record import AttentionRecorder
from probes.run import run_knockouts
from probes.tokens import token_groups

from .checks import (
    LAYER_MASKING_FLOWS,
    QUESTION,
    SWEEP_FLOW,
    bench_sample,
    build_inputs,
    naive_layer_sweep,
    naive_logits,
)


@dataclass(frozen=True)
class Measured:
    seconds: float  # the median of the timed runs
    spread: float  # (slowest - fastest) / median
    runs: int
    peak_mb: float  # peak memory during one more call, above what was allocated before it


@dataclass
class Meter:
    """Absolute time and peak memory of calls on ``device``. CUDA: synchronised wall time, and
    ``torch.cuda.max_memory_allocated`` (reset before the memory run) above the memory
    allocated when it starts. CPU: wall time, and the same peak from the torch profiler's
    allocation events."""

    device: torch.device
    repeats: int = 5

    def measure(self, function: Callable[[], object]) -> Measured:
        self._settle()  # outside any timed region
        del_result = function()  # warm-up: kernels chosen and compiled, caches filled
        del del_result
        times = []
        for _ in range(self.repeats):
            self._sync()
            start = time.perf_counter()
            result = function()
            self._sync()
            times.append(time.perf_counter() - start)
            del result
        median = statistics.median(times)
        return Measured(median, (max(times) - min(times)) / median, len(times),
                        self.peak(function) / 2**20)

    def peak(self, function: Callable[[], object]) -> float:
        """Peak bytes allocated during ``function()`` above those allocated when it starts."""
        if self.device.type != "cuda":
            return _profiled_peak(function)
        self._settle()
        torch.cuda.reset_peak_memory_stats(self.device)
        base = torch.cuda.memory_allocated(self.device)
        result = function()
        self._sync()
        del result
        return float(torch.cuda.max_memory_allocated(self.device) - base)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _settle(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()


def _profiled_peak(function: Callable[[], object]) -> float:
    """Peak bytes torch allocated on the CPU during ``function()`` above the start: the running
    sum of the profiler's allocation and free records (``[memory]`` events), in time order."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        result = function()
        del result
    records = sorted(((event.start_ns(), event.nbytes())
                      for event in profiler.profiler.kineto_results.events()
                      if event.name() == "[memory]"), key=lambda record: record[0])
    running = peak = 0
    for _, change in records:
        running += change
        peak = max(peak, running)
    return float(peak)


def rows_for(name: str, baseline: Measured, ours: Measured, shape: str) -> list[dict]:
    """A time row and a peak-memory row, ratio = baseline / ours."""
    time_row = {"kind": "bench", "status": "ok", "name": f"{name}: time", "baseline": baseline.seconds,
                "ours": ours.seconds, "unit": "s", "ratio": baseline.seconds / ours.seconds,
                "baseline_spread": baseline.spread, "ours_spread": ours.spread,
                "runs": ours.runs, "shape": shape}
    memory_row = {"kind": "bench", "status": "ok", "name": f"{name}: peak memory", "baseline": baseline.peak_mb,
                  "ours": ours.peak_mb, "unit": "MB", "ratio": baseline.peak_mb / ours.peak_mb,
                  "runs": 1, "shape": shape + "; above the loaded model"}
    return [time_row, memory_row]


@dataclass(frozen=True)
class Context:
    """What every row's name and shape says: the model and the machine."""

    label: str  # e.g. "LLaVA-1.5-7B"
    machine: str  # e.g. "NVIDIA H100 80GB HBM3, bfloat16"

    def shape(self, loaded: LoadedModel, inputs, extra: str = "") -> str:
        groups = token_groups(loaded.adapter, inputs)
        return (f"{self.label}: {loaded.adapter.num_layers} layers, {inputs.input_ids.shape[1]} "
                f"tokens ({groups.image.size} image){extra}; {self.machine}")


def bench_sweep(loaded: LoadedModel, meter: Meter, image: Image.Image, context: Context) -> list[dict]:
    """A window-1 sweep at every layer: the executor vs one full forward per condition (its
    masks made on the device)."""
    inputs = build_inputs(loaded, image)
    n = loaded.adapter.num_layers
    sweep = [Knockout.window(SWEEP_FLOW, layer, 1, n) for layer in range(n)]
    naive = meter.measure(lambda: naive_logits(loaded, inputs, sweep))
    ours = meter.measure(lambda: run_knockouts(loaded, inputs, sweep, batch_size=8))
    return rows_for(f"{context.label}: {n}-layer window-1 sweep of {SWEEP_FLOW} vs naive re-prefill",
                    naive, ours, context.shape(loaded, inputs, ", batches of 8"))


def bench_recording(loaded: LoadedModel, meter: Meter, image: Image.Image,
                    context: Context) -> list[dict]:
    """question->image attention of every layer and head: eager output_attentions, sliced, vs
    sdpa + recorder; both hand back CPU maps."""
    inputs = build_inputs(loaded, image)
    groups = token_groups(loaded.adapter, inputs)
    model = loaded.model
    question = torch.as_tensor(groups.question, device=loaded.device)
    image_keys = torch.as_tensor(groups.image, device=loaded.device)

    @torch.inference_mode()
    def eager():
        maps = model(**inputs.batch, output_attentions=True, logits_to_keep=1).attentions
        return [m[:, :, question][..., image_keys].float().cpu() for m in maps]

    @torch.inference_mode()
    def ours():
        recorder = AttentionRecorder(queries=groups.question, keys=groups.image)
        with attention.attach(loaded.adapter.attention_modules(model), recorder):
            model(**inputs.batch, logits_to_keep=1)
        return recorder.maps

    model.set_attn_implementation({"text_config": "eager"})
    try:
        baseline = meter.measure(eager)
    finally:
        attention.enable(model, "sdpa")
    return rows_for(f"{context.label}: record question->image, all layers and heads, vs eager "
                    "output_attentions", baseline, meter.measure(ours),
                    context.shape(loaded, inputs, f", {groups.question.size} question rows"))


def bench_aif(loaded: LoadedModel, meter: Meter, image: Image.Image, steps: int,
              context: Context) -> list[dict]:
    """AIF end to end vs a plain greedy generate, both from the image and the question."""
    config = loaded.model.generation_config
    eos = config.eos_token_id
    config.eos_token_id = -1  # AIF decodes `steps` tokens (generate: min_new_tokens)

    @torch.inference_mode()
    def plain():
        inputs = build_inputs(loaded, image)
        return loaded.model.generate(**inputs.batch, max_new_tokens=steps, min_new_tokens=steps,
                                     do_sample=False, eos_token_id=eos)

    try:
        baseline = meter.measure(plain)
        ours = meter.measure(lambda: aif_generate(loaded, image, QUESTION,
                                                  AIFConfig(max_new_tokens=steps)))
    finally:
        config.eos_token_id = eos
    return rows_for(f"{context.label}: AIF end to end vs plain generate", baseline, ours,
                    context.shape(loaded, build_inputs(loaded, image), f", {steps} new tokens"))


def bench_layer_masking(loaded: LoadedModel, meter: Meter, image: Image.Image,
                        context: Context) -> list[dict]:
    """Samples per second of one sample's layer_masking sweep (flow + control at every layer)."""
    sample = bench_sample(image)
    naive = meter.measure(lambda: naive_layer_sweep(loaded, sample))
    ours = meter.measure(lambda: sweep_sample(loaded, sample, LAYER_MASKING_FLOWS, 1, 0, 0,
                                              batch_size=8))
    name = f"{context.label}: layer_masking sweep of one sample (flow + control, window 1)"
    shape = context.shape(loaded, build_inputs(loaded, image), f", {LAYER_MASKING_FLOWS[0]}")
    time_row, memory_row = rows_for(name, naive, ours, shape)
    time_row.update({"name": f"{name}: samples per second", "baseline": 1 / naive.seconds,
                     "ours": 1 / ours.seconds, "unit": "samples/s"})
    return [time_row, memory_row]


def format_table(rows: list[dict]) -> str:
    """The bench rows as a Markdown table (the README's form)."""
    lines = ["| benchmark | baseline | ours | ratio | spread (baseline / ours) | shape |",
             "| --- | ---: | ---: | ---: | --- | --- |"]
    for row in rows:
        if row.get("kind") != "bench":
            continue
        spread = (f"{row['baseline_spread']:.0%} / {row['ours_spread']:.0%} of {row['runs']}"
                  if "baseline_spread" in row else "")
        lines.append(f"| {row['name']} | {row['baseline']:.4g} {row['unit']} | "
                     f"{row['ours']:.4g} {row['unit']} | {row['ratio']:.2f}x | {spread} | "
                     f"{row['shape']} |")
    return "\n".join(lines) + "\n"
