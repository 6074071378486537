"""AirRC: airway, artery and vein annotations of LUNA16 chest CTs — four classes (airway lumen,
airway wall, pulmonary veins, pulmonary arteries) plus background, one NIfTI label map per LUNA16
scan named by its ``seriesuid`` (``labelsTr/<seriesuid>.nii.gz``, the layout the paper's script
reads).

The CT scans are LUNA16's ``subset*/<seriesuid>.mhd`` (+ ``.raw``): under ROOT, or under the
folder given with ``--set luna16_root=DIR``. Each label map is resampled onto its CT's grid
(nearest neighbour, patient space — the paper resampled the labels onto the 1 mm CT the same way)
and written as ``labels/<seriesuid>.nii.gz``. The class names are those of the paper's
description in the order of the label values 1-4; the AirRC release notes were not available to
confirm that order (``classes.json`` records it, ``prepare.json`` the voxel count per value).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from voxelfm.datasets._mask_resample import read_sitk, write_label_map
from voxelfm.datasets._protocol import segmentation_prepared
from voxelfm.datasets.recipe import Prepared, PrepareReport, Recipe, RecipeOption

__all__ = ["RECIPE", "AirRCRecipe", "CLASSES"]

CLASSES = {0: "background", 1: "airway lumen", 2: "airway wall", 3: "pulmonary veins", 4: "pulmonary arteries"}


class AirRCRecipe(Recipe):
    name = "airrc"
    title = "AirRC (airways and vessels of LUNA16 scans)"
    description = ("airway lumen / airway wall / pulmonary vein / pulmonary artery label maps of LUNA16 chest CTs: "
                   "5-class segmentation (class order not confirmed against the release notes)")
    licence = "labels: as stated by the AirRC release; CT scans: LUNA16 (CC BY 4.0, LIDC-IDRI terms)"
    url = "https://luna16.grand-challenge.org/Data/ (CT scans); the AirRC label release for the labels"
    layout = """\
ROOT/
  labelsTr/<seriesuid>.nii.gz       one label map per scan (0 background, 1-4 the classes)
  subset0/ ... subset9/<seriesuid>.mhd + .raw   the LUNA16 CT scans (or under --set luna16_root=DIR)"""
    paper = ("5-class segmentation with the patch-token decoder; 70/15/15 split by scan, seed 4; macro Dice (the paper "
             "trained on 16 random crops per scan resized to 112 voxels; this recipe keeps the whole scans)")
    version = "1"
    options = {"luna16_root": RecipeOption("", "folder holding LUNA16's subset*/ (default: ROOT)")}

    def build(self, root: Path, out: Path, report: PrepareReport, *, seed: int, **options: Any) -> Prepared:
        empty = Prepared(pd.DataFrame(columns=["id", "path"]), pd.DataFrame(), {})
        labels = root / "labelsTr"
        if not labels.is_dir():
            report.missing.append("labelsTr/")
            return empty
        luna = Path(options["luna16_root"]).expanduser() if options["luna16_root"] else root
        cts = {p.stem: p for p in luna.glob("subset*/*.mhd")}
        if not cts:
            report.missing.append(f"subset*/<seriesuid>.mhd under {luna}")
        segs = sorted(labels.glob("*.nii.gz"))
        report.found.update({"label maps": len(segs), "LUNA16 scans": len(cts)})
        man, lab, per_class = [], [], {v: 0 for v in CLASSES}
        for seg in segs:
            uid = seg.name[: -len(".nii.gz")]
            if uid not in cts:
                report.skip(uid, "no LUNA16 scan for the label map")
                continue
            try:
                counts = write_label_map(read_sitk(seg), read_sitk(cts[uid]), out / "labels" / f"{uid}.nii.gz")
            except Exception as exc:  # noqa: BLE001 - one unreadable pair is skipped, not fatal
                report.skip(uid, f"unreadable scan or label map ({type(exc).__name__})")
                continue
            unknown = sorted(set(counts) - set(CLASSES))
            if unknown:
                report.skip(uid, f"label values {unknown} outside 0-4")
                continue
            for v, n in counts.items():
                per_class[v] += n
            man.append({"id": uid, "path": str(cts[uid])})
            lab.append({"id": uid, "patient_id": uid, "label_map": f"labels/{uid}.nii.gz"})
        return segmentation_prepared(pd.DataFrame(man, columns=["id", "path"]), lab, CLASSES, out=out, report=report,
                                     seed=seed, description="AirRC: airways and pulmonary vessels",
                                     name="airways_vessels",
                                     counts={"voxels_per_class": {CLASSES[v]: n for v, n in per_class.items()}})


RECIPE = AirRCRecipe()
