"""Argument checks shared by the metrics (public-boundary validation with actionable messages)."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import norm

from voxelfm.errors import VoxelFMError

__all__ = ["DegenerateDataError"]


class DegenerateDataError(VoxelFMError, ValueError):
    """The metric is undefined on this data (one class only, no comparable pairs, all censored...).

    A ``ValueError``; :func:`voxelfm.stats.bootstrap_ci` turns it into a skipped resample.
    """


def as_1d(x: Any, name: str, *, dtype: Any = float, allow_nan: bool = False) -> np.ndarray:
    """``x`` as a 1-D array; column vectors ``[N, 1]`` are accepted."""
    a = np.asarray(x)
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D [N], got shape {a.shape}")
    if dtype is bool:
        return as_binary(a, name)
    try:
        a = a.astype(dtype, copy=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numeric, got dtype {a.dtype}") from exc
    if not allow_nan and a.dtype.kind == "f" and not np.isfinite(a).all():
        bad = int((~np.isfinite(a)).sum())
        raise ValueError(f"{name} contains {bad} NaN/inf value(s); drop or impute them first")
    return a


def as_binary(a: Any, name: str) -> np.ndarray:
    """0/1 or boolean labels as a bool array (any other value is an error)."""
    a = np.asarray(a)
    if a.dtype == bool:
        return a
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN/inf; binary labels must be 0/1")
    if a.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be 0/1 or boolean labels, got dtype {a.dtype}")
    bad = ~((a == 0) | (a == 1))
    if bad.any():
        vals = np.unique(a[bad])[:5]
        raise ValueError(f"{name} must hold only 0/1 (or False/True), found {vals.tolist()}; "
                         "binarise multi-class labels first (e.g. y == k for one-vs-rest)")
    return a.astype(bool)


def same_length(*pairs: tuple[str, np.ndarray]) -> int:
    """Common length of the named arrays (raises when they differ)."""
    lengths = {name: len(a) for name, a in pairs}
    if len(set(lengths.values())) > 1:
        raise ValueError("inputs must have the same length, got "
                         + ", ".join(f"{k}={v}" for k, v in lengths.items()))
    n = next(iter(lengths.values()))
    if n == 0:
        raise ValueError("inputs are empty")
    return n


def check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1) (0.05 gives a 95 % interval), got {alpha}")
    return alpha


def z_crit(alpha: float) -> float:
    """Two-sided standard-normal critical value, e.g. 1.95996 for alpha 0.05."""
    return float(norm.ppf(1.0 - check_alpha(alpha) / 2.0))
