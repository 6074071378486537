"""TotalSegmentator v2: 1,228 CTs with 117 anatomical structures, one mask file per structure
(Wasserthal et al. 2023).

Traps handled:

* Every structure is its own file ``<subject>/segmentations/<name>.nii.gz``. The recipe merges
  them into one uint8 label map per scan in the **fixed class order** of TotalSegmentator's
  ``class_map["total"]`` (:data:`CLASSES`, label 1 = spleen ... 117 = costal_cartilages; where
  masks overlap the later class wins, as the dataset authors' nnU-Net conversion), written with
  the CT's affine, plus ``classes.json``. A missing mask file is an absent structure.
* ``meta.csv`` is **semicolon**-separated (``image_id;age;gender;institute;study_type;split;...``);
  its ``split`` column (train/val/test) is the official split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from voxelfm.datasets._labelmaps import merge_masks, run_jobs, write_classes
from voxelfm.datasets._tables import patient_splits, read_official_csv
from voxelfm.datasets.protocols import segmentation_suite
from voxelfm.datasets.recipe import Prepared, PrepareReport, Recipe, RecipeOption

__all__ = ["RECIPE", "TotalSegmentatorRecipe", "CLASSES"]

_VERTEBRAE = ("S1", "L5", "L4", "L3", "L2", "L1", "T12", "T11", "T10", "T9", "T8", "T7", "T6", "T5", "T4", "T3",
              "T2", "T1", "C7", "C6", "C5", "C4", "C3", "C2", "C1")
#: label value → structure, TotalSegmentator v2 ``class_map["total"]`` (117 structures).
CLASSES: dict[int, str] = dict(enumerate((
    "spleen", "kidney_right", "kidney_left", "gallbladder", "liver", "stomach", "pancreas", "adrenal_gland_right",
    "adrenal_gland_left", "lung_upper_lobe_left", "lung_lower_lobe_left", "lung_upper_lobe_right",
    "lung_middle_lobe_right", "lung_lower_lobe_right", "esophagus", "trachea", "thyroid_gland", "small_bowel",
    "duodenum", "colon", "urinary_bladder", "prostate", "kidney_cyst_left", "kidney_cyst_right", "sacrum",
    *(f"vertebrae_{v}" for v in _VERTEBRAE),
    "heart", "aorta", "pulmonary_vein", "brachiocephalic_trunk", "subclavian_artery_right", "subclavian_artery_left",
    "common_carotid_artery_right", "common_carotid_artery_left", "brachiocephalic_vein_left",
    "brachiocephalic_vein_right", "atrial_appendage_left", "superior_vena_cava", "inferior_vena_cava",
    "portal_vein_and_splenic_vein", "iliac_artery_left", "iliac_artery_right", "iliac_vena_left", "iliac_vena_right",
    "humerus_left", "humerus_right", "scapula_left", "scapula_right", "clavicula_left", "clavicula_right",
    "femur_left", "femur_right", "hip_left", "hip_right", "spinal_cord", "gluteus_maximus_left",
    "gluteus_maximus_right", "gluteus_medius_left", "gluteus_medius_right", "gluteus_minimus_left",
    "gluteus_minimus_right", "autochthon_left", "autochthon_right", "iliopsoas_left", "iliopsoas_right", "brain",
    "skull", *(f"rib_left_{i}" for i in range(1, 13)), *(f"rib_right_{i}" for i in range(1, 13)), "sternum",
    "costal_cartilages",
), start=1))
assert len(CLASSES) == 117


def _merge(subject: str, ct: str, seg_dir: str, out: str) -> dict[str, Any]:
    masks = [(v, Path(seg_dir) / f"{name}.nii.gz") for v, name in CLASSES.items()]
    return merge_masks(Path(ct), masks, Path(out))


class TotalSegmentatorRecipe(Recipe):
    name = "totalsegmentator"
    title = "TotalSegmentator"
    description = "1,228 CTs (v2.0.1) with 117 anatomical structures: 118-class segmentation (one label map per scan)"
    licence = "CC BY 4.0 (cite Wasserthal et al., Radiology: Artificial Intelligence 2023)"
    url = "https://doi.org/10.5281/zenodo.6802613 (Totalsegmentator_dataset_v201.zip)"
    layout = """\
ROOT/   (the unzipped Totalsegmentator_dataset_v201)
  meta.csv                         semicolon-separated: image_id;age;gender;institute;study_type;split;...
  s0000/ct.nii.gz
  s0000/segmentations/spleen.nii.gz, kidney_right.nii.gz, ... costal_cartilages.nii.gz   (117 binary masks)
  s0001/ ..."""
    paper = ("117 structures + background (118 classes), patch-token decoder (3 upsampling steps) on 112³ cubes "
             "(sliding, stride 56, cubes with >= 15 % labelled voxels), AdamW, warm-up 1e-4 -> 1e-3 over 20 epochs, "
             "cosine back over 100 (120 epochs), wd 0.01, batch 1 × 16, noise p 0.2 σ 0.1, cross-entropy, "
             "selection on validation macro Dice; split 70/15/15 stratified by study_type")
    version = "1"
    options = {
        "split": RecipeOption("official", "official: meta.csv's split column; study_type: the reference's seeded "
                              "70/15/15 stratified by study_type", ("official", "study_type")),
        "workers": RecipeOption(1, "processes merging masks (each reads up to 117 masks per scan)"),
    }

    def build(self, root: Path, out: Path, report: PrepareReport, *, seed: int, **options: Any) -> Prepared:
        meta_path = root / "meta.csv"
        meta = None
        if meta_path.is_file():
            meta = read_official_csv(meta_path, ("image_id", "split"), sep=";")
            meta["image_id"] = meta["image_id"].str.strip()
            meta = meta.drop_duplicates("image_id").set_index("image_id")
        else:
            report.missing.append("meta.csv")
        subjects = sorted(p.name for p in root.iterdir() if p.is_dir() and (p / "ct.nii.gz").is_file())
        report.found["subjects with ct.nii.gz"] = len(subjects)
        report.found["meta.csv rows"] = 0 if meta is None else len(meta)
        if meta is not None:
            absent = sorted(set(meta.index) - set(subjects))
            report.missing.extend(f"{s}/ct.nii.gz (listed in meta.csv)" for s in absent)
        jobs, rows = [], []
        for s in subjects:
            seg_dir = root / s / "segmentations"
            if not seg_dir.is_dir():
                report.skip(s, "no segmentations/ folder")
                continue
            if meta is None or s not in meta.index:
                report.skip(s, "not in meta.csv (no split)")
                continue
            extra = sorted({p.name[:-7] for p in seg_dir.glob("*.nii.gz")} - set(CLASSES.values()))
            if extra:
                report.notes.append(f"{s}: masks not in the v2 class map ignored: {', '.join(extra[:5])}"
                                    + (" ..." if len(extra) > 5 else ""))
            jobs.append((s, str(root / s / "ct.nii.gz"), str(seg_dir), str(out / "labelmaps" / f"{s}.nii.gz")))
        results = run_jobs(_merge, jobs, workers=int(options["workers"]), desc="totalsegmentator masks")
        man_rows = []
        for (s, ct, _, _), res in zip(jobs, results):
            if isinstance(res, Exception):
                report.skip(s, f"masks could not be merged ({type(res).__name__}: {str(res)[:80]})")
                continue
            if res["shape_mismatch"]:
                report.notes.append(f"{s}: {len(res['shape_mismatch'])} mask(s) on another grid than ct.nii.gz ignored")
            if res["missing_masks"]:
                report.notes.append(f"{s}: {len(res['missing_masks'])} of 117 mask files missing (absent classes)")
            m = meta.loc[s]  # type: ignore[union-attr]
            man_rows.append({"id": s, "path": ct})
            rows.append({"id": s, "patient_id": s, "official_split": str(m["split"]).strip(),
                         "study_type": str(m.get("study_type", "")).strip() if "study_type" in meta.columns else "",
                         "seg_path": f"labelmaps/{s}.nii.gz", "n_classes_present": len(res["classes_present"])})
        table = pd.DataFrame(rows)
        manifest = pd.DataFrame(man_rows, columns=["id", "path"])
        if table.empty:
            return Prepared(manifest, table, {})
        if options["split"] == "official":
            split = table["official_split"].to_numpy()
        else:
            split = _study_type_splits(table, report, seed)
        table.insert(2, "split", split)
        write_classes(out, CLASSES)
        return Prepared(manifest, table, segmentation_suite(
            "TotalSegmentator: 117 structures + background from patch tokens (label maps in labelmaps/)",
            "structures", len(CLASSES) + 1), {"classes": len(CLASSES) + 1})


def _study_type_splits(table: pd.DataFrame, report: PrepareReport, seed: int) -> Any:
    """The reference's split: 70/15/15 stratified by study_type; types with < 20 scans all in train."""
    split = pd.Series("train", index=table.index, dtype=object)
    counts = table["study_type"].value_counts()
    big = table["study_type"].map(counts).fillna(0) >= 20
    if big.any():
        s = patient_splits(list(table.loc[big, "id"]), list(table.loc[big, "patient_id"]), report, seed=seed,
                           stratify=list(table.loc[big, "study_type"]))
        split[big] = s.to_numpy()
    return split.to_numpy()


RECIPE = TotalSegmentatorRecipe()
