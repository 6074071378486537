"""Percentile bootstrap confidence intervals and a paired bootstrap test of two models.

Resampling draws row indices ``[B, N]`` with replacement (within each stratum when ``stratify``
is given). Metrics from :mod:`voxelfm.stats` that have a vectorised form (``auroc``,
``macro_auroc``, ``micro_auroc``, ``mae``, ``mse``, ``rmse``, ``r2``, ``f1_at``, ``precision_at``,
``recall_at``, ``accuracy_at``, ``c_index`` for N ≤ 3000, ``np.mean``, ``np.median``) are
evaluated on all resamples at once from the index matrix; any other metric is called once per
resample. A metric of your own can provide a vectorised form as an attribute
``metric.batched(*arrays)`` that receives every array with a leading resample axis ``[B, N, ...]``
and returns ``[B]`` values (NaN where undefined). Both paths draw the same indices, so they give
identical replicates.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from voxelfm.stats._validate import DegenerateDataError, check_alpha
from voxelfm.stats.estimate import BootstrapEstimate, Estimate

__all__ = ["PairedTest", "bootstrap_ci", "paired_bootstrap_test"]

_CHUNK_ELEMENTS = 2_000_000  # resample-matrix elements per chunk (bounds peak memory to ~100 MB)
_UNDEFINED = (ValueError, ZeroDivisionError, FloatingPointError)
_WARN_SKIPPED_FRACTION = 0.05
_CINDEX_FAST_MAX_N = 3000  # the vectorised C-index bootstrap holds two N×N float64 pair matrices


class _NoFastPath(Exception):
    """Raised by a vectorised metric when these inputs need the per-resample loop."""


# --------------------------------------------------------------------------- index generation
def _strata(stratify: Any, arrays: tuple[np.ndarray, ...], n: int) -> list[np.ndarray] | None:
    if stratify is None or stratify is False:
        return None
    labels = arrays[0] if stratify is True else np.asarray(stratify)
    if labels.ndim != 1 or len(labels) != n:
        raise ValueError(f"stratify must be labels [N={n}] (or True for the first array), "
                         f"got shape {labels.shape}")
    _, inv = np.unique(labels, return_inverse=True)
    return [np.flatnonzero(inv == g) for g in range(inv.max() + 1)]


def _indices(rng: np.random.Generator, n: int, strata: list[np.ndarray] | None, size: int) -> np.ndarray:
    """Resample indices ``[size, n]``; stratified draws keep every stratum's count."""
    if strata is None:
        return rng.integers(0, n, size=(size, n))
    return np.concatenate([members[rng.integers(0, len(members), size=(size, len(members)))]
                           for members in strata], axis=1)


def _counts(idx: np.ndarray, n: int) -> np.ndarray:
    """How often each original row appears in each resample, ``[B, n]`` float."""
    b = idx.shape[0]
    flat = idx + (np.arange(b) * n)[:, None]
    return np.bincount(flat.ravel(), minlength=b * n).reshape(b, n).astype(float)


# --------------------------------------------------------------------------- vectorised metrics
def _b_auroc(arrays, idx, observed: np.ndarray | None = None, **_):
    """Mann–Whitney AUROC of every resample from per-resample counts of (score group, class):
    one bincount over ``[B, N]`` codes and a cumulative sum over the sorted score groups.
    Rows with ``observed`` False (missing labels) are not counted."""
    from voxelfm.stats._validate import as_1d

    y = as_1d(arrays[0], "y_true", dtype=bool)
    s = as_1d(arrays[1], "y_score", allow_nan=observed is not None)
    if observed is not None:
        s = np.where(observed, s, 0.0)
    uniq, grp = np.unique(s, return_inverse=True)
    g = len(uniq) + 1  # the last group collects unobserved rows
    code = 2 * grp.astype(np.int64) + y  # (score group, class) per original row
    if observed is not None:
        code = np.where(observed, code, 2 * (g - 1))
    b = idx.shape[0]
    flat = code[idx] + (np.arange(b, dtype=np.int64) * (2 * g))[:, None]
    cnt = np.bincount(flat.ravel(), minlength=b * 2 * g).reshape(b, g, 2)[:, :-1]
    neg, pos = cnt[..., 0], cnt[..., 1]
    neg_below = np.cumsum(neg, axis=1) - neg  # negatives in strictly lower score groups
    u = np.sum(pos * (neg_below + 0.5 * neg), axis=1)
    n_pos = pos.sum(1)
    n_neg = neg.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n_pos > 0) & (n_neg > 0), u / (n_pos * n_neg), np.nan)


def _b_macro_auroc(arrays, idx, **_):
    from voxelfm.stats.multilabel import _masked_matrix_inputs

    if np.ndim(arrays[0]) != 2 or np.shape(arrays[0]) != np.shape(arrays[1]):
        raise _NoFastPath
    y, s, obs = _masked_matrix_inputs(arrays[0], arrays[1])
    cols = [j for j in range(y.shape[1]) if 0 < y[obs[:, j], j].sum() < obs[:, j].sum()]
    per = np.stack([_b_auroc((y[:, j], s[:, j]), idx, observed=None if obs[:, j].all() else obs[:, j])
                    for j in cols], axis=1)
    # as macro_auroc: labels with one class in this resample are left out of its mean
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # every label undefined: NaN (skipped)
        return np.nanmean(per, axis=1)


def _b_micro_auroc(arrays, idx, **_):
    y = np.asarray(arrays[0])
    s = np.asarray(arrays[1], dtype=float)
    if y.ndim != 2 or s.shape != y.shape:
        raise _NoFastPath
    n_lab = y.shape[1]
    flat_idx = (idx[:, :, None] * n_lab + np.arange(n_lab)).reshape(len(idx), -1)
    return _b_auroc((y.ravel(), s.ravel()), flat_idx)


def _b_regression(kind):
    def f(arrays, idx, **_):
        t = np.asarray(arrays[0], dtype=float)
        p = np.asarray(arrays[1], dtype=float)
        if t.ndim != 1 or p.ndim != 1:
            raise _NoFastPath
        tt, pp = t[idx], p[idx]
        if kind == "mae":
            return np.abs(pp - tt).mean(1)
        se = ((pp - tt) ** 2)
        if kind == "mse":
            return se.mean(1)
        if kind == "rmse":
            return np.sqrt(se.mean(1))
        sst = ((tt - tt.mean(1, keepdims=True)) ** 2).sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(sst > 0, 1.0 - se.sum(1) / np.where(sst > 0, sst, 1), np.nan)
    return f


def _b_thresholded(kind):
    def f(arrays, idx, threshold: float = 0.5, **_):
        from voxelfm.stats._validate import as_1d

        y = as_1d(arrays[0], "y_true", dtype=bool)
        pred = as_1d(arrays[1], "y_prob") >= float(threshold)
        code = 2 * y.astype(np.int64) + pred  # 0 tn, 1 fp, 2 fn, 3 tp
        b = idx.shape[0]
        flat = code[idx] + (np.arange(b, dtype=np.int64) * 4)[:, None]
        cnt = np.bincount(flat.ravel(), minlength=4 * b).reshape(b, 4).astype(float)
        tn, fp, fn, tp = cnt.T
        with np.errstate(invalid="ignore", divide="ignore"):
            if kind == "f1":
                num, den = 2 * tp, 2 * tp + fp + fn
            elif kind == "precision":
                num, den = tp, tp + fp
            elif kind == "recall":
                num, den = tp, tp + fn
            else:
                num, den = tp + tn, tp + fp + fn + tn
            return np.where(den > 0, num / np.where(den > 0, den, 1), 0.0)
    return f


def _b_cindex(arrays, idx, tied_tol: float = 1e-8, **_):
    from voxelfm.stats.survival import _pair_matrices, _survival_inputs

    t, e, r = _survival_inputs(arrays[0], arrays[1], ("risk", arrays[2]))
    n = len(t)
    if n > _CINDEX_FAST_MAX_N:
        raise _NoFastPath
    rows = np.arange(n)
    comp, conc, tie, _ = _pair_matrices(t, e, r, rows, float(tied_tol))
    comp &= e[:, None]
    num_m = (conc & e[:, None]).astype(float) + 0.5 * (tie & e[:, None])
    den_m = comp.astype(float)
    c = _counts(idx, n)
    num = np.einsum("bi,bi->b", c @ num_m, c)
    den = np.einsum("bi,bi->b", c @ den_m, c)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def _b_mean(arrays, idx, **kw):
    if len(arrays) != 1 or kw or np.asarray(arrays[0]).ndim != 1:
        raise _NoFastPath
    return np.asarray(arrays[0], dtype=float)[idx].mean(axis=1)


def _b_median(arrays, idx, **kw):
    if len(arrays) != 1 or kw or np.asarray(arrays[0]).ndim != 1:
        raise _NoFastPath
    return np.median(np.asarray(arrays[0], dtype=float)[idx], axis=1)


@functools.cache
def _fast_paths() -> dict[Callable, Callable]:
    from voxelfm.stats import multilabel, regression, survival, thresholded
    from voxelfm.stats.auroc import auroc

    return {
        auroc: _b_auroc,
        multilabel.macro_auroc: _b_macro_auroc,
        multilabel.micro_auroc: _b_micro_auroc,
        regression.mae: _b_regression("mae"),
        regression.mse: _b_regression("mse"),
        regression.rmse: _b_regression("rmse"),
        regression.r2: _b_regression("r2"),
        thresholded.f1_at: _b_thresholded("f1"),
        thresholded.precision_at: _b_thresholded("precision"),
        thresholded.recall_at: _b_thresholded("recall"),
        thresholded.accuracy_at: _b_thresholded("accuracy"),
        survival.c_index: _b_cindex,
        np.mean: _b_mean,
        np.median: _b_median,
    }


def _resolve(metric: Callable) -> tuple[Callable | None, dict]:
    """(index-based vectorised function, keyword arguments) for ``metric``, or (None, {})."""
    func, kw = metric, {}
    if isinstance(metric, functools.partial):
        if metric.args:
            return None, {}
        func, kw = metric.func, dict(metric.keywords)
    try:
        fast = _fast_paths().get(func)
    except TypeError:  # unhashable callable
        fast = None
    if fast is not None:
        return fast, kw
    user = getattr(metric, "batched", None)
    if callable(user):
        return (lambda arrays, idx, **_: np.asarray(user(*[a[idx] for a in arrays]), dtype=float)), {}
    return None, {}


# --------------------------------------------------------------------------- evaluation
def _as_float(v: Any) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"the metric must return a float or an Estimate, got {type(v).__name__}") from exc
    return x


def _call_quiet(metric: Callable, arrays: tuple[np.ndarray, ...]) -> float:
    try:
        return _as_float(metric(*arrays))
    except _UNDEFINED:
        return math.nan


def _replicates(metric: Callable, arrays: tuple[np.ndarray, ...], n: int, n_resamples: int,
                seed: int, strata, extra_arrays: tuple[tuple[np.ndarray, ...], ...] = ()) -> list[np.ndarray]:
    """Bootstrap replicates of ``metric`` on ``arrays`` (and on each tuple in ``extra_arrays``, with
    the *same* resamples — the paired test). Returns one ``[n_resamples]`` array per array tuple."""
    sets = (arrays, *extra_arrays)
    rng = np.random.default_rng(seed)
    fast, kw = _resolve(metric)
    out: list[list[np.ndarray]] = [[] for _ in sets]
    chunk = max(1, _CHUNK_ELEMENTS // max(n, 1))
    bar = None  # progress bar, only for the per-resample loop
    done = 0
    try:
        while done < n_resamples:
            b = min(chunk, n_resamples - done)
            idx = _indices(rng, n, strata, b)
            for k, arrs in enumerate(sets):
                vals = None
                if fast is not None:
                    try:
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore")
                            vals = np.asarray(fast(arrs, idx, **kw), dtype=float)
                    except _NoFastPath:
                        fast = None
                if vals is None:
                    if bar is None:
                        from voxelfm.utils.progress import progress

                        bar = progress(total=n_resamples * len(sets), unit="resample", leave=False,
                                       desc=f"bootstrap {_name(metric)}".strip())
                    vals = np.empty(len(idx))
                    with warnings.catch_warnings(), np.errstate(all="ignore"):
                        warnings.simplefilter("ignore")
                        for i, row in enumerate(idx):
                            vals[i] = _call_quiet(metric, tuple(a[row] for a in arrs))
                            bar.update(1)
                out[k].append(vals)
            done += b
    finally:
        if bar is not None:
            bar.close()
    return [np.concatenate(v) for v in out]


def _prepare(arrays: tuple[Any, ...]) -> tuple[tuple[np.ndarray, ...], int]:
    if not arrays:
        raise ValueError("pass the metric's input arrays, e.g. bootstrap_ci(auroc, y_true, y_score)")
    arrs = tuple(np.asarray(a) for a in arrays)
    for i, a in enumerate(arrs):
        if a.ndim == 0:
            raise ValueError(f"array {i} is a scalar; every input must have the samples on axis 0")
    n = len(arrs[0])
    if any(len(a) != n for a in arrs):
        raise ValueError("all arrays must have the same length on axis 0 (the resampled axis), got "
                         + ", ".join(str(len(a)) for a in arrs))
    if n < 2:
        raise ValueError(f"bootstrapping needs at least 2 samples, got {n}")
    return arrs, n


def _name(metric: Callable) -> str:
    f = metric.func if isinstance(metric, functools.partial) else metric
    name = getattr(f, "__name__", "")
    return "" if name == "<lambda>" else name


def _summarise(reps: np.ndarray, value: float, alpha: float, n: int, n_resamples: int,
               name: str, what: str) -> BootstrapEstimate:
    finite = reps[np.isfinite(reps)]
    skipped = int(len(reps) - len(finite))
    if len(finite) == 0:
        raise DegenerateDataError(f"{what}: the metric was undefined (NaN) on every one of "
                                  f"{n_resamples} resamples; use stratify=... to keep both classes "
                                  "in every resample, or more data")
    if skipped / len(reps) > _WARN_SKIPPED_FRACTION:
        warnings.warn(f"{what}: {skipped} of {n_resamples} resamples were undefined and skipped; "
                      "the interval is conditional on the defined ones (consider stratify=...)",
                      RuntimeWarning, stacklevel=3)
    lo, hi = np.quantile(finite, [alpha / 2.0, 1.0 - alpha / 2.0])
    return BootstrapEstimate(value, float(lo), float(hi), "bootstrap-percentile", n, alpha, name,
                             n_resamples=n_resamples, n_skipped=skipped, replicates=finite)


def bootstrap_ci(metric: Callable[..., Any], *arrays: Any, n_resamples: int = 10_000,
                 alpha: float = 0.05, seed: int = 0, stratify: Any = None) -> BootstrapEstimate:
    """Percentile bootstrap confidence interval of ``metric(*arrays)``.

    Args:
        metric: a function of the arrays returning a float or an :class:`Estimate` (its ``float()``
            is used), e.g. ``auroc``, ``c_index``, ``mae``, ``np.mean``,
            ``functools.partial(f1_at, threshold=0.3)``, or any sklearn metric.
        *arrays: the metric's inputs, each with the samples on axis 0 (``[N, ...]``); they are
            resampled together (rows stay paired).
        n_resamples: number of bootstrap resamples.
        alpha: 1 − confidence level; the interval is the ``alpha/2`` and ``1 − alpha/2`` quantiles
            (numpy linear interpolation) of the replicates.
        seed: seed of ``np.random.default_rng``; equal seeds give identical intervals.
        stratify: ``None``; labels ``[N]`` to resample within each group (every resample keeps the
            group sizes, e.g. the class counts); or ``True`` to stratify on the first array.

    Returns:
        :class:`BootstrapEstimate` — ``value`` is the metric on the full sample, ``n_skipped`` the
        resamples on which the metric was undefined (it raised ValueError or returned NaN; e.g. one
        class only), which are left out. A warning is issued when more than 5 % are skipped.

    Raises:
        ValueError: the metric is undefined on the full sample, or on every resample.
    """
    arrs, n = _prepare(arrays)
    alpha = check_alpha(alpha)
    n_resamples = int(n_resamples)
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    raw = metric(*arrs)
    value = _as_float(raw)
    name = raw.name if isinstance(raw, Estimate) and raw.name else _name(metric)
    strata = _strata(stratify, arrs, n)
    (reps,) = _replicates(metric, arrs, n, n_resamples, int(seed), strata)
    return _summarise(reps, value, alpha, n, n_resamples, name, "bootstrap_ci")


@dataclass(frozen=True)
class PairedTest:
    """Result of :func:`paired_bootstrap_test`.

    Attributes:
        diff: ``metric(A) − metric(B)`` with its percentile bootstrap CI (a :class:`BootstrapEstimate`).
        p_value: two-sided bootstrap p-value for "no difference".
        estimate_a, estimate_b: the metric of each model on the full sample.
        n_resamples, n_skipped: resamples drawn / skipped because either metric was undefined.
    """

    diff: BootstrapEstimate
    p_value: float
    estimate_a: float
    estimate_b: float
    n_resamples: int
    n_skipped: int

    def to_dict(self) -> dict[str, Any]:
        return {"diff": self.diff.to_dict(), "p_value": self.p_value, "estimate_a": self.estimate_a,
                "estimate_b": self.estimate_b, "n_resamples": self.n_resamples,
                "n_skipped": self.n_skipped}

    def __str__(self) -> str:
        return f"diff {self.diff} (p = {self.p_value:.3g})"


def paired_bootstrap_test(metric: Callable[..., Any], y: Any, pred_a: Any, pred_b: Any, *,
                          n_resamples: int = 10_000, alpha: float = 0.05, seed: int = 0,
                          stratify: Any = None) -> PairedTest:
    """Paired bootstrap comparison of two models' predictions on the same samples.

    Both models are scored on the *same* resamples, so their correlation is respected.
    ``diff = metric(y, pred_a) − metric(y, pred_b)``; the two-sided p-value is
    ``min(1, 2·min(#(d* ≤ 0) + 1, #(d* ≥ 0) + 1) / (B + 1))`` over the ``B`` defined replicates
    ``d*`` (the percentile-interval test: p < alpha exactly when the ``1 − alpha`` interval
    excludes 0, up to the +1 correction).

    Args:
        metric: ``metric(*y, pred)`` if ``y`` is a tuple (e.g. ``(time, event)`` for
            :func:`c_index`), else ``metric(y, pred)``.
        y: labels/targets ``[N, ...]`` or a tuple of such arrays.
        pred_a, pred_b: the two models' predictions ``[N, ...]``.
        stratify: as in :func:`bootstrap_ci` (``True`` stratifies on ``y`` / ``y[0]``).

    Returns:
        :class:`PairedTest`.
    """
    ys = tuple(y) if isinstance(y, tuple) else (y,)
    arrs_a, n = _prepare((*ys, pred_a))
    arrs_b, n_b = _prepare((*ys, pred_b))
    if n_b != n:
        raise ValueError(f"pred_a and pred_b must have the same length, got {n} and {n_b}")
    alpha = check_alpha(alpha)
    n_resamples = int(n_resamples)
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    a = _as_float(metric(*arrs_a))
    b = _as_float(metric(*arrs_b))
    strata = _strata(stratify, arrs_a, n)
    ra, rb = _replicates(metric, arrs_a, n, n_resamples, int(seed), strata, extra_arrays=(arrs_b,))
    d = ra - rb
    diff = _summarise(d, a - b, alpha, n, n_resamples, f"{_name(metric)}_diff".lstrip("_"),
                      "paired_bootstrap_test")
    finite = diff.replicates
    b_valid = len(finite)
    p = min(1.0, 2.0 * min(np.sum(finite <= 0) + 1, np.sum(finite >= 0) + 1) / (b_valid + 1))
    return PairedTest(diff, float(p), a, b, n_resamples, diff.n_skipped)
