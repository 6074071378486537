"""Area under the ROC curve for binary labels, with Hanley–McNeil, DeLong or bootstrap CIs."""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from scipy.stats import rankdata

from voxelfm.stats._validate import (
    DegenerateDataError,
    as_1d,
    check_alpha,
    same_length,
    z_crit,
)
from voxelfm.stats.estimate import Estimate

__all__ = ["auroc", "hanley_mcneil_se"]


def _check_binary_scores(y_true, y_score) -> tuple[np.ndarray, np.ndarray]:
    y = as_1d(y_true, "y_true", dtype=bool)
    s = as_1d(y_score, "y_score")
    same_length(("y_true", y), ("y_score", s))
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == len(y):
        only = "positives" if n_pos else "negatives"
        raise DegenerateDataError(
            f"AUROC is undefined: y_true holds only {only} ({len(y)} samples); "
            "it needs at least one positive and one negative")
    return y, s


def _auc_value(y: np.ndarray, s: np.ndarray) -> float:
    """Mann–Whitney AUC (ties count 1/2) from mid-ranks; equals sklearn ``roc_auc_score``."""
    ranks = rankdata(s)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def hanley_mcneil_se(auc: float, n_pos: int, n_neg: int) -> float:
    """Standard error of an AUROC by Hanley & McNeil (1982).

    ``Q1 = A/(2−A)``, ``Q2 = 2A²/(1+A)``,
    ``Var = [A(1−A) + (n_pos−1)(Q1−A²) + (n_neg−1)(Q2−A²)] / (n_pos·n_neg)``; returns ``√Var``.

    Args:
        auc: the AUROC ``A`` in [0, 1].
        n_pos, n_neg: number of positive / negative samples (≥ 1 each).
    """
    a = float(auc)
    if not 0.0 <= a <= 1.0:
        raise ValueError(f"auc must be in [0, 1], got {auc}")
    if int(n_pos) < 1 or int(n_neg) < 1:
        raise ValueError(f"n_pos and n_neg must be >= 1, got {n_pos}, {n_neg}")
    q1 = a / (2.0 - a)
    q2 = 2.0 * a * a / (1.0 + a)
    var = (a * (1.0 - a) + (n_pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a)) / (n_pos * n_neg)
    return math.sqrt(max(var, 0.0))


def auroc(y_true, y_score, *, ci: Literal["hanley", "delong", "bootstrap"] | None = "hanley",
          alpha: float = 0.05, n_resamples: int = 10_000, seed: int = 0,
          stratify: bool = False) -> Estimate:
    """AUROC of scores ``y_score [N]`` against binary labels ``y_true [N]`` (0/1 or bool).

    Ties in the scores count 1/2 (identical to ``sklearn.metrics.roc_auc_score``).

    Args:
        ci: confidence interval:
            ``"hanley"`` (default; the reference's ``roc_auc_ci_hanley``: ``A ± z·SE`` with
            :func:`hanley_mcneil_se`, clipped to [0, 1]) — cheap, assumes exponential score
            distributions, slightly anti-conservative for small or unbalanced samples;
            ``"delong"`` — nonparametric DeLong variance (see :func:`delong_ci`), recommended;
            ``"bootstrap"`` — percentile bootstrap (``n_resamples``, ``seed``, ``stratify``);
            ``None`` — point estimate only.
        alpha: 1 − confidence level.

    Returns:
        :class:`Estimate` with ``name="auroc"`` and ``n = N``.

    Raises:
        DegenerateDataError (a ValueError): ``y_true`` holds only one class.
    """
    y, s = _check_binary_scores(y_true, y_score)
    alpha = check_alpha(alpha)
    a = _auc_value(y, s)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if ci == "hanley":
        half = z_crit(alpha) * hanley_mcneil_se(a, n_pos, n_neg)
        return Estimate(a, max(0.0, a - half), min(1.0, a + half), "hanley-mcneil", len(y),
                        alpha, "auroc")
    if ci == "delong":
        from voxelfm.stats.delong import delong_ci

        return delong_ci(y, s, alpha=alpha)
    if ci == "bootstrap":
        from voxelfm.stats.bootstrap import bootstrap_ci

        est = bootstrap_ci(auroc, y, s, n_resamples=n_resamples, alpha=alpha, seed=seed,
                           stratify=y if stratify else None)
        return est
    if ci is None or ci == "point":
        return Estimate(a, math.nan, math.nan, "point", len(y), alpha, "auroc")
    raise ValueError(f"ci must be 'hanley', 'delong', 'bootstrap' or None, got {ci!r}")
