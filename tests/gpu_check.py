"""``make gpu-check``: the engine against its naive references on the real 7B architectures, in
bfloat16 on one CUDA GPU, and the benchmark table at those shapes.

    make gpu-check        (or: python -m tests.gpu_check [--family llava] [--out FILE])

Never part of ``make test``. Without CUDA it says so in one sentence and exits 2. With a GPU it
builds LLaVA-1.5-7B (llava-hf/llava-1.5-7b-hf), LLaVA-NeXT-7B (llava-hf/llava-v1.6-mistral-7b-hf)
and Qwen2.5-VL-7B-Instruct from their published configs (the ones the adapter tests check on the
meta device) with random bfloat16 weights made on the GPU by the model's own initialisation, one
model at a time, each freed before the next: nothing is downloaded. The processors are the tiny
zoo's (a word tokenizer, the LLaVA-1.5 / ChatML chat templates) with the real checkpoints' image
settings (336 px CLIP views and 14 px patches, LLaVA-NeXT's pinpoints, Qwen's 14 px patches and
pixel bounds), so image token counts are the real ones and text token counts are close to them;
the configs' special token ids are the word tokenizer's.

Checks (each prints its worst deviation and its tolerance; the run exits 1 if one fails):

- recording: an :class:`~probes.record.AttentionRecorder` on sdpa vs eager ``output_attentions``
  (the text rows after the image and every 16th image row, to every key, all layers and heads);
- executor: :func:`~probes.run.run_knockouts` vs :func:`~probes.run.run_knockouts_naively` (one
  full masked forward per condition): a window-1 sweep of ``image->question,last`` at every layer
  plus two all-layer knockouts; the all-layer knockouts must move the logits by more than the
  tolerance, so the check can see a mask that was not applied;
- generate: :func:`~probes.run.masked_generate` vs a no-cache loop (one full masked forward of
  prompt + tokens so far per step, fed the engine's tokens), clean and under
  ``image->question,last,generated`` at every layer;
- layer masking (LLaVA-1.5): ``sweep_sample`` vs one full forward per condition.

Logit deviations are relative to the reference's largest |logit|. The bfloat16 tolerances (0.05
of the largest logit, 0.02 in probability) leave room for the rounding of two different but
exact computations (eager vs sdpa, a batched suffix vs a full sequence) through 32 layers: on
the CPU in bfloat16, at LLaVA-1.5 depth and tokens (32 layers, 615 tokens) but width 256, the
deviations were 1.6e-3 (recording), 0 (executor) and 9.5e-3 (generate), against 1.46 for the
all-layer knockouts' effect; no GPU has run this yet. On the CPU tests the same checks run in
float32 at 1e-5.

The table (rows ``{name, baseline, ours, unit, ratio, shape}``, ratio > 1 = ours better; merged
by name into ``bench-results.json``, the GPU's name in every row's shape): the sweep vs naive
re-prefill, recording vs ``output_attentions``, AIF vs a plain ``generate`` (each as absolute
CUDA-synchronised time, best of ``--repeats``, and peak GPU memory above the loaded model, from
``torch.cuda.max_memory_allocated`` reset before each call), and samples per second of a
32-layer ``layer_masking`` sweep (flow + control) of one LLaVA-1.5 sample vs the naive way.
The largest shapes: LLaVA-NeXT at 644x476 (2,340 image tokens; eager ``output_attentions`` is
32 x 32 x 2,379^2 bf16 = 11.6 GB) and Qwen2.5-VL's recording at 1764x1764 (3,969 image tokens:
28 x 28 x 4,020^2 bf16 = 25 GB); with the 16.6 GB model and one layer's eager scores, an
estimated 45 GB at peak: one 80 GB GPU (a GPU under 60 GiB is refused in one sentence).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import transformers
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_engine import QUESTION  # noqa: E402

from analyses.data import Sample  # noqa: E402
from analyses.layer_masking.sweep import (  # noqa: E402
    causal_edge_count,
    compare,
    conditions,
    control_edges,
    sweep_sample,
)
from analyses.token_importance import AIFConfig, aif_generate  # noqa: E402
from probes import attention  # noqa: E402
from probes.cli import run_cli  # noqa: E402
from probes.errors import UserError  # noqa: E402
from probes.masking import EdgeKnockout, EdgeMaskPlan, Knockout, parse_flows  # noqa: E402
from probes.models.adapters import adapter_class  # noqa: E402
from probes.models.loading import LoadedModel  # noqa: E402
from probes.models.registry import ModelSource  # noqa: E402
from probes.models.zoo.checkpoint import greedy_generation_config  # noqa: E402
from probes.record import AttentionRecorder  # noqa: E402
from probes.run import masked_generate, run_knockouts, run_knockouts_naively  # noqa: E402
from probes.tokens import token_groups  # noqa: E402

SWEEP_FLOW = "image->question,last"
GENERATE_FLOW = "image->question,last,generated"
LAYER_MASKING_FLOWS = ("image->question,last",)
MIN_GPU_GIB = 60  # the largest shape needs an estimated 45 GB (see the module docstring)


# ----------------------------------------------------------------------------- the 7B models
@dataclass(frozen=True)
class Shapes:
    """The images each part runs on: the checks, the sweep / AIF benchmarks, the recording
    benchmark."""

    check: tuple[int, int]
    bench: tuple[int, int]
    record: tuple[int, int]
    steps: int = 8  # tokens decoded by the generate check and the AIF benchmark


@dataclass(frozen=True)
class RealModel:
    label: str
    hub_id: str
    shapes: Shapes


REAL = {
    "llava": RealModel("LLaVA-1.5-7B", "llava-hf/llava-1.5-7b-hf",
                       Shapes((336, 336), (336, 336), (336, 336))),
    "llava_next": RealModel("LLaVA-NeXT-7B", "llava-hf/llava-v1.6-mistral-7b-hf",
                            Shapes((644, 476), (644, 476), (644, 476))),
    "qwen2_5_vl": RealModel("Qwen2.5-VL-7B", "Qwen/Qwen2.5-VL-7B-Instruct",
                            Shapes((644, 476), (644, 476), (1764, 1764))),
}


def real_config_and_processor(family: str):
    """The published config (the adapter tests' facts) and a zoo processor with the real image
    settings; the config's special token ids become the processor's tokenizer's."""
    from probes.models.zoo import tiny_llava, tiny_qwen2_5_vl
    from probes.models.zoo.tiny_llava import BASIC_WORDS

    if family == "llava":
        from test_adapter_llava import _llava_config

        config = _llava_config()
        processor = tiny_llava.build_processor(BASIC_WORDS, image_size=336, patch_size=14)
        special = {"image_token_id": tiny_llava.IMAGE_TOKEN}
    elif family == "llava_next":
        from test_adapter_llava_next import _real_config, _real_image_processor
        from transformers import LlavaNextProcessor

        from probes.models.zoo.vocab import word_tokenizer

        config = _real_config()
        tokenizer = word_tokenizer([*BASIC_WORDS, *tiny_llava.TEMPLATE_WORDS],
                                   special_tokens=(tiny_llava.IMAGE_TOKEN,))
        processor = LlavaNextProcessor(
            image_processor=_real_image_processor(), tokenizer=tokenizer, patch_size=14,
            vision_feature_select_strategy="default", num_additional_image_tokens=1,
            chat_template=tiny_llava.CHAT_TEMPLATE)
        special = {"image_token_id": tiny_llava.IMAGE_TOKEN}
    elif family == "qwen2_5_vl":
        from test_adapter_qwen2_5_vl import _qwen2_5_vl_7b_config

        config = _qwen2_5_vl_7b_config()
        # Qwen/Qwen2.5-VL-7B-Instruct's preprocessor_config.json: 56 x 56 to 3584 x 3584 pixels
        processor = tiny_qwen2_5_vl.build_processor(BASIC_WORDS, min_pixels=3136,
                                                    max_pixels=12845056)
        q = tiny_qwen2_5_vl
        special = {"image_token_id": q.IMAGE_PAD, "video_token_id": q.VIDEO_PAD,
                   "vision_start_token_id": q.VISION_START, "vision_end_token_id": q.VISION_END}
    else:
        raise UserError(f"unknown family {family!r}; use {', '.join(REAL)}.")
    tokenizer = processor.tokenizer
    for name, token in special.items():
        setattr(config, name, tokenizer.convert_tokens_to_ids(token))
    text = config.text_config
    text.bos_token_id, text.pad_token_id = tokenizer.bos_token_id, tokenizer.pad_token_id
    text.eos_token_id = (tokenizer.convert_tokens_to_ids(tiny_qwen2_5_vl.IM_END)
                         if family == "qwen2_5_vl" else tokenizer.eos_token_id)
    return config, processor, list(special.values())


def build_real(family: str, device: torch.device | str, dtype: torch.dtype = torch.bfloat16,
               seed: int = 0) -> LoadedModel:
    """The real 7B architecture of ``family`` with random weights, built on ``device`` (no
    weights anywhere else; ``"meta"`` builds the architecture without a byte of weights)."""
    config, processor, special_tokens = real_config_and_processor(family)
    adapter_type = adapter_class(config.model_type)
    model_class = getattr(transformers, adapter_type.model_class_name)
    torch.manual_seed(seed)
    with torch.device(device):
        model = model_class._from_config(config, dtype=dtype, attn_implementation="sdpa")
    model.eval().requires_grad_(False)
    model.generation_config = greedy_generation_config(model.config.text_config)
    adapter = adapter_type(model.config, processor)
    # a random model that emitted the image placeholder would make the no-cache reference read
    # an image token where the engine decodes text: those tokens' logits are 0 (never argmax)
    ids = [processor.tokenizer.convert_tokens_to_ids(t) for t in special_tokens]
    with torch.no_grad():
        adapter.lm_head(model).weight[ids] = 0.0
    spec = REAL[family]
    source = ModelSource(f"{spec.label} (random weights)", "builtin", spec.hub_id,
                         f"{spec.hub_id}'s config, random {dtype} weights")
    return LoadedModel(model=model, processor=processor, adapter=adapter, source=source)


def require_cuda() -> torch.device:
    if not torch.cuda.is_available():
        raise UserError("make gpu-check needs a CUDA GPU; this machine has none "
                        "(torch.cuda.is_available() is False).")
    gib = torch.cuda.get_device_properties(0).total_memory / 2**30
    if gib < MIN_GPU_GIB:
        raise UserError(f"make gpu-check needs a GPU with at least {MIN_GPU_GIB} GiB of memory; "
                        f"{torch.cuda.get_device_name(0)} has {gib:.0f} GiB.")
    return torch.device("cuda", 0)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"


# ------------------------------------------------------------------------------- the checks
@dataclass(frozen=True)
class Tolerance:
    logits: float  # max |logit difference| / the reference's max |logit|
    attention: float  # max |probability difference|


FLOAT32 = Tolerance(logits=1e-5, attention=1e-5)
BFLOAT16 = Tolerance(logits=0.05, attention=0.02)


@dataclass(frozen=True)
class Check:
    """One comparison with its reference: ``worst`` deviation against ``tolerance``; ``effect``
    (where given) is how far the reference's knockouts move the result, which must exceed the
    tolerance for the check to see anything."""

    name: str
    worst: float
    tolerance: float
    detail: str
    effect: float | None = None

    @property
    def passed(self) -> bool:
        sees = self.effect is None or self.effect > self.tolerance
        return math.isfinite(self.worst) and self.worst <= self.tolerance and sees

    def line(self) -> str:
        seen = "" if self.effect is None else f", effect {self.effect:.2e}"
        verdict = "ok  " if self.passed else "FAIL"
        return f"{verdict} {self.name}: worst {self.worst:.2e} <= {self.tolerance:.0e}{seen} ({self.detail})"


def build_inputs(loaded: LoadedModel, image: Image.Image, question: str = QUESTION):
    return loaded.adapter.build_inputs([image], [question]).to(loaded.device, loaded.dtype)


def _relative(got: torch.Tensor, reference: torch.Tensor) -> float:
    return float((got.float() - reference.float()).abs().max() / reference.float().abs().max())


@torch.inference_mode()
def check_recording(loaded: LoadedModel, inputs, tolerance: float) -> Check:
    """Recorder on sdpa vs eager ``output_attentions``, at every layer and head."""
    groups = token_groups(loaded.adapter, inputs)
    text = np.concatenate([groups.question, groups.template, groups.last])
    rows = np.union1d(text[text > groups.image.max()], groups.image[::16])
    model = loaded.model
    model.set_attn_implementation({"text_config": "eager"})
    try:
        maps = model(**inputs.batch, output_attentions=True).attentions
        index = torch.as_tensor(rows, device=maps[0].device)
        reference = [m[0][:, index].float() for m in maps]
        del maps
    finally:
        attention.enable(model, "sdpa")
    recorder = AttentionRecorder(queries=rows)
    with attention.attach(loaded.adapter.attention_modules(model), recorder):
        model(**inputs.batch)
    worst = max(float((recorder.maps[layer][0].to(expected.device) - expected).abs().max())
                for layer, expected in enumerate(reference))
    heads, _, keys = reference[0].shape
    return Check("recording vs eager output_attentions", worst, tolerance,
                 f"{len(reference)} layers x {heads} heads, {len(rows)} query rows x {keys} keys")


def executor_conditions(num_layers: int) -> list[Knockout]:
    every = tuple(range(num_layers))
    sweep = [Knockout.window(SWEEP_FLOW, layer, 1, num_layers) for layer in range(num_layers)]
    return sweep + [Knockout(parse_flows("image->last"), every),
                    Knockout(parse_flows(SWEEP_FLOW), every)]


@torch.inference_mode()
def check_executor(loaded: LoadedModel, inputs, tolerance: float) -> Check:
    """run_knockouts vs one full masked forward per condition."""
    knockouts = executor_conditions(loaded.adapter.num_layers)
    result = run_knockouts(loaded, inputs, knockouts, batch_size=8)
    naive = run_knockouts_naively(loaded, inputs, knockouts)
    clean = loaded.model(**inputs.batch).logits[0, -1].float().cpu()
    effect = _relative(naive[-2:], clean.expand(2, -1))  # the two all-layer knockouts
    return Check("executor vs one masked forward per condition", _relative(result.logits, naive),
                 tolerance, f"{len(knockouts)} conditions, {inputs.input_ids.shape[1]} tokens, "
                 f"shared prefix {result.prefix_length}", effect)


@torch.inference_mode()
def no_cache_logits(loaded: LoadedModel, inputs, knockout, tokens: Sequence[int]) -> torch.Tensor:
    """[steps, vocab]: the full masked forward of the prompt and ``tokens[:step]`` at each step
    (no cache; generated ids fed back as input ids). tests/test_run.py's reference loop, fed the
    tokens to compare with (so one rounding tie cannot derail the rest) and on any device."""
    n = loaded.adapter.num_layers
    groups = token_groups(loaded.adapter, inputs)
    batch = dict(inputs.batch)
    modules = loaded.adapter.attention_modules(loaded.model)
    attention.enable(loaded.model)
    logits = []
    for step, token in enumerate(tokens):
        plan = EdgeMaskPlan([knockout.edges(groups, n)]) if knockout else None
        with attention.attach(modules, plan) if plan else nullcontext():
            logits.append(loaded.model(**batch).logits[0, -1].float().cpu())
        if step == len(tokens) - 1:
            break
        extra = torch.tensor([[token]], device=batch["input_ids"].device)
        batch["input_ids"] = torch.cat([batch["input_ids"], extra], 1)
        batch["attention_mask"] = torch.cat([batch["attention_mask"], torch.ones_like(extra)], 1)
        if "mm_token_type_ids" in batch:
            batch["mm_token_type_ids"] = torch.cat(
                [batch["mm_token_type_ids"], torch.zeros_like(extra)], 1)
    return torch.stack(logits)


def check_generate(loaded: LoadedModel, inputs, tolerance: float, steps: int) -> Check:
    """masked_generate vs the no-cache loop, clean and under GENERATE_FLOW at every layer.
    ``worst`` also covers the tokens: where the engine picked another token than the
    reference's argmax, the reference's margin between the two (a rounding tie)."""
    n = loaded.adapter.num_layers
    config = loaded.model.generation_config
    eos = config.eos_token_id
    config.eos_token_id = -1  # decode every step, whatever comes out
    worst, same, total = 0.0, 0, 0
    try:
        for knockout in (None, Knockout(parse_flows(GENERATE_FLOW), tuple(range(n)))):
            generation = masked_generate(loaded, inputs, knockout, max_new_tokens=steps)
            reference = no_cache_logits(loaded, inputs, knockout, generation.tokens)
            scale = float(reference.abs().max())
            chosen = torch.tensor(generation.tokens)
            margin = reference.max(-1).values - reference.gather(1, chosen[:, None])[:, 0]
            worst = max(worst, _relative(generation.logits, reference), float(margin.max()) / scale)
            same += int((reference.argmax(-1) == chosen).sum())
            total += len(chosen)
    finally:
        config.eos_token_id = eos
    return Check("masked generate vs a no-cache loop", worst, tolerance,
                 f"clean and {GENERATE_FLOW} at every layer, {steps} tokens each, "
                 f"{same}/{total} tokens the reference's argmax")


def bench_sample(image: Image.Image, question: str = QUESTION) -> Sample:
    return Sample(id="gpu-check/0", image=image, question=question, answer="", kind="bench",
                  boxes=(), target=(), mask=None, dataset="gpu-check")


@torch.inference_mode()
def naive_layer_sweep(loaded: LoadedModel, sample: Sample, seed: int = 0, index: int = 0,
                      flows: Sequence[str] = LAYER_MASKING_FLOWS) -> np.ndarray:
    """``sweep_sample``'s metrics the slow way, on any device: a clean forward, then one full
    masked forward per condition (tests/bench_layer_masking.py's naive_sweep, on the model's
    device). [series (flows, then controls), layers, metrics]."""
    n = loaded.adapter.num_layers
    inputs = build_inputs(loaded, sample.image, sample.question)
    groups = token_groups(loaded.adapter, inputs)
    clean = loaded.model(**inputs.batch).logits[0, -1].float().cpu()
    token = int(clean.argmax())
    flow_rows, control_rows = [], []
    for flow_index, flow_conditions in enumerate(conditions(flows, 1, n)):
        edges = flow_conditions[0].edges(groups, n)
        count = sum(causal_edge_count(e.queries, e.keys) for e in edges)
        drawn = control_edges(groups, count, np.random.default_rng([seed, index, flow_index]))
        controls = [EdgeKnockout(drawn.queries, drawn.keys, c.layers) for c in flow_conditions]
        flow_rows.append(compare(clean, run_knockouts_naively(loaded, inputs, flow_conditions), token))
        control_rows.append(compare(clean, run_knockouts_naively(loaded, inputs, controls), token))
    return np.stack(flow_rows + control_rows)


def check_layer_masking(loaded: LoadedModel, sample: Sample, tolerance: float) -> Check:
    """sweep_sample's logit changes vs the naive way's, relative to the clean max |logit|."""
    ours = sweep_sample(loaded, sample, LAYER_MASKING_FLOWS, 1, 0, 0, batch_size=8)
    naive = naive_layer_sweep(loaded, sample)
    with torch.inference_mode():
        inputs = build_inputs(loaded, sample.image, sample.question)
        scale = float(loaded.model(**inputs.batch).logits[0, -1].float().abs().max())
    worst = float(np.abs(ours.metrics[..., 1] - naive[..., 1]).max()) / scale
    return Check("layer masking sweep vs one masked forward per condition", worst, tolerance,
                 f"{LAYER_MASKING_FLOWS[0]} + control at {loaded.adapter.num_layers} layers, "
                 "logit change of the answer token")


def run_checks(loaded: LoadedModel, image: Image.Image, tolerance: Tolerance, steps: int,
               layer_masking: bool = False, question: str = QUESTION) -> list[Check]:
    """Every check of one model on one (image, question)."""
    inputs = build_inputs(loaded, image, question)
    checks = [check_recording(loaded, inputs, tolerance.attention),
              check_executor(loaded, inputs, tolerance.logits),
              check_generate(loaded, inputs, tolerance.logits, steps)]
    if layer_masking:
        checks.append(check_layer_masking(loaded, bench_sample(image, question),
                                          tolerance.logits))
    return checks


# -------------------------------------------------------------------------------- the table
@dataclass(frozen=True)
class Measured:
    seconds: float  # best of the repeats
    peak_mb: float  # peak memory allocated during the call above what was allocated before it


@dataclass
class Meter:
    """Absolute time and peak memory of calls on ``device``. CUDA: synchronised wall time and
    ``torch.cuda.max_memory_allocated`` (reset before each call) above the memory allocated when
    the call starts. CPU: wall time, and the same peak from the torch profiler's allocation
    events (in one extra run, so the profiler costs the timing nothing)."""

    device: torch.device
    repeats: int = 2
    log: list[str] = field(default_factory=list)

    def measure(self, function: Callable[[], object]) -> Measured:
        best, peak = float("inf"), 0.0
        for _ in range(self.repeats):
            self._sync()
            base = self._reset()
            start = time.perf_counter()
            result = function()
            self._sync()
            best = min(best, time.perf_counter() - start)
            if self.device.type == "cuda":
                peak = max(peak, torch.cuda.max_memory_allocated(self.device) - base)
            del result
        if self.device.type != "cuda":
            peak = _profiled_peak(function)
        return Measured(best, peak / 2**20)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _reset(self) -> int:
        if self.device.type != "cuda":
            return 0
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)
        return torch.cuda.memory_allocated(self.device)


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
    return [{"name": f"{name}: time", "baseline": baseline.seconds, "ours": ours.seconds,
             "unit": "s", "ratio": baseline.seconds / ours.seconds, "shape": shape},
            {"name": f"{name}: peak memory", "baseline": baseline.peak_mb, "ours": ours.peak_mb,
             "unit": "MB", "ratio": baseline.peak_mb / ours.peak_mb,
             "shape": shape + "; above the loaded model"}]


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
    inputs = build_inputs(loaded, image)
    n = loaded.adapter.num_layers
    sweep = [Knockout.window(SWEEP_FLOW, layer, 1, n) for layer in range(n)]
    naive = meter.measure(lambda: run_knockouts_naively(loaded, inputs, sweep))
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
        maps = model(**inputs.batch, output_attentions=True).attentions
        return [m[:, :, question][..., image_keys].float().cpu() for m in maps]

    @torch.inference_mode()
    def ours():
        recorder = AttentionRecorder(queries=groups.question, keys=groups.image)
        with attention.attach(loaded.adapter.attention_modules(model), recorder):
            model(**inputs.batch)
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


def bench_table(loaded: LoadedModel, meter: Meter, shapes: Shapes, context: Context,
                layer_masking: bool = False) -> list[dict]:
    """Every benchmark row of one model."""
    rows = bench_sweep(loaded, meter, Image.new("RGB", shapes.bench, (200, 30, 30)), context)
    rows += bench_recording(loaded, meter, Image.new("RGB", shapes.record, (200, 30, 30)), context)
    rows += bench_aif(loaded, meter, Image.new("RGB", shapes.bench, (200, 30, 30)),
                      shapes.steps, context)
    if layer_masking:
        rows += bench_layer_masking(loaded, meter, Image.new("RGB", shapes.bench, (200, 30, 30)),
                                    context)
    return rows


def format_table(rows: Sequence[dict]) -> str:
    lines = [f"{'benchmark':<100} {'baseline':>12} {'ours':>12} {'ratio':>7}  shape"]
    for row in rows:
        lines.append(f"{row['name']:<100} {row['baseline']:>10.3f}{row['unit']:>2} "
                     f"{row['ours']:>10.3f}{row['unit']:>2} {row['ratio']:>6.2f}x  {row['shape']}")
    return "\n".join(lines) + "\n"


def merge_rows(path: Path, rows: Sequence[dict]) -> None:
    """Write ``rows`` into the JSON list at ``path``, replacing rows of the same name."""
    existing = json.loads(path.read_text()) if path.is_file() else []
    names = {row["name"] for row in rows}
    path.write_text(json.dumps([r for r in existing if r["name"] not in names] + list(rows),
                               indent=1) + "\n")


# ----------------------------------------------------------------------------------- the CLI
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make gpu-check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", action="append", choices=list(REAL),
                        help="one model family (repeatable; default: all three)")
    parser.add_argument("--out", type=Path, default=Path("bench-results.json"))
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per side (best kept)")
    args = parser.parse_args(argv)
    device = require_cuda()
    meter = Meter(device, args.repeats)
    machine = f"{device_name(device)}, bfloat16, torch {torch.__version__}, " \
              f"transformers {transformers.__version__}"
    checks, rows = [], []
    for family in args.family or list(REAL):
        spec = REAL[family]
        loaded = build_real(family, device)
        weights_gb = torch.cuda.memory_allocated(device) / 1e9
        sys.stdout.write(f"{spec.label}: built on {device_name(device)} ({weights_gb:.1f} GB)\n")
        layer_masking = family == "llava"
        image = Image.new("RGB", spec.shapes.check, (200, 30, 30))
        for check in run_checks(loaded, image, BFLOAT16, spec.shapes.steps, layer_masking):
            checks.append(check)
            sys.stdout.write(f"  {check.line()}\n")
        context = Context(spec.label, f"{machine}, {weights_gb:.1f} GB of weights")
        rows += bench_table(loaded, meter, spec.shapes, context, layer_masking)
        del loaded
        gc.collect()
        torch.cuda.empty_cache()
    sys.stdout.write(format_table(rows))
    merge_rows(args.out, rows)
    failed = [check for check in checks if not check.passed]
    sys.stdout.write(f"{len(checks) - len(failed)}/{len(checks)} checks passed on "
                     f"{device_name(device)}; table written to {args.out}\n")
    return 1 if failed else 0


def cli(argv: Sequence[str] | None = None) -> int:
    return run_cli(main, argv)


if __name__ == "__main__":
    sys.exit(cli())
