"""Mediastinal lymph nodes: TCIA's *CT Lymph Nodes* collection (Roth et al. 2014; DICOM-SEG masks
added 2023), 90 mediastinal (``MED_LYMPH_*``) and 86 abdominal (``ABD_LYMPH_*``) contrast CTs with
voxel-wise lymph-node segmentations.

The recipe reads the NBIA Data Retriever download: ``metadata.csv`` lists every series with
``Series UID``, ``Subject ID``, ``Modality`` (CT / SEG) and ``File Location``; per subject the CT
series is read with SimpleITK and its SEG is put on the CT grid — a DICOM Segmentation object
frame by frame from its own plane positions (GDCM, which the paper's script used, stacks only the
frames present, 0/255, with a spacing of its own), a legacy mask image series by resampling —
binarised and written as ``labels/<subject>.nii.gz``. Only the mediastinal subjects by default
(``--set subset=all`` adds the abdominal ones). A subject whose CT or SEG cannot be read is
skipped with the reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from voxelfm.datasets._mask_resample import dicom_seg_on_reference, is_dicom_seg, read_sitk, write_label_map
from voxelfm.datasets._protocol import segmentation_prepared
from voxelfm.datasets._tables import read_official_csv
from voxelfm.datasets.recipe import Prepared, PrepareReport, Recipe, RecipeOption

__all__ = ["RECIPE", "MediastinalLNRecipe"]

CLASSES = {0: "background", 1: "lymph node"}


def _location(root: Path, loc: str) -> Path:
    p = Path(str(loc).strip().replace("\\", "/"))
    return p if p.is_absolute() else root / p


class MediastinalLNRecipe(Recipe):
    name = "mediastinal-ln"
    title = "Mediastinal lymph nodes (TCIA CT Lymph Nodes)"
    description = ("contrast chest CT with voxel-wise mediastinal lymph-node masks (TCIA CT Lymph Nodes, DICOM-SEG): "
                   "binary lymph-node segmentation")
    licence = "CC BY 3.0 (TCIA); cite Roth et al., MICCAI 2014, and the collection as its TCIA page asks"
    url = "https://www.cancerimagingarchive.net/collection/ct-lymph-nodes/"
    layout = """\
ROOT/  (the NBIA Data Retriever download folder, manifest-<number>/)
  metadata.csv   Series UID, Collection, Subject ID, Study UID, Modality (CT / SEG), ..., File Location
  CT Lymph Nodes/<Subject ID>/<study folder>/<series folder>/*.dcm   (as File Location says)"""
    paper = ("binary lymph-node segmentation with the patch-token decoder; 70/15/15 split by patient, seed 4; macro "
             "Dice (the paper trained on 16 isotropic 112-voxel crops per scan covering every node; this recipe "
             "keeps the whole scans)")
    version = "1"
    options = {"subset": RecipeOption("mediastinal", "mediastinal subjects only (MED_LYMPH_*) or all",
                                      ("mediastinal", "all"))}

    def build(self, root: Path, out: Path, report: PrepareReport, *, seed: int, **options: Any) -> Prepared:
        meta_csv = root / "metadata.csv"
        empty = Prepared(pd.DataFrame(columns=["id", "path", "series_uid"]), pd.DataFrame(), {})
        if not meta_csv.is_file():
            report.missing.append("metadata.csv")
            return empty
        meta = read_official_csv(meta_csv, ("Series UID", "Subject ID", "Modality", "File Location"))
        if options["subset"] == "mediastinal":
            meta = meta[meta["Subject ID"].str.upper().str.startswith("MED")]
        report.found["subjects"] = meta["Subject ID"].nunique()
        man, lab, voxels = [], [], 0
        for subject, g in meta.groupby("Subject ID", sort=True):
            ct, seg = g[g["Modality"] == "CT"], g[g["Modality"] == "SEG"]
            if ct.empty or seg.empty:
                report.skip(subject, "no CT series" if ct.empty else "no SEG series")
                continue
            ct_dir, seg_dir = _location(root, ct["File Location"].iloc[0]), _location(root, seg["File Location"].iloc[0])
            if not ct_dir.is_dir() or not seg_dir.is_dir():
                report.skip(subject, "series folder not downloaded")
                continue
            try:
                ct_img = read_sitk(ct_dir)
                seg_file = is_dicom_seg(seg_dir)
                mask = dicom_seg_on_reference(seg_file, ct_img) if seg_file is not None else read_sitk(seg_dir)
                counts = write_label_map(mask, ct_img, out / "labels" / f"{subject}.nii.gz", binary=True)
            except Exception as exc:  # noqa: BLE001 - one unreadable subject is skipped, not fatal
                report.skip(subject, f"unreadable CT or SEG ({type(exc).__name__})")
                continue
            if counts.get(1, 0) == 0:
                report.skip(subject, "empty mask on the CT grid")
                continue
            voxels += counts[1]
            man.append({"id": subject, "path": str(ct_dir), "series_uid": ct["Series UID"].iloc[0]})
            lab.append({"id": subject, "patient_id": subject, "label_map": f"labels/{subject}.nii.gz",
                        "node_voxels": counts[1]})
        return segmentation_prepared(pd.DataFrame(man, columns=["id", "path", "series_uid"]), lab, CLASSES, out=out,
                                     report=report, seed=seed, description="Mediastinal lymph-node segmentation",
                                     name="lymph_nodes", counts={"node_voxels": voxels})


RECIPE = MediastinalLNRecipe()
