"""The task registry: what each task's targets, loss, predictions, model-selection score,
test metrics and paired comparisons are.

=============  ======================  ================  ===================  ==========================
task           target column(s)        loss              selection (val)      test metrics
=============  ======================  ================  ===================  ==========================
binary         one 0/1 column          BCE               AUROC                AUROC (DeLong CI), F1@t,
                                                                              accuracy@t
multilabel     several 0/1 columns     BCE (NaN masked)  macro AUROC          per-label + macro AUROC,
                                                                              macro F1@t
multiclass     one column of classes   cross-entropy     macro OvR AUROC      accuracy, macro OvR AUROC,
                                                                              macro F1
regression     one or more numbers     MSE (z-scored on  −MSE                 MAE, RMSE, R² (original
                                       train stats)                           units, bootstrap CIs)
survival       time, event             Cox partial       C-index              C-index (bootstrap CI),
                                       likelihood                             time-dependent AUROC
localisation   z, y, x (relative or    SmoothL1          −mean distance       mean distance (relative
               source voxels)                                                 and mm), bootstrap CIs
segmentation   path of a label map     cross-entropy     macro Dice           macro / micro / per-class
                                                                              Dice (bootstrap over scans)
retrieval      0/1 label columns       — (no training)   —                    Recall@k (REFERENCE §4.7)
=============  ======================  ================  ===================  ==========================

Each task also knows its *primary* metric and how to compare two models' test predictions on the
same ids (:meth:`Task.compare`: DeLong for a binary AUROC, otherwise a paired bootstrap) — the
suite runner uses this to put p-values between backbones in its tables.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from voxelfm.probes.losses import cox_ph_loss, masked_bce_with_logits

__all__ = ["TASKS", "Targets", "Task", "get_task", "undefined"]


def undefined(name: str, n: int = 0, reason: str = "") -> Any:
    """An :class:`~voxelfm.stats.Estimate` of NaN for a metric that is undefined on this data."""
    from voxelfm.stats import Estimate

    return Estimate(math.nan, math.nan, math.nan, "undefined" + (f": {reason}" if reason else ""), n,
                    name=name)


def _safe(name: str, fn: Callable[[], Any], n: int) -> Any:
    """Run a metric; on degenerate data (one class, no events...) return an undefined Estimate."""
    from voxelfm.stats import Estimate

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            est = fn()
    except ValueError as exc:
        return undefined(name, n, str(exc).splitlines()[0][:120])
    if not isinstance(est, Estimate):
        est = Estimate(float(est), math.nan, math.nan, "point", n, name=name)
    if est.name != name:
        est = Estimate(est.value, est.ci_low, est.ci_high, est.method, est.n, est.alpha, name)
    return est


def _bootstrap(name: str, metric: Callable[..., Any], *arrays: Any, ctx: dict[str, Any],
               stratify: Any = None) -> Any:
    from voxelfm.stats import bootstrap_ci

    n = len(arrays[0])
    if not ctx.get("ci", True) or int(ctx.get("n_resamples", 0)) < 1 or n < 2:
        return _safe(name, lambda: metric(*arrays), n)
    return _safe(name, lambda: bootstrap_ci(metric, *arrays, n_resamples=ctx["n_resamples"],
                                            seed=ctx["seed"], stratify=stratify), n)


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    """AUROC point value (NaN when undefined)."""
    from voxelfm.stats import auroc

    y = np.asarray(y, dtype=float)
    ok = np.isfinite(y)
    y, p = y[ok], np.asarray(p)[ok]
    if len(y) == 0 or y.min() == y.max():
        return math.nan
    return float(auroc(y.astype(int), p, ci=None))


def _macro_auc(y: np.ndarray, p: np.ndarray) -> float:
    """Mean AUROC over the columns of ``[N, L]`` where it is defined (NaN if none)."""
    vals = [_auc(y[:, j], p[:, j]) for j in range(y.shape[1])]
    vals = [v for v in vals if math.isfinite(v)]
    return float(np.mean(vals)) if vals else math.nan


def _batched(fn: Callable[..., np.ndarray]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Attach a vectorised form (arrays with a leading resample axis ``[B, N, ...]`` → ``[B]``) to a
    metric, so :func:`voxelfm.stats.bootstrap_ci` evaluates all resamples at once."""
    def deco(metric: Callable[..., Any]) -> Callable[..., Any]:
        metric.batched = fn  # type: ignore[attr-defined]
        return metric
    return deco


def _masked_macro_f1(threshold: float) -> Callable[[np.ndarray, np.ndarray], float]:
    """Macro F1 over the columns of ``[N, L]`` labels with NaN = missing (a column with no observed
    label is left out); equals the mean of sklearn ``f1_score(zero_division=0)`` per column."""
    def batched(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        obs = ~np.isnan(a)
        y = np.where(obs, a, 0.0) == 1
        pred = (b >= threshold) & obs
        tp = (pred & y).sum(1)
        fp = (pred & ~y).sum(1)
        fn = (~pred & y & obs).sum(1)
        den = 2 * tp + fp + fn
        f1 = np.where(den > 0, 2 * tp / np.where(den > 0, den, 1), 0.0)
        f1 = np.where(obs.any(1), f1, np.nan)                       # [B, L]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean(f1, axis=1)

    @_batched(batched)
    def macro_f1(a: np.ndarray, b: np.ndarray) -> float:
        return float(batched(np.asarray(a, dtype=float)[None], np.asarray(b, dtype=float)[None])[0])

    return macro_f1


def _multiclass_confusion(y: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    """Confusion counts ``[B, k, k]`` (true, predicted) of ``[B, N]`` class indices."""
    b = y.shape[0]
    code = (y.astype(np.int64) * k + pred) + (np.arange(b, dtype=np.int64) * k * k)[:, None]
    return np.bincount(code.ravel(), minlength=b * k * k).reshape(b, k, k)


def _multiclass_accuracy_batched(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (b.argmax(-1) == a).mean(axis=1)


@_batched(_multiclass_accuracy_batched)
def _multiclass_accuracy(a: np.ndarray, b: np.ndarray) -> float:
    """Accuracy of the argmax of ``[N, K]`` probabilities against class indices ``[N]``."""
    return float(np.mean(np.asarray(b).argmax(1) == np.asarray(a)))


@dataclass
class Targets:
    """Targets of one probe, aligned with the joined label table.

    Attributes:
        y: targets in the user's units (probabilities' labels, original regression units, survival
            ``[N, 2]`` time/event, localisation ``[N, 3]`` relative coordinates).
        model_y: what the loss sees (e.g. z-scored regression targets).
        columns: the label columns used.
        out_dim: number of head outputs.
        classes: class values (multi-class) or label names (multi-label).
        extra: task-specific (regression mean/std, localisation extent in mm...).
    """

    y: np.ndarray
    model_y: np.ndarray
    columns: list[str]
    out_dim: int
    classes: list[Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Task:
    """Base class; see the module table. Subclasses set the class attributes."""

    name: ClassVar[str] = ""
    mode: ClassVar[str] = ""            # sklearn / kNN mode
    primary: ClassVar[str] = ""         # primary test metric
    higher_is_better: ClassVar[bool] = True
    trainable: ClassVar[bool] = True
    heads: ClassVar[tuple[str, ...]] = ()
    default_head: ClassVar[str] = "linear"

    # -- label columns --------------------------------------------------------------------------
    def columns(self, target: str | Sequence[str], hp: dict[str, Any]) -> list[str]:
        cols = [target] if isinstance(target, str) else list(target)
        if not cols:
            raise ValueError(f"task {self.name} needs at least one target column")
        return cols

    def stratify_column(self, columns: Sequence[str]) -> str | None:
        return None

    def targets(self, frame: pd.DataFrame, columns: list[str], train: np.ndarray,
                hp: dict[str, Any]) -> Targets:
        raise NotImplementedError

    # -- training ---------------------------------------------------------------------------------
    def loss(self, out: torch.Tensor, y: torch.Tensor, hp: dict[str, Any]) -> torch.Tensor:
        raise NotImplementedError

    def predict(self, raw: np.ndarray, t: Targets) -> np.ndarray:
        """Head outputs → predictions in user units."""
        return raw

    def score(self, y: np.ndarray, pred: np.ndarray) -> float:
        """Validation selection score (higher is better)."""
        raise NotImplementedError

    # -- evaluation -------------------------------------------------------------------------------
    def metrics(self, y: np.ndarray, pred: np.ndarray, t: Targets, ctx: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def prediction_columns(self, y: np.ndarray, pred: np.ndarray, t: Targets) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def from_predictions(self, df: pd.DataFrame) -> tuple[Any, np.ndarray]:
        """Recover ``(y, pred)`` from a predictions table (for comparisons between runs)."""
        raise NotImplementedError

    def primary_metric(self, y: Any, pred: np.ndarray) -> float:
        raise NotImplementedError

    def compare(self, y: Any, pred_a: np.ndarray, pred_b: np.ndarray, *, n_resamples: int = 2000,
                seed: int = 0) -> dict[str, Any]:
        """Paired comparison of two models on the same samples: ``{diff, p_value, method}``
        (``diff = a − b`` of the primary metric)."""
        from voxelfm.stats import paired_bootstrap_test

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                res = paired_bootstrap_test(self.primary_metric, y, pred_a, pred_b,
                                            n_resamples=n_resamples, seed=seed)
        except ValueError as exc:
            return {"diff": math.nan, "p_value": math.nan, "method": f"undefined: {exc}"[:80]}
        return {"diff": float(res.diff.value), "p_value": float(res.p_value), "method": "paired-bootstrap"}


# ============================================================================ classification
def _as01(values: pd.Series, col: str) -> np.ndarray:
    v = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    ok = np.isfinite(v)
    if not np.isin(v[ok], (0.0, 1.0)).all():
        raise ValueError(f"column {col!r} must hold 0/1 labels for a binary/multilabel task, "
                         f"found values {sorted(set(v[ok].tolist()))[:5]}")
    return v


class BinaryTask(Task):
    name = "binary"
    mode = "binary"
    primary = "auroc"
    heads = ("linear", "logistic", "mlp", "attentive", "knn")

    def columns(self, target, hp):
        cols = super().columns(target, hp)
        if len(cols) != 1:
            raise ValueError("a binary task takes one target column; use task=multilabel for several")
        return cols

    def stratify_column(self, columns):
        return columns[0]

    def targets(self, frame, columns, train, hp):
        y = _as01(frame[columns[0]], columns[0])
        if np.isnan(y).any():
            raise ValueError(f"column {columns[0]!r} has missing labels")
        extra = {}
        if hp.get("class_weight") == "balanced":
            pos = y[train].sum()
            extra["pos_weight"] = float((len(y[train]) - pos) / max(pos, 1.0))
        return Targets(y=y, model_y=y.astype(np.float32), columns=list(columns), out_dim=1, extra=extra)

    def loss(self, out, y, hp):
        pw = hp.get("_pos_weight")
        return F.binary_cross_entropy_with_logits(
            out.reshape(-1), y.reshape(-1).to(out.dtype),
            pos_weight=None if pw is None else torch.tensor(pw, dtype=out.dtype, device=out.device))

    def predict(self, raw, t):
        return 1.0 / (1.0 + np.exp(-np.asarray(raw, dtype=np.float64).reshape(-1)))

    def score(self, y, pred):
        return _auc(y, pred)

    def metrics(self, y, pred, t, ctx):
        from voxelfm.stats import accuracy_at, auroc, f1_at

        n = len(y)
        thr = float(ctx.get("threshold", 0.5))
        yi = y.astype(int)
        return {  # partials of the stats metrics keep bootstrap_ci on its vectorised path
            "auroc": _safe("auroc", lambda: auroc(yi, pred, ci=ctx.get("auroc_ci", "delong")), n),
            "f1": _bootstrap("f1", functools.partial(f1_at, threshold=thr), yi, pred, ctx=ctx),
            "accuracy": _bootstrap("accuracy", functools.partial(accuracy_at, threshold=thr), yi, pred, ctx=ctx),
        }

    def prediction_columns(self, y, pred, t):
        return {"label": y.astype(int), "prob": pred}

    def from_predictions(self, df):
        return df["label"].to_numpy(dtype=int), df["prob"].to_numpy(dtype=float)

    def primary_metric(self, y, pred):
        return _auc(y, pred)

    def compare(self, y, pred_a, pred_b, *, n_resamples=2000, seed=0):
        from voxelfm.stats.delong import delong_test

        try:
            r = delong_test(np.asarray(y, dtype=int), pred_a, pred_b)
        except ValueError as exc:
            return {"diff": math.nan, "p_value": math.nan, "method": f"undefined: {exc}"[:80]}
        return {"diff": float(r.auc_a - r.auc_b), "p_value": float(r.p_value), "method": "delong"}


class MultilabelTask(Task):
    name = "multilabel"
    mode = "multilabel"
    primary = "macro_auroc"
    heads = ("linear", "logistic", "mlp", "attentive", "knn")

    def targets(self, frame, columns, train, hp):
        y = np.stack([_as01(frame[c], c) for c in columns], axis=1)
        return Targets(y=y, model_y=y.astype(np.float32), columns=list(columns), out_dim=len(columns),
                       classes=list(columns))

    def loss(self, out, y, hp):
        return masked_bce_with_logits(out.reshape(y.shape), y)

    def predict(self, raw, t):
        raw = np.asarray(raw, dtype=np.float64).reshape(len(raw), -1)
        return 1.0 / (1.0 + np.exp(-raw))

    def score(self, y, pred):
        return _macro_auc(y, pred)

    def metrics(self, y, pred, t, ctx):
        from voxelfm.stats import auroc, macro_auroc

        n = len(y)
        thr = float(ctx.get("threshold", 0.5))
        out: dict[str, Any] = {}
        for j, col in enumerate(t.columns):
            ok = np.isfinite(y[:, j])
            out[f"auroc/{col}"] = _safe(f"auroc/{col}",
                                        lambda ok=ok, j=j: auroc(y[ok, j].astype(int), pred[ok, j],
                                                                 ci=ctx.get("auroc_ci", "delong")),
                                        int(ok.sum()))
        # stats.macro_auroc leaves missing (NaN) labels out of their column, as _macro_auc
        out["macro_auroc"] = _bootstrap("macro_auroc", macro_auroc, y, pred, ctx=ctx)
        out["macro_f1"] = _bootstrap("macro_f1", _masked_macro_f1(thr), y, pred, ctx=ctx)
        del n
        return out

    def prediction_columns(self, y, pred, t):
        cols: dict[str, np.ndarray] = {}
        for j, c in enumerate(t.columns):
            cols[f"label:{c}"] = y[:, j]
        for j, c in enumerate(t.columns):
            cols[f"prob:{c}"] = pred[:, j]
        return cols

    def from_predictions(self, df):
        labels = [c for c in df.columns if c.startswith("label:")]
        probs = ["prob:" + c[len("label:"):] for c in labels]
        return df[labels].to_numpy(dtype=float), df[probs].to_numpy(dtype=float)

    def primary_metric(self, y, pred):
        return _macro_auc(y, pred)


def _macro_f1_multiclass(y: np.ndarray, pred: np.ndarray, k: int) -> float:
    """Macro F1 over ``k`` classes (equals sklearn ``f1_score(average="macro", zero_division=0)``)."""
    conf = np.bincount(y * k + pred, minlength=k * k).reshape(k, k)
    tp = np.diag(conf).astype(float)
    denom = conf.sum(0) + conf.sum(1)
    f1 = np.divide(2 * tp, denom, out=np.zeros(k), where=denom > 0)
    return float(f1.mean())


class MulticlassTask(Task):
    name = "multiclass"
    mode = "multiclass"
    primary = "macro_auroc"
    heads = ("linear", "logistic", "mlp", "attentive", "knn")

    def columns(self, target, hp):
        cols = super().columns(target, hp)
        if len(cols) != 1:
            raise ValueError("a multiclass task takes one target column holding the class of each item")
        return cols

    def stratify_column(self, columns):
        return columns[0]

    def targets(self, frame, columns, train, hp):
        values = frame[columns[0]]
        if values.isna().any():
            raise ValueError(f"column {columns[0]!r} has missing classes")
        classes = sorted(values.unique().tolist(), key=lambda v: (str(type(v)), v))
        if len(classes) < 2:
            raise ValueError(f"column {columns[0]!r} has a single class; a multiclass task needs >= 2")
        index = {c: i for i, c in enumerate(classes)}
        y = values.map(index).to_numpy(dtype=np.int64)
        return Targets(y=y, model_y=y, columns=list(columns), out_dim=len(classes), classes=classes)

    def loss(self, out, y, hp):
        return F.cross_entropy(out, y.long())

    def predict(self, raw, t):
        raw = np.asarray(raw, dtype=np.float64)
        raw = raw - raw.max(axis=1, keepdims=True)
        e = np.exp(raw)
        return e / e.sum(axis=1, keepdims=True)

    @staticmethod
    def _ovr(y: np.ndarray, p: np.ndarray) -> float:
        vals = [_auc((y == k).astype(float), p[:, k]) for k in range(p.shape[1])]
        vals = [v for v in vals if math.isfinite(v)]
        return float(np.mean(vals)) if vals else math.nan

    def score(self, y, pred):
        s = self._ovr(np.asarray(y, dtype=int), pred)
        if math.isfinite(s):
            return s
        from sklearn.metrics import log_loss

        return -float(log_loss(y, pred, labels=list(range(pred.shape[1]))))

    def metrics(self, y, pred, t, ctx):
        from voxelfm.stats import macro_auroc

        y = np.asarray(y, dtype=int)
        k = pred.shape[1]
        onehot = (y[:, None] == np.arange(k)[None, :]).astype(float)

        def f1_batched(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            conf = _multiclass_confusion(a, b.argmax(-1), k)
            tp = np.diagonal(conf, axis1=1, axis2=2).astype(float)
            den = conf.sum(1) + conf.sum(2)
            return np.where(den > 0, 2 * tp / np.where(den > 0, den, 1), 0.0).mean(1)

        @_batched(f1_batched)
        def macro_f1(a: np.ndarray, b: np.ndarray) -> float:
            return _macro_f1_multiclass(a, b.argmax(1), k)

        out = {
            "accuracy": _bootstrap("accuracy", _multiclass_accuracy, y, pred, ctx=ctx),
            # one-vs-rest macro AUROC = macro AUROC of the one-hot labels (classes absent from a
            # resample are left out of its mean, as _ovr does)
            "macro_auroc": _bootstrap("macro_auroc", macro_auroc, onehot, pred, ctx=ctx),
            "macro_f1": _bootstrap("macro_f1", macro_f1, y, pred, ctx=ctx),
        }
        return out

    def prediction_columns(self, y, pred, t):
        classes = t.classes or list(range(pred.shape[1]))
        cols: dict[str, np.ndarray] = {"label": np.asarray([classes[i] for i in y], dtype=object),
                                       "label_index": y,
                                       "pred": np.asarray([classes[i] for i in pred.argmax(1)], dtype=object)}
        for k, c in enumerate(classes):
            cols[f"prob:{c}"] = pred[:, k]
        return cols

    def from_predictions(self, df):
        probs = [c for c in df.columns if c.startswith("prob:")]
        return df["label_index"].to_numpy(dtype=int), df[probs].to_numpy(dtype=float)

    def primary_metric(self, y, pred):
        return self._ovr(np.asarray(y, dtype=int), pred)


# ============================================================================ regression
class RegressionTask(Task):
    name = "regression"
    mode = "regression"
    primary = "mae"
    higher_is_better = False
    heads = ("linear", "ridge", "mlp", "attentive", "knn")

    def targets(self, frame, columns, train, hp):
        y = np.stack([pd.to_numeric(frame[c], errors="coerce").to_numpy(dtype=float) for c in columns], 1)
        if not np.isfinite(y).all():
            raise ValueError(f"regression targets {columns} have missing or non-numeric values")
        mean = np.zeros(y.shape[1])
        std = np.ones(y.shape[1])
        if hp.get("standardize_targets", True):
            mean = y[train].mean(0)
            std = y[train].std(0)
            std = np.where(std > 1e-12, std, 1.0)
        model_y = ((y - mean) / std).astype(np.float32)
        if len(columns) == 1:
            y, model_y = y[:, 0], model_y[:, 0]
        return Targets(y=y, model_y=model_y, columns=list(columns), out_dim=len(columns),
                       extra={"mean": mean.tolist(), "std": std.tolist()})

    def loss(self, out, y, hp):
        return F.mse_loss(out.reshape(y.shape), y.to(out.dtype))

    def predict(self, raw, t):
        raw = np.asarray(raw, dtype=np.float64)
        mean, std = np.asarray(t.extra["mean"]), np.asarray(t.extra["std"])
        if raw.ndim == 1 or t.out_dim == 1:
            return raw.reshape(-1) * std[0] + mean[0]
        return raw * std + mean

    def score(self, y, pred):
        return -float(np.mean((np.asarray(y) - pred) ** 2))

    def metrics(self, y, pred, t, ctx):
        from voxelfm.stats import mae, mse, r2, rmse

        out: dict[str, Any] = {}
        if np.ndim(y) == 1:
            pairs = [("", y, pred)]
        else:
            pairs = [(f"/{c}", y[:, j], pred[:, j]) for j, c in enumerate(t.columns)]
        for suffix, a, b in pairs:
            out["mae" + suffix] = _bootstrap("mae" + suffix, mae, a, b, ctx=ctx)
            out["rmse" + suffix] = _bootstrap("rmse" + suffix, rmse, a, b, ctx=ctx)
            out["mse" + suffix] = _bootstrap("mse" + suffix, mse, a, b, ctx=ctx)
            out["r2" + suffix] = _bootstrap("r2" + suffix, r2, a, b, ctx=ctx)
        if np.ndim(y) > 1:  # mean over outputs of the per-sample absolute errors
            out["mae"] = _bootstrap("mae", np.mean, np.abs(y - pred).mean(axis=1), ctx=ctx)
        return out

    def prediction_columns(self, y, pred, t):
        if np.ndim(y) == 1:
            return {"target": y, "pred": pred}
        cols: dict[str, np.ndarray] = {}
        for j, c in enumerate(t.columns):
            cols[f"target:{c}"] = y[:, j]
            cols[f"pred:{c}"] = pred[:, j]
        return cols

    def from_predictions(self, df):
        if "pred" in df.columns:
            return df["target"].to_numpy(dtype=float), df["pred"].to_numpy(dtype=float)
        tc = [c for c in df.columns if c.startswith("target:")]
        pc = ["pred:" + c[len("target:"):] for c in tc]
        return df[tc].to_numpy(dtype=float), df[pc].to_numpy(dtype=float)

    def primary_metric(self, y, pred):
        return float(np.mean(np.abs(np.asarray(y) - np.asarray(pred))))


# ============================================================================ survival
class SurvivalTask(Task):
    name = "survival"
    mode = "survival"
    primary = "c_index"
    heads = ("cox", "linear", "mlp", "attentive")
    default_head = "cox"

    def columns(self, target, hp):
        cols = super().columns(target, hp)
        if len(cols) == 1:
            event = hp.get("event_col", "event")
            cols = [cols[0], event]
        if len(cols) != 2:
            raise ValueError("a survival task takes two columns: time and event (target=[time, event] "
                             "or target=time with event_col=...)")
        return cols

    def stratify_column(self, columns):
        return columns[1]

    def targets(self, frame, columns, train, hp):
        t = pd.to_numeric(frame[columns[0]], errors="coerce").to_numpy(dtype=float)
        e = _as01(frame[columns[1]], columns[1])
        if not (np.isfinite(t).all() and np.isfinite(e).all()):
            raise ValueError(f"survival columns {columns} have missing values")
        if (t < 0).any():
            raise ValueError(f"survival times in {columns[0]!r} must be >= 0")
        y = np.stack([t, e], axis=1)
        return Targets(y=y, model_y=y.astype(np.float32), columns=list(columns), out_dim=1)

    def loss(self, out, y, hp):
        return cox_ph_loss(out.reshape(-1), y[:, 0], y[:, 1], ties=hp.get("ties", "breslow"))

    def predict(self, raw, t):
        return np.asarray(raw, dtype=np.float64).reshape(-1)

    def score(self, y, pred):
        from voxelfm.stats import c_index

        try:
            return float(c_index(y[:, 0], y[:, 1].astype(bool), pred))
        except ValueError:
            return math.nan

    def metrics(self, y, pred, t, ctx):
        from voxelfm.stats import c_index, time_dependent_auroc

        time, event = y[:, 0], y[:, 1].astype(bool)
        out = {"c_index": _bootstrap("c_index", c_index, time, event, pred, ctx=ctx)}
        train_y = ctx.get("train_y")
        for h in ctx.get("horizons") or []:
            name = f"td_auroc@{h:g}"
            kw = {}
            if train_y is not None:
                kw = {"train_time": train_y[:, 0], "train_event": train_y[:, 1].astype(bool)}
            out[name] = _bootstrap(name, lambda a, b, c, hh=float(h), kw=kw: time_dependent_auroc(a, b, c, hh, **kw),
                                   time, event, pred, ctx=ctx)
        return out

    def prediction_columns(self, y, pred, t):
        return {"time": y[:, 0], "event": y[:, 1].astype(int), "risk": pred}

    def from_predictions(self, df):
        return ((df["time"].to_numpy(dtype=float), df["event"].to_numpy(dtype=bool)),
                df["risk"].to_numpy(dtype=float))

    def primary_metric(self, time, event, pred=None):  # type: ignore[override]
        from voxelfm.stats import c_index

        return float(c_index(time, event, pred))


# ============================================================================ localisation
class LocalisationTask(Task):
    name = "localisation"
    mode = "regression"
    primary = "mean_distance"
    higher_is_better = False
    heads = ("localisation", "linear", "mlp", "attentive")
    default_head = "localisation"

    def columns(self, target, hp):
        cols = super().columns(target, hp)
        if len(cols) != 3:
            raise ValueError("a localisation task takes three columns (z, y, x): relative coordinates in "
                             "[0, 1] or canonical voxel indices (coords='voxel')")
        return cols

    def targets(self, frame, columns, train, hp):
        # Filled by run.py (needs the store records to map voxels to the model-input grid).
        raise NotImplementedError

    def loss(self, out, y, hp):
        kind = hp.get("loc_loss", "smooth_l1")
        y = y.to(out.dtype)
        if kind == "smooth_l1":
            return F.smooth_l1_loss(out, y, beta=float(hp.get("smooth_l1_beta", 1.0)))
        if kind == "l2":
            return F.mse_loss(out, y)
        if kind == "euclidean":
            return torch.linalg.vector_norm(out - y, dim=-1).mean()
        raise ValueError(f"loc_loss must be smooth_l1, l2 or euclidean, got {kind!r}")

    def predict(self, raw, t):
        return np.asarray(raw, dtype=np.float64).reshape(-1, 3)

    def score(self, y, pred):
        return -float(np.linalg.norm(np.asarray(y) - pred, axis=1).mean())

    def metrics(self, y, pred, t, ctx):
        # the mean Euclidean error is the mean of per-scan distances: bootstrap them with np.mean
        # (vectorised) — identical to bootstrapping stats.mean_euclidean_error over (y, pred) rows
        out = {"mean_distance": _bootstrap("mean_distance", np.mean, np.linalg.norm(y - pred, axis=1), ctx=ctx)}
        ext = ctx.get("extent_mm")
        if ext is not None and np.isfinite(ext).all():
            out["mean_distance_mm"] = _bootstrap("mean_distance_mm", np.mean,
                                                 np.linalg.norm((y - pred) * ext, axis=1), ctx=ctx)
        return out

    def prediction_columns(self, y, pred, t):
        cols = {"target_z": y[:, 0], "target_y": y[:, 1], "target_x": y[:, 2],
                "pred_z": pred[:, 0], "pred_y": pred[:, 1], "pred_x": pred[:, 2],
                "distance": np.linalg.norm(y - pred, axis=1)}
        return cols

    def from_predictions(self, df):
        return (df[["target_z", "target_y", "target_x"]].to_numpy(dtype=float),
                df[["pred_z", "pred_y", "pred_x"]].to_numpy(dtype=float))

    def primary_metric(self, y, pred):
        return float(np.linalg.norm(np.asarray(y) - np.asarray(pred), axis=1).mean())


# ============================================================================ segmentation
def macro_dice_from_scans(per_scan: np.ndarray) -> float:
    """Macro Dice from per-scan, per-class Dice ``[S, C]`` (NaN = class absent in both)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        per_class = np.nanmean(per_scan, axis=0)
    per_class = per_class[np.isfinite(per_class)]
    return float(per_class.mean()) if per_class.size else math.nan


class SegmentationTask(Task):
    name = "segmentation"
    mode = "segmentation"
    primary = "macro_dice"
    heads = ("segmentation",)
    default_head = "segmentation"

    def columns(self, target, hp):
        cols = super().columns(target, hp)
        if len(cols) != 1:
            raise ValueError("a segmentation task takes one column with the path of each label map")
        return cols

    def loss(self, out, y, hp):
        w = hp.get("_class_weights")
        weight = None if w is None else torch.as_tensor(w, dtype=out.dtype, device=out.device)
        k = out.shape[1]
        if out.ndim > 2 and out.movedim(1, -1).is_contiguous():  # channels-last logits (the decoder's)
            # the same loss over [voxels, classes] rows: a contiguous softmax axis is ≈ 40 % faster
            return F.cross_entropy(out.movedim(1, -1).reshape(-1, k), y.long().reshape(-1), weight=weight)
        return F.cross_entropy(out, y.long(), weight=weight)

    def score(self, y, pred):
        raise NotImplementedError  # run.py scores with dice_scores on label maps

    def from_predictions(self, df):
        cols = [c for c in df.columns if c.startswith("dice:")]
        return np.zeros(len(df)), df[cols].to_numpy(dtype=float)

    def primary_metric(self, y, pred):
        return macro_dice_from_scans(np.asarray(pred, dtype=float))


# ============================================================================ retrieval
class RetrievalTask(Task):
    name = "retrieval"
    mode = "retrieval"
    primary = "recall@1"
    trainable = False
    heads = ("cosine",)
    default_head = "cosine"

    def from_predictions(self, df):
        """Rows are labels; ``pred`` = per-label Recall@k ``[L, K]`` (paired bootstrap over labels)."""
        cols = [c for c in df.columns if c.startswith("recall@")]
        return np.zeros(len(df)), df[cols].to_numpy(dtype=float)

    def primary_metric(self, y, pred):
        return float(np.nanmean(np.asarray(pred, dtype=float)[:, 0]))


TASKS: dict[str, Task] = {t.name: t for t in (BinaryTask(), MultilabelTask(), MulticlassTask(), RegressionTask(),
                                               SurvivalTask(), LocalisationTask(), SegmentationTask(),
                                               RetrievalTask())}
_ALIASES = {"classification": "binary", "multi-label": "multilabel", "multi-class": "multiclass",
            "localization": "localisation", "cox": "survival"}


def get_task(name: str) -> Task:
    """The task called ``name`` (see the module table)."""
    key = _ALIASES.get(str(name).lower(), str(name).lower())
    if key not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
    return TASKS[key]
