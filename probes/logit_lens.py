"""The logit lens: the residual stream after each decoder layer read through the model's own
final norm and unembedding (``adapter.final_norm`` and ``adapter.lm_head``), at chosen
positions only.

:func:`residuals` runs one plain forward of a one-row input and keeps, per asked layer, the
decoder layer's output at the asked positions ([layers, positions, hidden]): a hook on each
layer, so nothing of size [layers, seq, vocab] (or [layers, seq, hidden]) is ever made.
:func:`unembed` applies the final norm and the unembedding to them. :func:`lens_logits` is the
two together: [layers, positions, vocab] float32 logits, for a few positions;
:func:`lens_readout` reads many positions (every image token) one layer at a time and keeps
only each position's top-k tokens and the log-probabilities and ranks of tokens you name.

At the last layer the lens is the model's own output: the model applies the same norm and
head to the same residual (``tests/test_logit_lens.py`` checks both that and the lens at every
layer against ``output_hidden_states`` through the norm and head by hand, on every family).

>>> from PIL import Image
>>> from probes.models.loading import load_model
>>> loaded = load_model("tiny-random-llava")
>>> inputs = loaded.adapter.build_inputs([Image.new("RGB", (64, 64))], ["what shape is it ?"])
>>> lens_logits(loaded, inputs, "last", layers=[0, 5]).shape
torch.Size([2, 1, 55])
>>> readout = lens_readout(loaded, inputs, "image", tokens=[7], top_k=3)
>>> tuple(readout.top_ids.shape), tuple(readout.token_ranks.shape)  # 6 layers, 64 image tokens
((6, 64, 3), (6, 64, 1))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from probes.devices import module_device
from probes.masking import check_layers
from probes.models.adapters import VLInputs
from probes.models.loading import LoadedModel
from probes.tokens import token_groups

Positions = int | Sequence[int] | np.ndarray | str
CHUNK = 256  # positions unembedded at once by lens_readout: [CHUNK, vocab] floats at a time


def resolve_positions(loaded: LoadedModel, inputs: VLInputs, positions: Positions) -> np.ndarray:
    """Absolute positions (ascending as given, int64) of a one-row input: a token group's name
    (``"last"``, ``"image"``, ``"object"``, ``"question,last"``: :meth:`TokenGroups.get`), or
    positions, negative ones counted from the end."""
    length = int(inputs.input_ids.shape[1])
    if isinstance(positions, str):
        return token_groups(loaded.adapter, inputs).get(positions)
    chosen = np.atleast_1d(np.asarray(positions, dtype=np.int64))
    if chosen.ndim != 1 or ((chosen < -length) | (chosen >= length)).any():
        raise ValueError(f"positions must lie in -{length}..{length - 1} for this input")
    return np.where(chosen < 0, chosen + length, chosen)


def resolve_layers(loaded: LoadedModel, layers: Sequence[int] | None) -> list[int]:
    """The asked layers (all, in order, when None), each checked to exist."""
    count = loaded.adapter.num_layers
    chosen = list(range(count)) if layers is None else [int(layer) for layer in layers]
    check_layers(chosen, count)
    return chosen


def _one_row(inputs: VLInputs) -> None:
    if inputs.input_ids.shape[0] != 1:
        raise ValueError("the logit lens reads one input row at a time")


def layer_output(output) -> torch.Tensor:
    """A decoder layer's output hidden states (transformers 5 returns the tensor; older
    layers a tuple whose first entry it is)."""
    return output[0] if isinstance(output, tuple) else output


@torch.inference_mode()
def residuals(loaded: LoadedModel, inputs: VLInputs, positions: Positions = "last",
              layers: Sequence[int] | None = None) -> torch.Tensor:
    """[layers, positions, hidden]: the residual stream after each asked decoder layer (its
    output, before the final norm) at ``positions`` (see :func:`resolve_positions`), from one
    plain forward of the one-row ``inputs``; on the final norm's device, in the model's dtype."""
    _one_row(inputs)
    chosen = resolve_layers(loaded, layers)
    where = torch.from_numpy(resolve_positions(loaded, inputs, positions))
    decoder = loaded.adapter.decoder_layers(loaded.model)
    device = module_device(loaded.adapter.final_norm(loaded.model))
    kept: dict[int, torch.Tensor] = {}

    def keep(layer: int):
        def hook(module, args, output):
            states = layer_output(output)
            kept[layer] = states[0, where.to(states.device)].to(device)
        return hook

    handles = [decoder[layer].register_forward_hook(keep(layer)) for layer in set(chosen)]
    try:
        # the head at the last position only: the lens unembeds what it keeps itself
        loaded.model(**inputs.batch, use_cache=False, logits_to_keep=1)
    finally:
        for handle in handles:
            handle.remove()
    return torch.stack([kept[layer] for layer in chosen])


@torch.inference_mode()
def unembed(loaded: LoadedModel, states: torch.Tensor) -> torch.Tensor:
    """Float32 logits [..., vocab] of residual-stream vectors ``states`` [..., hidden] through
    the model's final norm and unembedding (the model's own modules, on their devices)."""
    norm, head = loaded.adapter.final_norm(loaded.model), loaded.adapter.lm_head(loaded.model)
    normed = norm(states.to(module_device(norm)))
    return head(normed.to(module_device(head))).float()


def lens_logits(loaded: LoadedModel, inputs: VLInputs, positions: Positions = "last",
                layers: Sequence[int] | None = None) -> torch.Tensor:
    """[layers, positions, vocab] float32 logits of the logit lens (for a few positions: the
    vocabulary is kept whole; :func:`lens_readout` for many)."""
    return unembed(loaded, residuals(loaded, inputs, positions, layers))


@dataclass(frozen=True)
class LensReadout:
    """What :func:`lens_readout` keeps, on the CPU: per asked layer and position, the top-k
    tokens and the log-probabilities and ranks (0 = the top token; the count of tokens with a
    strictly higher logit) of the named ``tokens``."""

    positions: np.ndarray  # [positions] absolute positions read
    layers: tuple[int, ...]  # the layers read, in order
    top_ids: torch.Tensor  # [layers, positions, k] int64, most probable first
    top_log_probs: torch.Tensor  # [layers, positions, k] float32
    token_ids: torch.Tensor  # [tokens] the named tokens
    token_log_probs: torch.Tensor  # [layers, positions, tokens] float32
    token_ranks: torch.Tensor  # [layers, positions, tokens] int64


def read_logits(logits: torch.Tensor, tokens: torch.Tensor, top_k: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(top ids, top log-probs, the tokens' log-probs, their ranks) of logits [..., vocab]."""
    log_probs = logits.float().log_softmax(-1)
    top = log_probs.topk(top_k, dim=-1)
    named = log_probs[..., tokens.to(log_probs.device)]
    ranks = (log_probs[..., None, :] > named[..., None]).sum(-1)
    return top.indices.cpu(), top.values.cpu(), named.cpu(), ranks.cpu()


def lens_readout(loaded: LoadedModel, inputs: VLInputs, positions: Positions = "last",
                 layers: Sequence[int] | None = None, tokens: Sequence[int] = (),
                 top_k: int = 5, states: torch.Tensor | None = None) -> LensReadout:
    """The logit lens at ``positions`` and ``layers`` reduced to what an analysis keeps:
    each position's ``top_k`` tokens and the log-probabilities and ranks of ``tokens``; the
    vocabulary is unembedded for at most :data:`CHUNK` positions at a time. ``states``
    [layers, positions, hidden], when given (another engine's :func:`residuals`), are read
    instead of running the forward here."""
    chosen = resolve_layers(loaded, layers)
    where = resolve_positions(loaded, inputs, positions)
    if states is None:
        states = residuals(loaded, inputs, where, chosen)
    vocab = loaded.adapter.lm_head(loaded.model).out_features
    if not 1 <= top_k <= vocab:
        raise ValueError(f"top_k must lie in 1..{vocab}, not {top_k}")
    named = torch.as_tensor(list(tokens), dtype=torch.int64)
    parts = [read_logits(unembed(loaded, states[:, start:start + CHUNK]), named, top_k)
             for start in range(0, max(1, where.size), CHUNK)]
    top_ids, top_log_probs, token_log_probs, token_ranks = (torch.cat(p, dim=1)
                                                            for p in zip(*parts))
    return LensReadout(where, tuple(chosen), top_ids, top_log_probs, named, token_log_probs,
                       token_ranks)
