"""RSNA-STR Pulmonary Embolism CT (RSPECT): 7,279 CT pulmonary angiography studies of the Kaggle
RSNA STR Pulmonary Embolism Detection challenge (Colak et al. 2021), labelled per image and per exam.

Traps handled:

* ``train.csv`` has one row **per image** (SOPInstanceUID); the exam-level labels
  (``negative_exam_for_pe``, ``rv_lv_ratio_gte_1``, ``leftsided_pe`` ...) are repeated on every row
  of a study. The recipe reduces them to one row per study and checks they agree.
* PE present = ``1 - negative_exam_for_pe``, except that ``indeterminate`` exams (neither negative
  nor positive) have no PE label (left empty, so the PE probe leaves them out).
* The scans are DICOM folders ``train/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``;
  a series with fewer files than ``train.csv`` lists is skipped as incomplete.
* There are no patient ids in the release: a study is taken as a patient.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from voxelfm.datasets._protocol import classification_suite
from voxelfm.datasets._tables import patient_splits, read_official_csv
from voxelfm.datasets.recipe import Prepared, PrepareReport, Recipe

__all__ = ["RECIPE", "RSNAPERecipe", "EXAM_LABELS"]

#: exam-level columns of train.csv, as published (constant within a study).
EXAM_LABELS: tuple[str, ...] = (
    "negative_exam_for_pe", "indeterminate", "chronic_pe", "acute_and_chronic_pe", "central_pe", "leftsided_pe",
    "rightsided_pe", "rv_lv_ratio_gte_1", "rv_lv_ratio_lt_1", "qa_motion", "qa_contrast", "flow_artifact",
    "true_filling_defect_not_pe",
)
_IDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


class RSNAPERecipe(Recipe):
    name = "rsna-pe"
    title = "RSNA-STR Pulmonary Embolism CT (RSPECT)"
    description = ("7,279 CT pulmonary angiography studies with exam-level PE labels (Kaggle RSNA STR PE "
                   "Detection): PE present / absent per study, plus RV/LV ratio, location and chronicity labels")
    licence = ("RSNA-STR PE CT (RSPECT) dataset terms: non-commercial research and education only, no attempt to "
               "identify subjects, cite Colak et al., Radiology: Artificial Intelligence 2021;3(2):e200254; Kaggle "
               "competition rules to download")
    url = "https://www.kaggle.com/c/rsna-str-pulmonary-embolism-detection/data"
    layout = """\
ROOT/  (the Kaggle competition download, unzipped)
  train.csv   one row per image: StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID, pe_present_on_image,
              negative_exam_for_pe, qa_motion, qa_contrast, flow_artifact, rv_lv_ratio_gte_1, rv_lv_ratio_lt_1,
              leftsided_pe, chronic_pe, true_filling_defect_not_pe, rightsided_pe, acute_and_chronic_pe,
              central_pe, indeterminate
  train/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm
  (test/ has no labels and is not used)"""
    paper = ("binary PE classification per study; 70/15/15 random split (seed 4); MLP on CLS and attentive pooling "
             "on patch tokens; data-fraction experiments with 20/40/60/80/100 % of the training studies; AUROC")
    version = "1"

    def build(self, root: Path, out: Path, report: PrepareReport, *, seed: int, **options: Any) -> Prepared:
        csv = root / "train.csv"
        if not csv.is_file():
            report.missing.append("train.csv")
            return Prepared(pd.DataFrame(columns=["id", "path", "series_uid"]), pd.DataFrame(), {})
        df = read_official_csv(csv, (*_IDS, "pe_present_on_image", *EXAM_LABELS), dtype=None)
        report.found["image rows"] = len(df)
        grouped = df.groupby(["StudyInstanceUID", "SeriesInstanceUID"], sort=True)
        report.found["studies"] = df["StudyInstanceUID"].nunique()
        man, lab = [], []
        for (study, series), g in grouped:
            study, series = str(study), str(series)
            folder = root / "train" / study / series
            if not folder.is_dir():
                report.skip(study, "series folder not downloaded")
                continue
            n_files = sum(1 for p in folder.iterdir() if p.suffix.lower() == ".dcm")
            if n_files < len(g):
                report.skip(study, "incomplete series (fewer .dcm files than train.csv lists)")
                continue
            exam = g[list(EXAM_LABELS)]
            if (exam.nunique() > 1).any():
                report.skip(study, "exam-level labels differ between the images of the study")
                continue
            e = exam.iloc[0].astype(int)
            row = {"id": study, "patient_id": study, "series_uid": series, "n_images": len(g),
                   "pe": np.nan if e["indeterminate"] else float(1 - e["negative_exam_for_pe"]),
                   "pe_image_fraction": float(g["pe_present_on_image"].mean())}
            row.update({c: int(e[c]) for c in EXAM_LABELS})
            lab.append(row)
            man.append({"id": study, "path": str(folder), "series_uid": series})
        manifest = pd.DataFrame(man, columns=["id", "path", "series_uid"])
        table = pd.DataFrame(lab)
        if table.empty:
            return Prepared(manifest, table, {})
        split = patient_splits(list(table["id"]), list(table["patient_id"]), report, seed=seed,
                               stratify=list(table["pe"].fillna(-1).astype(int)))
        table.insert(2, "split", split.to_numpy())
        counts = {"pe_positive": int((table["pe"] == 1).sum()), "pe_negative": int((table["pe"] == 0).sum()),
                  "indeterminate": int(table["pe"].isna().sum())}
        tasks = [{"name": "pe", "task": "binary", "target": "pe", "probes": ["mlp", "attentive:patch"],
                  "fractions": [0.2, 0.4, 0.6, 0.8, 1.0]}]
        return Prepared(manifest, table, classification_suite(
            "RSNA-STR PE: pulmonary embolism present per study, with training-data fractions", tasks), counts)


RECIPE = RSNAPERecipe()
