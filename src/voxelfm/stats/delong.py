"""DeLong's nonparametric AUROC variance: confidence interval and paired test of two AUROCs.

Fast O(N log N) algorithm of Sun & Xu (2014, IEEE SPL 21:1389): the structural components come
from mid-ranks within the positives, within the negatives and over all samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm, rankdata

from voxelfm.stats._validate import (
    DegenerateDataError,
    as_1d,
    check_alpha,
    same_length,
    z_crit,
)
from voxelfm.stats.estimate import Estimate

__all__ = ["DeLongResult", "delong_ci", "delong_covariance", "delong_test"]


def _check(y_true, *scores: tuple[str, object]):
    y = as_1d(y_true, "y_true", dtype=bool)
    ss = [as_1d(s, name) for name, s in scores]
    same_length(("y_true", y), *[(name, s) for (name, _), s in zip(scores, ss)])
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos < 2 or n_neg < 2:
        raise DegenerateDataError(f"DeLong's variance needs at least 2 positives and 2 negatives, "
                                  f"got {n_pos} and {n_neg}")
    return y, np.stack(ss)


def delong_covariance(y_true, scores) -> tuple[np.ndarray, np.ndarray]:
    """AUROCs ``[K]`` and their DeLong covariance matrix ``[K, K]`` for ``K`` score vectors.

    Args:
        y_true: 0/1 labels ``[N]`` (≥ 2 of each class).
        scores: ``[K, N]`` scores of K models on the same samples (or ``[N]`` for one model).
    """
    s = np.asarray(scores, dtype=float)
    s = s[None] if s.ndim == 1 else s
    y, s = _check(y_true, *[(f"scores[{k}]", row) for k, row in enumerate(s)])
    return _fast_delong(s[:, y], s[:, ~y])


def _fast_delong(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sun & Xu's algorithm on positive scores ``[K, m]`` and negative scores ``[K, n]``."""
    m, n = pos.shape[1], neg.shape[1]
    tx = rankdata(pos, axis=1)
    ty = rankdata(neg, axis=1)
    tz = rankdata(np.concatenate([pos, neg], axis=1), axis=1)
    aucs = tz[:, :m].sum(axis=1) / (m * n) - (m + 1.0) / (2.0 * n)
    v01 = (tz[:, :m] - tx) / n          # per positive: fraction of negatives scored lower (ties ½)
    v10 = 1.0 - (tz[:, m:] - ty) / m    # per negative: fraction of positives scored higher (ties ½)
    sx = np.atleast_2d(np.cov(v01))
    sy = np.atleast_2d(np.cov(v10))
    return aucs, sx / m + sy / n


def delong_ci(y_true, y_score, *, alpha: float = 0.05) -> Estimate:
    """AUROC with DeLong's (1988) nonparametric confidence interval ``A ± z·√Var``, clipped to [0, 1]
    (as pROC's ``ci.auc(method="delong")``).

    Raises:
        DegenerateDataError: fewer than 2 positives or 2 negatives.
    """
    alpha = check_alpha(alpha)
    aucs, cov = delong_covariance(y_true, y_score)
    a = float(aucs[0])
    half = z_crit(alpha) * math.sqrt(max(float(cov[0, 0]), 0.0))
    n = len(np.asarray(y_true).reshape(-1))
    return Estimate(a, max(0.0, a - half), min(1.0, a + half), "delong", n, alpha, "auroc")


@dataclass(frozen=True)
class DeLongResult:
    """Paired DeLong test of two correlated AUROCs.

    Attributes:
        auc_a, auc_b: the two AUROCs.
        z: ``(auc_a − auc_b) / √(Var_a + Var_b − 2 Cov_ab)``.
        p_value: two-sided normal p-value.
        diff: ``auc_a − auc_b`` with its DeLong confidence interval.
        covariance: the 2×2 DeLong covariance matrix.
    """

    auc_a: float
    auc_b: float
    z: float
    p_value: float
    diff: Estimate
    covariance: np.ndarray

    def to_dict(self) -> dict:
        return {"auc_a": self.auc_a, "auc_b": self.auc_b, "z": self.z, "p_value": self.p_value,
                "diff": self.diff.to_dict()}

    def __str__(self) -> str:
        return (f"AUROC {self.auc_a:.3f} vs {self.auc_b:.3f}: diff {self.diff}, z = {self.z:.3f}, "
                f"p = {self.p_value:.3g}")


def delong_test(y_true, score_a, score_b, *, alpha: float = 0.05) -> DeLongResult:
    """DeLong's test for the difference of two AUROCs measured on the same samples (paired).

    Args:
        y_true: 0/1 labels ``[N]`` (≥ 2 of each class).
        score_a, score_b: scores of the two models ``[N]``.
        alpha: for the interval on the difference.

    Returns:
        :class:`DeLongResult`. Identical scores give ``z = 0``, ``p = 1``.
    """
    alpha = check_alpha(alpha)
    y, s = _check(y_true, ("score_a", score_a), ("score_b", score_b))
    aucs, cov = _fast_delong(s[:, y], s[:, ~y])
    d = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1])
    if var <= 1e-15 * max(1.0, float(cov[0, 0] + cov[1, 1])):
        # Perfectly correlated components (e.g. identical or monotonically related scores).
        z = 0.0 if abs(d) < 1e-12 else math.copysign(math.inf, d)
        p = 1.0 if abs(d) < 1e-12 else 0.0
        sd = 0.0
    else:
        sd = math.sqrt(var)
        z = d / sd
        p = float(2.0 * norm.sf(abs(z)))
    half = z_crit(alpha) * sd
    diff = Estimate(d, d - half, d + half, "delong", len(y), alpha, "auroc_diff")
    return DeLongResult(float(aucs[0]), float(aucs[1]), float(z), p, diff, cov)
