"""Every aggregate and statistics function is total: defined on no samples and on NaN-only
input (NaN out, never an exception), and unchanged on ordinary input (issue #25)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from analyses.attenuation.run import difference_ci
from analyses.evaluate.stats import percentile_ci
from analyses.stats import (
    bootstrap_mean_ci,
    holm_adjust,
    mcnemar_exact,
    method_rows,
    method_table,
    sign_flip_p_values,
    wilson_interval,
)

EMPTY_SHAPES = [(0,), (0, 3), (0, 2, 4)]


@pytest.mark.parametrize("shape", EMPTY_SHAPES)
def test_bootstrap_mean_ci_of_no_samples_is_nan_per_column(shape):
    for part in bootstrap_mean_ci(np.zeros(shape), 50, 0):
        assert np.shape(part) == shape[1:] and np.isnan(part).all()


def test_bootstrap_mean_ci_of_nan_columns_is_nan_and_other_columns_untouched():
    values = np.array([[1.0, np.nan], [3.0, np.nan], [2.0, np.nan]])
    mean, low, high = bootstrap_mean_ci(values, 200, 0)
    assert math.isnan(mean[1]) and math.isnan(low[1]) and math.isnan(high[1])
    assert mean[0] == pytest.approx(2.0)  # the plain mean
    assert 1.0 <= low[0] <= 2.0 <= high[0] <= 3.0


@pytest.mark.parametrize("shape", EMPTY_SHAPES)
def test_sign_flip_p_values_of_no_samples_is_nan(shape):
    p = sign_flip_p_values(np.zeros(shape), n_flips=20)
    assert np.shape(p) == shape[1:] and np.isnan(p).all()


def test_sign_flip_p_value_of_a_nan_column_is_nan_not_significant():
    differences = np.array([[1.0, np.nan], [2.0, 1.0], [1.5, 2.0], [3.0, 1.0]])
    p = sign_flip_p_values(differences, n_flips=200)
    assert math.isnan(p[1])
    # the finite column as the reference would have it: all 16 sign patterns, exhaustively
    column = differences[:, 0]
    signs = np.array(np.meshgrid(*[[-1, 1]] * 4)).reshape(4, -1).T
    exact = ((signs @ column / 4) >= column.mean() - 1e-12).mean()
    assert p[0] == pytest.approx(exact, abs=0.1)  # 200 random flips of an exact 1/16


def test_holm_adjust_of_nothing_and_of_nan():
    assert holm_adjust([]).size == 0
    assert np.isnan(holm_adjust([np.nan, np.nan])).all()
    # NaN is not counted in the family: [0.01, 0.04] as if alone
    adjusted = holm_adjust([0.04, np.nan, 0.01])
    assert math.isnan(adjusted[1])
    np.testing.assert_allclose(adjusted[[0, 2]], holm_adjust([0.04, 0.01]))
    np.testing.assert_allclose(holm_adjust([0.04, 0.01]), [0.04, 0.02])  # by hand: 1*0.04, 2*0.01


def test_mcnemar_and_wilson_of_no_samples_are_nan():
    assert math.isnan(mcnemar_exact([], []))
    assert mcnemar_exact([1, 0], [1, 0]) == 1.0  # samples but no discordant pair: no evidence
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def test_method_rows_of_no_samples_are_nan_with_n_zero_and_print():
    rows = method_rows(np.zeros((0, 2), dtype=bool), ["clean", "aif"], kinds=[])
    assert [(r["kind"], r["method"], r["n"]) for r in rows] == [("all", "clean", 0),
                                                               ("all", "aif", 0)]
    assert all(math.isnan(r["accuracy"]) and math.isnan(r["ci_low"]) for r in rows)
    assert rows[0]["p_value_vs_clean"] is None and math.isnan(rows[1]["p_value_vs_clean"])
    lines = method_table(rows)
    assert len(lines) == 3 and "nan" in lines[2]


def test_difference_and_percentile_ci_of_no_samples_are_nan():
    assert all(math.isnan(v) for v in difference_ci(np.zeros(0), np.ones(3), 50, 0))
    assert all(math.isnan(v) for v in difference_ci(np.ones(3), np.zeros(0), 50, 0))
    assert all(math.isnan(v) for v in percentile_ci(np.zeros(0)))
