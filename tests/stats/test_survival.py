"""C-index, Kaplan–Meier and time-dependent AUROC against scikit-survival and lifelines."""

from __future__ import annotations

import numpy as np
import pytest
from lifelines.utils import concordance_index
from sksurv.metrics import concordance_index_censored, cumulative_dynamic_auc
from sksurv.nonparametric import kaplan_meier_estimator
from sksurv.util import Surv

from voxelfm.stats import (
    DegenerateDataError,
    auroc,
    c_index,
    concordance_counts,
    kaplan_meier,
    time_dependent_auroc,
)


def _cohort(seed, n=150, tied_times=True):
    rng = np.random.default_rng(seed)
    risk = np.round(rng.normal(size=n), 1)  # tied risks
    t = rng.exponential(np.exp(-0.7 * risk)) * 10
    t = np.ceil(t) if tied_times else t  # tied times
    e = rng.random(n) < 0.6
    return t, e, risk


@pytest.mark.parametrize("seed", range(5))
def test_c_index_matches_sksurv_with_tied_times_and_risks(seed):
    t, e, r = _cohort(seed)
    ref = concordance_index_censored(e, t, r)
    est = c_index(t, e, r)
    assert est.value == pytest.approx(ref[0], abs=1e-12)
    cnt = concordance_counts(t, e, r)
    assert (cnt.concordant, cnt.discordant, cnt.tied_risk, cnt.tied_time) == tuple(ref[1:])
    assert est.method == "point" and est.n == len(t) and est.name == "c_index"


@pytest.mark.parametrize("seed,tied_times", [(0, False), (1, False), (2, True), (3, True)])
def test_c_index_matches_lifelines_with_negated_risk(seed, tied_times):
    t, e, r = _cohort(seed, tied_times=tied_times)
    # lifelines takes predicted survival times: the risk is negated (what the reference does)
    assert c_index(t, e, r).value == pytest.approx(concordance_index(t, -r, e), abs=1e-12)


def test_c_index_sign_convention():
    t = np.arange(1.0, 11.0)
    e = np.ones(10, bool)
    assert c_index(t, e, -t).value == 1.0  # earlier death ↔ higher risk → perfectly concordant
    assert c_index(t, e, t).value == 0.0
    assert c_index(t, e, np.zeros(10)).value == 0.5  # all risks tied


def test_c_index_degenerate():
    with pytest.raises(DegenerateDataError, match="censored"):
        c_index([1, 2, 3], [0, 0, 0], [0.1, 0.2, 0.3])
    with pytest.raises(DegenerateDataError, match="comparable"):
        c_index([5, 5], [1, 1], [0.1, 0.2])  # two events at the same time are not comparable
    with pytest.raises(ValueError, match="only 0/1"):
        c_index([1, 2], [0, 2], [0.1, 0.2])


@pytest.mark.parametrize("reverse", [False, True])
def test_kaplan_meier_matches_sksurv(reverse):
    t, e, _ = _cohort(0)
    km = kaplan_meier(t, e, reverse=reverse)
    x, p = kaplan_meier_estimator(e, t, reverse=reverse)
    np.testing.assert_allclose(km.time, x)
    np.testing.assert_allclose(km.survival, p, atol=1e-12)
    if not reverse:
        _, _, ci = kaplan_meier_estimator(e, t, conf_type="log-log")
        ok = np.isfinite(km.ci_low)
        np.testing.assert_allclose(km.ci_low[ok], ci[0][ok], atol=1e-10)
        np.testing.assert_allclose(km.ci_high[ok], ci[1][ok], atol=1e-10)
    # step-function evaluation
    assert km(x[0] - 1) == 1.0
    assert km(x[3]) == pytest.approx(p[3])
    assert km.left_limit(x[3]) == pytest.approx(p[2])


def test_kaplan_meier_hand_worked():
    # times 1,2,2,3,4 events 1,1,0,1,0: S(1)=4/5, S(2)=4/5·3/4=0.6, S(3)=0.6·1/2=0.3, S(4)=0.3
    km = kaplan_meier([1, 2, 2, 3, 4], [1, 1, 0, 1, 0])
    np.testing.assert_allclose(km.survival, [0.8, 0.6, 0.3, 0.3])
    np.testing.assert_array_equal(km.n_at_risk, [5, 4, 2, 1])
    assert km.median() == 3.0


@pytest.mark.parametrize("seed", range(3))
def test_ipcw_td_auroc_matches_sksurv(seed):
    t, e, r = _cohort(seed)
    e[t == t.max()] = True  # censoring survival must stay > 0 at event times
    y = Surv.from_arrays(e, t)
    for h in np.quantile(t, [0.25, 0.5, 0.75]):
        ref, _ = cumulative_dynamic_auc(y, y, r, [h])
        assert time_dependent_auroc(t, e, r, h).value == pytest.approx(ref[0], abs=1e-10)
    # censoring distribution from separate training data
    tt, et, _ = _cohort(seed + 10, n=300)
    tt, et = np.r_[tt, t.max()], np.r_[et, True]  # training follow-up must cover the test times
    et[tt == tt.max()] = True
    h = float(np.median(t))
    ref, _ = cumulative_dynamic_auc(Surv.from_arrays(et, tt), y, r, [h])
    est = time_dependent_auroc(t, e, r, h, train_time=tt, train_event=et)
    assert est.value == pytest.approx(ref[0], abs=1e-10)


def test_td_auroc_simple_variants_hand_worked():
    t = np.array([1, 2, 3, 4, 5, 6, 7, 8], float)
    e = np.array([1, 0, 1, 1, 0, 1, 0, 0], bool)
    r = np.array([0.9, 0.1, 0.6, 0.8, 0.7, 0.2, 0.3, 0.4])
    # horizon 5: cases = events before 5 → samples 0, 2, 3; controls = time >= 5 → 4, 5, 6, 7;
    # sample 1 (censored at 2) is dropped. Case risks .9 .6 .8 vs control risks .7 .2 .3 .4:
    # .9 beats 4, .6 beats 3, .8 beats 4 → 11/12.
    ex = time_dependent_auroc(t, e, r, 5, method="exclude_censored")
    assert ex.value == pytest.approx(11 / 12) and ex.n == 7 and ex.method == "hanley-mcneil"
    # censored-as-negative: label event & time <= 5 over all 8 samples
    cn = time_dependent_auroc(t, e, r, 5, method="censored_as_negative")
    assert cn.value == pytest.approx(auroc(e & (t <= 5), r).value)
    # without censoring before the horizon, IPCW equals the plain AUROC
    e2 = e.copy()
    e2[1] = True
    ip = time_dependent_auroc(t, e2, r, 4.5)
    assert ip.value == pytest.approx(auroc(t <= 4.5, r).value)


def test_td_auroc_degenerate():
    with pytest.raises(DegenerateDataError, match="horizon"):
        time_dependent_auroc([1, 2, 3], [1, 1, 1], [0.1, 0.2, 0.3], 10)
    with pytest.raises(ValueError, match="method"):
        time_dependent_auroc([1, 2, 3], [1, 1, 1], [0.1, 0.2, 0.3], 2, method="x")
