"""The engine against independent references, each deviation relative and with its margin.

- recording: an :class:`~probes.record.AttentionRecorder` on sdpa vs eager
  ``output_attentions`` (the text rows after the image and every 16th image row, to every key,
  all layers and heads), per row relative to the row's largest probability;
- executor: :func:`~probes.run.run_knockouts` vs one full masked forward per condition, both
  eager (a reference no sdpa kernel touches) and sdpa under the same backend: a window-1 sweep
  of ``image->question,last`` at every layer plus two all-layer knockouts;
- generate: :func:`~probes.run.masked_generate` vs an eager no-cache loop (one full masked
  forward of prompt + tokens so far per step, fed the engine's tokens), clean and under
  ``image->question,last,generated`` at every layer;
- layer masking (LLaVA-1.5): ``sweep_sample`` vs one full forward per condition.

Logit deviations are per condition, relative to that reference row's largest |logit|. Each
check also says what it would see of a fault: ``effect`` (how far the reference's all-layer
knockouts move it: a mask that was not applied) and ``shift`` (the deviation the check would
report were every condition or map one layer off); a check passes when its deviation is within
the tolerance and the effect exceeds it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from bench_engine import QUESTION  # the benchmark's long question (tests/ is on sys.path)
from PIL import Image

from analyses.data import Sample
from analyses.layer_masking.sweep import (
    compare,
    conditions,
    flow_control,
    sweep_sample,
)
from probes import attention
from probes.attention import LayerEdit
from probes.deepstack import DeepStackOff, removed
from probes.masking import Edges, Knockout, parse_flows
from probes.models.loading import LoadedModel
from probes.record import AttentionRecorder
from probes.run import masked_generate, run_knockouts
from probes.tokens import token_groups

from .environment import backend

SWEEP_FLOW = "image->question,last"
GENERATE_FLOW = "image->question,last,generated"
LAYER_MASKING_FLOWS = ("image->question,last",)
RED = (200, 30, 30)  # the images' colour


@dataclass(frozen=True)
class Tolerance:
    logits: float  # max |logit difference| / the reference row's max |logit|
    attention: float  # max |probability difference| / the reference row's max probability


FLOAT32 = Tolerance(logits=1e-5, attention=1e-4)
# bfloat16 keeps 8 significant bits (a relative rounding of 2**-9 = 2e-3 per operation); two
# exact computations through 28-32 layers of width 3584-4096 (different kernels, a batched
# suffix vs a whole sequence) drift apart by a few times that in the logits, and more in
# single attention probabilities, whose scores (|s| ~ 1.5 at random initialisation) carry the
# drift of every layer below. See the package docstring for what was measured.
BFLOAT16 = Tolerance(logits=0.05, attention=0.15)


@dataclass(frozen=True)
class Check:
    """One comparison with its reference: ``worst`` deviation against ``tolerance``; ``effect``
    (where given) is how far the reference's knockouts move the result and must exceed the
    tolerance for the check to see anything; ``shift`` (where given) is what ``worst`` would be
    were the engine one layer off."""

    name: str
    worst: float
    tolerance: float
    detail: str
    effect: float | None = None
    shift: float | None = None

    @property
    def passed(self) -> bool:
        sees = self.effect is None or self.effect > self.tolerance
        return math.isfinite(self.worst) and self.worst <= self.tolerance and sees

    @property
    def margin(self) -> float:
        """tolerance / worst: how many times the deviation fits in the tolerance."""
        return self.tolerance / self.worst if self.worst > 0 else math.inf

    def row(self) -> dict:
        return {"kind": "check", "name": self.name, "status": "ok" if self.passed else "FAIL",
                "worst": self.worst, "tolerance": self.tolerance, "margin": self.margin,
                "effect": self.effect, "shift": self.shift, "detail": self.detail}


def relative_logits(got: torch.Tensor, reference: torch.Tensor) -> float:
    """max over rows of max |got - reference| / max |reference| of that row."""
    got, reference = got.float().reshape(-1, got.shape[-1]), reference.float().reshape(-1, got.shape[-1])
    return float(((got - reference).abs().amax(-1) / reference.abs().amax(-1)).max())


def row_relative(got: torch.Tensor, reference: torch.Tensor) -> float:
    """Attention maps [..., keys]: max over rows of max |got - reference| / max reference."""
    got, reference = got.float(), reference.float().to(got.device)
    return float(((got - reference).abs().amax(-1) / reference.amax(-1)).max())


# ------------------------------------------------------------------------ naive references
class DeviceMaskPlan:
    """:class:`~probes.masking.EdgeMaskPlan`'s blocked edges of one row, built with torch on
    the queries' device (no host round trip), once per distinct set of edges and shape."""

    def __init__(self, edges: Sequence[Edges]) -> None:
        self.edges = list(edges)
        self._tensors: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self._built: dict[tuple, torch.Tensor] = {}

    def _indices(self, edges: Edges, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        key = (id(edges), device)
        if key not in self._tensors:
            self._tensors[key] = (torch.as_tensor(edges.queries, dtype=torch.long, device=device),
                                  torch.as_tensor(edges.keys, dtype=torch.long, device=device))
        return self._tensors[key]

    def blocked(self, layer: int, positions: torch.Tensor, kv_length: int) -> torch.Tensor | None:
        """bool [1, queries, keys], or None when nothing is blocked at ``layer``."""
        active = [edges for edges in self.edges if layer in edges.layers]
        if not active:
            return None
        key = (tuple(map(id, active)), positions.device, int(positions.numel()), kv_length)
        if key not in self._built:
            self._built[key] = self._build(active, positions, kv_length)
        return self._built[key]

    def _build(self, active: list[Edges], positions: torch.Tensor, kv_length: int) -> torch.Tensor:
        device, count = positions.device, positions.numel()
        blocked = torch.zeros(count, kv_length, dtype=torch.bool, device=device)
        for edges in active:
            queries, keys = self._indices(edges, device)
            if edges.paired:  # the pairs (queries[i], keys[i]) whose query is in this call
                rows = torch.searchsorted(positions, queries).clamp(max=count - 1)
                hit = (positions[rows] == queries) & (keys < kv_length)
                flat = rows * kv_length + keys.clamp(max=kv_length - 1)
                hits = torch.zeros(count * kv_length, dtype=torch.int32, device=device)
                blocked |= hits.index_add_(0, flat, hit.int()).view(count, kv_length) > 0
                continue
            is_query = torch.isin(positions, queries)
            if edges.queries_from is not None:
                is_query |= positions >= edges.queries_from
            is_key = torch.isin(torch.arange(kv_length, device=device), keys)
            blocked |= is_query[:, None] & is_key[None, :]
        return blocked[None]

    def for_layer(self, layer: int, query_positions: torch.Tensor, kv_length: int) -> LayerEdit | None:
        blocked = self.blocked(layer, query_positions, kv_length)
        return None if blocked is None else LayerEdit(blocked=blocked)


@contextlib.contextmanager
def text_attention(loaded: LoadedModel, base: str) -> Iterator[None]:
    """The language model's attention on ``base`` ("sdpa" or "eager") for the block; eager
    references run the vision tower on the math backend (no fused kernel anywhere)."""
    attention.enable(loaded.model, base)
    try:
        with backend("math") if base == "eager" else nullcontext():
            yield
    finally:
        attention.enable(loaded.model, "sdpa")


@torch.inference_mode()
def naive_logits(loaded: LoadedModel, inputs, knockouts: Sequence) -> torch.Tensor:
    """One full forward per condition (None: clean), masks made on the device. [conditions,
    vocab], float32, on the CPU."""
    n = loaded.adapter.num_layers
    groups = token_groups(loaded.adapter, inputs)
    attention.enable(loaded.model)
    modules = loaded.adapter.attention_modules(loaded.model)
    rows = []
    for knockout in knockouts:
        plan = None if knockout is None else DeviceMaskPlan(knockout.edges(groups, n))
        with attention.attach(modules, plan) if plan else nullcontext(), \
                loaded.adapter.deepstack(loaded.model, removed=[removed(knockout)]):
            rows.append(loaded.model(**inputs.batch, logits_to_keep=1).logits[0, -1].float())
    return torch.stack(rows).cpu()


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
        plan = DeviceMaskPlan(knockout.edges(groups, n)) if knockout else None
        with attention.attach(modules, plan) if plan else nullcontext():
            logits.append(loaded.model(**batch, logits_to_keep=1).logits[0, -1].float().cpu())
        if step == len(tokens) - 1:
            break
        extra = torch.tensor([[token]], device=batch["input_ids"].device)
        batch["input_ids"] = torch.cat([batch["input_ids"], extra], 1)
        batch["attention_mask"] = torch.cat([batch["attention_mask"], torch.ones_like(extra)], 1)
        if "mm_token_type_ids" in batch:
            batch["mm_token_type_ids"] = torch.cat(
                [batch["mm_token_type_ids"], torch.zeros_like(extra)], 1)
    return torch.stack(logits)


def bench_sample(image: Image.Image, question: str = QUESTION) -> Sample:
    return Sample(id="gpu-check/0", image=image, question=question, answer="", kind="bench",
                  boxes=(), target=(), mask=None, dataset="gpu-check")


def build_inputs(loaded: LoadedModel, image: Image.Image, question: str = QUESTION):
    return loaded.adapter.build_inputs([image], [question]).to(loaded.device, loaded.dtype)


@torch.inference_mode()
def naive_layer_sweep(loaded: LoadedModel, sample: Sample, seed: int = 0, index: int = 0,
                      flows: Sequence[str] = LAYER_MASKING_FLOWS) -> np.ndarray:
    """``sweep_sample``'s metrics the slow way, on any device: a clean forward, then one full
    masked forward per condition (tests/bench_layer_masking.py's naive_sweep, on the model's
    device). [series (flows, then controls), layers, metrics]."""
    n = loaded.adapter.num_layers
    inputs = build_inputs(loaded, sample.image, sample.question)
    groups = token_groups(loaded.adapter, inputs)
    clean = naive_logits(loaded, inputs, [None])[0]
    token = int(clean.argmax())
    flow_rows, control_rows = [], []
    for flow_index, flow_conditions in enumerate(conditions(flows, 1, n)):
        _, controls = flow_control(groups, flow_conditions, n,
                                   np.random.default_rng([seed, index, flow_index]))
        flow_rows.append(compare(clean, naive_logits(loaded, inputs, flow_conditions), token))
        control_rows.append(compare(clean, naive_logits(loaded, inputs, controls), token))
    return np.stack(flow_rows + control_rows)


# ------------------------------------------------------------------------------ the checks
def executor_conditions(num_layers: int, adapter=None) -> list:
    """A window-1 sweep at every layer, two all-layer knockouts, and the clean run (None); on a
    model with DeepStack (``adapter``: Qwen3-VL) also DeepStack off, alone and with the
    all-layer sweep flow, before the clean run."""
    every = tuple(range(num_layers))
    sweep = [Knockout.window(SWEEP_FLOW, layer, 1, num_layers) for layer in range(num_layers)]
    extra = []
    if adapter is not None and adapter.deepstack_layers:
        extra = [DeepStackOff.of(adapter),
                 DeepStackOff.of(adapter, knockout=Knockout(parse_flows(SWEEP_FLOW), every))]
    return sweep + [Knockout(parse_flows("image->last"), every),
                    Knockout(parse_flows(SWEEP_FLOW), every), *extra, None]


def recording_rows(loaded: LoadedModel, inputs) -> np.ndarray:
    groups = token_groups(loaded.adapter, inputs)
    text = np.concatenate([groups.question, groups.template, groups.last])
    return np.union1d(text[text > groups.image.max()], groups.image[::16])


class References:
    """The eager references of one model and input, each computed once when first asked for
    (they do not depend on the sdpa backend the checks run under)."""

    def __init__(self, loaded: LoadedModel, inputs) -> None:
        self.loaded, self.inputs = loaded, inputs

    @cached_property
    @torch.inference_mode()
    def attention_maps(self) -> list[torch.Tensor]:
        """Per layer [heads, rows, keys] float32 on the device: eager ``output_attentions``."""
        model, rows = self.loaded.model, recording_rows(self.loaded, self.inputs)
        model.set_attn_implementation({"text_config": "eager"})
        try:
            with backend("math"):
                maps = model(**self.inputs.batch, output_attentions=True).attentions
            index = torch.as_tensor(rows, device=maps[0].device)
            reference = [m[0][:, index].float() for m in maps]
            del maps
        finally:
            attention.enable(model, "sdpa")
        return reference

    @cached_property
    def executor_logits(self) -> torch.Tensor:
        """[conditions + clean, vocab]: one full eager forward per executor condition."""
        with text_attention(self.loaded, "eager"):
            return naive_logits(self.loaded, self.inputs,
                                executor_conditions(self.loaded.adapter.num_layers,
                                                    self.loaded.adapter))


@torch.inference_mode()
def check_recording(loaded: LoadedModel, inputs, references: References, tolerance: float) -> Check:
    """Recorder on sdpa (this backend) vs eager ``output_attentions``, every layer and head."""
    rows = recording_rows(loaded, inputs)
    reference = references.attention_maps
    recorder = AttentionRecorder(queries=rows)
    with attention.attach(loaded.adapter.attention_modules(loaded.model), recorder):
        loaded.model(**inputs.batch, logits_to_keep=1)
    worst = max(row_relative(recorder.maps[layer][0].to(maps.device), maps)
                for layer, maps in enumerate(reference))
    shift = max(row_relative(reference[layer + 1], reference[layer])
                for layer in range(len(reference) - 1))
    heads, _, keys = reference[0].shape
    return Check("recording vs eager output_attentions", worst, tolerance,
                 f"{len(reference)} layers x {heads} heads, {len(rows)} query rows x {keys} keys",
                 shift=shift)


def executor_check(name: str, result, reference: torch.Tensor, tolerance: float,
                   detail: str) -> Check:
    """run_knockouts' logits vs ``reference`` [sweep..., two all-layer, clean]."""
    sweep = reference.shape[0] - 3
    return Check(name, relative_logits(result.logits, reference[:-1]), tolerance, detail,
                 effect=relative_logits(reference[-3:-1], reference[-1:].expand(2, -1)),
                 shift=relative_logits(reference[1:sweep], reference[: sweep - 1]))


@torch.inference_mode()
def check_executor(loaded: LoadedModel, inputs, references: References,
                   tolerance: float) -> list[Check]:
    """run_knockouts (this backend) vs one full eager forward per condition and vs one full
    sdpa forward per condition on this backend."""
    knockouts = executor_conditions(loaded.adapter.num_layers, loaded.adapter)
    result = run_knockouts(loaded, inputs, knockouts[:-1], batch_size=8)
    detail = (f"{len(knockouts) - 1} conditions, {inputs.input_ids.shape[1]} tokens, "
              f"shared prefix {result.prefix_length}")
    same = naive_logits(loaded, inputs, knockouts)
    return [executor_check("executor vs eager forwards", result, references.executor_logits,
                           tolerance, detail),
            executor_check("executor vs sdpa forwards", result, same, tolerance, detail)]


def check_generate(loaded: LoadedModel, inputs, tolerance: float, steps: int) -> Check:
    """masked_generate (this backend) vs the eager no-cache loop, clean and under GENERATE_FLOW
    at every layer. ``worst`` also covers the tokens: where the engine picked another token
    than the reference's argmax, the reference's margin between the two (a rounding tie)."""
    n = loaded.adapter.num_layers
    config = loaded.model.generation_config
    eos = config.eos_token_id
    config.eos_token_id = -1  # decode every step, whatever comes out
    worst, same, total, first = 0.0, 0, 0, []
    try:
        for knockout in (None, Knockout(parse_flows(GENERATE_FLOW), tuple(range(n)))):
            generation = masked_generate(loaded, inputs, knockout, max_new_tokens=steps)
            with text_attention(loaded, "eager"):
                reference = no_cache_logits(loaded, inputs, knockout, generation.tokens)
            chosen = torch.tensor(generation.tokens)
            margin = reference.max(-1).values - reference.gather(1, chosen[:, None])[:, 0]
            scale = reference.abs().amax(-1)
            worst = max(worst, relative_logits(generation.logits, reference),
                        float((margin / scale).max()))
            same += int((reference.argmax(-1) == chosen).sum())
            total += len(chosen)
            first.append(reference[0])
    finally:
        config.eos_token_id = eos
    return Check("masked generate vs an eager no-cache loop", worst, tolerance,
                 f"clean and {GENERATE_FLOW} at every layer, {steps} tokens each, "
                 f"{same}/{total} tokens the reference's argmax",
                 effect=relative_logits(first[1], first[0]))


def check_layer_masking(loaded: LoadedModel, sample: Sample, tolerance: float) -> Check:
    """sweep_sample's logit changes vs the naive way's (this backend), relative to the clean
    max |logit|."""
    ours = sweep_sample(loaded, sample, LAYER_MASKING_FLOWS, 1, 0, 0, batch_size=8)
    naive = naive_layer_sweep(loaded, sample)
    with torch.inference_mode():
        inputs = build_inputs(loaded, sample.image, sample.question)
        scale = float(naive_logits(loaded, inputs, [None]).abs().max())
    change = naive[..., 1]  # the answer token's logit change, [series, layers]
    return Check("layer masking sweep vs one masked forward per condition",
                 float(np.abs(ours.metrics[..., 1] - change).max()) / scale, tolerance,
                 f"{LAYER_MASKING_FLOWS[0]} + control at {loaded.adapter.num_layers} layers, "
                 "logit change of the answer token",
                 shift=float(np.abs(change[:, 1:] - change[:, :-1]).max()) / scale)


def check_parts(family: str, loaded: LoadedModel, inputs, references: References,
                tolerance: Tolerance, shapes) -> dict[str, Callable[[], list[dict]]]:
    """Every check of one model, by part name, each giving its rows (run under one backend)."""
    parts = {
        "recording": lambda: [check_recording(loaded, inputs, references,
                                              tolerance.attention).row()],
        "executor": lambda: [check.row() for check in check_executor(loaded, inputs, references,
                                                                     tolerance.logits)],
        "generate": lambda: [check_generate(loaded, inputs, tolerance.logits, shapes.steps).row()],
    }
    if family == "llava":
        sample = bench_sample(Image.new("RGB", shapes.check, RED))
        parts["layer-masking"] = lambda: [check_layer_masking(loaded, sample,
                                                              tolerance.logits).row()]
    return parts
