"""AUROC over several labels: per label, macro and micro averages; one-vs-rest for multi-class."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from voxelfm.stats._validate import DegenerateDataError, check_alpha
from voxelfm.stats.auroc import auroc
from voxelfm.stats.estimate import Estimate

__all__ = ["MultiLabelAUROC", "auroc_multilabel", "auroc_ovr", "macro_auroc", "micro_auroc"]


@dataclass(frozen=True, eq=False)
class MultiLabelAUROC:
    """AUROC per label and averaged.

    Attributes:
        labels: evaluated label names (labels with one class only are in ``skipped_labels``).
        per_label: ``{label: Estimate}`` (Hanley–McNeil CI by default).
        macro: unweighted mean of the per-label AUROCs (point estimate; bootstrap
            :func:`macro_auroc` for a CI).
        micro: AUROC of all (sample, label) pairs pooled (``sklearn`` ``average="micro"``); its
            Hanley CI treats the N·L pairs as independent, so it is optimistic — bootstrap
            :func:`micro_auroc` over samples instead when it matters.
        skipped_labels: ``{label: reason}``.
    """

    labels: list[str]
    per_label: dict[str, Estimate]
    macro: Estimate
    micro: Estimate
    skipped_labels: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"macro": self.macro.to_dict(), "micro": self.micro.to_dict(),
                "per_label": {k: v.to_dict() for k, v in self.per_label.items()},
                "skipped_labels": dict(self.skipped_labels)}


def _matrix_inputs(y_true, y_score) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true)
    s = np.asarray(y_score, dtype=float)
    if y.ndim != 2 or y.shape != s.shape:
        raise ValueError(f"y_true and y_score must both be [N, L], got {y.shape} and {s.shape}")
    if y.dtype != bool:
        if not np.isin(y, (0, 1)).all():
            raise ValueError("y_true must hold 0/1 (or bool) per label column")
        y = y.astype(bool)
    if not np.isfinite(s).all():
        raise ValueError("y_score contains NaN/inf")
    return y, s


def _defined(y: np.ndarray) -> np.ndarray:
    n_pos = y.sum(axis=0)
    return (n_pos > 0) & (n_pos < len(y))


def _masked_matrix_inputs(y_true, y_score) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``[N, L]`` labels that may hold NaN (missing): (labels as bool, scores, observed mask)."""
    y = np.asarray(y_true)
    s = np.asarray(y_score, dtype=float)
    if y.ndim != 2 or y.shape != s.shape:
        raise ValueError(f"y_true and y_score must both be [N, L], got {y.shape} and {s.shape}")
    if y.dtype == bool:
        return y, s, np.ones(y.shape, dtype=bool)
    y = y.astype(float)
    observed = ~np.isnan(y)
    if not np.isin(y[observed], (0.0, 1.0)).all():
        raise ValueError("y_true must hold 0/1 (or bool) per label column, NaN for a missing label")
    if not np.isfinite(s[observed]).all():
        raise ValueError("y_score contains NaN/inf where the label is observed")
    return np.where(observed, y, 0.0).astype(bool), s, observed


def macro_auroc(y_true, y_score) -> Estimate:
    """Unweighted mean AUROC over the label columns of ``[N, L]`` arrays that hold both classes
    (point estimate; ``bootstrap_ci(macro_auroc, Y, S, ...)`` for a CI — there, a label with one
    class in a resample is left out of that resample's mean, as here).

    Missing labels: ``NaN`` entries of ``y_true`` are left out of their column's AUROC (multi-label
    tables with gaps)."""
    y, s, obs = _masked_matrix_inputs(y_true, y_score)
    vals = []
    for j in range(y.shape[1]):
        yj, sj = y[obs[:, j], j], s[obs[:, j], j]
        if 0 < yj.sum() < len(yj):
            vals.append(auroc(yj, sj, ci=None).value)
    if not vals:
        raise DegenerateDataError("macro AUROC undefined: no label column holds both classes")
    return Estimate(float(np.mean(vals)), math.nan, math.nan, "point", len(y), 0.05, "auroc_macro")


def micro_auroc(y_true, y_score) -> Estimate:
    """AUROC of all (sample, label) pairs of ``[N, L]`` arrays pooled (point estimate)."""
    y, s = _matrix_inputs(y_true, y_score)
    e = auroc(y.ravel(), s.ravel(), ci=None)
    return Estimate(e.value, math.nan, math.nan, "point", len(y), 0.05, "auroc_micro")


def auroc_multilabel(y_true, y_score, *, label_names: Sequence[str] | None = None,
                     ci: Literal["hanley", "delong"] | None = "hanley",
                     alpha: float = 0.05) -> MultiLabelAUROC:
    """Per-label, macro and micro AUROC of ``[N, L]`` multi-label scores.

    Args:
        y_true: ``[N, L]`` 0/1 (a DataFrame's columns name the labels).
        y_score: ``[N, L]`` scores.
        label_names: names of the columns (default DataFrame columns or ``label_<j>``).
        ci: per-label interval (see :func:`auroc`).

    Label columns holding only one class are skipped (warning) and listed in ``skipped_labels``.
    """
    names = list(label_names) if label_names is not None else (
        [str(c) for c in y_true.columns] if hasattr(y_true, "columns") else None)
    y, s = _matrix_inputs(y_true, y_score)
    alpha = check_alpha(alpha)
    names = names or [f"label_{j}" for j in range(y.shape[1])]
    if len(names) != y.shape[1]:
        raise ValueError(f"{len(names)} label names for {y.shape[1]} columns")
    ok = _defined(y)
    skipped = {names[j]: f"only {'positives' if y[:, j].all() else 'negatives'}"
               for j in np.flatnonzero(~ok)}
    if skipped:
        warnings.warn(f"AUROC undefined for {len(skipped)} label(s) with one class only: "
                      + ", ".join(skipped), RuntimeWarning, stacklevel=2)
    if not ok.any():
        raise DegenerateDataError("no label column holds both classes")
    per = {names[j]: auroc(y[:, j], s[:, j], ci=ci, alpha=alpha) for j in np.flatnonzero(ok)}
    macro = Estimate(float(np.mean([e.value for e in per.values()])), math.nan, math.nan, "point",
                     len(y), alpha, "auroc_macro")
    m = auroc(y.ravel(), s.ravel(), ci="hanley" if ci else None, alpha=alpha)
    micro = Estimate(m.value, m.ci_low, m.ci_high, m.method, len(y), alpha, "auroc_micro")
    return MultiLabelAUROC(list(per), per, macro, micro, skipped)


def auroc_ovr(y_true, y_prob, *, class_names: Sequence[str] | None = None,
              ci: Literal["hanley", "delong"] | None = "hanley", alpha: float = 0.05) -> MultiLabelAUROC:
    """One-vs-rest AUROC of multi-class scores: class k against all others, for each k.

    Args:
        y_true: ``[N]`` integer class indices in ``[0, K)``.
        y_prob: ``[N, K]`` class probabilities or scores.

    ``macro`` equals ``sklearn.metrics.roc_auc_score(y, p, multi_class="ovr", average="macro")``
    when every class occurs (sklearn additionally requires rows of ``y_prob`` to sum to 1).
    """
    y = np.asarray(y_true)
    p = np.asarray(y_prob, dtype=float)
    if y.ndim != 1 or p.ndim != 2 or len(y) != len(p):
        raise ValueError(f"y_true must be [N] and y_prob [N, K], got {y.shape} and {p.shape}")
    if y.dtype.kind not in "iu" and not (y.dtype.kind == "f" and np.all(np.mod(y, 1) == 0)):
        raise ValueError("y_true must hold integer class indices")
    y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= p.shape[1]:
        raise ValueError(f"class indices must be in [0, {p.shape[1]}), found [{y.min()}, {y.max()}]")
    onehot = y[:, None] == np.arange(p.shape[1])[None, :]
    names = list(class_names) if class_names is not None else [str(k) for k in range(p.shape[1])]
    return auroc_multilabel(onehot, p, label_names=names, ci=ci, alpha=alpha)
