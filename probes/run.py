"""The executor: many conditions (knockouts) over one input, batched, reusing what is shared.

Everything before the first blocked query position is identical to the clean run at every
layer, so its keys and values are taken from the clean pass and shared by all conditions; only
the suffix is recomputed. Layers before a condition's first blocked layer are identical too, so
each condition's suffix starts from the clean hidden states at that layer. Conditions are
sorted by their first layer and run as batches.

>>> from PIL import Image
>>> from probes.models.loading import load_model
>>> from probes.masking import Knockout
>>> loaded = load_model("tiny-random-llava")
>>> inputs = loaded.adapter.build_inputs([Image.new("RGB", (64, 64))], ["what shape is it ?"])
>>> sweep = [Knockout.window("image->question,last", l, 1, 6) for l in range(6)]
>>> result = run_knockouts(loaded, inputs, sweep)
>>> result.logits.shape[0], result.clean_logits.dim()
(6, 1)
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from probes import attention
from probes.masking import EdgeMaskPlan, Knockout
from probes.models.adapters import VLInputs
from probes.models.loading import LoadedModel
from probes.tokens import TokenGroups, token_groups


class PrefixCache:
    """A minimal KV cache: per layer, the shared prefix's keys and values (batch 1, expanded to
    the batch on use) followed by whatever the suffix appends. Decoder layers only call
    ``update``; this is all they need."""

    def __init__(self, prefix: dict[int, tuple[torch.Tensor, torch.Tensor]], batch: int) -> None:
        self.layers = {i: (k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1))
                       for i, (k, v) in prefix.items()}

    def update(self, key, value, layer_idx, *args, **kwargs):
        old_key, old_value = self.layers[layer_idx]
        self.layers[layer_idx] = (torch.cat([old_key, key], 2), torch.cat([old_value, value], 2))
        return self.layers[layer_idx]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return int(next(iter(self.layers.values()))[0].shape[2])


@dataclass
class CleanPass:
    """What the clean forward of one input leaves for the conditions to share."""

    logits: torch.Tensor  # [vocab] at the last position
    hidden_states: tuple[torch.Tensor, ...]  # [1, seq, hidden] entering each layer (+ final)
    keys_values: list[tuple[torch.Tensor, torch.Tensor]]  # per layer, [1, kv_heads, seq, dim]
    position_ids: torch.Tensor  # [1, seq] or [3, 1, seq]


@torch.inference_mode()
def clean_pass(loaded: LoadedModel, inputs: VLInputs) -> CleanPass:
    """One plain forward of a single-row input, keeping hidden states and the KV cache."""
    if inputs.input_ids.shape[0] != 1:
        raise ValueError("the executor runs conditions over one input row at a time")
    attention.enable(loaded.model)
    output = loaded.model(**inputs.batch, use_cache=True, output_hidden_states=True)
    cache = output.past_key_values
    keys_values = [(layer.keys, layer.values) for layer in cache.layers]
    positions = loaded.adapter.position_ids(loaded.model, inputs.batch)
    return CleanPass(output.logits[0, -1].float(), output.hidden_states, keys_values, positions)


def _suffix_mask(prefix: int, length: int, batch: int, dtype, device) -> torch.Tensor:
    """Causal additive mask [batch, 1, suffix, length] for queries prefix..length-1."""
    keys = torch.arange(length, device=device)
    queries = torch.arange(prefix, length, device=device)
    allowed = keys[None, :] <= queries[:, None]
    mask = torch.where(allowed, 0.0, torch.finfo(dtype).min).to(dtype)
    return mask[None, None].expand(batch, 1, -1, -1)


def run_layers(loaded: LoadedModel, clean: CleanPass, start_layer: int, prefix: int,
               batch: int, plan: attention.EditPlan | None) -> tuple[torch.Tensor, PrefixCache]:
    """Run decoder layers ``start_layer..`` on the suffix (positions ``prefix..``) of ``batch``
    copies of the input under ``plan``; returns (final-norm hidden states, cache)."""
    length = clean.hidden_states[0].shape[1]
    hidden = clean.hidden_states[start_layer][:, prefix:].expand(batch, -1, -1).contiguous()
    shared = {i: (k[:, :, :prefix], v[:, :, :prefix])
              for i, (k, v) in enumerate(clean.keys_values) if i >= start_layer}
    cache = PrefixCache(shared, batch)
    positions = clean.position_ids[..., prefix:length]
    positions = positions.expand(*positions.shape[:-2], batch, -1)
    mask = _suffix_mask(prefix, length, batch, hidden.dtype, hidden.device)
    return _decoder(loaded, hidden, cache, positions, mask, plan, start_layer), cache


def _decoder(loaded, hidden, cache, positions, mask, plan, start_layer=0) -> torch.Tensor:
    """Decoder layers ``start_layer..`` and the final norm, with ``plan`` attached."""
    model, adapter = loaded.model, loaded.adapter
    position_embeddings = adapter.language_model(model).rotary_emb(hidden, positions)
    modules = adapter.attention_modules(model)
    with attention.attach(modules, plan) if plan is not None else contextlib.nullcontext():
        for layer in adapter.decoder_layers(model)[start_layer:]:
            hidden = layer(hidden, attention_mask=mask, past_key_values=cache, use_cache=True,
                           position_embeddings=position_embeddings)
            hidden = hidden[0] if isinstance(hidden, tuple) else hidden
    return adapter.final_norm(model)(hidden)


@dataclass
class KnockoutResult:
    """Next-token logits at ``last`` for each condition, in the order given, and clean."""

    logits: torch.Tensor  # [conditions, vocab], float32
    clean_logits: torch.Tensor  # [vocab]
    prefix_length: int  # positions shared with the clean run


def first_blocked_position(groups: TokenGroups, knockouts: Sequence[Knockout], num_layers: int) -> int:
    """The earliest query position any knockout blocks, generated queries included (or
    ``last`` when none blocks a prompt position): everything before it is shared."""
    starts = [int(groups.last[0])]
    for knockout in knockouts:
        for edges in knockout.edges(groups, num_layers):
            starts += [int(edges.queries.min())] if edges.queries.size else []
            starts += [edges.queries_from] if edges.queries_from is not None else []
    return min(starts)


@torch.inference_mode()
def run_knockouts(loaded: LoadedModel, inputs: VLInputs, knockouts: Sequence[Knockout],
                  batch_size: int = 16, clean: CleanPass | None = None,
                  groups: TokenGroups | None = None) -> KnockoutResult:
    """Logits at ``last`` under each knockout, equal (to float rounding) to one full masked
    forward per condition, computed with a shared prefix and suffixes started late."""
    num_layers = loaded.adapter.num_layers
    groups = groups or token_groups(loaded.adapter, inputs)
    clean = clean or clean_pass(loaded, inputs)
    prefix = first_blocked_position(groups, knockouts, num_layers)
    head = loaded.adapter.lm_head(loaded.model)
    order = sorted(range(len(knockouts)), key=lambda i: min(knockouts[i].layers))
    logits = torch.empty(len(knockouts), clean.logits.shape[0])
    for chunk_start in range(0, len(order), batch_size):
        chunk = order[chunk_start : chunk_start + batch_size]
        plan = EdgeMaskPlan([knockouts[i].edges(groups, num_layers) for i in chunk])
        start_layer = min(min(knockouts[i].layers) for i in chunk)
        hidden, _ = run_layers(loaded, clean, start_layer, prefix, len(chunk), plan)
        logits[chunk] = head(hidden[:, -1]).float().cpu()
    return KnockoutResult(logits, clean.logits.cpu(), prefix)


@torch.inference_mode()
def run_knockouts_naively(loaded: LoadedModel, inputs: VLInputs,
                          knockouts: Sequence[Knockout]) -> torch.Tensor:
    """The reference: one full forward per condition, batch 1. [conditions, vocab]."""
    num_layers = loaded.adapter.num_layers
    groups = token_groups(loaded.adapter, inputs)
    attention.enable(loaded.model)
    modules = loaded.adapter.attention_modules(loaded.model)
    rows = []
    for knockout in knockouts:
        with attention.attach(modules, EdgeMaskPlan([knockout.edges(groups, num_layers)])):
            rows.append(loaded.model(**inputs.batch).logits[0, -1].float().cpu())
    return torch.stack(rows)


@dataclass
class Generation:
    """A greedy continuation: its tokens and the logits that chose each of them."""

    tokens: list[int]
    logits: torch.Tensor  # [steps, vocab], float32


@torch.inference_mode()
def masked_generate(loaded: LoadedModel, inputs: VLInputs, knockout: Knockout | None,
                    max_new_tokens: int = 8, clean: CleanPass | None = None,
                    groups: TokenGroups | None = None) -> Generation:
    """Greedy decoding of one input under ``knockout`` (generated tokens are queries too when a
    flow names ``generated`` or ``text``), reusing the clean pass's keys and values for every
    position before the first blocked query. ``knockout=None`` decodes clean."""
    num_layers = loaded.adapter.num_layers
    groups = groups or token_groups(loaded.adapter, inputs)
    clean = clean or clean_pass(loaded, inputs)
    knockouts = [] if knockout is None else [knockout]
    plan = EdgeMaskPlan([knockout.edges(groups, num_layers)]) if knockout else None
    prefix = first_blocked_position(groups, knockouts, num_layers)
    head = loaded.adapter.lm_head(loaded.model)
    hidden, cache = run_layers(loaded, clean, 0, prefix, 1, plan)
    embed = loaded.adapter.language_model(loaded.model).get_input_embeddings()
    last_position = clean.position_ids[..., -1:]
    tokens, step_logits, stop = [], [], loaded.eos_token_ids()
    for step in range(max_new_tokens):
        logits = head(hidden[:, -1]).float()[0]
        token = int(logits.argmax())
        tokens.append(token)
        step_logits.append(logits.cpu())
        if token in stop or step == max_new_tokens - 1:
            break
        # text after the prompt continues one position at a time (in every mRoPE axis too)
        positions = last_position + step + 1
        hidden = _decoder(loaded, embed(torch.tensor([[token]], device=hidden.device)), cache,
                          positions, None, plan)
    return Generation(tokens, torch.stack(step_logits))
