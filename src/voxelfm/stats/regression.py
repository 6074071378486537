"""Regression errors: MAE, MSE, RMSE, R², and the mean Euclidean distance for localisation."""

from __future__ import annotations

import math

import numpy as np

from voxelfm.stats._validate import DegenerateDataError, as_1d, same_length
from voxelfm.stats.estimate import Estimate

__all__ = ["mae", "mean_euclidean_error", "mse", "r2", "rmse"]


def _pair(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    t = as_1d(y_true, "y_true")
    p = as_1d(y_pred, "y_pred")
    same_length(("y_true", t), ("y_pred", p))
    return t, p


def _point(value: float, n: int, name: str) -> Estimate:
    return Estimate(value, math.nan, math.nan, "point", n, 0.05, name)


def mae(y_true, y_pred) -> Estimate:
    """Mean absolute error ``mean |y_pred − y_true|`` over ``[N]`` targets (units of the target).

    Point estimate (``method="point"``); use ``bootstrap_ci(mae, y_true, y_pred)`` for a CI
    (vectorised fast path), as the reference's 10,000-resample bootstrap.
    """
    t, p = _pair(y_true, y_pred)
    return _point(float(np.mean(np.abs(p - t))), len(t), "mae")


def mse(y_true, y_pred) -> Estimate:
    """Mean squared error ``mean (y_pred − y_true)²`` (units²). Point estimate."""
    t, p = _pair(y_true, y_pred)
    return _point(float(np.mean((p - t) ** 2)), len(t), "mse")


def rmse(y_true, y_pred) -> Estimate:
    """Root mean squared error ``√MSE`` (units of the target). Point estimate."""
    t, p = _pair(y_true, y_pred)
    return _point(float(np.sqrt(np.mean((p - t) ** 2))), len(t), "rmse")


def r2(y_true, y_pred) -> Estimate:
    """Coefficient of determination ``1 − SSE/SST`` (as ``sklearn.metrics.r2_score``). Point estimate.

    Raises:
        DegenerateDataError: ``y_true`` is constant (SST = 0; R² undefined).
    """
    t, p = _pair(y_true, y_pred)
    sst = float(np.sum((t - t.mean()) ** 2))
    if sst == 0.0:
        raise DegenerateDataError("R² is undefined: y_true is constant (zero variance)")
    return _point(1.0 - float(np.sum((t - p) ** 2)) / sst, len(t), "r2")


def mean_euclidean_error(target, pred) -> Estimate:
    """Mean Euclidean distance ``mean_i ‖pred_i − target_i‖₂`` between ``[N, D]`` coordinates.

    The reference's localisation "mae" (relative coordinates in [0, 1] → fraction of the crop side;
    pass mm to get mm). Point estimate; bootstrap the per-sample distances for a CI.
    """
    t = np.asarray(target, dtype=float)
    p = np.asarray(pred, dtype=float)
    if t.ndim != 2 or t.shape != p.shape:
        raise ValueError(f"target and pred must both be [N, D] with the same shape, got {t.shape}, {p.shape}")
    if len(t) == 0:
        raise ValueError("inputs are empty")
    if not (np.isfinite(t).all() and np.isfinite(p).all()):
        raise ValueError("target/pred contain NaN/inf; drop those samples first")
    return _point(float(np.linalg.norm(p - t, axis=1).mean()), len(t), "mean_euclidean_error")
