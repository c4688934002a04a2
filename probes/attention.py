"""The one place fusionlens touches attention: a registered attention function.

The language model's attention implementation is switched to ``fusionlens_sdpa`` (or
``fusionlens_eager``). With no plan attached to a layer it calls plain sdpa (or eager) with the
same arguments, so the numbers are unchanged. When a plan is attached (see :func:`attach`), the
plan says, per layer and per call, what to edit:

- ``blocked`` [batch, query, key] (or [batch, head, query, key]: per query head): edges a
  query may not read. Exact: the key's logit is set to
  the dtype's minimum before the softmax, so its probability underflows to exactly 0 and the
  row renormalises over the remaining keys;
- ``bias`` [batch, query, key] (or [batch, head, query, key]): added to the logits;
- ``mix`` [batch, query, key] with ``mix_alpha``: the attention probabilities P of the rows with
  a non-zero ``mix`` row become ``(1 - alpha) P + alpha M``, M being the ``mix`` row restricted
  to the keys the row may read and renormalised. Mixing is linear in P, so it is computed as
  ``(1 - alpha) P V + alpha M V`` and sdpa stays in charge of P V;
- ``record``: a callback receiving the exact probabilities (softmax over all keys, with the
  mask, the scaling and grouped KV heads) of chosen query rows, computed from this layer's
  queries and keys, so the model never has to materialise the full attention matrix.

Queries are the last ``q_len`` positions of the ``kv_len`` keys (a prefill, a decoding step
with a KV cache, or a suffix run on a shared prefix cache): plans are given absolute positions.

Everything a plan hands back is used on the device of the layer's queries: a model spread over
several devices (``load_model(device_map=...)``) gets each layer's edit on that layer's device,
and ``query_positions`` tells a plan which device that is.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Protocol

import torch
from einops import rearrange, repeat
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask

from probes.errors import UserError

PLAN_ATTRIBUTE = "_fusionlens_plan"
IMPLEMENTATIONS = {"sdpa": "fusionlens_sdpa", "eager": "fusionlens_eager"}


def repeat_kv(states: torch.Tensor, groups: int) -> torch.Tensor:
    """[batch, kv_heads, seq, dim] -> [batch, kv_heads * groups, seq, dim] (grouped-query heads:
    query head h reads KV head h // groups)."""
    if groups == 1:
        return states
    return repeat(states, "b kv s d -> b (kv g) s d", g=groups)


def eager_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **_):
    """Textbook attention, the reference every other path is compared with."""
    groups = getattr(module, "num_key_value_groups", 1)
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    scores = query @ repeat_kv(key, groups).transpose(2, 3) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask
    probabilities = scores.softmax(-1, dtype=torch.float32).to(query.dtype)
    output = probabilities @ repeat_kv(value, groups)
    return output.transpose(1, 2).contiguous(), probabilities


@dataclass
class LayerEdit:
    """What to change in one layer for one call; see the module docstring."""

    blocked: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    mix: torch.Tensor | None = None
    mix_alpha: float = 0.0
    record_rows: torch.Tensor | None = None  # indices into this call's queries
    record: Callable[[int, torch.Tensor], None] | None = None  # (layer, probs [B, H, R, K])
    # the record rows' causal mask, kept on the edit once built: a plan that hands out the same
    # edit for every layer of a forward has it built once, not once per layer
    record_mask: torch.Tensor | None = None


class EditPlan(Protocol):
    def for_layer(self, layer: int, query_positions: torch.Tensor, kv_length: int) -> LayerEdit | None:
        """The edit for ``layer`` when queries at ``query_positions`` read ``kv_length`` keys."""


@dataclass
class CombinedPlan:
    """Several plans in one forward: blocked edges are united, biases added, one mix at most,
    and every recorder sees the final (edited) probabilities."""

    plans: tuple

    def for_layer(self, layer: int, query_positions: torch.Tensor, kv_length: int) -> LayerEdit | None:
        edits = [e for p in self.plans if (e := p.for_layer(layer, query_positions, kv_length))]
        if not edits:
            return None
        combined = LayerEdit()
        device = query_positions.device  # plans of others may hand back tensors elsewhere
        recorders = [e for e in edits if e.record is not None]
        for edit in edits:
            if edit.blocked is not None:
                blocked = edit.blocked.to(device)
                combined.blocked = blocked if combined.blocked is None else \
                    _per_head(combined.blocked) | _per_head(blocked)
            if edit.bias is not None:
                bias = edit.bias.to(device)
                combined.bias = bias if combined.bias is None else combined.bias + bias
            if edit.mix is not None:
                if combined.mix is not None:
                    raise ValueError("two plans mix attention probabilities in the same layer")
                combined.mix, combined.mix_alpha = edit.mix, edit.mix_alpha
        if recorders:
            rows = torch.cat([e.record_rows.to(device) for e in recorders]).unique()
            combined.record_rows = rows
            combined.record = partial(_fan_out, recorders, rows)
        return combined


def _per_head(blocked: torch.Tensor) -> torch.Tensor:
    """``blocked`` [batch, query, key] or [batch, head, query, key] as the latter."""
    return blocked if blocked.dim() == 4 else blocked[:, None]


def _fan_out(recorders: list[LayerEdit], rows: torch.Tensor, layer: int, probabilities: torch.Tensor) -> None:
    for edit in recorders:
        index = torch.searchsorted(rows, edit.record_rows.to(rows.device))
        edit.record(layer, probabilities[:, :, index])


def additive_mask(attention_mask: torch.Tensor | None, q_len: int, kv_len: int,
                  dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Whatever mask transformers built (None = causal, bool = allowed, float = additive) as an
    additive float mask [batch or 1, 1, q_len, kv_len] with the dtype's minimum where blocked."""
    low = torch.finfo(dtype).min
    if attention_mask is None:
        keys = torch.arange(kv_len, device=device)
        queries = torch.arange(kv_len - q_len, kv_len, device=device)
        allowed = keys[None, :] <= queries[:, None]
        return torch.where(allowed, 0.0, low).to(dtype)[None, None]
    if attention_mask.dtype == torch.bool:
        return torch.where(attention_mask, 0.0, low).to(dtype)
    return attention_mask.to(dtype)


def mask_rows(attention_mask: torch.Tensor | None, q_len: int, kv_len: int, rows: torch.Tensor,
              dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """:func:`additive_mask` of the query ``rows`` only, [batch or 1, 1, len(rows), kv_len]:
    recording a few rows never materialises the full square mask."""
    if attention_mask is None:
        keys = torch.arange(kv_len, device=device)
        queries = rows.to(device) + (kv_len - q_len)
        allowed = keys[None, :] <= queries[:, None]
        return torch.where(allowed, 0.0, torch.finfo(dtype).min).to(dtype)[None, None]
    return additive_mask(attention_mask[:, :, rows.to(attention_mask.device)], len(rows), kv_len,
                         dtype, device)


def row_probabilities(module, query, key, rows_mask, scaling, rows) -> torch.Tensor:
    """Exact attention probabilities [batch, heads, len(rows), keys] of the query ``rows``;
    ``rows_mask`` is the additive mask of those rows ([batch or 1, 1, len(rows), keys]).

    The query heads that share a KV head are stacked as extra query rows of that KV head, so
    the keys are never repeated per query head (a grouped-query model reads them once)."""
    groups = getattr(module, "num_key_value_groups", 1)
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    selected = query.index_select(2, rows.to(query.device)).float()
    stacked = rearrange(selected, "b (kv g) r d -> b kv (g r) d", g=groups)
    scores = rearrange(stacked @ key.float().transpose(2, 3), "b kv (g r) k -> b (kv g) r k", g=groups)
    return scores.mul_(scaling).add_(rows_mask.to(scores.device).float()).softmax(-1)


def _edited_attention(module, query, key, value, attention_mask, *, base, **kwargs):
    plan: EditPlan | None = getattr(module, PLAN_ATTRIBUTE, None)
    if plan is None:
        return base(module, query, key, value, attention_mask, **kwargs)
    q_len, kv_len = query.shape[2], key.shape[2]
    positions = torch.arange(kv_len - q_len, kv_len, device=query.device)
    edit = plan.for_layer(module.layer_idx, positions, kv_len)
    if edit is None:
        return base(module, query, key, value, attention_mask, **kwargs)
    mixes = edit.mix is not None and edit.mix_alpha != 0
    if edit.blocked is None and edit.bias is None and not mixes:
        # recording only (or alpha 0): the model's own call, bit for bit; only the recorded
        # rows of the mask are built
        if edit.record is not None:
            rows_mask = edit.record_mask if attention_mask is None else None
            if rows_mask is None or rows_mask.dtype != query.dtype:
                rows_mask = mask_rows(attention_mask, q_len, kv_len, edit.record_rows,
                                      query.dtype, query.device)
                if attention_mask is None:
                    edit.record_mask = rows_mask
            edit.record(module.layer_idx, row_probabilities(
                module, query, key, rows_mask, kwargs.get("scaling"), edit.record_rows))
        return base(module, query, key, value, attention_mask, **kwargs)
    mask = additive_mask(attention_mask, q_len, kv_len, query.dtype, query.device)
    if edit.blocked is not None:
        mask = torch.where(_per_head(edit.blocked).to(query.device), torch.finfo(query.dtype).min,
                           mask)
    if edit.bias is not None:
        bias = edit.bias if edit.bias.dim() == 4 else edit.bias[:, None]
        mask = mask + bias.to(device=query.device, dtype=query.dtype)
    if edit.record is not None:
        rows = edit.record_rows.to(mask.device)
        edit.record(module.layer_idx, row_probabilities(
            module, query, key, mask[:, :, rows], kwargs.get("scaling"), edit.record_rows))
    output, weights = base(module, query, key, value, mask, **kwargs)
    if mixes:
        output = _mix(module, output, value, mask, edit.mix, edit.mix_alpha)
    return output, weights


def _mix(module, output, value, mask, mix, alpha):
    """(1 - alpha) P V + alpha M V on the rows where ``mix`` has mass; output is [B, Q, H, D]."""
    allowed = (mask > torch.finfo(mask.dtype).min / 2)[:, 0]  # [B, Q, K]
    target = torch.where(allowed, mix.to(device=output.device, dtype=torch.float32), 0.0)
    total = target.sum(-1, keepdim=True)
    target = target / total.clamp_min(torch.finfo(torch.float32).tiny)
    groups = getattr(module, "num_key_value_groups", 1)
    # one product per query head (not per KV head, then repeated): the gradient that reaches
    # M while training VIF keeps the per-head summation order
    mixed = rearrange(target[:, None] @ repeat_kv(value, groups).float(), "b h q d -> b q h d")
    carries = (total[..., 0] > 0)[:, :, None, None]
    blended = (1 - alpha) * output.float() + alpha * mixed
    return torch.where(carries, blended, output.float()).to(output.dtype)


def register() -> None:
    """Make ``fusionlens_sdpa`` / ``fusionlens_eager`` known to transformers (idempotent)."""
    AttentionInterface.register(IMPLEMENTATIONS["sdpa"], partial(_edited_attention, base=sdpa_attention_forward))
    AttentionInterface.register(IMPLEMENTATIONS["eager"], partial(_edited_attention, base=eager_attention))
    AttentionMaskInterface.register(IMPLEMENTATIONS["sdpa"], sdpa_mask)
    AttentionMaskInterface.register(IMPLEMENTATIONS["eager"], eager_mask)


def in_effect(model: torch.nn.Module) -> str:
    """The name of the language model's attention implementation now."""
    return model.config.get_text_config()._attn_implementation


def _base(name: str) -> str:
    """``sdpa`` of ``fusionlens_sdpa`` (any other name is its own base)."""
    return next((base for base, ours in IMPLEMENTATIONS.items() if ours == name), name)


def use(model: torch.nn.Module, edited: bool = True, base: str | None = None) -> str:
    """The one place that decides the language model's attention implementation (the vision
    tower is untouched): fusionlens' (``edited``: ``fusionlens_sdpa`` or ``fusionlens_eager``,
    a passthrough until a plan is attached) or transformers' own (not ``edited``: as nnsight and
    TransformerLens read the model). ``base``: "sdpa" or "eager"; default: the kind in use now.
    Returns the implementation name now in use."""
    register()
    current = in_effect(model)
    base = _base(current) if base is None else base
    if edited and base not in IMPLEMENTATIONS:
        raise UserError(
            f"fusionlens edits attention on top of sdpa or eager, not {base!r}; load the model "
            "with attn_implementation='sdpa' or 'eager'."
        )
    wanted = IMPLEMENTATIONS[base] if edited else base
    if current != wanted:
        model.set_attn_implementation({"text_config": wanted})
    return wanted


def enable(model: torch.nn.Module, base: str | None = None) -> str:
    """Route the language model's attention through fusionlens: :func:`use` ``edited``."""
    return use(model, True, base)


@contextlib.contextmanager
def kept(model: torch.nn.Module) -> Iterator[None]:
    """Give ``model`` back with the attention implementation it had at the start."""
    before = in_effect(model)
    try:
        yield
    finally:
        use(model, before in IMPLEMENTATIONS.values(), _base(before))


@contextlib.contextmanager
def attach(attention_modules: list[torch.nn.Module], plan: EditPlan) -> Iterator[None]:
    """Attach ``plan`` to the given attention modules for the duration of the block. Inside
    another ``attach`` (a user's own edit, a planted mask) the two plans act together, as a
    :class:`CombinedPlan`; the outer plan is restored on exit."""
    outer = [getattr(module, PLAN_ATTRIBUTE, None) for module in attention_modules]
    for module, previous in zip(attention_modules, outer):
        setattr(module, PLAN_ATTRIBUTE, plan if previous is None else CombinedPlan((previous, plan)))
    try:
        yield
    finally:
        for module, previous in zip(attention_modules, outer):
            setattr(module, PLAN_ATTRIBUTE, previous)
