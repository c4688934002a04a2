"""The analyses' final files, run through today's code, equal those saved from the code before
the shared runner (``tests/golden``, made by ``tests/golden/runs.py``): the refactor changed
where the per-sample loop lives, not a number. Timings, library versions and the runner's own
new keys are left out of the comparison; integers, booleans and strings must match exactly.

Floats are compared as tightly as float32 allows on any CPU, whatever its kernels (AVX-512,
AVX2, ATen's default; 1 or 2 threads sum in other orders): every quantity q gets an absolute
tolerance ``K * EPS32 * S_q``, where ``S_q`` is the magnitude of the float32 terms q is computed
from, not q's own size (a mean near zero of terms of size 100 carries the rounding of the
terms). K = 32 rounds up sqrt(512) ~ 23, the statistical rounding growth of the tiny models'
longest float32 reduction (an MLP of width 512); the errors observed across kernels stay
within a few EPS32 * S_q (``python tests/golden/deviations.py`` prints them).

- By default ``S_q`` is the largest magnitude of the quantity's saved values: an array, or the
  summary's values at one place (``per_layer[].mean``), per ``metric`` where rows carry one
  (a float32 quantity's rounding is normwise: relative to the largest of its kind).
- Layer masking (:func:`layer_masking_scales`) derives from the answer token's logits z, whose
  rounding is relative to the terms of the final logit reduction: ``Z``, bounded from the
  checkpoint by Cauchy-Schwarz (:func:`logit_scale`). Then logit_change = z_m - z_c errs by
  2 dz, log-probabilities by 2 dz, prob_change_pct = 100 (p_m / p_c - 1) by
  (100 + pct) * 4 dz, the KL by 4 dz (1 + KL). Its summary's means and bootstrap CI bounds
  are means and order statistics of those per-sample values (1-Lipschitz in the largest
  per-sample error): their tolerance is the per-sample one of the metric they aggregate,
  doubled for paired differences. Its sign-flip p-values are step functions of the signs of
  the paired differences: where a sample's difference is zero within its tolerance, the
  p-value is noise (any value passes) and the Holm-adjusted ones of that flow are bounded by
  setting it to 0 and to 1 (Holm's adjustment is monotone).
"""

from __future__ import annotations

import functools
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from analyses.results import RunResult
from analyses.stats import holm_adjust

GOLDEN = Path(__file__).parent / "golden"
sys.path.insert(0, str(GOLDEN))
from runs import RUNS, run  # noqa: E402

IGNORED = {"timing", "versions"}  # what differs from run to run by nature
ADDED = {"failed", "skipped",  # keys the shared runner and provenance add to every summary
         "min_kind_samples", "kinds_below_minimum"}  # layer masking: kinds too small, listed
# arrays added since the golden files were saved, each tested against its own reference:
# token importance's prompt tokens (tests/test_token_importance.py)
ADDED_ARRAYS = {"prompt_importance", "prompt_tokens", "prompt_groups", "prompt_offsets"}
EPS32 = float(np.finfo(np.float32).eps)  # 2**-23
K = 32  # see the module docstring


def intended(summary: dict) -> dict:
    """The saved summary with the changes the runner's refactor meant to make: every method
    comparison follows one contract (``analyses.stats.method_rows``), whose rows carry the
    number correct and whose clean row has no p-value (two analyses wrote 1.0 or None); and,
    since real benchmark data, the model's family and the prompt template the data was asked
    with are recorded (the embedded sets are asked the bare question; train_vif's training sets
    are never prompted)."""
    def fix(rows):
        for row in rows:
            if "method" in row and "p_value_vs_clean" in row:
                row.setdefault("correct", round(row["accuracy"] * row["n"]) if row["n"] else 0)
                if row["method"] == "clean":
                    row["p_value_vs_clean"] = None
    for key in ("methods", "methods_by_kind"):
        if isinstance(summary.get(key), list):
            fix(summary[key])
    summary["model"]["family"] = "llava"
    summary["data"].update(prompt="{question}", spec=summary["data"]["name"])
    for record in summary.get("training", {}).get("data", []):
        record.update(prompt=None, spec=record["name"])
    return summary


# -- where each float's rounding comes from -------------------------------------------------

def group(where: str, row: dict | None) -> str:
    """The quantity a value at ``where`` belongs to: its place with list indices dropped, and
    the row's metric where the row names one (``summary.per_layer[].mean{kl}``)."""
    name = re.sub(r"\[\d+\]", "[]", where)
    metric = (row or {}).get("metric")
    return f"{name}{{{metric}}}" if isinstance(metric, str) else name


def leaves(tree, where: str = "summary", row: dict | None = None):
    """(place, row, value) of every value of a summary, skipping what is never compared."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            if key not in IGNORED and not key.endswith("seconds"):  # wall times
                yield from leaves(value, f"{where}.{key}", tree)
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            yield from leaves(value, f"{where}[{i}]", row)
    else:
        yield where, row, tree


def float_arrays(result: RunResult) -> dict[str, np.ndarray]:
    return {key: value for key, value in result.arrays.items()
            if value.dtype.kind == "f" and not key.endswith("seconds")}  # per-sample timings


def largest(values) -> float:
    values = np.abs(np.asarray(values, dtype=np.float64))
    values = values[np.isfinite(values)]
    return float(values.max()) if values.size else 0.0


@functools.cache
def logit_scale(model: str) -> float:
    """Z, a bound on the summed terms of a logit of a llava-architecture ``model``: the final
    RMS norm leaves a hidden state gamma * x with ||x||_2 = sqrt(d), so for every token a,
    sum_j |W_aj gamma_j x_j| <= ||W_a * gamma||_2 sqrt(d) (Cauchy-Schwarz)."""
    from probes.models.loading import load_model

    network = load_model(model, device="cpu").model
    weight = network.get_output_embeddings().weight.detach().double()
    gamma = network.model.language_model.norm.weight.detach().double()
    return float((weight * gamma).norm(dim=1).max()) * weight.shape[1] ** 0.5


def layer_masking_scales(expected: RunResult) -> dict[str, float]:
    """S_q of layer masking's quantities (the module docstring)."""
    z = logit_scale(expected.summary["model"]["id"])
    arrays = expected.arrays
    scales = {"arrays.clean_probability": 2 * z, "arrays.logit_change": 2 * z,
              "arrays.prob_change_pct": 4 * z * (100 + max(0.0, largest(arrays["prob_change_pct"]))),
              "arrays.kl": 4 * z * (1 + largest(arrays["kl"])), "arrays.flipped": 0.0}
    for metric in ("prob_change_pct", "logit_change", "kl", "flipped"):
        for field in ("mean", "ci_low", "ci_high"):
            scales[f"summary.per_layer[].{field}{{{metric}}}"] = scales[f"arrays.{metric}"]
    for field in ("effect", "effect_ci_low", "effect_ci_high", "control_effect"):
        scales[f"summary.tests[].{field}"] = scales["arrays.prob_change_pct"]
    for field in ("difference", "difference_ci_low", "difference_ci_high"):
        scales[f"summary.tests[].{field}"] = 2 * scales["arrays.prob_change_pct"]
    return scales


def layer_masking_p_values(expected: RunResult, tolerance: Callable[[str], float]
                           ) -> dict[str, tuple[float, float]]:
    """place -> (lowest, highest) accepted value of the p-values that float32 noise decides
    (module docstring); p-values not named must match exactly."""
    tests, flows = expected.summary["tests"], expected.summary["config"]["flows"]
    drops = -expected.arrays["prob_change_pct"]  # [sample, series, layer]: flows, controls
    noise = tolerance("summary.tests[].difference")
    bounds = {}
    for f, flow in enumerate(flows):
        rows = [(i, row) for i, row in enumerate(tests) if row["flow"] == flow]
        p = np.array([row["p_value"] for _, row in rows])
        differences = drops[:, f] - drops[:, len(flows) + f]
        free = [np.abs(differences[:, row["layer"]]).min() <= noise for _, row in rows]
        if not any(free):
            continue
        low, high = holm_adjust(np.where(free, 0.0, p)), holm_adjust(np.where(free, 1.0, p))
        for k, (i, _) in enumerate(rows):
            bounds[f"summary.tests[{i}].p_holm"] = (low[k], high[k])
            if free[k]:
                bounds[f"summary.tests[{i}].p_value"] = (0.0, 1.0)
    return bounds


def tolerances(expected: RunResult) -> tuple[Callable[[str], float], dict]:
    """(group -> absolute tolerance, place -> accepted range of the values noise decides)."""
    scales: dict[str, float] = {}
    for where, row, value in leaves(expected.summary):
        if isinstance(value, float):
            name = group(where, row)
            scales[name] = max(scales.get(name, 0.0), largest([value]))
    scales.update({f"arrays.{key}": largest(value)
                   for key, value in float_arrays(expected).items()})
    layer_masking = expected.summary["analysis"] == "layer_masking"
    if layer_masking:
        scales.update(layer_masking_scales(expected))

    def tolerance(name: str) -> float:
        return K * EPS32 * scales[name]
    return tolerance, layer_masking_p_values(expected, tolerance) if layer_masking else {}


# -- the comparison ---------------------------------------------------------------------------

def deviations(expected: RunResult, actual: RunResult) -> tuple[list[str], dict]:
    """(every difference beyond the tolerances, as one line each; group -> (largest deviation,
    tolerance) of every float quantity). ``expected`` with :func:`intended` applied."""
    tolerance, ranges = tolerances(expected)
    problems: list[str] = []
    seen: dict[str, tuple[float, float]] = {}

    def float_close(name: str, where: str, e: float, a: float) -> bool:
        if math.isnan(e) or math.isnan(a):
            return math.isnan(e) and math.isnan(a)
        if where in ranges:
            low, high = ranges[where]
            return low - 1e-12 <= a <= high + 1e-12
        deviation = abs(a - e)
        seen[name] = (max(seen.get(name, (0.0, 0.0))[0], deviation), tolerance(name))
        return deviation <= tolerance(name)

    def walk(e, a, where: str, row: dict | None) -> None:
        if isinstance(e, dict):
            if not isinstance(a, dict):
                problems.append(f"{where}: {a!r} is not a dict")
                return
            missing = set(e) - set(a) - IGNORED
            extra = set(a) - set(e) - IGNORED - ADDED
            if missing or extra:
                problems.append(f"{where}: missing {missing}, extra {extra}")
            for key in sorted(set(e) & set(a) - IGNORED):
                if not key.endswith("seconds"):  # wall time, e.g. training.seconds
                    walk(e[key], a[key], f"{where}.{key}", e)
        elif isinstance(e, list):
            if not isinstance(a, list) or len(a) != len(e):
                problems.append(f"{where}: {len(e)} items, not {a!r:.80}")
                return
            for i, (x, y) in enumerate(zip(e, a)):
                walk(x, y, f"{where}[{i}]", row)
        elif isinstance(e, float) and isinstance(a, (int, float)) and not isinstance(a, bool):
            name = group(where, row)
            if not float_close(name, where, e, float(a)):
                problems.append(f"{where}: {e!r} != {a!r} (tolerance {tolerance(name):.2g})")
        elif e != a:
            problems.append(f"{where}: {e!r} != {a!r}")

    walk(expected.summary, actual.summary, "summary", None)
    if sorted(expected.arrays) != sorted(set(actual.arrays) - ADDED_ARRAYS):
        problems.append(f"arrays: {sorted(expected.arrays)} != {sorted(actual.arrays)}")
        return problems, seen
    floats = float_arrays(expected)
    for key, e in expected.arrays.items():
        a = actual.arrays[key]
        if key.endswith("seconds"):
            continue
        if e.shape != a.shape or e.dtype.kind != a.dtype.kind:
            problems.append(f"arrays.{key}: {e.dtype}{e.shape} != {a.dtype}{a.shape}")
        elif key in floats:
            name = f"arrays.{key}"
            same_nan = np.array_equal(np.isnan(e), np.isnan(a))
            deviation = largest(np.where(np.isnan(e), 0.0, a - e)) if same_nan else math.inf
            seen[name] = (deviation, tolerance(name))
            if deviation > tolerance(name):
                problems.append(f"{name}: off by up to {deviation:.3g} "
                                f"(tolerance {tolerance(name):.2g})")
        elif not np.array_equal(e, a):
            problems.append(f"arrays.{key}: differs")
    return problems, seen


def load_expected(name: str) -> RunResult:
    expected = RunResult.load(GOLDEN / name)
    intended(expected.summary)
    return expected


@pytest.mark.parametrize("name", sorted(RUNS))
def test_final_files_equal_the_saved_ones(name, tmp_path):
    assert run(name, tmp_path / name) == 0
    actual = RunResult.load(tmp_path / name)
    problems, _ = deviations(load_expected(name), actual)
    assert problems == []
    assert actual.summary["failed"] == []


def test_a_knockout_shifted_by_one_layer_fails_the_comparison(tmp_path, monkeypatch):
    """The tolerances still catch a real change: layer masking with each flow blocked one
    layer later than asked (the last layer stays) differs from the saved run well beyond
    them, in the per-sample values and in the per-layer means."""
    from analyses.layer_masking import sweep
    from probes.masking import Knockout

    def shifted(flows, window, num_layers):
        return [[Knockout.window(flow, min(layer + 1, num_layers - 1), window, num_layers)
                 for layer in range(num_layers)] for flow in flows]

    monkeypatch.setattr(sweep, "conditions", shifted)
    assert run("layer_masking_fine", tmp_path) == 0
    problems, seen = deviations(load_expected("layer_masking_fine"), RunResult.load(tmp_path))
    failed = {problem.split(":")[0] for problem in problems}
    assert {"arrays.prob_change_pct", "arrays.logit_change", "arrays.kl"} <= failed
    assert any(re.fullmatch(r"summary\.per_layer\[\d+\]\.mean", place) for place in failed)
    # and not by a hair: the smallest of these deviations is many tolerances
    assert min(seen[f"arrays.{key}"][0] / seen[f"arrays.{key}"][1]
               for key in ("prob_change_pct", "logit_change", "kl")) > 10
