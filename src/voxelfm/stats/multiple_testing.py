"""Adjusting p-values for multiple comparisons (Bonferroni, Holm, Benjamini–Hochberg)."""

from __future__ import annotations

from typing import Literal

import numpy as np

__all__ = ["adjust_pvalues"]


def adjust_pvalues(pvalues, method: Literal["holm", "bonferroni", "fdr_bh"] = "holm") -> np.ndarray:
    """Adjusted p-values, in the input order (compare them with the unadjusted alpha).

    Methods:
        ``"holm"`` (default) — Holm's step-down; controls the family-wise error rate like
            Bonferroni and is uniformly more powerful:
            ``p̃_(i) = max_{j ≤ i} min(1, (m − j + 1) p_(j))``.
        ``"bonferroni"`` — ``min(1, m·p)``.
        ``"fdr_bh"`` — Benjamini–Hochberg false-discovery-rate adjustment
            (``scipy.stats.false_discovery_control``).

    NaN entries are kept as NaN and do not count towards ``m``. Matches ``statsmodels``'
    ``multipletests(..., method=...)[1]`` and R's ``p.adjust``.
    """
    p = np.asarray(pvalues, dtype=float)
    shape = p.shape
    p = p.ravel()
    ok = ~np.isnan(p)
    if ((p[ok] < 0) | (p[ok] > 1)).any():
        raise ValueError("p-values must be in [0, 1]")
    out = np.full_like(p, np.nan)
    q = p[ok]
    m = len(q)
    if m == 0:
        return out.reshape(shape)
    if method == "bonferroni":
        adj = np.minimum(1.0, q * m)
    elif method == "holm":
        order = np.argsort(q, kind="stable")
        stepped = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * q[order]))
        adj = np.empty(m)
        adj[order] = stepped
    elif method == "fdr_bh":
        from scipy.stats import false_discovery_control

        adj = false_discovery_control(q, method="bh")
    else:
        raise ValueError(f"method must be 'holm', 'bonferroni' or 'fdr_bh', got {method!r}")
    out[ok] = adj
    return out.reshape(shape)
