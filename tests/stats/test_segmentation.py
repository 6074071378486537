"""Dice per scan/class, macro and micro on a hand-worked two-scan example (REFERENCE §4.6)."""

from __future__ import annotations

import numpy as np
import pytest

from voxelfm.stats import dice_scores

S = 1e-6
# Scan A (10 voxels)                      Scan B
TARGET_A = np.array([0, 1, 1, 1, 1, 2, 2, 0, 0, 0])
PRED_A = np.array([0, 1, 1, 1, 0, 2, 0, 3, 0, 0])
TARGET_B = np.array([1, 1, 0, 0, 0, 0, 0, 0, 0, 0])
PRED_B = np.array([1, 0, 0, 0, 0, 0, 0, 0, 0, 0])
# Scan A: class 1 |P|=3 |T|=4 |P∩T|=3 → (6+S)/(7+S) = 0.857143
#         class 2 |P|=1 |T|=2 |P∩T|=1 → (2+S)/(3+S) = 0.666667
#         class 3 |P|=1 |T|=0 (false positive only) → S/(1+S) ≈ 1e-6, weight |T| = 0 in micro
# Scan B: class 1 |P|=1 |T|=2 |P∩T|=1 → 0.666667; classes 2, 3 empty in both → NaN
D_A = [(6 + S) / (7 + S), (2 + S) / (3 + S), S / (1 + S)]
D_B = [(2 + S) / (3 + S), np.nan, np.nan]
PER_CLASS = [(D_A[0] + D_B[0]) / 2, D_A[1], D_A[2]]        # 0.761905, 0.666667, 1e-6
MACRO = sum(PER_CLASS) / 3                                   # 0.476191
MICRO = (D_A[0] * 4 + D_A[1] * 2 + D_B[0] * 2) / (4 + 2 + 2)  # 0.761905


def test_hand_worked_two_scans():
    r = dice_scores([PRED_A, PRED_B], [TARGET_A, TARGET_B], num_classes=4)
    np.testing.assert_array_equal(r.class_ids, [1, 2, 3])
    np.testing.assert_allclose(r.per_scan, [D_A, D_B], equal_nan=True)
    np.testing.assert_array_equal(r.target_voxels, [[4, 2, 0], [2, 0, 0]])
    assert [r.per_class[c].value for c in (1, 2, 3)] == pytest.approx(PER_CLASS)
    assert [r.per_class[c].n for c in (1, 2, 3)] == [2, 1, 1]
    assert r.macro.value == pytest.approx(MACRO) and r.macro.value == pytest.approx(0.476191, abs=1e-6)
    assert r.micro.value == pytest.approx(MICRO) and r.micro.value == pytest.approx(0.761905, abs=1e-6)
    assert r.macro.method == "point" and r.macro.n == 2


def test_batch_array_and_3d_scans_equal_list():
    rng = np.random.default_rng(0)
    pred = rng.integers(0, 3, size=(3, 4, 5, 6))
    target = rng.integers(0, 3, size=(3, 4, 5, 6))
    a = dice_scores(pred, target, 3)
    b = dice_scores(list(pred), list(target), 3)
    np.testing.assert_allclose(a.per_scan, b.per_scan)
    one = dice_scores(pred[0], target[0], 3)
    assert one.per_scan.shape == (1, 2)


def test_background_included_when_asked():
    r = dice_scores([PRED_A], [TARGET_A], 4, ignore_background=False)
    np.testing.assert_array_equal(r.class_ids, [0, 1, 2, 3])
    # background: |P|=5 (pred zeros), |T|=4, ∩ = 3 (indices 0, 8, 9) → (6+S)/(9+S)
    assert r.per_scan[0, 0] == pytest.approx((6 + S) / (9 + S))


def test_bootstrap_ci_over_scans():
    rng = np.random.default_rng(1)
    target = rng.integers(0, 3, size=(12, 6, 6, 6))
    pred = np.where(rng.random(target.shape) < 0.8, target, rng.integers(0, 3, size=target.shape))
    r = dice_scores(pred, target, 3, ci="bootstrap", n_resamples=2000, seed=4)
    for e in (r.macro, r.micro, *r.per_class.values()):
        assert e.method == "bootstrap-percentile" and e.ci_low <= e.value <= e.ci_high
    r2 = dice_scores(pred, target, 3, ci="bootstrap", n_resamples=2000, seed=4)
    assert r.macro.ci_low == r2.macro.ci_low  # deterministic


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\)"):
        dice_scores(np.array([0, 3]), np.array([0, 1]), 3)
    with pytest.raises(ValueError, match="shape"):
        dice_scores([np.zeros(3, int)], [np.zeros(4, int)], 3)
    with pytest.raises(ValueError, match="integer labels"):
        dice_scores(np.array([0.5, 1.0]), np.array([0, 1]), 3)
