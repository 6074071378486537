"""The cross-validated protocol (``protocol="cv"``): folds, pooled out-of-fold predictions, tests."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from voxelfm.errors import ConfigError
from voxelfm.probes import run_suite, train_probe
from voxelfm.probes.splits import fold_splits, make_folds
from voxelfm.probes.tasks import get_task
from voxelfm.stats import delong_test, dice_from_scans, dice_scores


def test_folds_are_grouped_by_patient_stratified_and_seeded():
    ids = [f"s{i}" for i in range(90)]
    patients = [f"p{i // 3}" for i in range(90)]  # 3 scans per patient
    y = [int(i // 3 % 3 == 0) for i in range(90)]  # a third of the patients positive
    folds = make_folds(ids, 5, groups=patients, stratify=y, seed=7)
    assert list(folds.index) == ids and set(folds) == set(range(5))
    per_patient = pd.Series(folds.to_numpy()).groupby(patients).nunique()
    assert (per_patient == 1).all()  # a patient never spans two folds
    pos = pd.Series(y, index=ids).groupby(folds).sum()
    assert pos.min() >= 4 and pos.max() <= 8  # 30 positives spread over 5 folds (whole patients of 3)
    assert make_folds(ids, 5, groups=patients, stratify=y, seed=7).equals(folds)
    assert not make_folds(ids, 5, groups=patients, stratify=y, seed=8).equals(folds)


def test_every_id_is_tested_and_validated_exactly_once():
    ids = [f"s{i}" for i in range(40)]
    folds = make_folds(ids, 4, groups=[f"p{i // 2}" for i in range(40)], seed=0)
    rounds = [fold_splits(folds, i) for i in range(4)]
    tested = pd.concat([r[r == "test"] for r in rounds])
    validated = pd.concat([r[r == "val"] for r in rounds])
    assert sorted(tested.index) == sorted(ids) and sorted(validated.index) == sorted(ids)
    for r in rounds:  # train, val and test are disjoint folds of one round
        assert set(r) == {"train", "val", "test"}


def test_fold_arguments_are_checked():
    with pytest.raises(ValueError, match="at least 3 folds"):
        make_folds(["a", "b", "c", "d"], 2)
    with pytest.raises(ValueError, match="cannot fill"):
        make_folds(["a", "b", "c", "d"], 5)


def test_cv_probe_pools_one_out_of_fold_prediction_per_scan(strong_store):
    store, labels = strong_store
    run = train_probe(store, labels, "y", task="binary", head="linear", protocol="cv", folds=5, epochs=30,
                      n_resamples=50, progress=False)
    pred = run.predictions
    assert sorted(pred["id"]) == sorted(labels["id"])  # every scan once
    assert (pred["split"] == "test").all() and set(pred["fold"]) == set(range(5))
    fold_of_patient = pred.merge(labels[["id", "patient_id"]], on="id").groupby("patient_id")["fold"].nunique()
    assert (fold_of_patient == 1).all()
    # the metric is that of the pooled predictions, with a DeLong CI over all 160 scans
    auc = run.metrics["auroc"]
    assert auc.n == 160 and auc.method == "delong" and auc.value > 0.95
    assert auc.ci_low < auc.value <= auc.ci_high
    assert run.config["cv"]["folds"] == 5 and len(run.config["cv"]["best_epochs"]) == 5
    assert {h["fold"] for h in run.history} == set(range(5))


def test_cv_pooled_metrics_equal_the_split_estimators_on_the_same_rows(strong_store):
    """Regression, survival and localisation: pooled metrics = the task's estimator on the rows."""
    store, labels = strong_store
    for task, target, head in (("regression", "value", "linear"), ("survival", ["time", "event"], "cox"),
                               ("localisation", ["rel_z", "rel_y", "rel_x"], "linear")):
        run = train_probe(store, labels, target, task=task, head=head, protocol="cv", folds=4, epochs=15,
                          n_resamples=0, progress=False)
        task_obj = get_task(task)
        y, p = task_obj.from_predictions(run.predictions)
        expected = task_obj.primary_metric(*y, p) if task == "survival" else task_obj.primary_metric(y, p)
        assert len(run.predictions) == 160
        assert run.metrics[task_obj.primary].value == pytest.approx(expected)


def test_paired_test_on_pooled_predictions_matches_the_per_split_method(two_backbones, tmp_path):
    """The suite compares cv runs with the same test as split runs — DeLong on the same ids — now on
    every scan: the p-value equals DeLong computed by hand on the pooled out-of-fold predictions."""
    root, good, bad, labels_path = two_backbones
    suite = {"name": "cv", "labels": str(labels_path), "stores": {"good": str(good.root), "bad": str(bad.root)},
             "reference": "good", "protocol": "cv", "folds": 5, "n_resamples": 100, "seed": 3,
             "tasks": [{"name": "y", "task": "binary", "target": "y", "probes": ["logistic"]}]}
    res = run_suite(suite, tmp_path / "out", show_progress=False, figures=False)
    cmp = res.comparisons.iloc[0]
    assert cmp["n"] == 100 and cmp["method"] == "delong"
    a = res.runs[("y", "logistic", "cls", "good", 1.0)].predictions.set_index("id")
    b = res.runs[("y", "logistic", "cls", "bad", 1.0)].predictions.set_index("id").loc[a.index]
    by_hand = delong_test(a["label"].to_numpy(int), a["prob"].to_numpy(), b["prob"].to_numpy())
    assert cmp["p_value"] == pytest.approx(by_hand.p_value)
    assert cmp["diff"] == pytest.approx(by_hand.auc_a - by_hand.auc_b) and cmp["diff"] > 0
    # a constructed case: split predictions that happen to equal the pooled ones give the same test
    split_like = get_task("binary").compare(a["label"].to_numpy(int), a["prob"].to_numpy(), b["prob"].to_numpy())
    assert split_like["p_value"] == pytest.approx(cmp["p_value"])
    assert "out-of-fold" in (tmp_path / "out" / "results.md").read_text()


def test_dice_from_scans_equals_dice_scores():
    rng = np.random.default_rng(0)
    pred = rng.integers(0, 3, size=(6, 4, 4, 4))
    tgt = np.where(rng.random((6, 4, 4, 4)) < 0.7, pred, rng.integers(0, 3, size=(6, 4, 4, 4)))
    full = dice_scores(pred, tgt, 3, ci="bootstrap", n_resamples=200, seed=4)
    pooled = dice_from_scans(full.per_scan, full.target_voxels, full.class_ids, ci="bootstrap", n_resamples=200,
                             seed=4)
    assert pooled.macro.value == pytest.approx(full.macro.value)
    assert pooled.macro.ci_low == pytest.approx(full.macro.ci_low)
    assert pooled.micro.value == pytest.approx(full.micro.value)


def test_cv_options_are_validated(strong_store):
    store, labels = strong_store
    with pytest.raises(ConfigError, match="folds >= 3"):
        train_probe(store, labels, "y", task="binary", protocol="cv", folds=2, progress=False)
    with pytest.raises(ConfigError, match="protocol"):
        train_probe(store, labels, "y", task="binary", protocol="kfold", progress=False)
