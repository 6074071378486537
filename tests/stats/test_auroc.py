"""AUROC, Hanley–McNeil and multi-label helpers against sklearn and hand-worked numbers."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from voxelfm.stats import (
    DegenerateDataError,
    auroc,
    auroc_multilabel,
    auroc_ovr,
    delong_ci,
    hanley_mcneil_se,
    macro_auroc,
    micro_auroc,
)


@pytest.mark.parametrize("seed", range(5))
def test_auroc_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(10, 400))
    y = rng.random(n) < rng.uniform(0.1, 0.9)
    y[:2] = [True, False]
    s = np.round(rng.normal(size=n) + y * rng.uniform(0, 2), 1)  # many ties
    assert auroc(y, s).value == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert auroc(y.astype(int), s, ci=None).method == "point"


def test_hanley_mcneil_hand_worked():
    # A = 0.8, n1 = n0 = 50:
    #   Q1 = 0.8/1.2 = 0.666667, Q2 = 2·0.64/1.8 = 0.711111, A² = 0.64
    #   Var = [0.16 + 49·(0.666667−0.64) + 49·(0.711111−0.64)] / 2500
    #       = [0.16 + 1.306667 + 3.484444] / 2500 = 4.951111/2500 = 0.00198044
    #   SE = 0.0445021; CI = 0.8 ± 1.959964·0.0445021 = [0.712778, 0.887222]
    assert hanley_mcneil_se(0.8, 50, 50) == pytest.approx(0.0445021, abs=1e-6)
    # Data with AUROC exactly 0.8: every positive (0.5) beats 40 of the 50 negatives.
    y = np.r_[np.ones(50), np.zeros(50)]
    s = np.r_[np.full(50, 0.5), np.r_[np.zeros(40), np.ones(10)]]
    e = auroc(y, s)
    assert e.value == pytest.approx(0.8)
    assert (e.ci_low, e.ci_high) == pytest.approx((0.712778, 0.887222), abs=1e-6)
    assert e.method == "hanley-mcneil" and e.n == 100 and e.name == "auroc"


def test_hanley_clipped_to_unit_interval():
    y = np.r_[np.ones(5), np.zeros(5)]
    s = np.r_[np.full(5, 1.0), np.zeros(5)]
    e = auroc(y, s)
    assert e.value == 1.0 and e.ci_high == 1.0 and e.ci_low <= 1.0


def test_ci_options():
    rng = np.random.default_rng(3)
    y = rng.random(300) < 0.4
    s = rng.normal(size=300) + y
    d = auroc(y, s, ci="delong")
    assert d.method == "delong" and d == delong_ci(y, s)
    b = auroc(y, s, ci="bootstrap", n_resamples=2000, stratify=True)
    assert b.method == "bootstrap-percentile" and b.ci_low < b.value < b.ci_high
    h = auroc(y, s)
    # the three intervals agree roughly at n = 300
    for e in (d, b):
        assert abs(e.ci_low - h.ci_low) < 0.02 and abs(e.ci_high - h.ci_high) < 0.02
    with pytest.raises(ValueError, match="ci must be"):
        auroc(y, s, ci="wald")


def test_degenerate_and_bad_inputs_raise():
    with pytest.raises(DegenerateDataError, match="only negatives"):
        auroc([0, 0, 0], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="only 0/1"):
        auroc([0, 1, 2], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="same length"):
        auroc([0, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="NaN"):
        auroc([0, 1], [0.1, np.nan])


def test_multilabel_macro_micro_match_sklearn():
    rng = np.random.default_rng(0)
    y = rng.random((200, 5)) < [0.1, 0.3, 0.5, 0.2, 0.6]
    s = np.round(rng.random((200, 5)) + 0.4 * y, 2)
    r = auroc_multilabel(y, s, label_names=list("abcde"))
    assert r.macro.value == pytest.approx(roc_auc_score(y, s, average="macro"))
    assert r.micro.value == pytest.approx(roc_auc_score(y, s, average="micro"))
    for j, name in enumerate("abcde"):
        assert r.per_label[name].value == pytest.approx(roc_auc_score(y[:, j], s[:, j]))
    assert macro_auroc(y, s).value == pytest.approx(r.macro.value)
    assert micro_auroc(y, s).value == pytest.approx(r.micro.value)


def test_multilabel_skips_single_class_label():
    rng = np.random.default_rng(1)
    y = rng.random((50, 3)) < 0.5
    y[:, 1] = False
    with pytest.warns(RuntimeWarning, match="one class only"):
        r = auroc_multilabel(y, rng.random((50, 3)))
    assert r.labels == ["label_0", "label_2"] and "label_1" in r.skipped_labels


def test_ovr_matches_sklearn():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 4, 300)
    logits = rng.normal(size=(300, 4)) + np.eye(4)[y]
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    r = auroc_ovr(y, p)
    assert r.macro.value == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro"))
    assert r.labels == ["0", "1", "2", "3"]


def test_auroc_equals_scipy_mann_whitney_u():
    from scipy.stats import mannwhitneyu

    rng = np.random.default_rng(9)
    y = rng.random(120) < 0.4
    s = np.round(rng.normal(size=120) + y, 1)
    u = mannwhitneyu(s[y], s[~y]).statistic
    assert auroc(y, s).value == pytest.approx(u / (y.sum() * (~y).sum()))
