"""The nnsight engine: the executor's knockouts, recording and masked decoding, each one
``with model.trace(...)`` (or ``model.generate``) of nnsight's vision-language model class
with :func:`probes.nnsight.edits.apply` inside, conditions (and examples) as batch rows of one
invoke. It recomputes every condition in full (no shared prefix, no late joining), so the
fast engine (:mod:`probes.run`) stays the default; this one is the path that runs wherever
nnsight runs the model (``remote=``), and the reference the fast engine can be checked with.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence

import nnsight
import numpy as np
import torch
from transformers import GenerationConfig

from probes import attention
from probes.cache import every_key_cache
from probes.compat import with_cache
from probes.deepstack import removed
from probes.errors import UserError
from probes.masking import EdgeMaskPlan, Edges
from probes.models.adapters import VLInputs
from probes.models.loading import LoadedModel
from probes.nnsight.edits import Edits, apply
from probes.nnsight.version import check_version
from probes.record import AttentionRecorder
from probes.run import Generation, KnockoutResult
from probes.structure import AttentionStructure
from probes.tokens import TokenGroups, token_groups, token_groups_batch

_WRAPPED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def wrap(loaded: LoadedModel):
    """``loaded.model`` as nnsight's vision-language model (``TransformersModel(...,
    task="image-text-to-text")``: ``LanguageModel`` would drop the image), made once per
    model; its language model runs plain sdpa or eager."""
    check_version()
    from nnsight.modeling.transformers import TransformersModel

    attention.use(loaded.model, edited=False)  # the nnsight engine registers no function
    if loaded.model not in _WRAPPED:
        _WRAPPED[loaded.model] = TransformersModel(loaded.model, task="image-text-to-text",
                                                   processor=loaded.processor)
    return _WRAPPED[loaded.model]


def _shifted(edges: Edges, offset: int) -> Edges:
    """``edges`` of an unpadded row, in the coordinates of that row left-padded by ``offset``."""
    if offset == 0:
        return edges
    start = None if edges.queries_from is None else edges.queries_from + offset
    return Edges(edges.queries + offset, edges.keys + offset, edges.layers, start, edges.paired)


def edits(loaded: LoadedModel, inputs: VLInputs, knockouts=None, record=None, steering=None,
          new_tokens: int = 0, groups: Sequence[TokenGroups] | None = None) -> Edits:
    """The :class:`~probes.nnsight.edits.Edits` a trace of ``inputs`` applies.

    ``knockouts``: one knockout for every row, or a sequence with one per row (None = a clean
    row); anything with ``.edges(groups, num_layers)`` (``Knockout``, ``SetKnockout``,
    ``EdgeKnockout``). ``record``: an :class:`~probes.record.AttentionRecorder` whose
    ``queries`` (and ``layers``) say which rows to record. ``steering``: a
    :class:`~probes.steer.SteeringPlan` (bias only). ``new_tokens``: positions a
    ``generate`` adds. ``groups``: each row's token groups (default: from ``inputs``).
    """
    adapter, rows = loaded.adapter, inputs.input_ids.shape[0]
    length = inputs.input_ids.shape[1] + max(new_tokens - 1, 0)
    n = adapter.num_layers
    groups = list(groups) if groups is not None else token_groups_batch(adapter, inputs)
    blocked, bias = {}, {}
    positions = torch.arange(length)
    if knockouts is not None:
        per_row = list(knockouts) if isinstance(knockouts, (list, tuple)) else [knockouts] * rows
        if len(per_row) != rows:
            raise ValueError(f"{len(per_row)} knockouts for {rows} batch rows")
        plan = EdgeMaskPlan([[] if k is None else k.edges(g, n) for k, g in zip(per_row, groups)],
                            [g.padding.size for g in groups],
                            [AttentionStructure.of(adapter, inputs, row) for row in range(rows)])
        for layer in range(n):
            mask = plan.blocked(layer, positions, length)
            if mask is not None:
                blocked[layer] = mask.to(loaded.device)
    if steering is not None:
        for layer in range(n):
            edit = steering.for_layer(layer, positions, length)
            if edit is None:
                continue
            if edit.mix is not None:
                raise UserError("the nnsight engine steers with an additive bias only; use the "
                                "fast engine for mixing attention probabilities.")
            blocked_here = edit.blocked
            if blocked_here is not None:
                blocked[layer] = blocked_here.to(loaded.device)
            if edit.bias is not None:
                bias[layer] = edit.bias.to(loaded.device)
    record_positions, record_layers = None, ()
    if record is not None:
        queries = torch.from_numpy(np.asarray(record.queries, dtype=np.int64))
        record_positions = queries.to(loaded.device)
        record_layers = tuple(sorted(record.layers)) if record.layers is not None else tuple(range(n))
    return Edits(adapter.layers_path, adapter.attention_name, n, blocked, bias,
                 record_positions, record_layers)


def model_inputs(loaded: LoadedModel, inputs: VLInputs) -> dict:
    """What a trace of ``inputs`` passes the model: the batch, plus position ids counted from
    each row's first real token where rows are left-padded (as ``generate`` counts them)."""
    batch = dict(inputs.batch)
    if not bool(inputs.attention_mask.bool().all()):
        batch["position_ids"] = loaded.adapter.position_ids(loaded.model, inputs.batch)
    return batch


def dropping(loaded: LoadedModel, conditions: Sequence):
    """The forwards inside drop, in batch row b, the DeepStack additions ``conditions[b]``
    removes (:class:`~probes.deepstack.DeepStackOff`; a hook on the wrapped torch model, so it
    acts where the model runs here, not remotely)."""
    return loaded.adapter.deepstack(loaded.model, removed=[removed(c) for c in conditions])


def repeat_rows(inputs: VLInputs, times: int) -> VLInputs:
    """A one-row input as ``times`` identical rows. Every field of a one-row batch is that
    row's (its images' patches, grids, sizes, token types), so concatenating it is the batch
    of the repeated row, whatever the family."""
    if inputs.input_ids.shape[0] != 1:
        raise ValueError("only a one-row input is repeated into condition rows")
    batch = type(inputs.batch)({key: torch.cat([value] * times) if isinstance(value, torch.Tensor)
                                else value for key, value in inputs.batch.items()})
    return VLInputs(batch, inputs.images * times, inputs.prompts * times)


@torch.inference_mode()
def trace(loaded: LoadedModel, inputs: VLInputs, planned: Edits, remote=None
          ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """One forward of ``inputs`` under ``planned``: (float32 logits at the last position
    [rows, vocab] on the CPU, {layer: recorded probabilities [rows, heads, queries, keys]})."""
    model = wrap(loaded)
    options = {} if remote is None else {"remote": remote}
    # the last position's logits only, and no KV cache: nothing decodes after this forward
    batch = {**model_inputs(loaded, inputs), "logits_to_keep": 1, "use_cache": False}
    with model.trace(batch, **options):
        recorded = apply(model, planned)
        logits = model.lm_head.output[:, -1].save()
    return logits.float().cpu(), {layer: p.cpu() for layer, p in recorded.items()}


def _fill(recorder: AttentionRecorder, layer: int, probabilities: torch.Tensor,
          length: int) -> None:
    """Store ``probabilities`` (the recorder's query rows over every key) as the recorder
    itself stores a layer (its keys, reductions and max over queries)."""
    edit = recorder.for_layer(layer, torch.arange(length), length)
    if edit is not None:
        edit.record(layer, probabilities)


def record(loaded: LoadedModel, inputs: VLInputs, recorder: AttentionRecorder, knockouts=None,
           remote=None) -> torch.Tensor:
    """Fill ``recorder.maps`` (as the fast engine does) from one forward of ``inputs`` (every
    row, under ``knockouts`` if given); returns the logits at the last position."""
    planned = edits(loaded, inputs, knockouts, record=recorder)
    per_row = knockouts if isinstance(knockouts, (list, tuple)) else [knockouts] * len(inputs.prompts)
    with dropping(loaded, per_row):
        logits, recorded = trace(loaded, inputs, planned, remote)
    for layer, probabilities in recorded.items():
        _fill(recorder, layer, probabilities, inputs.input_ids.shape[1])
    return logits


def run_knockouts(loaded: LoadedModel, inputs: VLInputs, knockouts: Sequence,
                  batch_size: int = 16, groups: TokenGroups | None = None,
                  record: AttentionRecorder | None = None, remote=None) -> KnockoutResult:
    """:func:`probes.run.run_knockouts` (logits, and recorded attention when ``record`` is
    given) with the nnsight engine: the one-row ``inputs`` repeated once per condition, plus a
    clean row, ``batch_size`` rows per trace, each row a full forward."""
    groups = groups or token_groups(loaded.adapter, inputs)
    conditions = [None, *knockouts]  # the clean row first
    logits, maps = [], []
    length = inputs.input_ids.shape[1]
    for start in range(0, len(conditions), batch_size):
        chunk = conditions[start : start + batch_size]
        rows = repeat_rows(inputs, len(chunk))
        planned = edits(loaded, rows, chunk, record=record, groups=[groups] * len(chunk))
        with dropping(loaded, chunk):
            chunk_logits, recorded = trace(loaded, rows, planned, remote)
        logits.append(chunk_logits)
        maps.append(recorded)
    logits = torch.cat(logits)
    attentions = clean_attentions = None
    if record is not None:
        every = stored_maps(record, maps, length)
        attentions = {layer: rows[1:] for layer, rows in every.items()}
        clean_attentions = {layer: rows[:1] for layer, rows in every.items()}
    return KnockoutResult(logits[1:], logits[0], 0, None, attentions, clean_attentions)


def stored_maps(record: AttentionRecorder, maps: list[dict], length: int) -> dict:
    """Every row's stored maps (the clean row first), as the recorder stores them."""
    template = AttentionRecorder(record.queries, record.keys, record.layers, record.reduce,
                                 record.max_queries)
    for layer in sorted(maps[0]):
        _fill(template, layer, torch.cat([m[layer] for m in maps]), length)
    return template.maps


def run_examples(loaded: LoadedModel, images: Sequence, questions: Sequence[str],
                 knockouts: Sequence, batch_size: int = 16, remote=None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Examples x conditions as the rows of one invoke per trace: (logits [examples,
    conditions, vocab], clean logits [examples, vocab]), float32 on the CPU. Rows are
    left-padded to the longest example; each example's knockouts are made from its own
    token groups and moved with its padding."""
    adapter = loaded.adapter
    conditions = [None, *knockouts]
    per_chunk = max(1, batch_size // len(images))
    results = []
    for start in range(0, len(conditions), per_chunk):
        chunk = conditions[start : start + per_chunk]
        inputs = adapter.build_inputs([i for i in images for _ in chunk],
                                      [q for q in questions for _ in chunk])
        inputs = inputs.to(loaded.device, loaded.dtype)
        rows = token_groups_batch(adapter, inputs)
        knocked = []
        for row, group in enumerate(rows):
            condition = chunk[row % len(chunk)]
            knocked.append(None if condition is None else _Padded(condition, group.padding.size))
        planned = edits(loaded, inputs, knocked, groups=rows)
        with dropping(loaded, knocked):
            logits, _ = trace(loaded, inputs, planned, remote)
        results.append(logits.view(len(images), len(chunk), -1))
    logits = torch.cat(results, 1)
    return logits[:, 1:], logits[:, 0]


class _Padded:
    """A knockout whose edges, made from the unpadded example's groups, are moved by the
    left padding of its row (token groups name positions of the row as padded already;
    explicit positions, as in ``EdgeKnockout``, name the example's own)."""

    def __init__(self, knockout, padding: int) -> None:
        self.knockout, self.padding = knockout, padding
        self.removed = removed(knockout)  # DeepStack additions are dropped by row, unmoved

    def edges(self, groups: TokenGroups, num_layers: int) -> list[Edges]:
        inner = getattr(self.knockout, "knockout", self.knockout)  # a DeepStackOff's knockout
        if inner is None or hasattr(inner, "flows"):  # named groups: the padded row's own groups
            return self.knockout.edges(groups, num_layers)
        return [_shifted(e, self.padding) for e in self.knockout.edges(groups, num_layers)]


@torch.inference_mode()
def masked_generate(loaded: LoadedModel, inputs: VLInputs, knockouts: Sequence,
                    max_new_tokens: int = 8, groups: TokenGroups | None = None,
                    remote=None) -> list[Generation]:
    """Greedy decoding of a one-row input under each of ``knockouts`` (None = clean), all of
    them rows of one ``model.generate`` trace whose every step applies the edits: one
    :class:`~probes.run.Generation` per knockout, each stopped at its first end token, as
    :func:`probes.run.masked_generate` decodes."""
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be at least 1")
    groups = groups or token_groups(loaded.adapter, inputs)
    rows = repeat_rows(inputs, len(knockouts))
    planned = edits(loaded, rows, list(knockouts), new_tokens=max_new_tokens,
                    groups=[groups] * len(knockouts))
    model = wrap(loaded)
    options = {} if remote is None else {"remote": remote}
    stop = loaded.eos_token_ids()
    # plain greedy (whatever the checkpoint's own generation settings), every step made: an end
    # token is suppressed in what is fed back, which only steps after it see, and they are cut
    greedy = GenerationConfig(max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                              do_sample=False, num_beams=1, eos_token_id=sorted(stop) or None,
                              pad_token_id=loaded.processor.tokenizer.pad_token_id)
    # sliding-window layers keep every key, so that the edits' key positions stay absolute
    options.update(with_cache(loaded.model, every_key_cache(loaded.model)))
    with dropping(loaded, knockouts), \
            model.generate(dict(rows.batch), generation_config=greedy, **options) as tracer:
        steps = nnsight.save([])
        for _ in tracer.iter[:max_new_tokens]:
            apply(model, planned)
            steps.append(model.lm_head.output[:, -1].float().cpu())
    logits = torch.stack(list(steps), 1)  # [rows, steps, vocab]
    generations = []
    for row in range(len(knockouts)):
        tokens = []
        for step in range(logits.shape[1]):
            tokens.append(int(logits[row, step].argmax()))
            if tokens[-1] in stop:
                break
        generations.append(Generation(tokens, logits[row, : len(tokens)].clone()))
    return generations
