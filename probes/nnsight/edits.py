"""The edits, as code that runs inside an nnsight trace: per decoder layer, the call of the
attention function inside the attention module's ``forward`` is reached through ``.source``,
its attention mask is normalised to an additive float mask and edited (blocked edges get the
dtype's minimum, a bias is added), and the recorded rows' probabilities are computed from the
call's own queries and keys. No registered attention function is involved: the model keeps
the sdpa or eager implementation it was loaded with.

Everything the trace reads is in :class:`Edits` (torch tensors, ints and strings, built
before the trace by :func:`probes.nnsight.engine.edits`), and :func:`apply` uses torch only,
so the same code passes nnsight's ``remote="local"`` serialisation check.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import nnsight
import torch

CALL_PREFIX = "attention_interface_"  # nnsight names a call `<callable>_<occurrence>`


@dataclass(frozen=True)
class Edits:
    """What :func:`apply` does to each decoder layer of a trace whose batch has ``rows`` rows.

    ``blocked[layer]``: bool [rows, T, T] (or [rows, heads, T, T]: per query head), query position x key position edges that may not be
    read at that layer (T covers every position the trace sees, generated ones included);
    ``bias[layer]``: float [rows, T, T] or [rows, heads, T, T] added to the attention logits;
    ``record_positions``: absolute query positions whose attention probabilities are returned
    (over every key) at ``record_layers``.
    """

    layers_path: str  # where the decoder layers are, from the model's root
    attention_name: str  # the attention submodule of a decoder layer
    num_layers: int
    blocked: dict[int, torch.Tensor] = field(default_factory=dict)
    bias: dict[int, torch.Tensor] = field(default_factory=dict)
    record_positions: torch.Tensor | None = None
    record_layers: tuple[int, ...] = ()

    @property
    def layers(self) -> list[int]:
        """The layers the trace has to touch, ascending (nnsight serves them in order)."""
        recorded = self.record_layers if self.record_positions is not None else ()
        return sorted({*self.blocked, *self.bias, *recorded})


def attention_call(attention) -> str:
    """The name nnsight gives the attention function's call inside ``attention``'s forward,
    found at run time: it has changed between nnsight versions (``attention_interface_0``
    before assignments were instrumented, ``attention_interface_1`` since: ``_0`` is the
    binding ``attention_interface = ...``). The call is the name's last occurrence."""
    names = [name for name in attention.source.names if name.startswith(CALL_PREFIX)
             and name[len(CALL_PREFIX):].isdigit()]
    if not names:
        raise RuntimeError("the attention module's forward calls no attention function "
                           f"({', '.join(attention.source.names)}); the nnsight engine cannot "
                           "reach this model's attention")
    return max(names, key=lambda name: int(name[len(CALL_PREFIX):]))


def additive_mask(mask: torch.Tensor | None, q_len: int, kv_len: int, dtype: torch.dtype,
                  device: torch.device) -> torch.Tensor:
    """The mask the model passed, whatever its form (None on sdpa's causal fast path, boolean
    = allowed, additive float), as an additive float mask [batch or 1, 1, q_len, kv_len] with
    the dtype's minimum where a key may not be read. Queries are the last ``q_len`` of the
    ``kv_len`` positions (a prefill, or a decoding step with a KV cache)."""
    low = torch.finfo(dtype).min
    if mask is None:
        keys = torch.arange(kv_len, device=device)
        queries = torch.arange(kv_len - q_len, kv_len, device=device)
        return torch.where(keys[None, :] <= queries[:, None], 0.0, low).to(dtype)[None, None]
    mask = mask[..., :kv_len].to(device)
    if mask.dtype == torch.bool:
        return torch.where(mask, 0.0, low).to(dtype)
    return mask.to(dtype)


def _probabilities(query, key, mask, scaling, positions, first) -> torch.Tensor:
    """float32 attention probabilities [batch, heads, rows, keys] of the queries at absolute
    ``positions`` (those among this call's, which start at ``first``), over every key, with
    the edited mask, the call's scaling and grouped KV heads."""
    rows = positions[(positions >= first) & (positions < first + query.shape[2])] - first
    rows = rows.to(query.device)
    groups = query.shape[1] // key.shape[1]
    keys = key.float().repeat_interleave(groups, dim=1)
    scores = query.index_select(2, rows).float() @ keys.transpose(2, 3) * scaling
    return (scores + mask.index_select(2, rows.to(mask.device)).float()).softmax(-1)


def _mask_argument(args: tuple, kwargs: dict) -> tuple[torch.Tensor | None, bool]:
    """The attention mask the call got, and whether it came by position (the 5th argument:
    module, query, key, value, mask)."""
    if len(args) > 4:
        return args[4], True
    return kwargs.get("attention_mask"), False


def apply(model, edits: Edits) -> dict[int, torch.Tensor]:
    """Inside ``with model.trace(...)`` (or one step of ``model.generate``): apply ``edits``
    to every decoder layer they name. Returns {layer: float32 probabilities [rows, heads,
    recorded queries, keys]} for the recorded layers (saved: readable after the block)."""
    layers = model
    for part in edits.layers_path.split("."):
        layers = getattr(layers, part)
    recorded = {}
    for layer in edits.layers:
        attention = getattr(layers[layer], edits.attention_name)
        call = getattr(attention.source, attention_call(attention))
        args, kwargs = call.inputs
        query, key = args[1], args[2]
        q_len, kv_len = query.shape[2], key.shape[2]
        first = kv_len - q_len
        given, positional = _mask_argument(args, kwargs)
        mask = additive_mask(given, q_len, kv_len, query.dtype, query.device)
        edited = layer in edits.blocked or layer in edits.bias
        if layer in edits.blocked:
            blocked = edits.blocked[layer][..., first:kv_len, :kv_len].to(query.device)
            blocked = blocked if blocked.dim() == 4 else blocked[:, None]  # per head, or shared
            mask = mask.masked_fill(blocked, torch.finfo(query.dtype).min)
        if layer in edits.bias:
            bias = edits.bias[layer]
            bias = bias[:, None] if bias.dim() == 3 else bias
            mask = mask + bias[..., first:kv_len, :kv_len].to(query.device, query.dtype)
        if edited:
            if positional:
                args = (*args[:4], mask, *args[5:])
            else:
                kwargs = {**kwargs, "attention_mask": mask}
            call.inputs = (args, kwargs)
        if edits.record_positions is not None and layer in edits.record_layers:
            scaling = kwargs.get("scaling") or query.shape[-1] ** -0.5
            recorded[layer] = nnsight.save(_probabilities(
                query, key, mask, scaling, edits.record_positions.to(query.device), first))
    return nnsight.save(recorded)
