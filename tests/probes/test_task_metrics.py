"""Task metrics take bootstrap_ci's vectorised paths and give exactly the per-resample loop's
numbers (same resample indices), with sklearn as the oracle for the point values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from voxelfm.probes.tasks import Targets, _macro_auc, get_task
from voxelfm.stats import bootstrap_ci, f1_at, mean_euclidean_error

CTX = {"n_resamples": 300, "seed": 0, "threshold": 0.5, "auroc_ci": "delong", "ci": True}


_LOOP_ALLOWED = [False]


def _slow(metric, *arrays):
    """The generic per-resample loop (a lambda has no vectorised form) — the reference numbers."""
    _LOOP_ALLOWED[0] = True
    try:
        return bootstrap_ci(lambda *a: metric(*a), *arrays, n_resamples=CTX["n_resamples"], seed=CTX["seed"])
    finally:
        _LOOP_ALLOWED[0] = False


@pytest.fixture(autouse=True)
def no_per_resample_loop(monkeypatch):
    """The tasks' own metrics must never fall back to calling the metric once per resample (1000
    Python calls per metric per run made the metrics cost more than training for small heads)."""
    import voxelfm.stats.bootstrap as B

    slow = B._call_quiet

    def guard(metric, arrays):
        assert _LOOP_ALLOWED[0], "bootstrap took the per-resample loop"
        return slow(metric, arrays)

    monkeypatch.setattr(B, "_call_quiet", guard)


def _same(est, ref):
    assert est.value == pytest.approx(float(ref.value), abs=1e-12)
    assert (est.ci_low, est.ci_high) == pytest.approx((ref.ci_low, ref.ci_high), abs=1e-12)
    assert est.method == "bootstrap-percentile"


def test_binary_metrics():
    rng = np.random.default_rng(0)
    y = (rng.random(50) < 0.3).astype(float)
    p = np.clip(rng.random(50) * 0.7 + 0.3 * y, 0, 1)
    m = get_task("binary").metrics(y, p, None, CTX)
    assert m["f1"].value == pytest.approx(f1_score(y, p >= 0.5))
    _same(m["f1"], _slow(lambda a, b: f1_at(a, b, threshold=0.5), y.astype(int), p))
    _same(m["accuracy"], _slow(lambda a, b: accuracy_score(a, b >= 0.5), y.astype(int), p))
    assert m["auroc"].value == pytest.approx(roc_auc_score(y, p)) and m["auroc"].method == "delong"


def test_multilabel_metrics_with_missing_labels():
    rng = np.random.default_rng(1)
    y = (rng.random((60, 4)) < 0.35).astype(float)
    p = np.clip(rng.random((60, 4)) * 0.8 + 0.3 * y, 0, 1)
    y[rng.random((60, 4)) < 0.2] = np.nan
    t = Targets(y=y, model_y=y, columns=list("abcd"), out_dim=4, classes=list("abcd"))
    m = get_task("multilabel").metrics(y, p, t, CTX)

    def old_macro_f1(a, b):  # the former per-resample implementation
        vals = [f1_score(a[np.isfinite(a[:, j]), j], b[np.isfinite(a[:, j]), j] >= 0.5, zero_division=0)
                for j in range(a.shape[1]) if np.isfinite(a[:, j]).any()]
        return float(np.mean(vals)) if vals else math.nan

    _same(m["macro_auroc"], _slow(_macro_auc, y, p))
    _same(m["macro_f1"], _slow(old_macro_f1, y, p))


def test_multiclass_metrics():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 45)
    logits = rng.normal(size=(45, 3)) + np.eye(3)[y]
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    task = get_task("multiclass")
    m = task.metrics(y, p, None, CTX)
    assert m["macro_auroc"].value == pytest.approx(roc_auc_score(y, p, multi_class="ovr"))
    assert m["macro_f1"].value == pytest.approx(f1_score(y, p.argmax(1), average="macro"))
    _same(m["accuracy"], _slow(lambda a, b: float(np.mean(b.argmax(1) == a)), y, p))
    _same(m["macro_auroc"], _slow(task._ovr, y, p))
    _same(m["macro_f1"], _slow(lambda a, b: f1_score(a, b.argmax(1), average="macro", labels=[0, 1, 2],
                                                      zero_division=0), y, p))


def test_localisation_and_multioutput_regression_metrics():
    rng = np.random.default_rng(3)
    y, p = rng.random((40, 3)), rng.random((40, 3))
    ext = rng.uniform(100, 300, (40, 3))
    m = get_task("localisation").metrics(y, p, None, {**CTX, "extent_mm": ext})
    _same(m["mean_distance"], _slow(lambda a, b: mean_euclidean_error(a, b).value, y, p))
    _same(m["mean_distance_mm"], _slow(lambda a, b: mean_euclidean_error(a, b).value, y * ext, p * ext))
    t = Targets(y=y, model_y=y, columns=["u", "v", "w"], out_dim=3)
    r = get_task("regression").metrics(y, p, t, CTX)
    _same(r["mae"], _slow(lambda a, b: float(np.mean(np.abs(a - b))), y, p))
