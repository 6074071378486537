"""iCTCF (HUST-19): chest CT of 1,521 patients with pneumonia (incl. COVID-19) from Wuhan with 130
clinical features and SARS-CoV-2 status (Ning et al., Nature Biomedical Engineering 2020).

Layout: the recipe expects what the paper's evaluation scripts read — the clinical table
``clinical.csv`` with the portal's column names and one DICOM folder per patient under ``ct/``
(``Patient 1`` or ``Patient_1``). The iCTCF portal (http://ictcf.biocuckoo.cn) serves the CT per
patient and the clinical features as tables; its exact archive names could not be confirmed here,
so put the files in this layout (docs/datasets.md).

Labels, as the paper: ``covid`` = SARS-CoV-2 nucleic acid test ``Positive`` (``Negative`` → 0, other
values left empty), ``severity`` = ``Morbidity outcome`` in {Severe, Critically ill}; lab values
HGB, WBC, CRP, PCT, CK as regression targets, both in their units and z-scored over the whole table
(``*_z``, the paper's units: MAE in standard deviations).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from voxelfm.datasets._protocol import REGRESSION_HPARAMS, classification_suite
from voxelfm.datasets._tables import patient_splits, read_official_csv, snake_case
from voxelfm.datasets.recipe import Prepared, PrepareReport, Recipe

__all__ = ["RECIPE", "ICTCFRecipe", "LAB_VALUES"]

LAB_VALUES: tuple[str, ...] = ("HGB", "WBC", "CRP", "PCT", "CK")
_SEVERE = ("Severe", "Critically ill")
_COLUMNS = ("ID", "SARS-CoV-2 nucleic acids", "Morbidity outcome", *LAB_VALUES)
_FRACTIONS = [0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0]


def _dicom_folder(ct: Path, pid: str) -> Path | None:
    for name in (pid, pid.replace(" ", "_")):
        if (ct / name).is_dir():
            return ct / name
    return None


class ICTCFRecipe(Recipe):
    name = "ictcf"
    title = "iCTCF (HUST-19)"
    description = ("chest CT of 1,521 pneumonia patients (Wuhan, 2020) with clinical features: COVID-19 "
                   "(nucleic acid test) and severity classification, HGB/WBC/CRP/PCT/CK regression")
    licence = "free for research (iCTCF terms of use: cite Ning et al., Nat. Biomed. Eng. 4, 1197-1207 (2020))"
    url = "http://ictcf.biocuckoo.cn"
    layout = """\
ROOT/
  clinical.csv      one row per patient; columns used: ID ("Patient 1"), SARS-CoV-2 nucleic acids
                    (Positive/Negative), Morbidity outcome (e.g. Mild, Regular, Severe, Critically ill),
                    HGB, WBC, CRP, PCT, CK
  ct/<ID>/*.dcm     one DICOM folder per patient ("Patient 1" or "Patient_1")
(the layout of the paper's scripts; the portal's own archive names are not confirmed, see docs)"""
    paper = ("COVID-19 and severity classification (AUROC) and lab-value regression (MAE of z-scored values); "
             "70/15/15 random split (seed 4); training fractions 1.0/0.8/0.6/0.4/0.2/0.1/0.05")
    version = "1"

    def build(self, root: Path, out: Path, report: PrepareReport, *, seed: int, **options: Any) -> Prepared:
        csv, ct = root / "clinical.csv", root / "ct"
        for p, what in ((csv, "clinical.csv"), (ct, "ct/")):
            if not p.exists():
                report.missing.append(what)
        if not csv.is_file():
            return Prepared(pd.DataFrame(columns=["id", "path"]), pd.DataFrame(), {})
        df = read_official_csv(csv, _COLUMNS)
        report.found["clinical rows"] = len(df)
        labs = {c: pd.to_numeric(df[c], errors="coerce") for c in LAB_VALUES}
        man, lab = [], []
        for i, r in df.iterrows():
            pid = str(r["ID"]).strip()
            folder = _dicom_folder(ct, pid) if ct.is_dir() else None
            if folder is None:
                report.skip(pid, "no CT folder")
                continue
            if not any(p.suffix.lower() == ".dcm" for p in folder.rglob("*")):
                report.skip(pid, "CT folder holds no .dcm file")
                continue
            sid = pid.replace(" ", "_")
            test = str(r["SARS-CoV-2 nucleic acids"]).strip()
            outcome = r["Morbidity outcome"]
            row = {"id": sid, "patient_id": sid,
                   "covid": 1.0 if test == "Positive" else (0.0 if test == "Negative" else np.nan),
                   "severity": np.nan if pd.isna(outcome) else float(str(outcome).strip() in _SEVERE),
                   "morbidity_outcome": None if pd.isna(outcome) else str(outcome).strip()}
            row.update({snake_case(c): labs[c].iloc[i] for c in LAB_VALUES})
            lab.append(row)
            man.append({"id": sid, "path": str(folder)})
        manifest = pd.DataFrame(man, columns=["id", "path"])
        table = pd.DataFrame(lab)
        if table.empty:
            return Prepared(manifest, table, {})
        for c in LAB_VALUES:  # z-scored over the whole table (population std), as the paper
            v = table[snake_case(c)]
            table[f"{snake_case(c)}_z"] = (v - v.mean()) / v.std(ddof=0)
        split = patient_splits(list(table["id"]), list(table["patient_id"]), report, seed=seed)
        table.insert(2, "split", split.to_numpy())
        tasks: list[dict[str, Any]] = [
            {"name": n, "task": "binary", "target": n, "probes": ["mlp", "attentive:patch"], "fractions": _FRACTIONS}
            for n in ("covid", "severity")]
        tasks += [{"name": snake_case(c), "task": "regression", "target": f"{snake_case(c)}_z",
                   "probes": ["mlp", "attentive:patch"], "hparams": dict(REGRESSION_HPARAMS)} for c in LAB_VALUES]
        counts = {"covid_positive": int((table["covid"] == 1).sum()), "severe": int((table["severity"] == 1).sum()),
                  **{f"{snake_case(c)}_values": int(table[snake_case(c)].notna().sum()) for c in LAB_VALUES}}
        return Prepared(manifest, table, classification_suite(
            "iCTCF: COVID-19 and severity classification, lab-value regression (z-scored)", tasks), counts)


RECIPE = ICTCFRecipe()
