"""Merlin abdominal CT dataset (Stanford AIMI): 25,494 abdominal CT studies with radiology reports
and 30 findings labelled from them (Blankemeier et al. 2024).

Labels: ``zero_shot_findings_disease_cls.csv`` — ``study id`` and one column per finding, values 1
(present), 0 (absent) and −1 (uncertain). The paper maps −1 to 0 (``--set uncertain=negative``,
the default); ``--set uncertain=missing`` leaves them out of that finding's probe instead.
Splits: the official ``Split`` column of ``reports_final.xlsx`` (train / val / test); reading the
.xlsx needs openpyxl (``pip install "voxelfm[datasets]"``), or put a CSV export
``reports_final.csv`` with the same columns next to it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from voxelfm.datasets._protocol import classification_suite
from voxelfm.datasets._tables import read_official_csv
from voxelfm.datasets.recipe import Prepared, PrepareReport, Recipe, RecipeOption
from voxelfm.errors import VoxelFMError

__all__ = ["RECIPE", "MerlinRecipe", "FINDINGS"]

#: the 30 finding columns of zero_shot_findings_disease_cls.csv, as published.
FINDINGS: tuple[str, ...] = (
    "submucosal_edema", "renal_hypodensities", "aortic_valve_calcification", "coronary_calcification", "thrombosis",
    "metastatic_disease", "pancreatic_atrophy", "renal_cyst", "osteopenia", "surgically_absent_gallbladder",
    "atelectasis", "abdominal_aortic_aneurysm", "anasarca", "hiatal_hernia", "lymphadenopathy", "prostatomegaly",
    "biliary_ductal_dilation", "cardiomegaly", "splenomegaly", "hepatomegaly", "atherosclerosis", "ascites",
    "pleural_effusion", "hepatic_steatosis", "appendicitis", "gallstones", "hydronephrosis", "bowel_obstruction",
    "free_air", "fracture",
)
_SPLITS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


def _read_reports(root: Path, report: PrepareReport) -> pd.DataFrame | None:
    csv, xlsx = root / "reports_final.csv", root / "reports_final.xlsx"
    if csv.is_file():
        df = read_official_csv(csv, ("study id", "Split"))
    elif xlsx.is_file():
        try:
            df = pd.read_excel(xlsx, dtype=str)
        except ImportError:
            raise VoxelFMError("reading reports_final.xlsx needs openpyxl: pip install \"voxelfm[datasets]\" (or save "
                               "it as reports_final.csv next to it)") from None
        df.columns = [str(c).strip() for c in df.columns]
        if "study id" not in df.columns or "Split" not in df.columns:
            raise VoxelFMError(f"{xlsx}: no 'study id' / 'Split' column (columns: {', '.join(df.columns[:10])})")
    else:
        report.missing.append("reports_final.xlsx")
        return None
    df["study id"] = df["study id"].astype(str).str.strip()
    return df.drop_duplicates("study id").set_index("study id")


class MerlinRecipe(Recipe):
    name = "merlin"
    title = "Merlin abdominal CT"
    description = "25,494 abdominal CT studies with reports: 30 binary findings with the official train/val/test split"
    licence = ("Stanford AIMI dataset research use agreement (non-commercial research; register on the AIMI "
               "portal); cite Blankemeier et al., Merlin: a vision language foundation model for 3D CT, 2024")
    url = "https://aimi.stanford.edu (Stanford AIMI shared datasets: Merlin)"
    layout = """\
ROOT/  (merlinabdominalctdataset/ as downloaded from the AIMI portal)
  merlin_data/<study id>.nii.gz
  zero_shot_findings_disease_cls.csv   study id + the 30 findings (1 / 0 / -1 uncertain)
  reports_final.xlsx                   study id, Findings, Split (train/val/test), ... (or reports_final.csv)"""
    paper = ("30 binary findings, one probe per finding with the official split; MLP on CLS and attentive pooling "
             "on patch tokens; uncertain (-1) counted as negative; AUROC per finding")
    version = "1"
    options = {"uncertain": RecipeOption("negative", "how to read -1 (uncertain) labels: negative (the paper) or "
                                         "missing", ("negative", "missing"))}

    def build(self, root: Path, out: Path, report: PrepareReport, *, seed: int, **options: Any) -> Prepared:
        vols = root / "merlin_data"
        if not vols.is_dir():
            report.missing.append("merlin_data/")
        labels_csv = root / "zero_shot_findings_disease_cls.csv"
        if not labels_csv.is_file():
            report.missing.append("zero_shot_findings_disease_cls.csv")
        reports = _read_reports(root, report)
        empty = Prepared(pd.DataFrame(columns=["id", "path"]), pd.DataFrame(), {})
        if not labels_csv.is_file() or reports is None or not vols.is_dir():
            return empty
        findings = read_official_csv(labels_csv, ("study id", *FINDINGS))
        findings["study id"] = findings["study id"].str.strip()
        findings = findings.drop_duplicates("study id").set_index("study id")
        report.found.update({"label rows": len(findings), "report rows": len(reports)})
        files = {p.name[: -len(".nii.gz")]: p for p in vols.glob("*.nii.gz")}
        report.found["volumes"] = len(files)
        man, lab = [], []
        for sid in sorted(files):
            if sid not in findings.index:
                report.skip(sid, "no label row")
                continue
            split = _SPLITS.get(str(reports["Split"].get(sid, "")).strip().lower()) if sid in reports.index else None
            if split is None:
                report.skip(sid, "no official split")
                continue
            values = pd.to_numeric(findings.loc[sid, list(FINDINGS)], errors="coerce").to_numpy(dtype=float)
            values[values == -1] = 0.0 if options["uncertain"] == "negative" else np.nan
            row = {"id": sid, "patient_id": sid, "split": split, **dict(zip(FINDINGS, values))}
            lab.append(row)
            man.append({"id": sid, "path": str(files[sid])})
        report.found["labelled studies without a volume"] = len(set(findings.index) - set(files))
        table = pd.DataFrame(lab)
        if not table.empty and "Findings" in reports.columns:
            rep = table[["id", "patient_id", "split"]].copy()
            rep["report"] = reports.reindex(rep["id"])["Findings"].to_numpy()
            rep.to_csv(out / "reports.csv", index=False, lineterminator="\n")
        tasks = [{"name": f, "task": "binary", "target": f, "probes": ["mlp", "attentive:patch"]} for f in FINDINGS]
        counts = {"positives": {f: int(np.nansum(table[f])) for f in FINDINGS}} if not table.empty else {}
        return Prepared(pd.DataFrame(man, columns=["id", "path"]), table, classification_suite(
            "Merlin: 30 abdominal findings (official split)", tasks), counts)


RECIPE = MerlinRecipe()
