"""Head attribution over a dataset: the per-sample measures (:mod:`analyses.heads.measure`),
per-(layer, head) means with bootstrap CIs, each head's drop tested against the random-head
control, the top heads, and the result (``summary.json`` + ``arrays.npz``).

**Effect** of a head, per sample: the drop of the clean answer token's probability when only
that head's edges of the flow are blocked, ``-prob_change_pct`` (in %, positive = it hurt).

**Control**: per sample, the mean drop over ``controls`` heads drawn at random (seeded by the
run's seed and the sample's index) from all the model's heads: what knocking out one head
chosen blindly does on that sample.

**Key heads** (rule, as layer masking's fusion layers): a head is a key head when (1) its drop
exceeds the control's: one-sided paired sign-flip test of the per-sample differences, Holm-
adjusted over all heads, adjusted p < ``alpha``; (2) the lower end of its drop's 95% bootstrap
CI is above 0; (3) its mean drop is at least ``min_effect`` %. The statistics are over the
samples the model answers correctly (``--all-samples``: every sample).

**Runner.** A sample's record depends only on (model, sample, config, index), so a resumed run,
merged shards or a Ray run give the files of an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from analyses.heads.measure import QUERY_SETS, control_change, measure_sample
from analyses.layer_masking.findings import ALPHA, MIN_EFFECT
from analyses.results import RunResult, provenance, skip
from analyses.runner import Analysis, Pass, RunInfo
from analyses.runner.spec import Records
from analyses.stats import bootstrap_mean_ci, holm_adjust, sign_flip_p_values
from probes import engines
from probes.engine import Engine
from probes.errors import UserError
from probes.masking import check_heads, check_layers, parse_flows
from probes.tokens import GROUPS

ANALYSIS = "heads"
SAMPLES = "samples"
AGAINST = ("runner-up", "mean")
PER_HEAD = ("prob_change_pct", "logit_change", "dla_heads")


@dataclass(frozen=True)
class HeadsConfig:
    """What decides the numbers (all of it goes into ``summary.json``)."""

    flow: str = "image->last"
    heads: tuple[tuple[int, int], ...] = ()  # a set of (layer, head) knocked out together
    controls: int = 8  # random heads (or head sets) per sample
    against: str = "runner-up"  # the logit difference's other side: "runner-up" or "mean"
    samples: str = "correct"  # the statistics' samples: "correct" or "all"
    top: int = 10
    batch_size: int = 32
    seed: int = 0
    n_bootstrap: int = 2000
    alpha: float = ALPHA
    min_effect: float = MIN_EFFECT
    engine: Engine = engines.DEFAULT  # any of probes.engines: the same numbers

    def __post_init__(self) -> None:
        object.__setattr__(self, "engine", engines.named(self.engine))
        object.__setattr__(self, "heads", tuple(tuple(int(v) for v in pair) for pair in self.heads))

    def validate(self, num_layers: int) -> None:
        flows = parse_flows(self.flow)
        if len(flows) != 1:
            raise UserError(f"--flow takes one flow, e.g. image->last, not {self.flow!r}.")
        for name in (*flows[0].source.split(","), *flows[0].target.split(",")):
            if name not in GROUPS:
                raise UserError(f"unknown token group {name!r} in the flow {flows[0]}; valid "
                                f"groups are {', '.join(GROUPS)}.")
        if self.against not in AGAINST:
            raise UserError(f"--against must be runner-up or mean, not {self.against!r}.")
        if self.samples not in ("correct", "all"):
            raise UserError(f"samples must be 'correct' or 'all', not {self.samples!r}.")
        check_layers([layer for layer, _ in self.heads], num_layers)

    def recorded(self) -> dict[str, Any]:
        recorded = engines.recorded_config(self)
        recorded["heads"] = [list(pair) for pair in self.heads]
        return recorded


class Heads(Analysis):
    """One pass: each sample's head sweep, attribution and image shares."""

    name = ANALYSIS
    passes = (Pass(SAMPLES, description="head attribution"),)

    def __init__(self, config: HeadsConfig = HeadsConfig()) -> None:
        self.config = config

    @classmethod
    def from_recorded(cls, recorded: dict[str, Any]) -> Heads:
        return cls(HeadsConfig(**recorded))

    def recorded(self) -> dict[str, Any]:
        return self.config.recorded()

    def validate(self, num_layers: int) -> None:
        self.config.validate(num_layers)

    def warm_up(self, loaded, dataset) -> None:
        check_heads([head for _, head in self.config.heads], loaded.adapter.num_heads)

    def measure(self, step, loaded, samples, indices, context) -> list[dict[str, Any]]:
        check_heads([head for _, head in self.config.heads], loaded.adapter.num_heads)
        return [measure_sample(loaded, sample, self.config, index, self.config.engine)
                for sample, index in zip(samples, indices)]

    def aggregate(self, records: Mapping[str, Records], info: RunInfo) -> RunResult:
        rows = records[SAMPLES]
        arrays = stack_records(rows, self.config)
        summary = provenance(ANALYSIS, info.model, info.data, len(rows), self.recorded(),
                             self.config.seed)
        summary.update(summarize(arrays, self.config))
        if not arrays["correct"].any() and self.config.samples == "correct":
            skip(summary, "statistics", "the model answers none of the samples correctly; "
                 "use --all-samples to test the heads on every sample")
        summary["timing"] = info.timing
        return RunResult(summary, arrays)

    def table(self, summary) -> str:
        from analyses.heads.table import format_table

        return format_table(summary)


def stack_records(rows: Records, config: HeadsConfig) -> dict[str, np.ndarray]:
    values = list(rows.values())
    arrays = {
        "sample_index": np.array(list(rows), dtype=np.int64),
        "sample_id": np.array([str(row["sample_id"]) for row in values]),
        "kind": np.array([str(row["kind"]) for row in values]),
        "correct": np.array([bool(row["correct"]) for row in values], dtype=bool),
    }
    for name in ("answer_token", "other_token"):
        arrays[name] = np.array([int(row[name]) for row in values], dtype=np.int64)
    for name in ("clean_probability", "dla_embedding", "logit_difference"):
        arrays[name] = np.array([float(row[name]) for row in values], dtype=np.float64)
    for name in ("prob_change_pct", "logit_change", "dla_heads", "dla_mlps", "dla_biases",
                 "image_share"):
        arrays[name] = np.stack([np.asarray(row[name], dtype=np.float64) for row in values])
    arrays["control_heads"] = np.stack([row["control_heads"] for row in values]).astype(np.int64)
    if config.heads:
        arrays["set_prob_change_pct"] = np.array([row["set_prob_change_pct"] for row in values])
        arrays["set_control_prob_change_pct"] = np.stack(
            [row["set_control_prob_change_pct"] for row in values]).astype(np.float64)
    return arrays


def _mean_ci(values: np.ndarray, config: HeadsConfig):
    mean, low, high = bootstrap_mean_ci(values, config.n_bootstrap, config.seed)
    return np.asarray(mean), np.asarray(low), np.asarray(high)


def head_tests(arrays: dict[str, np.ndarray], chosen: np.ndarray,
               config: HeadsConfig) -> list[dict[str, Any]]:
    """Per (layer, head), over the ``chosen`` samples: drop, control, their paired difference,
    the key-head rule's verdict (module docstring), DLA and image shares."""
    changes = arrays["prob_change_pct"][chosen]
    drops = -changes  # [n, layers, heads]
    control = -control_change(changes, arrays["control_heads"][chosen])  # [n]
    layers, heads = arrays["prob_change_pct"].shape[1:]
    difference = drops - control[:, None, None]
    d_mean, d_low, d_high = _mean_ci(drops, config)
    f_mean, _, _ = _mean_ci(difference, config)
    p = sign_flip_p_values(difference.reshape(len(drops), layers * heads), seed=config.seed)
    adjusted = holm_adjust(p).reshape(layers, heads)
    p = np.asarray(p).reshape(layers, heads)
    a_mean, a_low, a_high = _mean_ci(arrays["dla_heads"][chosen], config)
    share = arrays["image_share"][chosen].mean(0) if chosen.any() else \
        np.full((len(QUERY_SETS), layers, heads), np.nan)
    rows = []
    for layer in range(layers):
        for head in range(heads):
            at = (layer, head)
            rows.append({
                "layer": layer, "head": head, "drop": float(d_mean[at]),
                "drop_ci_low": float(d_low[at]), "drop_ci_high": float(d_high[at]),
                "control_drop": float(control.mean()) if control.size else float("nan"),
                "difference": float(f_mean[at]), "p_value": float(p[at]),
                "p_holm": float(adjusted[at]),
                "key_head": bool(adjusted[at] < config.alpha and d_low[at] > 0
                                 and d_mean[at] >= config.min_effect),
                "dla": float(a_mean[at]), "dla_ci_low": float(a_low[at]),
                "dla_ci_high": float(a_high[at]),
                **{f"image_share_{name}": float(share[k][at]) for k, name in enumerate(QUERY_SETS)},
            })
    return rows


def set_test(arrays: dict[str, np.ndarray], chosen: np.ndarray, config: HeadsConfig) -> dict | None:
    """The ``--heads`` set knocked out together against as many random heads, paired."""
    if not config.heads:
        return None
    drop = -arrays["set_prob_change_pct"][chosen]
    control = -arrays["set_control_prob_change_pct"][chosen].mean(1)
    mean, low, high = _mean_ci(drop, config)
    difference = drop - control
    p = sign_flip_p_values(difference, seed=config.seed)
    return {"heads": [f"{layer}.{head}" for layer, head in config.heads],
            "drop": float(mean), "drop_ci_low": float(low), "drop_ci_high": float(high),
            "control_drop": float(control.mean()) if control.size else float("nan"),
            "difference": float(difference.mean()) if difference.size else float("nan"),
            "p_value": float(p), "n": int(drop.size)}


def summarize(arrays: dict[str, np.ndarray], config: HeadsConfig) -> dict[str, Any]:
    chosen = arrays["correct"] if config.samples == "correct" else \
        np.ones(arrays["correct"].size, dtype=bool)
    tests = head_tests(arrays, chosen, config)
    top = sorted((r for r in tests if np.isfinite(r["drop"])), key=lambda r: -r["drop"])
    by_dla = sorted((r for r in tests if np.isfinite(r["dla"])), key=lambda r: -abs(r["dla"]))
    by_share = sorted((r for r in tests if np.isfinite(r["image_share_last"])),
                      key=lambda r: -r["image_share_last"])
    name = "{layer}.{head}".format
    total = (arrays["dla_heads"].sum((1, 2)) + arrays["dla_mlps"].sum(1)
             + arrays["dla_biases"].sum(1) + arrays["dla_embedding"])
    layers, heads = arrays["prob_change_pct"].shape[1:] if arrays["prob_change_pct"].ndim == 3 \
        else (0, 0)
    return {
        "axes": {"prob_change_pct": ["sample", "layer", "head"],
                 "dla_heads": ["sample", "layer", "head"],
                 "image_share": ["sample", ",".join(QUERY_SETS), "layer", "head"],
                 "control_heads": ["sample", "control", "layer,head"]},
        "num_layers": int(layers), "num_heads": int(heads),
        "n_correct": int(arrays["correct"].sum()), "n_tested": int(chosen.sum()),
        "flow": config.flow,
        "heads": tests,
        "top_heads": [name(**r) for r in top[: config.top]],
        "key_heads": [name(**r) for r in tests if r["key_head"]],
        "top_dla_heads": [name(**r) for r in by_dla[: config.top]],
        "top_visual_heads": [name(**r) for r in by_share[: config.top]],
        "head_set": set_test(arrays, chosen, config),
        "dla_check": {"max_abs_error": float(np.abs(total - arrays["logit_difference"]).max())
                      if total.size else float("nan")},
        "rules": {
            "effect": "drop of the clean answer token's probability (%) when only that head's "
                      "edges of the flow are blocked, in its layer",
            "control": f"per sample, the mean drop of {config.controls} heads drawn at random "
                       "(seeded) from all the model's heads",
            "key_head": f"Holm-adjusted (over all heads) one-sided paired sign-flip p (drop - "
                        f"control) < {config.alpha}, the drop's 95% bootstrap CI above 0, and "
                        f"its mean >= {config.min_effect}%",
            "dla": "o_proj's columns of the head times its slice of o_proj's input at last "
                   "(then through the layer's post-attention norm, where the family has one, "
                   "linearised at the clean attention output), through the final norm "
                   "linearised at the clean final residual (its clean scale), onto "
                   "unembedding(answer) - "
                   + ("unembedding(runner-up)" if config.against == "runner-up"
                      else "the mean unembedding row"),
            "image_share": "each head's attention mass on the image tokens, from last and "
                           "(averaged) from the question tokens, in the clean run",
        },
    }
