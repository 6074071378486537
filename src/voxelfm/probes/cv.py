"""The cross-validated protocol of :func:`~voxelfm.probes.train_probe` (``protocol="cv"``).

One held-out test split of a small cohort gives noisy metrics (the AUROC of ≈ 40 test scans has a
standard error of 0.07–0.1). With ``protocol="cv"`` the labelled scans are divided into
``folds`` folds **grouped by patient** (stratified by the task's stratum where it has one); in round
``i`` fold ``i`` is the test split, fold ``i + 1`` the validation split that selects the epoch or
hyper-parameter, and the other folds train the head. The test predictions of the rounds are
**pooled**: every scan gets exactly one out-of-fold prediction, made by a head that never saw its
patient. Metrics, their confidence intervals and the suite's paired comparisons are then computed
on all scans at once, with the same estimators as for one test split (DeLong for AUROC, percentile
bootstrap over scans otherwise).

What the run holds afterwards: ``predictions`` = one row per scan (``split="test"``, plus ``fold``);
``metrics`` on the pooled predictions; ``val_metrics`` = the mean over rounds of each round's
validation metrics; ``history`` = every round's epochs (with ``fold``); ``config["cv"]`` = folds,
scans per fold and each round's selected epoch / hyper-parameter. No head weights are saved
(``folds`` different heads were trained).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from voxelfm.probes.splits import fold_splits, make_folds
from voxelfm.probes.tasks import Targets, Task

__all__ = ["pooled_metrics", "run_cross_validated"]


def run_cross_validated(task_obj: Task, frame: pd.DataFrame, run_on: Callable[[pd.DataFrame, dict], Any],
                        hp: dict[str, Any], config: dict[str, Any], strat: str | None, seed: int,
                        ctx: dict[str, Any]) -> Any:
    """Run ``run_on`` once per fold and pool the out-of-fold test predictions.

    Args:
        task_obj: the task.
        frame: joined labels indexed by id, with ``patient`` (its ``split`` column is replaced).
        run_on: trains and evaluates one probe on a frame with ``split`` → :class:`ProbeRun`.
        hp: resolved options (``folds``).
        config: the run's config (copied into each round; the pooled run gets ``config["cv"]``).
        strat: stratum column of the task (``None``: unstratified folds).
        seed: seeds the fold assignment (and every round).
        ctx: metric options (bootstrap resamples, AUROC CI method, horizons...).

    Returns:
        :class:`~voxelfm.probes.run.ProbeRun` with pooled predictions and metrics.
    """
    from voxelfm.probes.run import ProbeRun

    k = int(hp["folds"])
    strata = None if strat is None else frame[strat].astype(str).tolist()
    folds = make_folds(list(frame.index), k, groups=list(frame["patient"]), stratify=strata, seed=seed)
    rounds = []
    for i in range(k):
        f = frame.copy()
        f["split"] = fold_splits(folds, i).loc[f.index].to_numpy()
        rounds.append(run_on(f, {**config, "notes": list(config.get("notes", []))}))
    tests = []
    for i, r in enumerate(rounds):
        t = r.predictions[r.predictions["split"] == "test"].copy()
        t.insert(2, "fold", i)
        tests.append(t)
    order = {vid: j for j, vid in enumerate(frame.index)}
    pooled = pd.concat(tests, ignore_index=True)
    pooled = pooled.iloc[np.argsort([order[v] for v in pooled["id"]], kind="stable")].reset_index(drop=True)
    if pooled["id"].duplicated().any():  # cannot happen with disjoint folds; guard the invariant
        raise RuntimeError("cross-validation produced two predictions for one scan")
    last = rounds[-1]
    metrics = pooled_metrics(task_obj, pooled, last.config, ctx)
    val_metrics = _mean_over_rounds([r.val_metrics for r in rounds])
    history = [{**row, "fold": i} for i, r in enumerate(rounds) for row in r.history]
    best = [r.best_epoch for r in rounds]
    out_config = dict(last.config)
    out_config["n"] = {"test": int(len(pooled)), "per_round": [r.config.get("n") for r in rounds]}
    out_config["cv"] = {"folds": k, "scans_per_fold": [int((folds == i).sum()) for i in range(k)],
                        "best_epochs": best, "selection": [r.config.get("selection") for r in rounds],
                        "validation": "the next fold (cyclically)"}
    finite = [b for b in best if b is not None]
    return ProbeRun(task=last.task, head=last.head, feature=last.feature, target=last.target,
                    predictions=pooled, metrics=metrics,
                    best_epoch=int(np.median(finite)) if finite else None, history=history,
                    val_metrics=val_metrics, config=out_config, model=None)


def pooled_metrics(task_obj: Task, pooled: pd.DataFrame, config: dict[str, Any], ctx: dict[str, Any]
                   ) -> dict[str, Any]:
    """Test metrics (with CIs) of a predictions table that pools several rounds' test rows.

    Uses the task's own estimators on the predictions as :meth:`Task.from_predictions` reads them,
    so a pooled table is scored exactly like one test split of the same rows.
    """
    c = dict(ctx, ci=True)
    if task_obj.name == "segmentation":
        from voxelfm.stats import dice_from_scans

        cols = [col for col in pooled.columns if col.startswith("dice:")]
        classes = [int(col.split(":", 1)[1]) for col in cols]
        d = pooled[cols].to_numpy(dtype=float)
        w = pooled[[f"voxels:{cl}" for cl in classes]].to_numpy(dtype=float)
        n_res = int(ctx.get("n_resamples", 0))
        res = dice_from_scans(d, w, classes, ci="bootstrap" if n_res > 0 else None, n_resamples=n_res, seed=4)
        out = {"macro_dice": res.macro, "micro_dice": res.micro}
        out.update({f"dice/{cl}": e for cl, e in res.per_class.items()})
        return out
    y, pred = task_obj.from_predictions(pooled)
    columns = list(config.get("target") or [])
    if task_obj.name == "survival":
        y = np.column_stack([y[0], y[1].astype(float)])
        c["train_y"] = y  # censoring distribution of the whole cohort (td-AUROC horizons only)
    if task_obj.name == "localisation" and "extent_z_mm" in pooled.columns:
        c["extent_mm"] = pooled[["extent_z_mm", "extent_y_mm", "extent_x_mm"]].to_numpy(dtype=float)
    if task_obj.name == "regression" and np.ndim(y) > 1:
        columns = [col[len("target:"):] for col in pooled.columns if col.startswith("target:")]
    classes = config.get("classes")
    targets = Targets(y=y, model_y=y, columns=columns, out_dim=int(np.shape(pred)[1]) if np.ndim(pred) > 1 else 1,
                      classes=classes)
    return task_obj.metrics(y, pred, targets, c)


def _mean_over_rounds(per_round: list[dict[str, Any]]) -> dict[str, Any]:
    """Per metric, the mean value over rounds (no CI: the rounds' validation sets differ)."""
    from voxelfm.stats import Estimate

    out = {}
    for name in per_round[0] if per_round else []:
        vals = [float(m[name].value) for m in per_round if name in m and math.isfinite(float(m[name].value))]
        out[name] = Estimate(float(np.mean(vals)) if vals else math.nan, math.nan, math.nan,
                             "mean over cross-validation rounds", int(sum(m[name].n for m in per_round if name in m)),
                             name=name)
    return out
