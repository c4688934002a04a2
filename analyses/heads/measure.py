"""One sample's head attribution: every (layer, head) knocked out alone, the heads' direct logit
attribution and their attention on the image.

- the **answer** is the clean model's top token at ``last`` (the first token of its reply), the
  **other** token its runner-up there (``--against mean``: the mean over the vocabulary);
- ``prob_change_pct``, ``logit_change`` [layer, head]: the answer's probability change (in %
  of the clean one) and logit change when only that head's edges of ``--flow`` are blocked (in
  that layer; every other head reads them);
- ``control_heads`` [controls, 2]: (layer, head) pairs drawn at random, seeded by the run's
  seed and the sample's index; the **random-head control** of the sample is the mean change
  over them (read from the sweep: the same single-head knockouts);
- with ``--heads``: ``set_prob_change_pct`` when those heads are knocked out together, and
  ``set_control_prob_change_pct`` [controls] for as many heads drawn at random (seeded);
- ``dla_heads`` [layer, head], ``dla_mlps``, ``dla_biases`` [layer], ``dla_embedding``: direct
  logit attribution (:mod:`probes.heads`) to logit(answer) - logit(other); ``logit_difference``
  the clean one they sum to;
- ``image_share`` [query set, layer, head]: each head's attention mass on the image tokens from
  ``last`` and (averaged) from the question tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from analyses.grading import grade
from analyses.layer_masking.sweep import compare, needs_region, sample_groups
from probes.engine import Engine
from probes.heads import decompose, image_shares, logit_attribution
from probes.masking import HeadKnockout, Knockout
from probes.models.loading import LoadedModel
from probes.record import AttentionRecorder
from probes.tokens import token_groups

QUERY_SETS = ("last", "question")  # the rows of image_share


def single_heads(flow: str, num_layers: int, num_heads: int) -> list[HeadKnockout]:
    """[layer * heads + head]: the flow blocked in that one head of that layer."""
    return [HeadKnockout(Knockout.window(flow, layer, 1, num_layers), (head,), num_heads)
            for layer in range(num_layers) for head in range(num_heads)]


def head_set(flow: str, heads: Sequence[tuple[int, int]], num_layers: int,
             num_heads: int) -> list[HeadKnockout]:
    """The flow blocked in every (layer, head) of ``heads`` together: one knockout per layer,
    to be joined (:class:`Together`)."""
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)
    return [HeadKnockout(Knockout.window(flow, layer, 1, num_layers), tuple(chosen), num_heads)
            for layer, chosen in sorted(by_layer.items())]


class Together:
    """Several knockouts as one condition (their edges united)."""

    def __init__(self, parts: Sequence) -> None:
        self.parts = list(parts)
        self.layers = tuple(sorted({layer for part in self.parts for layer in part.layers}))

    def edges(self, groups, num_layers: int) -> list:
        return [edges for part in self.parts for edges in part.edges(groups, num_layers)]


def random_heads(rng: np.random.Generator, count: int, num_layers: int,
                 num_heads: int) -> np.ndarray:
    """[count, 2] distinct (layer, head) pairs drawn uniformly from the model's heads."""
    picks = rng.choice(num_layers * num_heads, size=min(count, num_layers * num_heads),
                       replace=False)
    return np.stack([picks // num_heads, picks % num_heads], 1).astype(np.int64)


def measure_sample(loaded: LoadedModel, sample, config, index: int,
                   engine: Engine) -> dict[str, Any]:
    """The record of one sample (see the module docstring)."""
    adapter = loaded.adapter
    layers, heads = adapter.num_layers, adapter.num_heads
    inputs = adapter.build_inputs([sample.image], [sample.ask]).to(loaded.device, loaded.dtype)
    flows = (config.flow,)
    groups = (sample_groups(loaded, inputs, sample) if needs_region(flows)
              else token_groups(adapter, inputs))
    sets = {"last": groups.last, "question": groups.question}
    recorder = AttentionRecorder(queries=np.concatenate(list(sets.values())), keys=groups.image)
    prefill = engine.prefill(loaded, inputs, groups, record=recorder)
    clean = prefill.logits
    answer, runner_up = clean.topk(2).indices.tolist()
    other = None if config.against == "mean" else runner_up

    sweep = engine.knockouts(prefill, single_heads(config.flow, layers, heads), config.batch_size)
    changes = compare(clean, sweep.logits, answer).reshape(layers, heads, -1)
    rng = np.random.default_rng([config.seed, index])
    control = random_heads(rng, config.controls, layers, heads)
    record: dict[str, Any] = {
        "sample_id": sample.id, "kind": sample.kind,
        "correct": grade(loaded, [sample], batch_size=1)[0],
        "answer_token": answer, "other_token": -1 if other is None else other,
        "clean_probability": float(clean.double().softmax(-1)[answer]),
        "prob_change_pct": changes[..., 0], "logit_change": changes[..., 1],
        "control_heads": control,
    }
    if config.heads:
        drawn = [random_heads(rng, len(config.heads), layers, heads)
                 for _ in range(config.controls)]
        conditions = [Together(head_set(config.flow, chosen, layers, heads))
                      for chosen in [config.heads, *(d.tolist() for d in drawn)]]
        result = engine.knockouts(prefill, conditions, config.batch_size)
        set_changes = compare(clean, result.logits, answer)[:, 0]
        record["set_prob_change_pct"] = float(set_changes[0])
        record["set_control_prob_change_pct"] = set_changes[1:]

    parts = decompose(loaded, inputs)
    attributed = logit_attribution(loaded, parts, answer, other)
    logits = clean.double()
    record.update({
        "dla_heads": attributed["heads"].numpy(), "dla_mlps": attributed["mlps"].numpy(),
        "dla_biases": attributed["biases"].numpy(),
        "dla_embedding": float(attributed["embedding"]),
        "logit_difference": float(logits[answer] - (logits.mean() if other is None
                                                    else logits[other])),
        "image_share": image_shares(recorder, sets, layers),
    })
    return record


def control_change(record_changes: np.ndarray, control: np.ndarray) -> np.ndarray:
    """[samples]: each sample's random-head control, the mean of its sweep's changes
    ``record_changes`` [samples, layer, head] at its ``control`` [samples, controls, 2] heads."""
    rows = np.arange(record_changes.shape[0])[:, None]
    return record_changes[rows, control[..., 0], control[..., 1]].mean(1)

