"""Metrics of binary decisions at a probability threshold: F1, precision, recall, accuracy."""

from __future__ import annotations

import math

import numpy as np

from voxelfm.stats._validate import as_1d, same_length
from voxelfm.stats.estimate import Estimate

__all__ = ["accuracy_at", "confusion_at", "f1_at", "precision_at", "recall_at"]


def confusion_at(y_true, y_prob, threshold: float = 0.5) -> tuple[int, int, int, int]:
    """``(tp, fp, fn, tn)`` of the decisions ``y_prob >= threshold`` against 0/1 labels ``[N]``.

    ``>=`` matches the reference's ``(prob >= 0.5)``-style rounding; pass ``threshold=0`` with
    logits to threshold at logit 0.
    """
    y = as_1d(y_true, "y_true", dtype=bool)
    p = as_1d(y_prob, "y_prob")
    same_length(("y_true", y), ("y_prob", p))
    pred = p >= float(threshold)
    tp = int(np.sum(pred & y))
    fp = int(np.sum(pred & ~y))
    fn = int(np.sum(~pred & y))
    tn = int(np.sum(~pred & ~y))
    return tp, fp, fn, tn


def _ratio(num: float, den: float) -> float:
    # sklearn's zero_division=0 convention: an undefined ratio counts as 0.
    return float(num / den) if den > 0 else 0.0


def _point(value: float, n: int, name: str) -> Estimate:
    return Estimate(value, math.nan, math.nan, "point", n, 0.05, name)


def f1_at(y_true, y_prob, threshold: float = 0.5) -> Estimate:
    """F1 = 2TP / (2TP + FP + FN) of ``y_prob >= threshold`` (sklearn ``f1_score``, zero_division=0).

    Args:
        y_true: 0/1 labels ``[N]``.
        y_prob: probabilities (or any score) ``[N]``.
        threshold: decision threshold (the reference uses 0.5 on sigmoid outputs).

    Point estimate; ``bootstrap_ci(f1_at, y_true, y_prob)`` (vectorised) for a CI.
    """
    tp, fp, fn, tn = confusion_at(y_true, y_prob, threshold)
    return _point(_ratio(2 * tp, 2 * tp + fp + fn), tp + fp + fn + tn, "f1")


def precision_at(y_true, y_prob, threshold: float = 0.5) -> Estimate:
    """Precision TP / (TP + FP) at ``y_prob >= threshold`` (0 when nothing is predicted positive)."""
    tp, fp, fn, tn = confusion_at(y_true, y_prob, threshold)
    return _point(_ratio(tp, tp + fp), tp + fp + fn + tn, "precision")


def recall_at(y_true, y_prob, threshold: float = 0.5) -> Estimate:
    """Recall (sensitivity) TP / (TP + FN) at ``y_prob >= threshold`` (0 without positives)."""
    tp, fp, fn, tn = confusion_at(y_true, y_prob, threshold)
    return _point(_ratio(tp, tp + fn), tp + fp + fn + tn, "recall")


def accuracy_at(y_true, y_prob, threshold: float = 0.5) -> Estimate:
    """Accuracy (TP + TN) / N at ``y_prob >= threshold``."""
    tp, fp, fn, tn = confusion_at(y_true, y_prob, threshold)
    n = tp + fp + fn + tn
    return _point((tp + tn) / n, n, "accuracy")
