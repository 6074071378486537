"""DeLong against a slow textbook implementation (structural components, O(n²))."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm

from voxelfm.stats import DegenerateDataError, delong_ci, delong_covariance, delong_test


def _psi(x, y):
    return (x > y) + 0.5 * (x == y)


def _delong_slow(y, scores):
    """DeLong, DeLong & Clarke-Pearson (1988) with explicit structural components."""
    pos = [s[y] for s in scores]
    neg = [s[~y] for s in scores]
    m, n = len(pos[0]), len(neg[0])
    v10 = np.array([[_psi(p[i], q).mean() for i in range(m)] for p, q in zip(pos, neg)])  # [K, m]
    v01 = np.array([[_psi(p, q[j]).mean() for j in range(n)] for p, q in zip(pos, neg)])  # [K, n]
    auc = v10.mean(axis=1)
    s10 = np.atleast_2d(np.cov(v10))
    s01 = np.atleast_2d(np.cov(v01))
    return auc, s10 / m + s01 / n


@pytest.mark.parametrize("seed", range(4))
def test_fast_delong_matches_textbook(seed):
    rng = np.random.default_rng(seed)
    n = 120
    y = rng.random(n) < 0.35
    y[:2] = [True, False]
    a = np.round(rng.normal(size=n) + y, 1)
    b = np.round(0.5 * a + rng.normal(size=n), 1)
    auc, cov = delong_covariance(y, np.stack([a, b]))
    auc_ref, cov_ref = _delong_slow(y, [a, b])
    np.testing.assert_allclose(auc, auc_ref, atol=1e-12)
    np.testing.assert_allclose(cov, cov_ref, rtol=1e-10, atol=1e-14)
    res = delong_test(y, a, b)
    z_ref = (auc_ref[0] - auc_ref[1]) / np.sqrt(cov_ref[0, 0] + cov_ref[1, 1] - 2 * cov_ref[0, 1])
    assert res.z == pytest.approx(z_ref, rel=1e-9)
    assert res.p_value == pytest.approx(2 * norm.sf(abs(z_ref)), rel=1e-9)
    assert (res.auc_a, res.auc_b) == pytest.approx(tuple(auc_ref))
    ci = delong_ci(y, a)
    half = 1.959963985 * np.sqrt(cov_ref[0, 0])
    assert (ci.ci_low, ci.ci_high) == pytest.approx((auc_ref[0] - half, min(1, auc_ref[0] + half)))


def test_identical_scores_give_z0_p1():
    rng = np.random.default_rng(0)
    y = rng.random(80) < 0.5
    s = rng.normal(size=80) + y
    r = delong_test(y, s, s)
    assert r.z == 0.0 and r.p_value == 1.0 and r.diff.value == 0.0
    # a monotone transform has the same AUROC and the same ranks
    r2 = delong_test(y, s, np.exp(s))
    assert r2.p_value == 1.0


def test_clearly_better_model_significant():
    rng = np.random.default_rng(1)
    y = rng.random(400) < 0.5
    good = rng.normal(size=400) + 2 * y
    bad = rng.normal(size=400) + 0.2 * y
    r = delong_test(y, good, bad)
    assert r.p_value < 1e-6 and r.diff.ci_low > 0


def test_delong_needs_two_per_class():
    with pytest.raises(DegenerateDataError):
        delong_ci([1, 0, 0, 0], [0.9, 0.1, 0.2, 0.3])
