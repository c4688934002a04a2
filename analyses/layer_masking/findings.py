"""From per-sample sweeps to findings: per-layer means with bootstrap CIs, the fusion layers and
the late "review", each by a stated rule.

**Effect** of a flow at a layer, per sample: the drop of the clean answer token's probability,
``-prob_change_pct`` (in %, positive = blocking the flow hurt the answer).

**Fusion layers** (rule): layer l is a fusion layer of a flow when both
  (1) the flow's effect is larger than its control's: one-sided paired sign-flip test of the
      per-sample differences (flow effect - control effect), p-values Holm-adjusted over the
      layers, adjusted p < ``alpha`` (0.05); and
  (2) the flow's own effect is positive: the lower end of its 95% bootstrap CI is > 0 (so a
      control that happens to *raise* the answer's probability cannot make a layer where the
      flow does nothing look significant); and
  (3) the flow's mean effect is at least ``min_effect`` (default 2.0, i.e. the answer loses at
      least 2% of its probability): with hundreds of samples, drops of 0.2% are significant
      but nobody would call such a layer a place where vision and language fuse.
``fusion_layers`` in ``summary.json`` are those of the first flow; every flow's are listed too.

**Review** (rule): with L layers, the last quarter is layers ``>= L - ceil(L / 4)`` and a
stretch is ``max(2, L // 8)`` layers. A review is detected when a fusion layer r in the last
quarter is preceded by a stretch of non-fusion layers (r - stretch .. r - 1, all inside the
model); ``review.layers`` is the run of consecutive fusion layers starting at the first such r.
Review layers are fusion layers too (rule 1 and 2 hold there).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from analyses.layer_masking.sweep import METRICS
from analyses.stats import bootstrap_mean_ci, holm_adjust, sign_flip_p_values

ALPHA = 0.05
MIN_EFFECT = 2.0  # % of the answer's probability


def control_name(flow: str) -> str:
    return f"control({flow})"


def series_names(flows: Sequence[str]) -> list[str]:
    return [*flows, *(control_name(flow) for flow in flows)]


def per_layer_rows(arrays: dict[str, np.ndarray], flows: Sequence[str], n_bootstrap: int,
                   seed: int) -> list[dict[str, Any]]:
    """``{series, metric, layer, mean, ci_low, ci_high, n}`` for every series, metric, layer."""
    rows = []
    names = series_names(flows)
    for metric in METRICS:
        values = arrays[metric]  # [samples, series, layers]
        mean, low, high = bootstrap_mean_ci(values, n_bootstrap, seed)
        for s, name in enumerate(names):
            for layer in range(values.shape[2]):
                rows.append({"series": name, "metric": metric, "layer": layer,
                             "mean": float(mean[s, layer]), "ci_low": float(low[s, layer]),
                             "ci_high": float(high[s, layer]), "n": int(values.shape[0])})
    return rows


def significance(arrays: dict[str, np.ndarray], flows: Sequence[str], n_bootstrap: int,
                 seed: int, alpha: float = ALPHA,
                 min_effect: float = MIN_EFFECT) -> list[dict[str, Any]]:
    """Per flow and layer: effect, control effect, their paired difference and the rule's
    verdict (see the module docstring)."""
    drops = -arrays["prob_change_pct"]  # [samples, series, layers]
    count = len(flows)
    rows = []
    for f, flow in enumerate(flows):
        effect, control = drops[:, f], drops[:, count + f]
        difference = effect - control
        e_mean, e_low, e_high = bootstrap_mean_ci(effect, n_bootstrap, seed)
        d_mean, d_low, d_high = bootstrap_mean_ci(difference, n_bootstrap, seed)
        p_values = sign_flip_p_values(difference, seed=seed)
        adjusted = holm_adjust(p_values)
        for layer in range(effect.shape[1]):
            rows.append({
                "flow": flow, "layer": layer,
                "effect": float(e_mean[layer]), "effect_ci_low": float(e_low[layer]),
                "effect_ci_high": float(e_high[layer]),
                "control_effect": float(control[:, layer].mean()) if len(control)
                else float("nan"),
                "difference": float(d_mean[layer]), "difference_ci_low": float(d_low[layer]),
                "difference_ci_high": float(d_high[layer]),
                "p_value": float(p_values[layer]), "p_holm": float(adjusted[layer]),
                "significant": bool(adjusted[layer] < alpha and e_low[layer] > 0
                                    and e_mean[layer] >= min_effect),
            })
    return rows


def review(fusion: Sequence[int], num_layers: int) -> dict[str, Any]:
    """The review rule of the module docstring applied to one flow's fusion layers.

    >>> review([3, 4, 5, 14, 15], 16)["layers"], review([3, 4, 5, 6], 8)["detected"]
    ([14, 15], False)
    """
    late_start = num_layers - math.ceil(num_layers / 4)
    stretch = max(2, num_layers // 8)
    chosen = set(fusion)
    for r in range(late_start, num_layers):
        if r in chosen and r - stretch >= 0 and not chosen & set(range(r - stretch, r)):
            layers = []
            while r in chosen:
                layers.append(r)
                r += 1
            return {"detected": True, "layers": layers, "late_start": late_start,
                    "stretch": stretch}
    return {"detected": False, "layers": [], "late_start": late_start, "stretch": stretch}


def findings(arrays: dict[str, np.ndarray], flows: Sequence[str], num_layers: int,
             n_bootstrap: int, seed: int, alpha: float = ALPHA,
             min_effect: float = MIN_EFFECT) -> dict[str, Any]:
    """The summary's findings: per-layer rows, the tests, fusion layers and review."""
    tests = significance(arrays, flows, n_bootstrap, seed, alpha, min_effect)
    by_flow = {flow: [r["layer"] for r in tests if r["flow"] == flow and r["significant"]]
               for flow in flows}
    return {
        "per_layer": per_layer_rows(arrays, flows, n_bootstrap, seed),
        "tests": tests,
        "fusion_layers": by_flow[flows[0]],
        "fusion_layers_by_flow": by_flow,
        "review": review(by_flow[flows[0]], num_layers),
        "review_by_flow": {flow: review(layers, num_layers) for flow, layers in by_flow.items()},
        "rules": {
            "effect": "drop of the clean answer token's probability, -prob_change_pct (%)",
            "fusion": "Holm-adjusted one-sided paired sign-flip p (flow effect - control "
                      f"effect) < {alpha}, the flow effect's 95% bootstrap CI above 0, and its "
                      f"mean effect >= {min_effect}%",
            "review": "a fusion layer in the last quarter (layers >= L - ceil(L/4)) preceded by "
                      "max(2, L // 8) non-fusion layers; review layers = the run of fusion "
                      "layers starting there",
            "control": "same number of edges at the same layers, from text->text (no sink "
                       "key) and image->image edges, never self, none the flow blocks: those "
                       "of the latest query rows (the text after the image, then the image's "
                       "last rows), the earliest row's keys drawn at random",
        },
    }
