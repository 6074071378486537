"""Mycobacterial lung disease: chest CTs of nontuberculous mycobacterial (NTM) lung disease and
tuberculosis (TB) as NIfTI files, published on Kaggle as ``damianhan/nifti-dataset`` (version 5 is the
one the paper used).

Trap handled: the files are not in Hounsfield units but **windowed to [0, 1]** (centre −600,
width 1500). The recipe writes the inverse as reading overrides into the manifest
(``override_rescale_slope`` 1500, ``override_rescale_intercept`` −1350: HU = v · 1500 − 1350, as the
paper's ``load_mbnifti``), so every reader gets HU; the HU window of the preprocessing then clips to
[−1000, 1900] as the paper did.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from voxelfm.datasets._protocol import classification_suite
from voxelfm.datasets._tables import patient_splits
from voxelfm.datasets.recipe import Prepared, PrepareReport, Recipe

__all__ = ["RECIPE", "MycobacterialRecipe", "WINDOW_CENTRE", "WINDOW_WIDTH"]

WINDOW_CENTRE, WINDOW_WIDTH = -600.0, 1500.0
#: folder → label (TB = 1), with the folder names exactly as published
_FOLDERS = {"NTMNiFTi": 0, "TBNifTI": 1}


def _find_base(root: Path) -> Path | None:
    """The folder holding NTMNiFTi/ and TBNifTI/ (ROOT itself, or kagglehub's versions/<n>/ below it)."""
    if any((root / f).is_dir() for f in _FOLDERS):
        return root
    found = sorted({p.parent for f in _FOLDERS for p in root.glob(f"**/{f}") if p.is_dir()})
    return found[-1] if found else None


class MycobacterialRecipe(Recipe):
    name = "mycobacterial"
    title = "Mycobacterial lung disease (NTM vs TB)"
    description = ("chest CT NIfTI volumes of nontuberculous mycobacterial lung disease and tuberculosis: "
                   "binary NTM (0) vs TB (1) classification")
    licence = "as stated on the Kaggle dataset page (damianhan/nifti-dataset); research use, cite the source"
    url = "https://www.kaggle.com/datasets/damianhan/nifti-dataset"
    layout = """\
ROOT/  (the Kaggle download; kagglehub's .../nifti-dataset/versions/5/ also works)
  NTMNiFTi/<name>.nii   nontuberculous mycobacterial lung disease (label 0)
  TBNifTI/<name>.nii    tuberculosis (label 1)
(intensities windowed to [0, 1], centre -600 / width 1500: read back to HU through the manifest overrides)"""
    paper = "binary NTM vs TB (AUROC); 70/15/15 split stratified by label, seed 4; MLP on CLS, attentive on patch tokens"
    version = "1"

    def build(self, root: Path, out: Path, report: PrepareReport, *, seed: int, **options: Any) -> Prepared:
        base = _find_base(root)
        cols = ["id", "path", "override_rescale_slope", "override_rescale_intercept"]
        if base is None:
            report.missing.extend(f"{f}/" for f in _FOLDERS)
            return Prepared(pd.DataFrame(columns=cols), pd.DataFrame(), {})
        man, lab = [], []
        for folder, label in _FOLDERS.items():
            if not (base / folder).is_dir():
                report.missing.append(f"{folder}/")
                continue
            files = sorted(p for p in (base / folder).iterdir() if p.name.endswith((".nii", ".nii.gz")))
            report.found[folder] = len(files)
            for p in files:
                stem = p.name.removesuffix(".gz").removesuffix(".nii")
                sid = f"{'tb' if label else 'ntm'}_{stem}"
                man.append({"id": sid, "path": str(p), "override_rescale_slope": WINDOW_WIDTH,
                            "override_rescale_intercept": WINDOW_CENTRE - WINDOW_WIDTH / 2})
                lab.append({"id": sid, "patient_id": sid, "tb": label, "group": "TB" if label else "NTM"})
        manifest = pd.DataFrame(man, columns=cols)
        table = pd.DataFrame(lab)
        if table.empty:
            return Prepared(manifest, table, {})
        split = patient_splits(list(table["id"]), list(table["patient_id"]), report, seed=seed,
                               stratify=list(table["tb"]))
        table.insert(2, "split", split.to_numpy())
        tasks = [{"name": "tb_vs_ntm", "task": "binary", "target": "tb", "probes": ["mlp", "attentive:patch"]}]
        return Prepared(manifest, table, classification_suite("Mycobacterial: TB (1) vs NTM (0)", tasks),
                        {"tb": int(table["tb"].sum()), "ntm": int((table["tb"] == 0).sum())})


RECIPE = MycobacterialRecipe()
