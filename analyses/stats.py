"""Statistics shared by the analyses: confidence intervals for proportions and means.

Every function here is total: on no samples, and on a column of NaN only, it returns NaN
(never raises), so an aggregate of a subset that turned out empty is a NaN row with n = 0.
"""

from __future__ import annotations

import math

import numpy as np


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval for a binomial proportion (sound at 0% and 100% too).

    >>> [round(v, 4) for v in wilson_interval(45, 50)]
    [0.7864, 0.9565]
    >>> wilson_interval(4, 4)[1], wilson_interval(0, 4)[0]  # exact ends, no rounding below p
    (1.0, 0.0)
    """
    if n == 0:
        return (math.nan, math.nan)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    # the interval holds p; at p = 0 or 1 rounding would put an end a hair inside it
    return (min(p, max(0.0, centre - half)), max(p, min(1.0, centre + half)))


def bootstrap_mean_ci(values, n_resamples: int = 2000, seed: int = 0, level: float = 0.95):
    """Mean and percentile-bootstrap CI of the mean of each column of ``values`` [n, ...].

    Resamples are drawn as multinomial counts (one draw, shared by all columns), so the result
    is a pure function of (values, n_resamples, seed).

    >>> import numpy as np
    >>> mean, low, high = bootstrap_mean_ci(np.array([1.0, 2.0, 3.0, 4.0]))
    >>> float(mean), bool(low < 2.5 < high)
    (2.5, True)
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 0 or values.shape[0] == 0:  # no samples: NaN of each column
        nan = np.full(values.shape[1:], np.nan)
        return nan, nan, nan
    n = values.shape[0]
    flat = values.reshape(n, -1)
    counts = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=n_resamples)
    means = counts @ flat / n  # [resamples, columns]
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail], axis=0)
    shape = values.shape[1:]
    return flat.mean(0).reshape(shape), low.reshape(shape), high.reshape(shape)


def sign_flip_p_values(differences, n_flips: int = 10000, seed: int = 0):
    """One-sided p-values of "mean > 0" for each column of paired ``differences`` [n, ...],
    by random sign flips (a paired permutation test; the observed signs count as one flip).

    >>> import numpy as np
    >>> p = sign_flip_p_values(np.array([[1.0, 0.0], [2.0, 0.0], [1.5, 0.0], [3.0, 0.0],
    ...                                  [2.5, 0.0], [1.0, 0.0], [2.0, 0.0], [1.2, 0.0]]))
    >>> bool(p[0] < 0.01), float(p[1])
    (True, 1.0)
    """
    differences = np.asarray(differences, dtype=np.float64)
    if differences.ndim == 0 or differences.shape[0] == 0:
        return np.full(differences.shape[1:], np.nan)
    n = differences.shape[0]
    flat = differences.reshape(n, -1)
    rng = np.random.default_rng(seed)
    observed = flat.mean(0)
    threshold = observed - 1e-12 * np.abs(observed).clip(1)
    exceed = np.zeros(flat.shape[1], dtype=np.int64)
    # the flips in blocks of about 4M signs: memory stays small for 9,000-sample benchmarks,
    # and the generator's stream (so every p-value) is the same as one draw of them all
    block = max(1, 2**22 // max(1, n))
    for start in range(0, n_flips, block):
        signs = rng.choice([-1.0, 1.0], size=(min(block, n_flips - start), n))
        # ties (e.g. all-zero differences) count as "as large": a zero effect is never
        # significant
        exceed += (signs @ flat / n >= threshold).sum(0)
    p = np.where(np.isfinite(observed), (1 + exceed) / (1 + n_flips), np.nan)
    return p.reshape(differences.shape[1:])


def holm_adjust(p_values):
    """Holm-Bonferroni adjusted p-values (family-wise error control), same order as given. A
    NaN p-value (a test that could not be made) stays NaN and is not counted in the family.

    >>> [round(float(p), 3) for p in holm_adjust([0.01, 0.04, 0.03])]
    [0.03, 0.06, 0.06]
    >>> [float(p) for p in holm_adjust([float("nan"), 0.01])]
    [nan, 0.01]
    """
    p = np.asarray(p_values, dtype=np.float64)
    result = np.full_like(p, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    order = finite[np.argsort(p[finite], kind="stable")]
    m = order.size
    result[order] = np.maximum.accumulate((m - np.arange(m)) * p[order]).clip(max=1.0)
    return result


def mcnemar_exact(first, second) -> float:
    """Two-sided exact McNemar p-value for paired binary outcomes (e.g. per-sample correctness
    of two methods on the same samples): a binomial test of the discordant pairs, b = first
    right and second wrong, c = the reverse, against p = 1/2. 1.0 when there are none; NaN
    when there are no samples at all.

    >>> round(mcnemar_exact([1, 1, 1, 1, 1, 1, 0, 1], [0, 0, 0, 0, 0, 0, 0, 1]), 4)
    0.0312
    >>> mcnemar_exact([1, 0, 1], [1, 0, 1])
    1.0
    >>> mcnemar_exact([], [])
    nan
    >>> round(mcnemar_exact([1] * 600 + [0] * 500, [0] * 600 + [1] * 500), 5)  # 1,100 discordant
    0.00282
    """
    first, second = np.asarray(first, dtype=bool), np.asarray(second, dtype=bool)
    if first.size == 0:
        return math.nan
    b = int((first & ~second).sum())
    c = int((~first & second).sum())
    n = b + c
    if n == 0:
        return 1.0
    # exact integers divided once: 2.0 ** n overflows past 1,023 discordant pairs (POPE has 9,000)
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1)) / (1 << n)
    return float(min(1.0, 2 * tail))


def method_rows(correct, methods, kinds=None) -> list[dict]:
    """The one contract of a method comparison (DESIGN.md): per method ``{method, accuracy,
    ci_low, ci_high, n, correct, p_value_vs_clean}`` from per-sample correctness
    ``correct[sample, method]`` with the clean run in column 0: Wilson 95% CIs, two-sided exact
    McNemar p against clean on the same samples; the clean row's p is None (it is the
    reference, not a comparison); with no samples the accuracy, CI and p are NaN. With ``kinds``
    (one per sample), rows per kind (sorted) then for ``all``, each with a ``kind`` key.

    >>> rows = method_rows(np.array([[1, 1], [0, 1], [1, 1]], dtype=bool), ["clean", "aif"])
    >>> [(r["method"], round(r["accuracy"], 3), r["correct"], r["p_value_vs_clean"]) for r in rows]
    [('clean', 0.667, 2, None), ('aif', 1.0, 3, 1.0)]
    >>> method_rows(np.zeros((0, 2), dtype=bool), ["clean", "aif"])[1]["accuracy"]
    nan
    """
    correct = np.asarray(correct, dtype=bool).reshape(-1, len(methods))
    groups = [("all", np.ones(correct.shape[0], dtype=bool))]
    if kinds is not None:
        kinds = np.asarray(kinds).astype(str)
        groups = [(kind, kinds == kind) for kind in sorted(set(kinds.tolist()))] + groups
    rows = []
    for kind, chosen in groups:
        subset = correct[chosen]
        n = int(subset.shape[0])
        for m, method in enumerate(methods):
            hits = int(subset[:, m].sum())
            low, high = wilson_interval(hits, n) if n else (float("nan"), float("nan"))
            row = {"method": method, "accuracy": hits / n if n else float("nan"),
                   "ci_low": low, "ci_high": high, "n": n, "correct": hits,
                   "p_value_vs_clean": None if m == 0 else mcnemar_exact(subset[:, 0],
                                                                         subset[:, m])}
            rows.append(row if kinds is None else {"kind": kind, **row})
    return rows


def method_table(rows) -> list[str]:
    """The lines of a :func:`method_rows` table as the CLIs print it (the clean row's p is "-").

    >>> print("\\n".join(method_table([{"method": "clean", "accuracy": 0.5, "ci_low": 0.2,
    ...     "ci_high": 0.8, "n": 10, "p_value_vs_clean": None}])))
    method    accuracy           95% CI  p vs clean
    clean        50.0%   [20.0%, 80.0%]           -
    """
    width = max([len("method"), *(len(row["method"]) for row in rows)]) + 2
    lines = [f"{'method':<{width}}{'accuracy':>10} {'95% CI':>16}  {'p vs clean':>10}"]
    for row in rows:
        p = row["p_value_vs_clean"]
        ci = f"[{row['ci_low']:5.1%}, {row['ci_high']:5.1%}]"
        lines.append(f"{row['method']:<{width}}{row['accuracy']:10.1%} {ci:>16}  "
                     + (f"{'-':>10}" if p is None else f"{p:10.3f}"))
    return lines
