"""One sample's attenuation curves: per layer, how much the text reads the image, how much of
that lands on the region the question is about, how much of the attention output the image's
values make up, and how likely the answer already is (logit lens).

All from one clean forward: an :class:`~probes.record.AttentionRecorder` gives the exact
probabilities of the ``last`` and ``question`` rows to every key at every layer and head
(the model keeps sdpa), and the KV cache gives each layer's value vectors.

Metrics, per layer ``l`` (``[metric, layer]`` in :attr:`SampleCurves.values`):

- ``image_share(last)``, ``image_share(question)``: attention mass on the image tokens,
  mean over heads (and over question rows);
- ``region_share(last)``, ``region_share(question)``: of that image mass, the share on the
  ``object`` tokens (image patches inside the target's pixel mask); NaN when the question is
  about nothing visible;
- ``image_value_ratio(last)``, ``image_value_ratio(question)``: the norm of the attention
  output written by image keys over the norm of the whole attention output, both after the
  output projection: ``||W_O concat_h(sum_{k in image} P_hk v_k)|| / ||W_O concat_h(sum_k
  P_hk v_k)||`` (the projection sums the heads' contributions; its bias, if any, belongs to no
  key and is left out); mean over question rows for ``question``;
- ``answer_prob``, ``answer_rank``: the logit lens at ``last``, the final norm and the
  unembedding applied to the residual stream after layer ``l``: the probability of the
  reference answer's first token, and its rank (0 = the top token). At the last layer this is
  the model's own next-token distribution.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from analyses.layer_masking.sweep import has_region, sample_groups
from probes import attention
from probes.errors import UserError
from probes.logit_lens import unembed
from probes.models.loading import LoadedModel
from probes.record import AttentionRecorder
from probes.run import clean_pass
from probes.tokens import token_groups

METRICS = (
    "image_share(last)", "image_share(question)", "region_share(last)",
    "region_share(question)", "image_value_ratio(last)", "image_value_ratio(question)",
    "answer_prob", "answer_rank",
)


@dataclass(frozen=True)
class SampleCurves:
    """``values`` [metric, layer] (see :data:`METRICS`); ``target_area``: the share of the image's
    pixels covered by the question's target (0 when it names nothing visible)."""

    values: np.ndarray
    answer_token: int
    correct: bool  # the model's top next token is the answer's first token
    target_area: float
    region_fraction: float  # object tokens / image patches: the region share of uniform attention


def answer_token(loaded: LoadedModel, answer: str) -> int:
    """The first token of the reference answer, as the model would generate it."""
    ids = loaded.processor.tokenizer(answer.strip(), add_special_tokens=False)["input_ids"]
    if not ids:
        raise UserError(f"the answer {answer!r} has no tokens in this model's vocabulary.")
    return int(ids[0])


def output_projection(module: torch.nn.Module) -> torch.nn.Linear:
    projection = getattr(module, "o_proj", None)
    if not isinstance(projection, torch.nn.Linear):
        raise UserError(f"the attention module {type(module).__name__} has no linear o_proj, so "
                        "the image's share of its output cannot be measured.")
    return projection


def value_ratio(probabilities: torch.Tensor, values: torch.Tensor, image: np.ndarray,
                projection: torch.nn.Linear) -> torch.Tensor:
    """[rows]: ||W_O (image part)|| / ||W_O (whole)|| for probabilities [heads, rows, keys]
    and values [kv_heads, keys, dim] (see the module docstring)."""
    heads = probabilities.shape[0]
    values = values.to(probabilities.device)  # recorded maps come back on the CPU
    values = attention.repeat_kv(values[None].float(), heads // values.shape[0])[0]
    whole = probabilities @ values  # [heads, rows, dim]
    in_image = probabilities[:, :, image] @ values[:, image]
    weight = projection.weight.float().to(probabilities.device)

    def projected(per_head: torch.Tensor) -> torch.Tensor:
        return per_head.permute(1, 0, 2).reshape(per_head.shape[1], -1) @ weight.T

    return projected(in_image).norm(dim=-1) / projected(whole).norm(dim=-1)


@torch.inference_mode()
def answer_lens(loaded: LoadedModel, clean) -> torch.Tensor:
    """[layers, vocab] log-probabilities at the last position from the residual stream after
    each layer (:func:`probes.logit_lens.unembed`); the last layer's lens is the model's own
    output, so the clean pass's logits are used there."""
    layers = len(clean.hidden_states) - 1
    states = torch.cat([clean.hidden_states[i + 1][:, -1] for i in range(layers - 1)])
    lens = torch.cat([unembed(loaded, states).cpu(), clean.logits.float().cpu()[None]])
    return lens.log_softmax(-1)


def target_area(sample) -> float:
    """Share of the image's pixels the question's targets cover."""
    if not has_region(sample):
        return 0.0
    if sample.mask is not None:
        return float(np.asarray(sample.mask).mean())
    region = np.zeros((sample.image.height, sample.image.width), dtype=bool)
    for box in sample.target_boxes:
        region[box.y0:box.y1, box.x0:box.x1] = True
    return float(region.mean())


@torch.inference_mode()
def measure_sample(loaded: LoadedModel, sample) -> SampleCurves:
    """The curves of one sample (see the module docstring)."""
    adapter, model = loaded.adapter, loaded.model
    inputs = adapter.build_inputs([sample.image], [sample.ask]).to(loaded.device, loaded.dtype)
    visible = has_region(sample)
    groups = sample_groups(loaded, inputs, sample) if visible else token_groups(adapter, inputs)
    last, question = groups.last, groups.question
    recorder = AttentionRecorder(queries=np.concatenate([question, last]))
    attention.enable(model)
    modules = adapter.attention_modules(model)
    with attention.attach(modules, recorder):
        clean = clean_pass(loaded, inputs)
    rows = recorder.queries  # sorted: the question rows, then last
    is_last = np.isin(rows, last)
    image = groups.image_patches
    region = groups.object if visible else np.zeros(0, np.int64)
    token = answer_token(loaded, sample.answer)
    lens = answer_lens(loaded, clean)
    layers = adapter.num_layers
    values = np.full((len(METRICS), layers), np.nan)
    for layer in range(layers):
        probabilities = recorder.maps[layer][0].float()  # [heads, rows, keys]
        image_mass = probabilities[..., image].sum(-1).mean(0)  # [rows]
        values[0, layer] = image_mass[is_last].mean()
        values[1, layer] = image_mass[~is_last].mean()
        if region.size:
            region_mass = probabilities[..., region].sum(-1).mean(0) / image_mass
            values[2, layer] = region_mass[is_last].mean()
            values[3, layer] = region_mass[~is_last].mean()
        ratio = value_ratio(probabilities, clean.keys_values[layer][1][0], image,
                            output_projection(modules[layer]))
        values[4, layer] = ratio[is_last].mean()
        values[5, layer] = ratio[~is_last].mean()
    values[6] = lens[:, token].exp().double().numpy()
    values[7] = (lens > lens[:, token:token + 1]).sum(-1).double().numpy()
    correct = bool(clean.logits.argmax() == token)
    fraction = region.size / image.size if region.size else float("nan")
    return SampleCurves(values, token, correct, target_area(sample), fraction)
