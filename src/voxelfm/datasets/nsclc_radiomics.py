"""NSCLC-Radiomics (Lung1): pre-treatment CTs of 422 non-small-cell lung cancer patients with
overall survival (Aerts et al., Nature Communications 2014).

Traps handled:

* DICOM as downloaded from TCIA (NBIA Data Retriever): ``LUNG1-xxx/<study>/<series>/*.dcm``, each
  patient folder also holding RTSTRUCT and SEG series; the recipe takes the CT volume series (the
  largest when there are several) and writes its folder and ``SeriesInstanceUID`` to the manifest.
* Survival comes from the clinical CSV: ``Survival.time`` in **days** and ``deadstatus.event``
  (1 = dead). The reference fed ``log1p(Survival.time / 100)``; a monotone transform, so the C-index
  is unchanged — labels.csv keeps days.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from voxelfm.datasets._dicom import patient_ct_series
from voxelfm.datasets._tables import patient_splits, read_official_csv
from voxelfm.datasets.protocols import SUITE_COMMON, survival_heads
from voxelfm.datasets.recipe import Prepared, PrepareReport, Recipe

__all__ = ["RECIPE", "NSCLCRadiomicsRecipe"]

_CLINICAL_COLUMNS = ("PatientID", "Survival.time", "deadstatus.event")
_CLINICAL_GLOB = "NSCLC*Radiomics*clinical*.csv"


class NSCLCRadiomicsRecipe(Recipe):
    name = "nsclc-radiomics"
    title = "NSCLC-Radiomics (Lung1)"
    description = "422 pre-treatment CTs of non-small-cell lung cancer patients with overall survival: survival"
    licence = "CC BY-NC 3.0 (TCIA; cite Aerts et al., Nat Commun 2014, the dataset DOI and TCIA)"
    url = "https://www.cancerimagingarchive.net/collection/nsclc-radiomics/ (DOI 10.7937/K9/TCIA.2015.PF0M9REI)"
    layout = """\
ROOT/   (the NBIA Data Retriever download; the patient folders may sit in ROOT/NSCLC-Radiomics/)
  LUNG1-001/<study>/<series>/1-001.dcm ...   CT series (+ RTSTRUCT and SEG series, ignored)
  LUNG1-002/...
  NSCLC-Radiomics-Lung1.clinical-version3-Oct-2019.csv   (any NSCLC*Radiomics*clinical*.csv, anywhere below ROOT)
      PatientID, age, clinical.T.Stage, Clinical.N.Stage, Clinical.M.Stage, Overall.Stage, Histology, gender,
      Survival.time (days), deadstatus.event (1 = dead)"""
    paper = ("overall survival: time = log1p(Survival.time / 100), event = deadstatus.event; MLP head on CLS with a "
             "Cox partial likelihood within each mini-batch, SGD 0.9 lr 1e-3, 20 epochs, batch 16 × 4, noise p 1.0 "
             "σ 0.1; C-index with bootstrap CI; split 70/15/15 stratified by gender, seed 4")
    version = "1"

    def build(self, root: Path, out: Path, report: PrepareReport, *, seed: int, **options: Any) -> Prepared:
        clinical_files = sorted(root.rglob(_CLINICAL_GLOB))
        if not clinical_files:
            report.missing.append("NSCLC-Radiomics-Lung1.clinical-version3-Oct-2019.csv")
            clinical = None
        else:
            if len(clinical_files) > 1:
                report.notes.append(f"several clinical CSVs; {clinical_files[-1].name} is used")
            clinical = read_official_csv(clinical_files[-1], _CLINICAL_COLUMNS)
            clinical["PatientID"] = clinical["PatientID"].str.strip()
            clinical = clinical.drop_duplicates("PatientID").set_index("PatientID")
        folders = {p.name: p for p in sorted(root.rglob("LUNG1-*")) if p.is_dir()}
        report.found["patient folders"] = len(folders)
        report.found["clinical rows"] = 0 if clinical is None else len(clinical)
        if clinical is not None:
            report.missing.extend(f"{p}/ (in the clinical CSV)" for p in sorted(set(clinical.index) - set(folders)))
        series = patient_ct_series(folders, report)
        man, rows = [], []
        for patient, (folder, uid) in sorted(series.items()):
            if clinical is None or patient not in clinical.index:
                report.skip(patient, "not in the clinical CSV")
                continue
            c = clinical.loc[patient]
            time, event = pd.to_numeric(c["Survival.time"], errors="coerce"), pd.to_numeric(
                c["deadstatus.event"], errors="coerce")
            if pd.isna(time) or pd.isna(event) or time < 0:
                report.skip(patient, "no survival time / event in the clinical CSV")
                continue
            man.append({"id": patient, "path": str(folder), "series_uid": uid})
            rows.append({"id": patient, "patient_id": patient, "survival_time": float(time), "event": int(event),
                         "age": pd.to_numeric(c.get("age"), errors="coerce"), "gender": c.get("gender"),
                         "histology": c.get("Histology"), "overall_stage": c.get("Overall.Stage")})
        table = pd.DataFrame(rows)
        manifest = pd.DataFrame(man, columns=["id", "path", "series_uid"])
        if table.empty:
            return Prepared(manifest, table, {})
        table.insert(2, "split", patient_splits(list(table["id"]), list(table["patient_id"]), report, seed=seed,
                                                stratify=list(table["gender"].fillna("unknown"))).to_numpy())
        counts = {"events": int(table["event"].sum()), "median_time_days": float(table["survival_time"].median())}
        return Prepared(manifest, table, _suite(), counts)


def _suite() -> dict[str, Any]:
    return {
        "description": "NSCLC-Radiomics: overall survival (days) from the pre-treatment CT",
        **SUITE_COMMON,
        "head_defaults": {"mlp": survival_heads()["mlp"], "attentive": survival_heads()["attentive"]},
        "tasks": [{"name": "overall_survival", "task": "survival", "target": ["survival_time", "event"],
                   "probes": ["mlp", "attentive:patch", "cox"], "hparams": {"horizons": [365, 730, 1095]}}],
    }


RECIPE = NSCLCRadiomicsRecipe()
