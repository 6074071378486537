"""Dice scores of label maps: per scan and class, macro and micro averages (REFERENCE §4.6)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from voxelfm.stats._validate import check_alpha
from voxelfm.stats.estimate import Estimate

__all__ = ["DiceResult", "dice_from_scans", "dice_scores"]

_SMOOTH = 1e-6


@dataclass(frozen=True, eq=False)
class DiceResult:
    """Dice of a batch of ``S`` scans over the evaluated classes ``class_ids [C]``.

    Attributes:
        class_ids: label values evaluated (``1..num_classes-1`` with ``ignore_background``).
        per_scan: ``[S, C]`` Dice per scan and class, NaN where prediction and target are both empty.
        target_voxels: ``[S, C]`` ground-truth voxel counts ``|T_c|`` (the micro weights).
        per_class: ``{class_id: Estimate}`` — mean Dice over the scans where it is defined.
        macro: mean over classes of ``per_class`` (classes never defined are ignored).
        micro: ``Σ Dice·|T_c| / Σ |T_c|`` over all scans and classes (a false-positive-only class
            has weight 0).
    Estimates carry a percentile bootstrap CI over scans when ``ci="bootstrap"`` was asked,
    otherwise ``method="point"``.
    """

    class_ids: np.ndarray
    per_scan: np.ndarray
    target_voxels: np.ndarray
    per_class: dict[int, Estimate]
    macro: Estimate
    micro: Estimate
    n_resamples: int = 0

    def to_dict(self) -> dict:
        """JSON-able summary: macro, micro and per-class estimates."""
        return {"macro": self.macro.to_dict(), "micro": self.micro.to_dict(),
                "per_class": {str(k): v.to_dict() for k, v in self.per_class.items()}}


def _confusion(pred: np.ndarray, target: np.ndarray, num_classes: int) -> np.ndarray:
    """``[K, K]`` confusion counts (pred, target) of one scan, O(voxels)."""
    p = pred.ravel().astype(np.int64)
    t = target.ravel().astype(np.int64)
    return np.bincount(p * num_classes + t, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes)


def _scan_dice(conf: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    inter = np.diag(conf)[classes].astype(float)
    p_size = conf.sum(axis=1)[classes].astype(float)
    t_size = conf.sum(axis=0)[classes].astype(float)
    dice = (2.0 * inter + _SMOOTH) / (p_size + t_size + _SMOOTH)
    dice[(p_size == 0) & (t_size == 0)] = np.nan
    return dice, t_size


def _aggregate(d: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class means, macro and micro for stacks ``d, w [..., S, C]`` (NaN-aware)."""
    defined = ~np.isnan(d)
    cnt = defined.sum(axis=-2)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(cnt > 0, np.where(defined, d, 0.0).sum(axis=-2) / np.maximum(cnt, 1), np.nan)
        pc_def = ~np.isnan(per_class)
        macro = np.where(pc_def.any(-1), np.where(pc_def, per_class, 0.0).sum(-1)
                         / np.maximum(pc_def.sum(-1), 1), np.nan)
        wsum = w.sum(axis=(-2, -1))
        micro = np.where(wsum > 0, (np.where(defined, d, 0.0) * w).sum(axis=(-2, -1))
                         / np.where(wsum > 0, wsum, 1), np.nan)
    return per_class, macro, micro


def dice_scores(pred, target, num_classes: int, *, ignore_background: bool = True,
                ci: Literal["bootstrap"] | None = None, n_resamples: int = 10_000, seed: int = 4,
                alpha: float = 0.05) -> DiceResult:
    """Dice per scan and class with macro and micro averages, exactly as the reference evaluates.

    For every scan and class c: ``Dice = (2|P∩T| + 1e-6) / (|P| + |T| + 1e-6)``, NaN when
    ``|P| = |T| = 0``. Macro = mean over classes of the per-class mean over scans (NaNs ignored);
    micro = ``Σ_scans Σ_c Dice·|T_c| / Σ |T_c|``.

    Args:
        pred, target: integer label maps — one scan ``[D, H, W]``, a batch ``[S, D, H, W]``, or a
            sequence of ``S`` scans of possibly different shapes (pred and target shapes must match
            per scan). Values in ``[0, num_classes)``; pass ``argmax`` of logits as ``pred``.
        num_classes: number of labels including background 0.
        ignore_background: drop class 0 (the reference evaluates classes ≠ 0).
        ci: ``"bootstrap"`` adds percentile CIs from resampling scans (the reference: 10,000
            resamples, seed 4); ``None`` gives point estimates.

    Returns:
        :class:`DiceResult`.
    """
    num_classes = int(num_classes)
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2 (background + at least one class), got {num_classes}")
    preds, targets = _as_scans(pred, "pred"), _as_scans(target, "target")
    if len(preds) != len(targets):
        raise ValueError(f"pred has {len(preds)} scans but target has {len(targets)}")
    classes = np.arange(1 if ignore_background else 0, num_classes)
    rows_d, rows_w = [], []
    for i, (p, t) in enumerate(zip(preds, targets)):
        if p.shape != t.shape:
            raise ValueError(f"scan {i}: pred shape {p.shape} != target shape {t.shape}")
        for name, a in (("pred", p), ("target", t)):
            if a.dtype.kind not in "biu" and not (a.dtype.kind == "f" and np.all(np.mod(a, 1) == 0)):
                raise ValueError(f"{name} must hold integer labels (argmax the logits first), got {a.dtype}")
            if a.size and (a.min() < 0 or a.max() >= num_classes):
                raise ValueError(f"scan {i}: {name} labels must be in [0, {num_classes}), found "
                                 f"[{a.min()}, {a.max()}]")
        d, w = _scan_dice(_confusion(p, t, num_classes), classes)
        rows_d.append(d)
        rows_w.append(w)
    return dice_from_scans(np.stack(rows_d), np.stack(rows_w), classes, ci=ci, n_resamples=n_resamples,
                           seed=seed, alpha=alpha)


def dice_from_scans(d: np.ndarray, w: np.ndarray, classes: Sequence[int], *,
                    ci: Literal["bootstrap"] | None = None, n_resamples: int = 10_000, seed: int = 4,
                    alpha: float = 0.05) -> DiceResult:
    """Macro, micro and per-class Dice from per-scan Dice ``d [S, C]`` and target sizes ``w [S, C]``.

    What :func:`dice_scores` computes after scoring each scan; use it to pool scans scored
    separately (e.g. the out-of-fold predictions of a cross-validated probe). NaN in ``d`` = class
    absent from both maps of that scan; ``classes`` are the label values of the columns.
    """
    d = np.asarray(d, dtype=float)
    w = np.asarray(w, dtype=float)
    classes = np.asarray(classes, dtype=int)
    if d.ndim != 2 or d.shape != w.shape or d.shape[1] != len(classes) or len(d) == 0:
        raise ValueError(f"d and w must both be [scans, classes] with {len(classes)} classes, got "
                         f"{d.shape} and {w.shape}")
    alpha = check_alpha(alpha)
    per_class, macro, micro = _aggregate(d, w)
    n_scans = len(d)
    n_per_class = (~np.isnan(d)).sum(0)
    if ci is None:
        lo_pc = hi_pc = np.full(len(classes), np.nan)
        lo_ma = hi_ma = lo_mi = hi_mi = math.nan
        method = "point"
        n_resamples = 0
    elif ci == "bootstrap":
        rng = np.random.default_rng(seed)
        reps_pc, reps_ma, reps_mi = [], [], []
        chunk = max(1, 2_000_000 // max(d.size, 1))
        for start in range(0, int(n_resamples), chunk):
            b = min(chunk, int(n_resamples) - start)
            idx = rng.integers(0, n_scans, size=(b, n_scans))
            pc, ma, mi = _aggregate(d[idx], w[idx])
            reps_pc.append(pc)
            reps_ma.append(ma)
            reps_mi.append(mi)
        q = [alpha / 2, 1 - alpha / 2]
        with warnings.catch_warnings():  # all-NaN columns (a class absent from every resample)
            warnings.simplefilter("ignore", RuntimeWarning)
            lo_pc, hi_pc = np.nanquantile(np.concatenate(reps_pc), q, axis=0)
            lo_ma, hi_ma = np.nanquantile(np.concatenate(reps_ma), q)
            lo_mi, hi_mi = np.nanquantile(np.concatenate(reps_mi), q)
        method = "bootstrap-percentile"
    else:
        raise ValueError(f"ci must be 'bootstrap' or None, got {ci!r}")
    per_class_est = {int(c): Estimate(per_class[k], lo_pc[k], hi_pc[k], method, int(n_per_class[k]),
                                      alpha, f"dice_{int(c)}") for k, c in enumerate(classes)}
    return DiceResult(classes, d, w, per_class_est,
                      Estimate(macro, lo_ma, hi_ma, method, n_scans, alpha, "dice_macro"),
                      Estimate(micro, lo_mi, hi_mi, method, n_scans, alpha, "dice_micro"),
                      int(n_resamples))




def _as_scans(x, name: str) -> list[np.ndarray]:
    if isinstance(x, np.ndarray) or hasattr(x, "__array__") and not isinstance(x, (list, tuple)):
        a = np.asarray(x)
        if a.ndim < 1:
            raise ValueError(f"{name} must be a label map [D, H, W] or a batch [S, D, H, W]")
        return [a] if a.ndim <= 3 else list(a)
    if isinstance(x, Sequence):
        if len(x) == 0:
            raise ValueError(f"{name} is empty")
        return [np.asarray(s) for s in x]
    raise ValueError(f"{name} must be an array or a sequence of arrays, got {type(x).__name__}")
