"""OSIC Pulmonary Fibrosis Progression (Kaggle 2020): baseline chest CTs of 176 patients with
idiopathic pulmonary fibrosis and their forced vital capacity (FVC) over about two years.

Traps handled:

* ``train.csv`` has one row per spirometry visit (``Patient, Weeks, FVC, Percent, Age, Sex,
  SmokingStatus``; ``Weeks`` relative to the CT), the CT is one DICOM folder per patient
  (``train/<Patient>/<n>.dcm``, numbered slices without a series folder). The recipe makes one
  target row per patient: the predicted (normal) FVC ``FVC × 100 / Percent`` — the paper's "FVC
  PREDICTED" — plus the FVC and percent of the visit closest to the CT.
* The reference z-scored the target over the whole label file (MAE in SD units); the probe here
  z-scores on the training split and reports MAE in ml.
* The reference itself read another OSIC release: ``baselines.csv`` (``PATIENT ID``, ``FVC
  PREDICTED``) with NIfTI scans ``ct/<PATIENT ID>_<n>.nii.gz`` (the baseline scan ``_0``). When
  ``--root`` holds that layout it is prepared the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from voxelfm.datasets._dicom import patient_ct_series
from voxelfm.datasets._tables import patient_splits, read_official_csv
from voxelfm.datasets.protocols import SUITE_COMMON, regression_heads
from voxelfm.datasets.recipe import Prepared, PrepareReport, Recipe

__all__ = ["RECIPE", "OSICRecipe"]

_TRAIN_COLUMNS = ("Patient", "Weeks", "FVC", "Percent", "Age", "Sex", "SmokingStatus")


class OSICRecipe(Recipe):
    name = "osic"
    title = "OSIC Pulmonary Fibrosis Progression"
    description = "176 baseline CTs of IPF patients with FVC measurements: FVC regression (one target per patient)"
    licence = ("Kaggle competition data: competition rules (non-commercial research and education use, no "
               "redistribution); accept them on Kaggle")
    url = "https://www.kaggle.com/competitions/osic-pulmonary-fibrosis-progression/data"
    layout = """\
ROOT/   (kaggle competitions download -c osic-pulmonary-fibrosis-progression, unzipped)
  train.csv            Patient, Weeks, FVC (ml), Percent (of predicted), Age, Sex, SmokingStatus
  train/<Patient>/1.dcm, 2.dcm, ...      one CT per patient
  test.csv, test/<Patient>/...           (the five test patients are also in train.csv; used when train/ lacks them)
  sample_submission.csv                  (ignored)
or the release the reference read:
  baselines.csv        PATIENT ID, FVC PREDICTED (ml), ...
  ct/<PATIENT ID>_0.nii.gz               the baseline CT of each patient"""
    paper = ("regression of the predicted FVC ('FVC PREDICTED', z-scored over the label file), one CT per patient; "
             "MLP 1024/0.5 on CLS, SGD 0.9 lr 1e-3, 20 epochs, batch 16 × 4, noise p 1.0 σ 0.1, MSE; MAE with "
             "bootstrap CI; split 70/15/15 random, seed 4")
    version = "1"

    def build(self, root: Path, out: Path, report: PrepareReport, *, seed: int, **options: Any) -> Prepared:
        if (root / "baselines.csv").is_file() and not (root / "train.csv").is_file():
            return _build_baselines(root, report, seed)
        if not (root / "train.csv").is_file():
            report.missing.append("train.csv")
            visits = None
        else:
            visits = read_official_csv(root / "train.csv", _TRAIN_COLUMNS)
            for c in ("Weeks", "FVC", "Percent", "Age"):
                visits[c] = pd.to_numeric(visits[c], errors="coerce")
        folders: dict[str, Path] = {}
        for part in ("test", "train"):  # train/ wins over test/
            if (root / part).is_dir():
                folders.update({p.name: p for p in sorted((root / part).iterdir()) if p.is_dir()})
            elif part == "train":
                report.missing.append("train/")
        report.found["patient folders"] = len(folders)
        report.found["visits (train.csv rows)"] = 0 if visits is None else len(visits)
        if visits is not None:
            report.missing.extend(f"train/{p}/ (in train.csv)" for p in sorted(set(visits["Patient"]) - set(folders)))
        series = patient_ct_series(folders, report)
        by_patient = {p: g for p, g in visits.groupby("Patient")} if visits is not None else {}
        man, rows = [], []
        for patient, (folder, uid) in sorted(series.items()):
            g = by_patient.get(patient)
            if g is None:
                report.skip(patient, "not in train.csv")
                continue
            g = g.dropna(subset=["FVC", "Percent"])
            g = g[g["Percent"] > 0]
            if g.empty:
                report.skip(patient, "no FVC / Percent in train.csv")
                continue
            base = g.iloc[int(np.argmin(np.abs(g["Weeks"].to_numpy(dtype=float))))]
            man.append({"id": patient, "path": str(folder), "series_uid": uid})
            rows.append({"id": patient, "patient_id": patient,
                         "fvc_predicted_ml": float((g["FVC"] * 100.0 / g["Percent"]).mean()),
                         "fvc_baseline_ml": float(base["FVC"]), "percent_baseline": float(base["Percent"]),
                         "weeks_baseline": float(base["Weeks"]), "n_visits": len(g), "age": float(base["Age"]),
                         "sex": base["Sex"], "smoking_status": base["SmokingStatus"]})
        table = pd.DataFrame(rows)
        manifest = pd.DataFrame(man, columns=["id", "path", "series_uid"])
        if table.empty:
            return Prepared(manifest, table, {})
        table.insert(2, "split", patient_splits(list(table["id"]), list(table["patient_id"]), report,
                                                seed=seed).to_numpy())
        return Prepared(manifest, table, _suite(), {"visits": int(table["n_visits"].sum())})


def _build_baselines(root: Path, report: PrepareReport, seed: int) -> Prepared:
    """The reference's OSIC layout: baselines.csv + ct/<PATIENT ID>_0.nii.gz."""
    base = read_official_csv(root / "baselines.csv", ("PATIENT ID", "FVC PREDICTED"))
    base["PATIENT ID"] = base["PATIENT ID"].str.strip()
    base["FVC PREDICTED"] = pd.to_numeric(base["FVC PREDICTED"], errors="coerce")
    base = base.drop_duplicates("PATIENT ID").set_index("PATIENT ID")
    files = {p.name[: -len(".nii.gz")]: p for p in sorted((root / "ct").glob("*.nii.gz"))} if (root / "ct").is_dir() \
        else {}
    if not files:
        report.missing.append("ct/<PATIENT ID>_0.nii.gz")
    report.found["baselines.csv rows"] = len(base)
    report.found["ct files"] = len(files)
    man, rows = [], []
    for sid, path in files.items():
        patient, _, n = sid.rpartition("_")
        if n != "0":
            report.skip(sid, "not the baseline scan (_0)")
            continue
        if patient not in base.index or pd.isna(base.loc[patient, "FVC PREDICTED"]):
            report.skip(sid, "no FVC PREDICTED in baselines.csv")
            continue
        man.append({"id": sid, "path": str(path)})
        rows.append({"id": sid, "patient_id": patient, "fvc_predicted_ml": float(base.loc[patient, "FVC PREDICTED"])})
    table = pd.DataFrame(rows)
    manifest = pd.DataFrame(man, columns=["id", "path"])
    if table.empty:
        return Prepared(manifest, table, {})
    table.insert(2, "split", patient_splits(list(table["id"]), list(table["patient_id"]), report, seed=seed).to_numpy())
    suite = _suite()
    suite["tasks"] = suite["tasks"][:1]
    return Prepared(manifest, table, suite)


def _suite() -> dict[str, Any]:
    heads = regression_heads()
    return {
        "description": "OSIC: predicted FVC (the paper's target) and baseline FVC from the CT",
        **SUITE_COMMON,
        "head_defaults": heads,
        "tasks": [{"name": "fvc_predicted", "task": "regression", "target": "fvc_predicted_ml",
                   "probes": ["mlp", "attentive:patch", "ridge"]},
                  {"name": "fvc_baseline", "task": "regression", "target": "fvc_baseline_ml",
                   "probes": ["mlp", "attentive:patch", "ridge"]}],
    }


RECIPE = OSICRecipe()
