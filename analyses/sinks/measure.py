"""One sample's attention sinks and massive activations: one clean prefill of the prompt with
the attention of ``last`` and of the question's rows recorded (every head, every key), and the
residual stream at every prompt token after every layer (:meth:`Engine.residual`: the stream
leaving layer l, before the final norm; what the logit lens reads).

**Key groups** (a partition of the prompt's keys): ``first``, the first prompt token (the
classic text sink); ``image``, the image tokens (:func:`probes.tokens.token_groups`; the first
token excluded should an image open the prompt); ``before``, the other text before the image
(system prompt, template); ``after``, the text after it (question, template, ``last`` itself).

- ``answer_share`` [layer, group]: the answer row's (``last``) attention on each group, heads
  averaged; ``answer_head_max``: the largest share any one head gives the group;
- ``question_share``, ``question_head_max``: the same for the question's rows (their mean);
- ``sum_error``: the largest |1 - sum over groups| of any recorded row (a check: 0 to rounding);
- ``top_ratio`` [layer, first/image/text]: the largest max_d |h_d| / median_d |h_d| of a token
  of the group (``text``: ``before`` and ``after``);
- ``first_ratio`` [layer]: the first token's max_d |h_d| / RMS(h): its sink dimensions are those
  with |h_d| >= tau x RMS(h) (Kang et al. 2025; Sun et al. 2024), ``n_sink_dims`` [layer] how
  many, ``first_dims`` / ``first_dim_ratios`` [layer, 8] its 8 largest dimensions by |h_d|;
- ``visual_sinks`` [layer]: the image tokens whose |h_d| / RMS(h) >= tau in any sink dimension
  (none where the first token has no sink dimension), ``visual_share`` their share of the image
  tokens, ``visual_attention`` the answer row's attention on them (heads averaged).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from probes import engines
from probes.engine import Engine
from probes.models.loading import LoadedModel
from probes.record import AttentionRecorder
from probes.tokens import TokenGroups, token_groups

GROUPS = ("first", "image", "before", "after")  # the key groups, in the arrays' order
RATIO_GROUPS = ("first", "image", "text")  # the groups of top_ratio
TOP_DIMS = 8  # the first token's largest dimensions kept per layer
RESIDUAL_BYTES = 2**28  # residual values read per forward at most (layers are split to fit)


def key_groups(groups: TokenGroups) -> dict[str, np.ndarray]:
    """The prompt's keys as :data:`GROUPS` (sorted positions, disjoint, covering the prompt)."""
    prompt = np.arange(groups.padding.size, groups.length, dtype=np.int64)
    first = prompt[:1]
    image = np.setdiff1d(groups.image, first)
    text = np.setdiff1d(prompt, np.concatenate([first, image]))
    return {"first": first, "image": image, "before": text[text < groups.image.min()],
            "after": text[text > groups.image.min()]}


def group_shares(probabilities: np.ndarray, keys: dict[str, np.ndarray]) -> np.ndarray:
    """[..., group]: attention rows [..., key] summed over each group's keys."""
    return np.stack([probabilities[..., keys[name]].sum(-1) for name in GROUPS], -1)


def attention_shares(maps: dict[int, Any], layers: int, rows: np.ndarray, last: int,
                     question: np.ndarray, keys: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The shares of the recorded ``maps`` (layer -> [1, heads, rows, keys], ``rows`` their
    positions): the answer row and the question rows onto :data:`GROUPS` (see the module)."""
    answer, asked = np.zeros((2, layers, len(GROUPS))), np.zeros((2, layers, len(GROUPS)))
    error = 0.0
    at_last = int(np.searchsorted(rows, last))
    at_question = np.searchsorted(rows, question)
    for layer in range(layers):
        shares = group_shares(maps[layer][0].double().numpy(), keys)  # [heads, rows, group]
        error = max(error, float(np.abs(shares.sum(-1) - 1).max()))
        asked_heads = shares[:, at_question].mean(1)  # [heads, group]
        answer[:, layer] = shares[:, at_last].mean(0), shares[:, at_last].max(0)
        asked[:, layer] = asked_heads.mean(0), asked_heads.max(0)
    return {"answer_share": answer[0], "answer_head_max": answer[1],
            "question_share": asked[0], "question_head_max": asked[1], "sum_error": error}


def ratios_to(values: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """|values| [..., d] / scale [...], 0 where the scale is 0 (a zero vector has no peak)."""
    scale = np.broadcast_to(scale[..., None], values.shape)
    return np.divide(np.abs(values), scale, out=np.zeros(values.shape), where=scale > 0)


def massive(states, first: int, image: np.ndarray, text: np.ndarray, tau: float
            ) -> dict[str, np.ndarray]:
    """The massive-activation measures (see the module docstring) of residual ``states``
    [layer, token, hidden] whose token ``first`` is the first token, ``image`` and ``text``
    the indices of the image and text tokens (into the token axis); one layer at a time."""
    rows = [_massive_layer(np.asarray(layer, dtype=np.float64), first, image, text, tau)
            for layer in states]
    return {name: np.stack([row[name] for row in rows]) for name in rows[0]}


def _massive_layer(states: np.ndarray, first: int, image: np.ndarray, text: np.ndarray,
                   tau: float) -> dict[str, np.ndarray]:
    magnitude = np.abs(states)  # [token, hidden]
    top = magnitude.max(-1) / np.maximum(np.median(magnitude, -1), np.finfo(np.float32).tiny)
    rms = np.sqrt((states ** 2).mean(-1))
    phi_first = ratios_to(states[first], rms[first])  # [hidden]: |h_d| / RMS(h)
    sink_dims = np.flatnonzero(phi_first >= tau)
    visual = (ratios_to(states[image][:, sink_dims], rms[image]) >= tau).any(-1)
    order = np.argsort(-phi_first, kind="stable")[:TOP_DIMS]
    return {
        "top_ratio": np.array([top[g].max() if g.size else np.nan
                               for g in (np.array([first]), image, text)]),
        "first_ratio": phi_first.max(),
        "n_sink_dims": np.int64(sink_dims.size),
        "first_dims": order.astype(np.int64),
        "first_dim_ratios": phi_first[order],
        "visual": visual,  # [image token]
    }


def layer_chunks(layers: int, tokens: int, hidden: int) -> list[range]:
    """The layers split so that one chunk's residual (float32) stays under
    :data:`RESIDUAL_BYTES`; one chunk for any model that fits."""
    per_layer = max(1, tokens * hidden * 4)
    size = max(1, RESIDUAL_BYTES // per_layer)
    return [range(start, min(start + size, layers)) for start in range(0, layers, size)]


def measure_sample(loaded: LoadedModel, sample, tau: float,
                   engine: Engine | str = engines.DEFAULT) -> dict[str, Any]:
    """The record of one sample (see the module docstring)."""
    adapter = loaded.adapter
    inputs = adapter.build_inputs([sample.image], [sample.ask]).to(loaded.device, loaded.dtype)
    groups = token_groups(adapter, inputs)
    keys = key_groups(groups)
    rows = np.concatenate([groups.question, groups.last])
    recorder = AttentionRecorder(queries=rows)
    engine = engines.named(engine)  # an engine, or its name
    prefill = engine.prefill(loaded, inputs, groups, record=recorder)
    layers = adapter.num_layers
    record = attention_shares(recorder.maps, layers, recorder.queries, int(groups.last[0]),
                              groups.question, keys)
    prompt = np.arange(groups.padding.size, groups.length, dtype=np.int64)
    image = np.searchsorted(prompt, keys["image"])
    text = np.searchsorted(prompt, np.concatenate([keys["before"], keys["after"]]))
    parts = [massive(engine.residual(prefill, chunk, prompt).numpy(), 0, image, text, tau)
             for chunk in layer_chunks(layers, prompt.size, adapter.hidden_size)]
    measured = {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
    visual = measured.pop("visual")  # [layer, image token]
    # the answer row's attention on each image token, heads averaged [layer, image token]
    at_last = int(np.searchsorted(recorder.queries, groups.last[0]))
    on_image = np.stack([recorder.maps[layer][0, :, at_last].double().mean(0).numpy()
                         [keys["image"]] for layer in range(layers)])
    return {
        "sample_id": sample.id, "kind": sample.kind,
        **record, **measured,
        "n_image": int(keys["image"].size), "hidden": int(adapter.hidden_size),
        "visual_sinks": visual.sum(1).astype(np.int64),
        "visual_share": visual.mean(1) if visual.shape[1] else np.zeros(layers),
        "visual_attention": (on_image * visual).sum(1),
    }
