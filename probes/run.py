"""The executor: many conditions (knockouts) over one input, batched, reusing what is shared.

Everything before the first blocked query position is identical to the clean run at every
layer, so its keys and values are taken from the clean pass and shared by all conditions; only
the suffix is recomputed. Layers before a condition's first blocked layer are identical too, so
each condition joins the batch at its first blocked layer, from the clean hidden states there:
a batch of conditions runs each layer only for the conditions that differ from the clean run.

Knockouts are read through ``.layers`` and ``.edges(groups, num_layers)`` only (a list of edge
objects with ``.queries``, ``.keys``, ``.layers``, ``.queries_from``, which
:class:`~probes.masking.EdgeMaskPlan` turns into blocked edges), so any knockout-like class works.

A model spread over several devices (``load_model(device_map=...)``) runs layer by layer on
each layer's own device: hidden states, masks, rotary tables and KV buffers are handed to a
layer on its device (found from the layer, :func:`probes.devices.module_device`), and what is
returned (logits, hidden states, recorded attention) is on the CPU.

>>> from PIL import Image
>>> from probes.models.loading import load_model
>>> from probes.masking import Knockout
>>> loaded = load_model("tiny-random-llava")
>>> inputs = loaded.adapter.build_inputs([Image.new("RGB", (64, 64))], ["what shape is it ?"])
>>> sweep = [Knockout.window("image->question,last", l, 1, 6) for l in range(6)]
>>> result = run_knockouts(loaded, inputs, sweep)
>>> result.logits.shape[0], result.clean_logits.dim()
(6, 1)
>>> run_knockouts(loaded, inputs, sweep, hidden_states=True).hidden_states.shape
torch.Size([6, 7, 128])
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from probes import attention
from probes.cache import ReservedLayer, SharedPrefixCache, reserved_cache
from probes.compat import output_cache, with_cache
from probes.deepstack import Additions, first_position, removed
from probes.devices import module_device
from probes.masking import EdgeMaskPlan
from probes.models.adapters import VLInputs
from probes.models.loading import LoadedModel
from probes.record import AttentionRecorder
from probes.structure import AttentionStructure
from probes.suffix import Placement, RotaryTables, SuffixMasks
from probes.tokens import TokenGroups, token_groups


def windowed(loaded: LoadedModel) -> bool:
    """Whether any decoder layer of the model slides (its own cache would drop keys)."""
    return any(window is not None for window in loaded.adapter.sliding_windows())


@dataclass
class CleanPass:
    """What the clean forward of one input leaves for the conditions to share."""

    # logits, hidden states and position ids are on the device of the inputs' input_ids; keys
    # and values (and buffers) on the device of their layer
    logits: torch.Tensor  # [vocab] at the last position, float32
    hidden_states: tuple[torch.Tensor, ...]  # [1, seq, hidden] entering each layer, then normed
    keys_values: list[tuple[torch.Tensor, torch.Tensor]]  # per layer, [1, kv_heads, seq, dim]
    position_ids: torch.Tensor  # [1, seq] or [3, 1, seq]
    # per layer, (keys, values) buffers with room after seq (clean_pass(reserve=...)), which one
    # decode may take over (masked_generate(donate=True)); after that the pass is spent
    buffers: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    donated: bool = False
    # {layer: (positions, values)}: what the model added to the residual stream after that
    # layer (Qwen3-VL's DeepStack; Adapter.deepstack), not in hidden_states, which a layer leaves
    additions: dict = field(default_factory=dict)

    def check_usable(self) -> None:
        if self.donated:
            raise ValueError("this clean pass gave its key/value buffers to a decode "
                             "(donate=True) and cannot be shared again; run clean_pass anew")


@torch.inference_mode()
def clean_pass(loaded: LoadedModel, inputs: VLInputs, reserve: int = 0) -> CleanPass:
    """One plain forward of a single-row input, keeping hidden states and the KV cache.

    ``reserve > 0`` writes the keys and values into buffers with that many positions of room,
    so that one decode of up to ``reserve + 1`` tokens can continue in them without copying
    the prompt's (``masked_generate(..., donate=True)``). See :class:`CleanPass` for which
    device holds what."""
    if inputs.input_ids.shape[0] != 1:
        raise ValueError("the executor runs conditions over one input row at a time")
    attention.enable(loaded.model)
    # every key kept (sliding-window layers too: the engine applies windows in its own masks)
    cache = reserved_cache(loaded.model, reserve) if reserve > 0 or windowed(loaded) else None
    # logits of the last position only (as generate does): a 7B vocabulary over every prompt
    # position would cost 80 MB and a lm_head pass per token for nothing
    additions: dict = {}
    with loaded.adapter.deepstack(loaded.model, captured=additions):
        output = loaded.model(**inputs.batch, use_cache=True, output_hidden_states=True,
                              logits_to_keep=1, **with_cache(loaded.model, cache))
    cache = output_cache(output)
    keys_values = [(layer.keys, layer.values) for layer in cache.layers]
    buffers = None
    if all(isinstance(layer, ReservedLayer) for layer in cache.layers):
        buffers = [layer.buffers for layer in cache.layers]
    positions = loaded.adapter.position_ids(loaded.model, inputs.batch)
    device = inputs.input_ids.device  # where accelerate's hooks return a model's outputs, too
    return CleanPass(output.logits[0, -1].float().to(device),
                     tuple(states.to(device) for states in output.hidden_states), keys_values,
                     positions.to(device), buffers, additions=additions)


def run_layers(loaded: LoadedModel, entering: Sequence[torch.Tensor], starts: Sequence[int],
               rows: Sequence[int], start: int, stop: int, cache, masks: SuffixMasks,
               rotary: RotaryTables, on_layer: Callable[[int, torch.Tensor], None] | None = None,
               additions: Additions | None = None,
               placement: Placement | None = None) -> torch.Tensor:
    """Decoder layers and the final norm for queries at positions ``start..stop-1`` of the runs
    ``rows`` (indices into ``masks.rows``). Run ``rows[i]`` joins at layer ``starts[i]``
    (ascending) with ``entering[layer]`` [1, queries, hidden], the clean hidden states entering
    that layer: nothing differs from the clean run before a run's first blocked layer, so it
    costs nothing there. ``on_layer(layer, hidden)`` sees each layer's output (on that layer's
    device). ``additions`` adds what the model adds after a layer (DeepStack), as each row
    keeps it. Each layer runs on its own device, its inputs moved there. Returns [rows, hidden]
    at the last query position after the final norm, on the final norm's device.
    ``placement``: the model's :class:`Placement`, when the caller runs it more than once."""
    placement = placement or Placement.of(loaded)
    hidden, active = None, 0
    for index, (layer, device) in enumerate(placement.layers):
        joining = 0
        while active + joining < len(starts) and starts[active + joining] == index:
            joining += 1
        if joining:
            new = entering[index].to(device).expand(joining, -1, -1)
            hidden = new if hidden is None else torch.cat([hidden.to(device), new])
            active += joining
        if hidden is None:
            continue
        hidden = hidden.to(device)
        mask = masks.for_call(index, rows[:active], start, stop, device)
        hidden = layer(hidden, attention_mask=mask, use_cache=True, **with_cache(layer, cache),
                       position_embeddings=rotary.rows(device, start, stop, index))
        hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        if on_layer is not None:
            on_layer(index, hidden)
        if additions is not None:
            hidden = additions.after(index, hidden, rows[:active], start, stop)
    return placement.norm(hidden[:, -1].to(placement.norm_device))


@dataclass
class KnockoutResult:
    """Next-token logits at ``last`` for each condition, in the order given, and clean.

    Every tensor is on the CPU. The optional fields are None unless asked for: ``hidden_states`` [conditions, layers + 1,
    hidden] at ``last``, indexed as ``output_hidden_states`` (entry i enters layer i, the last is
    the output of the final norm); ``attentions`` {layer: [conditions, ...]} and
    ``clean_attentions`` {layer: [1, ...]}, each map as an :class:`AttentionRecorder` stores it.
    """

    logits: torch.Tensor  # [conditions, vocab], float32
    clean_logits: torch.Tensor  # [vocab]
    prefix_length: int  # positions shared with the clean run
    hidden_states: torch.Tensor | None = None
    attentions: dict[int, torch.Tensor] | None = None
    clean_attentions: dict[int, torch.Tensor] | None = None


def first_blocked_position(groups: TokenGroups, knockouts: Sequence, num_layers: int) -> int:
    """The earliest query position any knockout blocks, generated queries included (or
    ``last`` when none blocks a prompt position): everything before it is shared."""
    starts = [int(groups.last[0])]
    for knockout in knockouts:
        for edges in knockout.edges(groups, num_layers):
            starts += [int(edges.queries.min())] if edges.queries.size else []
            starts += [edges.queries_from] if edges.queries_from is not None else []
    return min(starts + first_position(groups, knockouts))


@torch.inference_mode()
def run_knockouts(loaded: LoadedModel, inputs: VLInputs, knockouts: Sequence,
                  batch_size: int = 16, clean: CleanPass | None = None,
                  groups: TokenGroups | None = None, *, hidden_states: bool = False,
                  record: AttentionRecorder | None = None) -> KnockoutResult:
    """Logits at ``last`` under each knockout, equal (to float rounding) to one full masked
    forward per condition, computed with a shared prefix and conditions joining the batch at
    their first blocked layer. ``groups`` defaults to the inputs' own (with the box they were
    built with, :func:`probes.inputs.build_inputs`; see :func:`~probes.tokens.token_groups`).

    ``hidden_states=True`` also returns each condition's hidden states at ``last``. ``record``
    (an :class:`AttentionRecorder`, used as a template: its queries, keys, layers and
    reductions; its own ``maps`` stay empty) also returns each condition's recorded attention;
    recorded query rows are then recomputed too, and one extra clean run supplies the layers
    before each condition's first blocked layer.
    """
    num_layers = loaded.adapter.num_layers
    groups = groups or token_groups(loaded.adapter, inputs)
    clean = clean or clean_pass(loaded, inputs)
    clean.check_usable()
    rows = [knockout.edges(groups, num_layers) for knockout in knockouts]
    starts = [min(knockout.layers, default=num_layers) for knockout in knockouts]
    prefix = first_blocked_position(groups, knockouts, num_layers)
    if record is not None:
        rows.append([])  # the clean run, for the layers before each condition's first
        starts.append(0)
        prefix = min([prefix, *record.queries.tolist()])
    structure = AttentionStructure.of(loaded.adapter, inputs)
    prefix = structure.shared_prefix(prefix)
    length = clean.hidden_states[0].shape[1]
    # conditions that block nothing stay clean: they never join
    order = [i for i in sorted(range(len(rows)), key=starts.__getitem__) if starts[i] < num_layers]
    masks = SuffixMasks(rows, prefix, length, clean.hidden_states[0].dtype,
                        clean.hidden_states[0].device, structure)
    cache = SharedPrefixCache(clean.keys_values, prefix, max(1, min(batch_size, len(order))),
                              length, one_shot=True)
    tables = RotaryTables(loaded, clean.hidden_states[0], clean.position_ids[..., prefix:length], prefix)
    collect = _Collector(loaded, clean, rows, starts, hidden_states, record)
    additions = Additions(clean.additions, [*knockouts, None][: len(rows)])
    head = loaded.adapter.lm_head(loaded.model)
    # the final norm's outputs, gathered on the device of the head that reads them
    finals = clean.hidden_states[0].new_empty(len(rows), clean.hidden_states[0].shape[-1],
                                              device=module_device(head))
    entering = additions.entering(clean.hidden_states, prefix)
    for chunk_start in range(0, len(order), batch_size):
        chunk = order[chunk_start : chunk_start + batch_size]
        with collect.chunk(chunk) as on_layer:
            normed = run_layers(loaded, entering, [starts[i] for i in chunk], chunk, prefix,
                                length, cache, masks, tables, on_layer, additions)
        finals[chunk] = normed.to(finals.device)
        collect.final(chunk, normed)
    logits = clean.logits.cpu().repeat(len(rows), 1)
    if order:
        logits[order] = head(finals[order]).float().cpu()
    return KnockoutResult(logits[: len(knockouts)], clean.logits.cpu(), prefix,
                          collect.hidden_states(len(knockouts)), collect.attentions(len(knockouts)),
                          collect.clean_attentions())


class _Collector:
    """Gathers, chunk by chunk, what run_knockouts returns besides logits: hidden states at
    ``last`` and recorded attention. A condition's layers before its first blocked layer are
    the clean run's (rows join late), so they are filled from the clean pass or the clean row.
    Everything is kept on the CPU, moved there as each layer makes it."""

    def __init__(self, loaded, clean, rows, starts, hidden_states, record) -> None:
        self.loaded, self.starts, self.record = loaded, starts, record
        self.hidden = None
        if hidden_states:  # the clean value everywhere, overwritten where a condition differs
            clean_states = torch.stack([h[0, -1] for h in clean.hidden_states]).cpu()
            self.hidden = clean_states.repeat(len(rows), 1, 1)
        self.maps: list[dict[int, torch.Tensor]] = [{} for _ in rows]

    @contextlib.contextmanager
    def chunk(self, chunk: Sequence[int]):
        on_layer = None
        if self.hidden is not None:
            def on_layer(layer: int, hidden: torch.Tensor) -> None:
                if layer + 1 < self.hidden.shape[1] - 1:  # the last entry is after the final norm
                    self.hidden[chunk[: hidden.shape[0]], layer + 1] = hidden[:, -1].cpu()
        if self.record is None:
            yield on_layer
            return
        recorder = AttentionRecorder(self.record.queries, self.record.keys, self.record.layers,
                                     self.record.reduce, self.record.max_queries)
        attention.enable(self.loaded.model)
        modules = self.loaded.adapter.attention_modules(self.loaded.model)
        with attention.attach(modules, recorder):
            yield on_layer
        for layer, maps in recorder.maps.items():
            for row, condition in enumerate(chunk[: maps.shape[0]]):
                if layer >= self.starts[condition]:
                    self.maps[condition][layer] = maps[row]

    def final(self, chunk: Sequence[int], normed: torch.Tensor) -> None:
        if self.hidden is not None:
            self.hidden[chunk, -1] = normed.cpu()

    def hidden_states(self, conditions: int) -> torch.Tensor | None:
        return None if self.hidden is None else self.hidden[:conditions].float()

    def clean_attentions(self) -> dict[int, torch.Tensor] | None:
        if self.record is None:
            return None
        return {layer: maps[None].cpu() for layer, maps in sorted(self.maps[-1].items())}

    def attentions(self, conditions: int) -> dict[int, torch.Tensor] | None:
        if self.record is None:
            return None
        clean = self.maps[-1]  # the clean row, which ran every layer
        return {layer: torch.stack([self.maps[c].get(layer, clean[layer]) for c in range(conditions)]).cpu()
                for layer in sorted(clean)}


@torch.inference_mode()
def run_knockouts_naively(loaded: LoadedModel, inputs: VLInputs, knockouts: Sequence) -> torch.Tensor:
    """The reference: one full forward per condition, batch 1. [conditions, vocab]."""
    num_layers = loaded.adapter.num_layers
    groups = token_groups(loaded.adapter, inputs)
    attention.enable(loaded.model)
    modules = loaded.adapter.attention_modules(loaded.model)
    rows = []
    for knockout in knockouts:
        with attention.attach(modules, EdgeMaskPlan([knockout.edges(groups, num_layers)])), \
                loaded.adapter.deepstack(loaded.model, removed=[removed(knockout)]):
            rows.append(loaded.model(**inputs.batch).logits[0, -1].float().cpu())
    return torch.stack(rows)


@dataclass
class Generation:
    """A greedy continuation: its tokens and the logits that chose each of them."""

    tokens: list[int]
    logits: torch.Tensor  # [steps, vocab], float32, on the CPU


@torch.inference_mode()
def masked_generate(loaded: LoadedModel, inputs: VLInputs, knockout, max_new_tokens: int = 8,
                    clean: CleanPass | None = None, groups: TokenGroups | None = None,
                    donate: bool = False) -> Generation:
    """Greedy decoding of one input under ``knockout`` (generated tokens are queries too when a
    flow names ``generated`` or ``text``), reusing the clean pass's keys and values for every
    position before the first blocked query. ``knockout=None`` decodes clean. ``groups``
    defaults to the inputs' own, as in :func:`run_knockouts`; :func:`probes.quick.decode`
    gives the reply as text.

    ``donate=True``: a clean pass made with room to spare (``clean_pass(..., reserve=...)``)
    hands its buffers over, and the decode writes in them instead of copying the prefix; the
    clean pass cannot serve another decode afterwards (one-shot use, as ``aif_generate``)."""
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be at least 1")
    num_layers = loaded.adapter.num_layers
    groups = groups or token_groups(loaded.adapter, inputs)
    if clean is None:  # a clean pass of our own is shared with nobody: decode in its buffers
        clean, donate = clean_pass(loaded, inputs, reserve=max_new_tokens), True
    clean.check_usable()
    knockouts = [] if knockout is None else [knockout]
    structure = AttentionStructure.of(loaded.adapter, inputs)
    prefix = structure.shared_prefix(first_blocked_position(groups, knockouts, num_layers))
    length = clean.hidden_states[0].shape[1]
    total = length + max_new_tokens - 1  # every position a forward will see
    like = clean.hidden_states[0]
    masks = SuffixMasks([knockout.edges(groups, num_layers) if knockout else []], prefix, total,
                        like.dtype, like.device, structure)
    room = clean.buffers is not None and clean.buffers[0][0].shape[-2] >= total
    if donate and room:
        cache = SharedPrefixCache.adopting(clean.buffers, prefix)
        clean.donated = True
    else:
        cache = SharedPrefixCache(clean.keys_values, prefix, 1, total)
    # text after the prompt continues one position at a time (in every mRoPE axis too);
    # the rotary tables of every position are computed once
    last = clean.position_ids[..., -1:]
    generated = last + torch.arange(1, max_new_tokens, device=last.device)
    positions = torch.cat([clean.position_ids[..., prefix:], generated], -1)
    tables = RotaryTables(loaded, clean.hidden_states[0], positions, prefix)
    head = loaded.adapter.lm_head(loaded.model)
    additions = Additions(clean.additions, knockouts or [None])
    embed = loaded.adapter.language_model(loaded.model).get_input_embeddings()
    head_device, embed_device = module_device(head), module_device(embed)
    placement = Placement.of(loaded)
    hidden = run_layers(loaded, [clean.hidden_states[0][:, prefix:]], [0], [0],
                        prefix, length, cache, masks, tables, additions=additions,
                        placement=placement)
    tokens, step_logits, stop = [], [], loaded.eos_token_ids()
    for step in range(max_new_tokens):
        logits = head(hidden.to(head_device)).float()[0]
        token = int(logits.argmax())
        tokens.append(token)
        step_logits.append(logits)
        if token in stop or step == max_new_tokens - 1:
            break
        position = length + step
        token_embedding = embed(torch.tensor([[token]], device=embed_device))
        hidden = run_layers(loaded, [token_embedding], [0], [0], position, position + 1,
                            cache, masks, tables, placement=placement)
    return Generation(tokens, torch.stack(step_logits).cpu())
