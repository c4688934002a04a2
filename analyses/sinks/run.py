"""An attention-sink run over a dataset: the per-sample measures
(:mod:`analyses.sinks.measure`), per-layer means with bootstrap CIs, the first token's sink
dimensions, two verdict lines (the text sink, the visual sink tokens) and the result
(``summary.json`` + ``arrays.npz``).

**Runner.** Each sample's record depends only on (model, sample), so a resumed run, shards
merged or a Ray run give the files of an uninterrupted one.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from analyses.logit_lens.run import mean_rows
from analyses.results import RunResult, provenance
from analyses.runner import Analysis, Pass, RunInfo
from analyses.runner.spec import Records
from analyses.sinks.measure import GROUPS, RATIO_GROUPS, measure_sample
from probes import engines
from probes.engine import Engine
from probes.errors import UserError

ANALYSIS = "sinks"
SAMPLES = "samples"
TEXT_SINK = 0.5  # the first token's share of the answer row's attention that makes a text sink
PER_LAYER = ("answer_share", "answer_head_max", "question_share", "question_head_max",
             "top_ratio", "first_ratio", "n_sink_dims", "visual_sinks", "visual_share",
             "visual_attention")  # the per-sample [layer, ...] arrays
SERIES = (*(f"answer_{g}" for g in GROUPS), *(f"answer_{g}_head_max" for g in GROUPS),
          *(f"question_{g}" for g in GROUPS), *(f"question_{g}_head_max" for g in GROUPS),
          *(f"top_ratio_{g}" for g in RATIO_GROUPS), "first_ratio", "n_sink_dims",
          "visual_share", "visual_attention")


@dataclass(frozen=True)
class SinksConfig:
    """What decides the numbers (all of it goes into ``summary.json``). ``tau``: a dimension
    is a sink dimension of a token when its |h_d| is at least ``tau`` x the RMS of the token's
    residual vector (20 after Kang et al. 2025, "See What You Are Told")."""

    tau: float = 20.0
    n_bootstrap: int = 2000
    seed: int = 0
    engine: Engine = engines.DEFAULT  # any of probes.engines: the same numbers

    def __post_init__(self) -> None:  # an engine's name (as recorded) is that engine
        object.__setattr__(self, "engine", engines.named(self.engine))

    def validate(self, num_layers: int) -> None:
        if not self.tau > 0:
            raise UserError(f"--tau must be above 0, not {self.tau}.")
        if self.n_bootstrap < 1:
            raise UserError(f"--bootstrap must be at least 1, not {self.n_bootstrap}.")


class Sinks(Analysis):
    """One clean prefill per sample, its attention recorded at ``last`` and the question's
    rows, and its residual stream read at every prompt token."""

    name = ANALYSIS
    passes = (Pass(SAMPLES, description="attention sinks"),)

    def __init__(self, config: SinksConfig = SinksConfig()) -> None:
        self.config = config

    @classmethod
    def from_recorded(cls, recorded: dict[str, Any]) -> Sinks:
        return cls(SinksConfig(**recorded))

    def recorded(self) -> dict[str, Any]:
        return engines.recorded_config(self.config)

    def validate(self, num_layers: int) -> None:
        self.config.validate(num_layers)

    def measure(self, step, loaded, samples, indices, context) -> list[dict[str, Any]]:
        return [measure_sample(loaded, sample, self.config.tau, self.config.engine)
                for sample in samples]

    def aggregate(self, records: Mapping[str, Records], info: RunInfo) -> RunResult:
        arrays = stack_records(records[SAMPLES])
        summary = provenance(ANALYSIS, info.model, info.data, len(records[SAMPLES]),
                             self.recorded(), self.config.seed)
        summary.update(summarize(arrays, self.config, info.num_layers))
        summary["timing"] = info.timing
        return RunResult(summary, arrays)

    def table(self, summary) -> str:
        from analyses.sinks.table import format_table

        return format_table(summary)


def stack_records(rows: Records) -> dict[str, np.ndarray]:
    """The per-sample arrays, stacked over the samples (index order)."""
    values = list(rows.values())
    return {
        "sample_index": np.array(list(rows), dtype=np.int64),
        "sample_id": np.array([str(row["sample_id"]) for row in values]),
        "kind": np.array([str(row["kind"]) for row in values]),
        "n_image": np.array([int(row["n_image"]) for row in values], dtype=np.int64),
        "hidden": np.array([int(row["hidden"]) for row in values], dtype=np.int64),
        "sum_error": np.array([float(row["sum_error"]) for row in values]),
        "first_dims": np.stack([row["first_dims"] for row in values]).astype(np.int64),
        "first_dim_ratios": np.stack([row["first_dim_ratios"] for row in values]),
        **{name: np.stack([row[name] for row in values]) for name in PER_LAYER},
    }


def series_values(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """[samples, layers] per series of :data:`SERIES`."""
    values = {}
    for query in ("answer", "question"):
        for k, group in enumerate(GROUPS):
            values[f"{query}_{group}"] = arrays[f"{query}_share"][..., k]
            values[f"{query}_{group}_head_max"] = arrays[f"{query}_head_max"][..., k]
    for k, group in enumerate(RATIO_GROUPS):
        values[f"top_ratio_{group}"] = arrays["top_ratio"][..., k]
    for name in ("first_ratio", "n_sink_dims", "visual_share", "visual_attention"):
        values[name] = arrays[name].astype(np.float64)
    return {name: values[name] for name in SERIES}


def per_layer_rows(arrays, num_layers: int, n_bootstrap: int, seed: int) -> list[dict]:
    """``{series, subset: "all", layer, mean, ci_low, ci_high, n}`` of every series."""
    rows = []
    for series, values in series_values(arrays).items():
        for layer, (mean, low, high, n) in enumerate(mean_rows(values, n_bootstrap, seed)):
            rows.append({"series": series, "subset": "all", "layer": layer, "mean": mean,
                         "ci_low": low, "ci_high": high, "n": n})
    return rows


def sink_dims(arrays: Mapping[str, np.ndarray], tau: float) -> dict[str, list[int]]:
    """Per layer (as a string, for JSON), the first token's sink dimensions found in at least
    half of the samples (among each sample's largest dimensions kept, ``first_dims``)."""
    found = {}
    dims, ratios = arrays["first_dims"], arrays["first_dim_ratios"]  # [sample, layer, k]
    for layer in range(dims.shape[1]):
        counts = Counter(int(d) for d, r in zip(dims[:, layer].ravel(),
                                                ratios[:, layer].ravel()) if r >= tau)
        common = sorted(d for d, c in counts.items() if 2 * c >= dims.shape[0])
        if common:
            found[str(layer)] = common
    return found


def layer_list(layers) -> str:
    """``[2, 3, 4, 7]`` as ``2-4, 7``."""
    parts, layers = [], sorted(int(v) for v in layers)
    for layer in layers:
        if parts and layer == parts[-1][1] + 1:
            parts[-1][1] = layer
        else:
            parts.append([layer, layer])
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in parts)


def verdict(arrays: Mapping[str, np.ndarray], tau: float) -> dict[str, Any]:
    """The text-sink layers (the first token's mean share of the answer row's attention at
    least :data:`TEXT_SINK`) and the layers with visual sink tokens (any sample has one), with
    their lines."""
    first = arrays["answer_share"][..., 0].mean(0)  # [layer]
    text_layers = [int(v) for v in np.flatnonzero(first >= TEXT_SINK)]
    if text_layers:
        text = (f"text sink: the first token gets >= {TEXT_SINK} of the answer row's attention "
                f"at layers {layer_list(text_layers)} (mean {first[text_layers].mean():.3f} "
                "there)")
    else:
        top = int(first.argmax())
        text = (f"text sink: none (the first token gets < {TEXT_SINK} of the answer row's "
                f"attention at every layer; at most {first[top]:.3f}, at layer {top})")
    present = arrays["visual_sinks"].sum(0) > 0  # [layer]
    visual_layers = [int(v) for v in np.flatnonzero(present)]
    share = arrays["visual_share"].mean(0)
    attention = arrays["visual_attention"].mean(0)
    if visual_layers:
        visual = (f"visual sink tokens: present at layers {layer_list(visual_layers)} "
                  f"({share[present].mean():.3f} of the image tokens on average there), they "
                  f"receive {attention[present].mean():.3f} of the answer row's attention")
    else:
        strongest = float(arrays["first_ratio"].max())
        bound = float(np.sqrt(arrays["hidden"].max()))
        reason = ("the first token has no sink dimension at any layer: its largest |h_d| / RMS "
                  f"is {strongest:.1f}, below tau {tau:g}" if strongest < tau else
                  "no image token peaks in the first token's sink dimensions")
        if tau > bound:
            reason += f"; no vector can reach tau: |h_d| / RMS is at most sqrt(hidden) = {bound:.1f}"
        visual = f"visual sink tokens: none ({reason})"
    return {"text_sink_layers": text_layers, "visual_sink_layers": visual_layers,
            "lines": [text, visual]}


def summarize(arrays: Mapping[str, np.ndarray], config: SinksConfig,
              num_layers: int) -> dict[str, Any]:
    verdicts = verdict(arrays, config.tau)
    return {
        "axes": {"answer_share": ["sample", "layer", ",".join(GROUPS)],
                 "answer_head_max": ["sample", "layer", ",".join(GROUPS)],
                 "question_share": ["sample", "layer", ",".join(GROUPS)],
                 "question_head_max": ["sample", "layer", ",".join(GROUPS)],
                 "top_ratio": ["sample", "layer", ",".join(RATIO_GROUPS)],
                 "first_dims": ["sample", "layer", "rank"],
                 "first_dim_ratios": ["sample", "layer", "rank"],
                 **{name: ["sample", "layer"] for name in
                    ("first_ratio", "n_sink_dims", "visual_sinks", "visual_share",
                     "visual_attention")}},
        "series": list(SERIES),
        "num_layers": num_layers,
        "hidden": int(arrays["hidden"].max()),
        "tau": config.tau,
        "n_image_tokens": float(arrays["n_image"].mean()),
        "max_sum_error": float(arrays["sum_error"].max()),
        "per_layer": per_layer_rows(arrays, num_layers, config.n_bootstrap, config.seed),
        "sink_dims": sink_dims(arrays, config.tau),
        **verdicts,
        "rules": {
            "groups": "keys: first (the first prompt token), image (the image tokens), before "
                      "(other text before the image), after (the text after it, last "
                      "included); rows: last (the answer position) and the question's rows "
                      "(their mean); shares heads averaged, head_max the largest head's",
            "residual": "the residual stream leaving each decoder layer (before the final "
                        "norm), at every prompt token",
            "top_ratio": "max_d |h_d| / median_d |h_d| of a token; per group its largest",
            "sink_dims": f"dimensions where the first token's |h_d| >= tau x RMS(h), tau "
                         f"{config.tau:g}; listed per layer when found in half the samples",
            "visual_sinks": "image tokens whose |h_d| >= tau x their own RMS in any of the "
                            "first token's sink dimensions; visual_attention: the answer row's "
                            "attention on them (heads averaged)",
            "text_sink": f"layers where the first token's mean share of the answer row's "
                         f"attention is >= {TEXT_SINK}",
        },
    }
