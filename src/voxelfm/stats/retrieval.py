"""Label-based retrieval: Recall@k of one positive among sampled negatives (REFERENCE §4.7).

For every label, every ordered pair (q, p) of distinct volumes carrying the label is a trial: the
positive p is ranked among ``n_negatives`` volumes lacking the label by cosine similarity to the
query q; it is a hit at k when its rank is ≤ k (the positive wins ties). Recall@k of a label is the
mean hit over its trials; the macro Recall@k is the mean over labels. A random embedding gives
``k / (n_negatives + 1)``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from scipy.stats import hypergeom

from voxelfm.stats._validate import check_alpha
from voxelfm.stats.estimate import Estimate

__all__ = ["RetrievalResult", "recall_at_k", "retrieval_recall"]

_TRIAL_SEED = 42  # the reference's bootstrap seeds (per label over trials, macro over labels)
_TRIAL_RESAMPLES = 1000


@dataclass(frozen=True, eq=False)
class RetrievalResult:
    """Recall@k per label and macro-averaged over labels.

    Attributes:
        labels: evaluated label names, in evaluation order (frequency, descending).
        ks: the k values.
        per_label: ``{label: {k: Estimate}}`` — mean hit over the label's trials, percentile
            bootstrap CI over trials (1000 resamples, seed 42; ``n`` = trials).
        macro: ``{k: Estimate}`` — mean over labels, bootstrap CI over labels (1000, seed 42;
            ``n`` = labels).
        n_positives, n_trials: per label.
        method: ``"protocol"`` or ``"expected"``.
        n_negatives: negatives per trial (pool = n_negatives + 1).
        skipped_labels: ``{label: reason}`` for labels that could not be evaluated.
    """

    labels: list[str]
    ks: tuple[int, ...]
    per_label: dict[str, dict[int, Estimate]]
    macro: dict[int, Estimate]
    n_positives: dict[str, int]
    n_trials: dict[str, int]
    method: str
    n_negatives: int
    skipped_labels: dict[str, str] = field(default_factory=dict)

    @property
    def random_baseline(self) -> dict[int, float]:
        """Expected Recall@k of random embeddings, ``k / (n_negatives + 1)``."""
        return {k: min(1.0, k / (self.n_negatives + 1)) for k in self.ks}

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict shaped like the reference's ``results_per_label.json`` / ``results_macro.json``."""
        per_label = []
        for lab in self.labels:
            row: dict[str, Any] = {"label": lab, "n_positives": self.n_positives[lab],
                                   "num_trials": self.n_trials[lab]}
            for k in self.ks:
                e = self.per_label[lab][k]
                row[f"Recall@{k}"] = e.value
                row[f"Recall@{k}_ci_lower"] = e.ci_low
                row[f"Recall@{k}_ci_upper"] = e.ci_high
            per_label.append(row)
        macro: dict[str, Any] = {"n_labels": len(self.labels)}
        for k in self.ks:
            macro[f"Recall@{k}"] = self.macro[k].value
            macro[f"Recall@{k}_ci"] = [self.macro[k].ci_low, self.macro[k].ci_high]
        return {"method": self.method, "n_negatives": self.n_negatives, "per_label": per_label,
                "macro": macro, "skipped_labels": dict(self.skipped_labels)}


def _normalised(embeddings: np.ndarray) -> np.ndarray:
    e = np.asarray(embeddings, dtype=np.float32)
    return e / (np.linalg.norm(e, axis=1, keepdims=True) + np.float32(1e-8))


def _percentile_mean_ci(rng: np.random.Generator, scores: np.ndarray, alpha: float,
                        n_resamples: int) -> tuple[float, float]:
    """The reference's bootstrap of a mean: ``rng.choice(scores, n, replace=True)`` per resample
    (drawn here as one index matrix — the same random stream), ``np.percentile`` limits."""
    n = len(scores)
    if n < 2:
        m = float(scores.mean()) if n == 1 else math.nan
        return m, m
    means = np.empty(n_resamples)
    chunk = max(1, 4_000_000 // n)
    for start in range(0, n_resamples, chunk):
        b = min(chunk, n_resamples - start)
        means[start:start + b] = scores[rng.integers(0, n, size=(b, n))].mean(axis=1)
    return (float(np.percentile(means, 100 * alpha / 2)),
            float(np.percentile(means, 100 * (1 - alpha / 2))))


def _label_order(labels: np.ndarray) -> np.ndarray:
    """Columns by frequency, descending; equal frequencies keep column order (as Counter.most_common)."""
    freq = labels.sum(axis=0)
    return np.argsort(-freq, kind="stable")


def _pairs(pos: np.ndarray, max_pairs: int | None, rng: np.random.Generator) -> list[np.ndarray] | None:
    """Per-query kept partner positions (indices into ``pos``) when ``max_pairs`` subsamples pairs."""
    p = len(pos)
    total = p * (p - 1)
    if max_pairs is None or total <= max_pairs:
        return None
    keep = np.sort(rng.choice(total, size=int(max_pairs), replace=False))
    q_of, r_of = np.divmod(keep, p - 1)
    out = [np.empty(0, dtype=np.int64)] * p
    for qi in np.unique(q_of):
        r = r_of[q_of == qi]
        out[qi] = r + (r >= qi)  # skip the query itself
    return out


def retrieval_recall(embeddings, labels, *, ks: Sequence[int] = (1, 5, 10), n_negatives: int = 99,
                     method: Literal["protocol", "expected"] = "protocol", seed: int = 4,
                     max_pairs: int | None = None, label_names: Sequence[str] | None = None,
                     alpha: float = 0.05, n_resamples: int = _TRIAL_RESAMPLES) -> RetrievalResult:
    """Label-based retrieval Recall@k with the reference's 1-positive + ``n_negatives`` protocol.

    Args:
        embeddings: ``[N, C]`` one vector per volume (CLS or token-averaged); L2-normalised here
            (eps 1e-8) and compared by cosine similarity (float32, as the reference).
        labels: ``[N, L]`` bool/0-1 label matrix (a pandas DataFrame's columns name the labels).
        ks: the k of Recall@k.
        n_negatives: negatives per trial (99 → pool of 100).
        method: ``"protocol"`` reproduces the reference exactly: labels by frequency, all ordered
            positive pairs, ``np.random.default_rng(seed)`` shared across labels, negatives drawn
            with ``rng.choice(negatives, n_negatives, replace=False)`` per trial, the positive wins
            ties; ranking is vectorised. ``"expected"`` replaces the sampling by its exact
            expectation: with ``m`` negatives (of all ``N_neg``) scoring strictly above the
            positive, ``P(hit@k) = P(X ≤ k−1)``, ``X ~ Hypergeometric(N_neg, m, n_negatives)`` —
            the mean the protocol converges to, without Monte-Carlo noise, and faster.
        seed: the protocol's negative-sampling seed (reference 4).
        max_pairs: evaluate at most this many ordered pairs per label (sampled uniformly without
            replacement from the same generator, kept in reference order); results then differ
            from the full reference run. ``None`` = all pairs.
        label_names: names of the L label columns (default: DataFrame columns or ``label_<j>``).
        alpha, n_resamples: bootstrap CIs (per label over trials; macro over labels; seed 42).

    Returns:
        :class:`RetrievalResult`. Labels with fewer than 2 positives or fewer than
        ``n_negatives`` negatives are skipped (listed in ``skipped_labels``, with a warning).

    Note:
        The per-label bootstrap treats trials as independent although trials sharing a query or a
        positive are correlated, so those intervals are optimistic (as in the reference).
    """
    names = list(label_names) if label_names is not None else (
        [str(c) for c in labels.columns] if hasattr(labels, "columns") else None)
    lab = np.asarray(labels)
    emb = np.asarray(embeddings)
    if emb.ndim != 2:
        raise ValueError(f"embeddings must be [N, C], got shape {emb.shape}; pool token features first")
    if lab.ndim == 1:
        lab = lab[:, None]
    if lab.ndim != 2 or len(lab) != len(emb):
        raise ValueError(f"labels must be [N={len(emb)}, L], got shape {lab.shape}")
    if lab.dtype != bool:
        if not np.isin(lab, (0, 1)).all():
            raise ValueError("labels must be 0/1 or bool")
        lab = lab.astype(bool)
    if not np.isfinite(emb).all():
        raise ValueError("embeddings contain NaN/inf")
    names = names or [f"label_{j}" for j in range(lab.shape[1])]
    if len(names) != lab.shape[1]:
        raise ValueError(f"{len(names)} label names for {lab.shape[1]} label columns")
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    n_negatives = int(n_negatives)
    if n_negatives < 1:
        raise ValueError(f"n_negatives must be >= 1, got {n_negatives}")
    if method not in ("protocol", "expected"):
        raise ValueError(f"method must be 'protocol' or 'expected', got {method!r}")
    alpha = check_alpha(alpha)

    en = _normalised(emb)
    rng = np.random.default_rng(seed)
    kk = np.asarray(ks)
    per_label: dict[str, dict[int, Estimate]] = {}
    n_pos_d: dict[str, int] = {}
    n_trials_d: dict[str, int] = {}
    skipped: dict[str, str] = {}
    evaluated: list[str] = []
    from voxelfm.utils.progress import progress

    for j in progress(_label_order(lab), total=lab.shape[1], desc=f"retrieval ({method})", unit="label"):
        name = names[j]
        pos = np.flatnonzero(lab[:, j])
        neg = np.flatnonzero(~lab[:, j])
        if len(pos) < 2:
            skipped[name] = f"{len(pos)} positive(s); a trial needs a query and another positive"
            continue
        if len(neg) < n_negatives:
            skipped[name] = f"only {len(neg)} volumes lack the label (< {n_negatives} negatives)"
            continue
        partners = _pairs(pos, max_pairs, rng)
        if method == "expected":
            table = np.stack([hypergeom.cdf(k - 1, len(neg), np.arange(len(neg) + 1), n_negatives)
                              for k in ks], axis=1)  # [N_neg + 1, K]
        hits: list[np.ndarray] = []
        for qi, q in enumerate(pos):
            others = np.delete(np.arange(len(pos)), qi) if partners is None else partners[qi]
            if len(others) == 0:
                continue
            sims = en @ en[q]  # [N] float32, cosine similarity to the query
            s_pos = sims[pos[others]]
            s_neg = sims[neg]
            if method == "protocol":
                draws = np.stack([rng.choice(len(neg), size=n_negatives, replace=False)
                                  for _ in range(len(others))])
                above = (s_neg[draws] > s_pos[:, None]).sum(axis=1)  # rank - 1 (positive wins ties)
                hits.append((above[:, None] < kk[None, :]).astype(float))
            else:
                srt = np.sort(s_neg)
                m = len(srt) - np.searchsorted(srt, s_pos, side="right")
                hits.append(table[m])
        h = np.concatenate(hits) if hits else np.empty((0, len(ks)))
        evaluated.append(name)
        n_pos_d[name] = len(pos)
        n_trials_d[name] = len(h)
        est = {}
        for ki, k in enumerate(ks):
            lo, hi = _percentile_mean_ci(np.random.default_rng(_TRIAL_SEED), h[:, ki], alpha, n_resamples)
            est[k] = Estimate(float(h[:, ki].mean()) if len(h) else math.nan, lo, hi,
                              "bootstrap-percentile", len(h), alpha, f"recall@{k}")
        per_label[name] = est
    if skipped:
        warnings.warn(f"retrieval_recall skipped {len(skipped)} label(s): "
                      + "; ".join(f"{k}: {v}" for k, v in skipped.items()), RuntimeWarning, stacklevel=2)
    if not evaluated:
        most_neg = int((~lab).sum(axis=0).max()) if lab.size else 0
        hint = (f"; the most negatives any label has here is {most_neg}: pass n_negatives <= {most_neg} "
                "(the reference protocol uses 99)") if 0 < most_neg < n_negatives else ""
        raise ValueError("no label could be evaluated (each needs >= 2 positives and "
                         f">= {n_negatives} negatives){hint}")
    macro: dict[int, Estimate] = {}
    mrng = np.random.default_rng(_TRIAL_SEED)
    for k in ks:
        scores = np.array([per_label[lab_][k].value for lab_ in evaluated])
        lo, hi = _percentile_mean_ci(mrng, scores, alpha, n_resamples)
        macro[k] = Estimate(float(scores.mean()), lo, hi, "bootstrap-percentile", len(scores), alpha,
                            f"recall@{k}_macro")
    return RetrievalResult(evaluated, ks, per_label, macro, n_pos_d, n_trials_d, method, n_negatives,
                           skipped)


def recall_at_k(scores, relevant, k: int) -> Estimate:
    """Mean Recall@k over queries: ``|relevant ∩ top-k| / |relevant|`` per query.

    Args:
        scores: ``[Q, M]`` similarity of each query to M candidates (higher = more similar).
        relevant: ``[Q, M]`` bool, which candidates are relevant to the query. Queries without a
            relevant candidate are left out (``n`` counts the rest).
        k: cut-off.

    Ties are broken in favour of relevant candidates (as the reference's stable ranking with the
    positive first). With one relevant candidate per query this is the hit rate ``rank ≤ k``.
    Point estimate; ``bootstrap_ci`` over queries gives a CI.
    """
    s = np.asarray(scores, dtype=float)
    r = np.asarray(relevant).astype(bool)
    if s.ndim != 2 or s.shape != r.shape:
        raise ValueError(f"scores and relevant must both be [Q, M], got {s.shape}, {r.shape}")
    k = int(k)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n_rel = r.sum(axis=1)
    keep = n_rel > 0
    if not keep.any():
        raise ValueError("no query has a relevant candidate")
    s, r, n_rel = s[keep], r[keep], n_rel[keep]
    order = np.lexsort((~r, -s), axis=1)[:, :k]  # by score desc, relevant first among ties
    found = np.take_along_axis(r, order, axis=1).sum(axis=1)
    return Estimate(float(np.mean(found / n_rel)), math.nan, math.nan, "point", int(keep.sum()),
                    0.05, f"recall@{k}")
