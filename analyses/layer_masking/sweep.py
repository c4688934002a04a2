"""One sample's layer sweep: every flow blocked at every layer (or window), plus its control.

For each flow and layer the knockout's next-token distribution at ``last`` is compared with the
clean one, on the token the clean model predicts there (the first token of its answer):

- ``prob_change_pct``: 100 * (p_blocked - p_clean) / p_clean (negative = the flow mattered);
- ``logit_change``: logit_blocked - logit_clean of that token;
- ``kl``: KL(clean || blocked) of the full next-token distributions, in nats;
- ``flipped``: whether the blocked run's top token differs.

**Control.** For each flow, the same number of attention edges, at the same layers, from the
edges that carry no image information into text (:func:`control_pool`): text->text edges (both
ends in the prompt's text; the first prompt token never a key: it is the attention sink, and
blocking it is not "no effect") and image->image edges; never a token's edge to itself, so every
row keeps a key; never an edge the flow itself blocks (a text flow's control is not the flow).
Matching the count of text->text edges alone is impossible for image flows (a 576-token image
feeding 40 text tokens blocks 23,040 edges; the whole text->text triangle has under 1,000),
hence the union. Of that pool the control takes the edges of the **latest query rows** that hold
the count (:func:`control_edges`): every pool edge into the text after the image, then the
image->image edges into the image's last rows, from the last row back; in the earliest row it
reaches, the remaining keys are drawn at random (seeded by the run's seed, the sample's index
and the flow's index). So the control perturbs the same late stretch of the sequence as an
image->text flow (whose queries are the text after the image) by removing as many edges, at the
same layers, without cutting the image off from the text; and its conditions share the clean
run's prefix up to a few rows before the flow's, which makes them cheap (the executor
recomputes only the rows after the earliest blocked query).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from probes.deepstack import DeepStackOff
from probes.engine import Engine
from probes.engines import DEFAULT
from probes.masking import EdgeKnockout, EdgeMaskPlan, Edges, Knockout, parse_flows
from probes.models.loading import LoadedModel
from probes.tokens import TokenGroups, token_groups

METRICS = ("prob_change_pct", "logit_change", "kl", "flipped")
REGION_GROUPS = ("object", "background")


@dataclass(frozen=True)
class SampleSweep:
    """One sample's sweep. ``metrics`` is [series, layer, metric] with series = the flows,
    then one control per flow, in the same order."""

    metrics: np.ndarray
    answer_token: int
    clean_probability: float
    flow_edges: np.ndarray  # [flows] edges each flow blocks per layer
    control_edges: np.ndarray  # [flows] edges its control blocks per layer
    deepstack: np.ndarray | None = None  # [deepstack conditions, metric] (--deepstack)


def sample_groups(loaded: LoadedModel, inputs, sample) -> TokenGroups:
    """The sample's token groups; ``object`` / ``background`` from its region
    (:meth:`~analyses.data.sample.Sample.region`) where it has one."""
    groups = token_groups(loaded.adapter, inputs)
    region = sample.region()
    return groups if region is None else groups.with_region(mask=region)


def has_region(sample) -> bool:
    """Whether the sample marks a visible region the question is about."""
    return sample.has_region()


def region_groups(flows: Sequence[str]) -> list[str]:
    """The region token groups (``object``, ``background``) the flows name."""
    names = {name for flow in parse_flows(flows) for name in (*flow.source.split(","),
                                                             *flow.target.split(","))}
    return [group for group in REGION_GROUPS if group in names]


def needs_region(flows: Sequence[str]) -> bool:
    return bool(region_groups(flows))


def causal_edge_count(queries: np.ndarray, keys: np.ndarray) -> int:
    """Edges (q, k) with k <= q: those a flow really removes (later keys are masked anyway)."""
    return int(np.searchsorted(np.sort(keys), queries, side="right").sum())


def control_pool(groups: TokenGroups, flow: Sequence[Edges] = ()) -> np.ndarray:
    """bool [query, key] over the prompt: the edges a control may block (see the module
    docstring): text->text without the sink key, image->image, never self, none the flow
    blocks."""
    length = groups.length
    text = np.zeros(length, dtype=bool)
    text[np.concatenate([groups.system, groups.question, groups.template, groups.last])] = True
    image = np.zeros(length, dtype=bool)
    image[groups.image] = True
    pool = (text[:, None] & text[None, :]) | (image[:, None] & image[None, :])
    pool &= np.tri(length, k=-1, dtype=bool)  # keys before the query: causal, never self
    pool[:, groups.padding.size] = False  # the sink
    if flow:
        positions = torch.arange(length)
        pool &= ~EdgeMaskPlan([list(flow)]).blocked(min(flow[0].layers), positions, length)[0].numpy()
    return pool


def control_edges(groups: TokenGroups, count: int, rng: np.random.Generator,
                  flow: Sequence[Edges] = ()) -> EdgeKnockout:
    """``count`` edges of the control pool (:func:`control_pool`; all there are, if fewer) in
    the latest query rows that hold that many: every pool edge of the rows after the boundary
    row, and the rest drawn at random (``rng``) from the boundary row's keys. Layers are filled
    in by the caller."""
    pool = control_pool(groups, flow)
    per_row = pool.sum(axis=1)
    from_end = np.cumsum(per_row[::-1])[::-1]  # pool edges in rows >= each row
    full = from_end >= count
    boundary = int(np.flatnonzero(full)[-1]) if full.any() else 0
    queries, keys = np.nonzero(pool[boundary + 1 :])
    queries += boundary + 1
    wanted = min(count, int(from_end[0])) - queries.size
    extra = np.sort(rng.choice(np.flatnonzero(pool[boundary]), size=wanted, replace=False))
    return EdgeKnockout(np.concatenate([np.full(wanted, boundary), queries]),
                        np.concatenate([extra, keys]), ())


def flow_control(groups: TokenGroups, flow_conditions: Sequence[Knockout], num_layers: int,
                 rng: np.random.Generator) -> tuple[int, list[EdgeKnockout]]:
    """The number of edges one flow blocks per layer, and its control at each of the flow's
    conditions' layers (the same count, at the same layers)."""
    edges = flow_conditions[0].edges(groups, num_layers)
    count = sum(causal_edge_count(e.queries, e.keys) for e in edges)
    drawn = control_edges(groups, count, rng, edges)
    return count, [EdgeKnockout(drawn.queries, drawn.keys, c.layers) for c in flow_conditions]


def conditions(flows: Sequence[str], window: int, num_layers: int) -> list[list[Knockout]]:
    """[flow][layer] knockouts: the flow blocked in the window centred on each layer."""
    return [[Knockout.window(flow, layer, window, num_layers) for layer in range(num_layers)]
            for flow in flows]


def deepstack_conditions(adapter, flows: Sequence[str], num_layers: int) -> list:
    """What ``--deepstack`` adds to each sweep (see :func:`deepstack_names`): DeepStack off
    everywhere, after each DeepStack layer alone, and each flow blocked at every layer without
    and with DeepStack (a UserError on a model without DeepStack)."""
    every = DeepStackOff.of(adapter)
    result: list = [every, *(DeepStackOff.of(adapter, [layer]) for layer in adapter.deepstack_layers)]
    for flow in flows:
        blocked = Knockout(parse_flows(flow), tuple(range(num_layers)))
        result += [blocked, DeepStackOff(every.removed, blocked)]
    return result


def deepstack_names(flows: Sequence[str], deepstack_layers: int) -> list[str]:
    """The names of :func:`deepstack_conditions`, in order."""
    names = ["DeepStack off", *(f"DeepStack off after layer {layer}"
                                for layer in range(deepstack_layers))]
    for flow in flows:
        names += [f"{flow} at every layer", f"{flow} at every layer + DeepStack off"]
    return names


def compare(clean_logits: torch.Tensor, logits: torch.Tensor, token: int) -> np.ndarray:
    """[conditions, 4] metrics of ``logits`` [conditions, vocab] against the clean logits."""
    clean_logp = clean_logits.double().log_softmax(-1)
    logp = logits.double().log_softmax(-1)
    p_clean = clean_logp[token].exp()
    prob_change = 100 * (logp[:, token].exp() - p_clean) / p_clean
    logit_change = logits[:, token].double() - clean_logits[token].double()
    kl = (clean_logp.exp() * (clean_logp - logp)).sum(-1)
    flipped = logits.argmax(-1) != token
    return torch.stack([prob_change, logit_change, kl, flipped.double()], -1).numpy()


def sweep_sample(loaded: LoadedModel, sample, flows: Sequence[str], window: int, seed: int,
                 sample_index: int, batch_size: int = 32, engine: Engine = DEFAULT,
                 deepstack: bool = False) -> SampleSweep:
    """The sweep of one sample (see the module docstring) on ``engine``: equal to one full
    masked forward per condition (tests/test_layer_masking.py checks it). ``deepstack``: also
    the :func:`deepstack_conditions` (Qwen3-VL)."""
    num_layers = loaded.adapter.num_layers
    inputs = loaded.adapter.build_inputs([sample.image], [sample.ask])
    inputs = inputs.to(loaded.device, loaded.dtype)
    groups = sample_groups(loaded, inputs, sample) if needs_region(flows) else \
        token_groups(loaded.adapter, inputs)
    prefill = engine.prefill(loaded, inputs, groups)  # shared by every call below
    clean_logits = prefill.logits
    token = int(clean_logits.argmax())
    rows, flow_edges, control_counts = [], [], []
    for index, flow_conditions in enumerate(conditions(flows, window, num_layers)):
        flow_result = engine.knockouts(prefill, flow_conditions, batch_size)
        rng = np.random.default_rng([seed, sample_index, index])
        count, controls = flow_control(groups, flow_conditions, num_layers, rng)
        control_result = engine.knockouts(prefill, controls, batch_size)
        rows.append((compare(clean_logits, flow_result.logits, token),
                     compare(clean_logits, control_result.logits, token)))
        flow_edges.append(count)
        control_counts.append(controls[0].edge_count)
    metrics = np.stack([r[0] for r in rows] + [r[1] for r in rows])
    probability = float(clean_logits.double().softmax(-1)[token])
    extra = None
    if deepstack:
        extra = compare(clean_logits, engine.knockouts(
            prefill, deepstack_conditions(loaded.adapter, flows, num_layers), batch_size).logits,
            token)
    return SampleSweep(metrics, token, probability, np.array(flow_edges), np.array(control_counts),
                       extra)

