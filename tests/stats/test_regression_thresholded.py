"""Regression and thresholded classification metrics against scikit-learn; p-value adjustment."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    mean_absolute_error,
    mean_squared_error,
    precision_score,
    r2_score,
    recall_score,
)

from voxelfm.stats import (
    DegenerateDataError,
    accuracy_at,
    adjust_pvalues,
    f1_at,
    mae,
    mean_euclidean_error,
    mse,
    precision_at,
    r2,
    recall_at,
    rmse,
)


@pytest.mark.parametrize("seed", range(3))
def test_regression_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    t = rng.normal(size=50)
    p = t + rng.normal(scale=0.5, size=50)
    assert mae(t, p).value == pytest.approx(mean_absolute_error(t, p))
    assert mse(t, p).value == pytest.approx(mean_squared_error(t, p))
    assert rmse(t, p).value == pytest.approx(np.sqrt(mean_squared_error(t, p)))
    assert r2(t, p).value == pytest.approx(r2_score(t, p))
    assert mae(t, p).method == "point" and mae(t, p).n == 50


def test_r2_constant_target_raises():
    with pytest.raises(DegenerateDataError, match="constant"):
        r2([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])


def test_mean_euclidean_error():
    t = np.array([[0, 0, 0], [1, 1, 1.0]])
    p = np.array([[3, 4, 0], [1, 1, 1.0]])
    assert mean_euclidean_error(t, p).value == pytest.approx(2.5)


@pytest.mark.parametrize("threshold", [0.5, 0.3])
def test_thresholded_match_sklearn(threshold):
    rng = np.random.default_rng(0)
    y = rng.random(200) < 0.3
    p = np.round(rng.random(200), 1)  # values exactly at the threshold count as positive
    d = p >= threshold
    assert f1_at(y, p, threshold).value == pytest.approx(f1_score(y, d))
    assert precision_at(y, p, threshold).value == pytest.approx(precision_score(y, d))
    assert recall_at(y, p, threshold).value == pytest.approx(recall_score(y, d))
    assert accuracy_at(y, p, threshold).value == pytest.approx(accuracy_score(y, d))


def test_f1_zero_division_like_sklearn():
    y = np.zeros(5, int)
    p = np.zeros(5)
    assert f1_at(y, p).value == 0.0 == f1_score(y, p >= 0.5, zero_division=0)


def test_adjust_pvalues_hand_worked():
    p = [0.01, 0.04, 0.03, 0.20]
    # Holm: sorted 0.01, 0.03, 0.04, 0.20 × (4, 3, 2, 1) = 0.04, 0.09, 0.08, 0.20; running max →
    # 0.04, 0.09, 0.09, 0.20 (R: p.adjust(c(.01,.04,.03,.2), "holm") = 0.04 0.09 0.09 0.20)
    np.testing.assert_allclose(adjust_pvalues(p), [0.04, 0.09, 0.09, 0.20])
    np.testing.assert_allclose(adjust_pvalues(p, "bonferroni"), [0.04, 0.16, 0.12, 0.80])
    # BH: 0.01·4/1, 0.03·4/2, 0.04·4/3, 0.2 → step-up min → 0.04, 0.0533, 0.0533, 0.2
    np.testing.assert_allclose(adjust_pvalues(p, "fdr_bh"), [0.04, 0.16 / 3, 0.16 / 3, 0.20])
    out = adjust_pvalues([0.01, np.nan, 0.5])
    assert np.isnan(out[1]) and out[0] == pytest.approx(0.02) and out[2] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        adjust_pvalues([0.5], "sidak")
