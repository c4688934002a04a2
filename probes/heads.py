"""Attention heads one by one: what each head writes into the residual stream at a position and
how much of it pushes the answer (direct logit attribution), and how much of each head's
attention falls on the image (visual heads). Per-head knockouts are
:class:`~probes.masking.HeadKnockout`, run by any engine.

**Decomposition.** A decoder layer of the families fusionlens reads adds its attention output
and its MLP output to the residual stream (pre-norm blocks), so the stream leaving the last
layer at a position is exactly

    embedding + sum over layers (sum over heads of head writes + o_proj bias + MLP output)

where head h's write is o_proj's weight columns ``h * d .. (h + 1) * d`` times head h's slice of
o_proj's input (its attention output). A family whose layers normalise each sublayer's output
before adding it (Gemma 2 and 3's sandwich norms: the adapter's
:attr:`~probes.models.adapters.base.Adapter.norm_layout`) adds instead the post-attention
norm's output, linearised at the clean attention output (RMSNorm: ``gain / rms(a)``, ``rms``
from the clean ``a``, checked against the norm there), so each head's write and the bias are
scaled by it and a layer's heads sum exactly to its normalised attention output; its MLP part
is the post-MLP norm's output itself. At an image position of a Qwen3-VL, the DeepStack
vision features added after its first layers are parts too. :func:`decompose` returns these
parts from one plain forward; they sum to the final residual to float rounding
(tests/test_heads.py).

**Direct logit attribution** (:func:`logit_attribution`): a part's contribution to the logit
difference ``logit(answer) - logit(other)`` (``other``: a token, or the mean over the vocabulary)
through the final norm *linearised at the clean final residual*: RMSNorm(x) = gain * x / rms(x)
(gain: ``weight``, Gemma's ``1 + weight``) with rms taken from the clean final residual
(LayerNorm: also centred, its bias not a part), so the attributions of all parts sum to the
clean logit difference (exactly for RMSNorm, up to the unembedding's bias if it has one).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from probes import attention
from probes.errors import UserError
from probes.models.adapters import VLInputs
from probes.models.loading import LoadedModel
from probes.record import AttentionRecorder


@dataclass(frozen=True)
class Decomposition:
    """The residual stream leaving the last layer at one position, in parts (float64, CPU)."""

    embedding: torch.Tensor  # [hidden]: what enters layer 0
    heads: torch.Tensor  # [layers, heads, hidden]: each head's write
    biases: torch.Tensor  # [layers, hidden]: o_proj's bias (zeros without one)
    mlps: torch.Tensor  # [layers, hidden]: each MLP's output
    # [layers, hidden]: what the model adds after each layer at an image position (Qwen3-VL's
    # DeepStack vision features); zeros elsewhere and in other families
    deepstack: torch.Tensor
    final: torch.Tensor  # [hidden]: the residual stream leaving the last layer (before the norm)

    def total(self) -> torch.Tensor:
        """The parts summed: equal to ``final`` to float rounding."""
        return (self.embedding + self.heads.sum((0, 1)) + self.biases.sum(0) + self.mlps.sum(0)
                + self.deepstack.sum(0))


def _part(module: torch.nn.Module, name: str, what: str) -> torch.nn.Module:
    found = getattr(module, name, None)
    if found is None:
        raise UserError(f"head attribution needs each decoder layer's {what} ({name!r}); this "
                        f"model's {type(module).__name__} has none.")
    return found


@torch.inference_mode()
def decompose(loaded: LoadedModel, inputs: VLInputs, position: int = -1) -> Decomposition:
    """The parts of the residual stream at ``position`` of a one-row input (module docstring)."""
    adapter, model = loaded.adapter, loaded.model
    layers = adapter.decoder_layers(model)
    modules = adapter.attention_modules(model)
    projections = [_part(module, "o_proj", "attention output projection") for module in modules]
    post = adapter.norm_layout.post_norms
    attention_norms = [None if post is None else _part(layer, post[0], "post-attention norm")
                       for layer in layers]
    # what the MLP adds to the stream: its output, or its post-MLP norm's
    mlps = [_part(layer, "mlp", "MLP") if post is None
            else _part(layer, post[1], "post-MLP norm") for layer in layers]
    kept: dict[tuple[str, int], torch.Tensor] = {}

    def keep(kind: str, index: int, inputs_of: bool):
        def hook(module, args, output=None):
            value = args[0] if inputs_of else (output[0] if isinstance(output, tuple) else output)
            kept[(kind, index)] = value[0, position].detach().double().cpu()
        return hook

    handles = [p.register_forward_pre_hook(keep("heads", i, True)) for i, p in enumerate(projections)]
    handles += [m.register_forward_hook(keep("mlp", i, False)) for i, m in enumerate(mlps)]
    handles += [n.register_forward_pre_hook(keep("attention", i, True))
                for i, n in enumerate(attention_norms) if n is not None]
    handles.append(layers[-1].register_forward_hook(keep("final", 0, False)))
    handles.append(layers[0].register_forward_pre_hook(
        lambda module, args, kwargs: kept.__setitem__(
            ("embedding", 0), (args[0] if args else kwargs["hidden_states"])[0, position]
            .detach().double().cpu()), with_kwargs=True))
    additions: dict = {}
    try:
        attention.enable(model)  # a passthrough: the model's own numbers
        with adapter.deepstack(model, captured=additions):
            model(**inputs.batch, use_cache=False, logits_to_keep=1)
    finally:
        for handle in handles:
            handle.remove()
    heads, dim = adapter.num_heads, adapter.head_dim
    writes, biases = [], []
    for index, projection in enumerate(projections):
        weight = projection.weight.detach().double().cpu()  # [hidden, heads * dim]
        slices = kept[("heads", index)].view(heads, dim)
        write = torch.einsum("hd,ohd->ho", slices, weight.view(-1, heads, dim))
        bias = projection.bias
        bias = (torch.zeros(weight.shape[0], dtype=torch.float64) if bias is None
                else bias.detach().double().cpu())
        if attention_norms[index] is not None:  # through the post-attention norm, linearised
            scale = linearised(loaded, attention_norms[index], kept[("attention", index)],
                               "post-attention")
            write, bias = write * scale, bias * scale
        writes.append(write)
        biases.append(bias)
    return Decomposition(kept[("embedding", 0)], torch.stack(writes), torch.stack(biases),
                         torch.stack([kept[("mlp", i)] for i in range(len(mlps))]),
                         _deepstack_at(additions, position, inputs.input_ids.shape[1],
                                       len(layers), adapter.hidden_size),
                         kept[("final", 0)])


def _deepstack_at(additions: dict, position: int, length: int, num_layers: int,
                  hidden: int) -> torch.Tensor:
    """[layers, hidden]: the captured DeepStack additions ({layer: (positions, values)}) at
    ``position`` (negative: from the end), zeros where a layer adds nothing there."""
    found = torch.zeros(num_layers, hidden, dtype=torch.float64)
    where = position % length
    for layer, (positions, values) in additions.items():
        hit = (positions.cpu() == where).nonzero()
        if hit.numel():
            found[layer] = values[int(hit[0, 0])].detach().double().cpu()
    return found


def linearised(loaded: LoadedModel, norm: torch.nn.Module, x: torch.Tensor, what: str,
               centre: bool = False) -> torch.Tensor:
    """[hidden] float64: the per-coordinate scale ``gain / rms`` of ``norm`` (an RMSNorm, or a
    LayerNorm when ``centre``) at ``x`` [hidden], checked against the norm applied to ``x``
    (its bias removed); refused in one sentence for another kind of norm."""
    kinds = f"head attribution linearises RMSNorm or LayerNorm {what} norms"
    eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", None))
    if eps is None:
        raise UserError(f"{kinds}, not {type(norm).__name__}.")
    gain = norm.weight.detach().double().cpu() + float(loaded.adapter.norm_layout.unit_offset)
    centred = x - x.mean() if centre else x
    scale = gain / torch.sqrt(centred.pow(2).mean() + eps)
    expected = norm(x.to(loaded.device, loaded.dtype)[None]).double().cpu()[0]
    bias = getattr(norm, "bias", None)
    if bias is not None:
        expected = expected - bias.detach().double().cpu()
    if not torch.allclose(scale * centred, expected, rtol=1e-3,
                          atol=1e-4 * float(expected.abs().max())):
        raise UserError(f"{kinds}; this model's {type(norm).__name__} is neither.")
    return scale


@torch.inference_mode()
def linearised_norm(loaded: LoadedModel, final: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """(per-coordinate scale [hidden], centre?): the final norm as a linear map at ``final``,
    checked against the norm itself there; refused in one sentence for another kind of norm."""
    norm = loaded.adapter.final_norm(loaded.model)
    centre = isinstance(norm, torch.nn.LayerNorm)
    return linearised(loaded, norm, final, "final", centre), centre


def answer_direction(loaded: LoadedModel, answer: int, other: int | None) -> torch.Tensor:
    """[hidden] float64: the unembedding row of ``answer`` minus that of ``other`` (None: minus
    the mean row over the vocabulary)."""
    unembedding = loaded.adapter.lm_head(loaded.model).weight.detach()
    row = unembedding[answer].double().cpu()
    against = (unembedding.double().mean(0) if other is None
               else unembedding[other].double()).cpu()
    return row - against


def logit_attribution(loaded: LoadedModel, parts: Decomposition, answer: int,
                      other: int | None) -> dict[str, torch.Tensor]:
    """Each part's contribution to ``logit(answer) - logit(other)`` (module docstring):
    ``heads`` [layers, heads], ``biases``, ``mlps`` and ``deepstack`` [layers], ``embedding`` []
    (float64)."""
    scale, centre = linearised_norm(loaded, parts.final)
    direction = answer_direction(loaded, answer, other) * scale

    def read(part: torch.Tensor) -> torch.Tensor:
        centred = part - part.mean(-1, keepdim=True) if centre else part
        return centred @ direction

    return {"heads": read(parts.heads), "biases": read(parts.biases), "mlps": read(parts.mlps),
            "deepstack": read(parts.deepstack), "embedding": read(parts.embedding)}


def image_shares(recorder: AttentionRecorder, query_sets: dict[str, np.ndarray],
                 num_layers: int) -> np.ndarray:
    """[query sets, layers, heads]: each head's attention mass on the image tokens, averaged
    over each set's query rows, from a recorder whose ``keys`` are the image tokens and whose queries
    hold every set's (maps [1, heads, queries, image keys], as an engine's recording fills
    them). A set without a row gives NaN."""
    rows = recorder.queries
    shares = []
    for queries in query_sets.values():
        chosen = np.isin(rows, queries)
        per_layer = []
        for layer in range(num_layers):
            mass = recorder.maps[layer][0].double().sum(-1)  # [heads, queries]
            per_layer.append(mass[:, chosen].mean(-1).numpy() if chosen.any()
                             else np.full(mass.shape[0], np.nan))
        shares.append(np.stack(per_layer))
    return np.stack(shares)
