"""CT-ORG: 140 CTs with six organ classes — liver, bladder, lungs, kidneys, bone, brain (Rister et
al., Scientific Data 2020).

Traps handled:

* Scans and label maps are pairs ``volume-N.nii.gz`` / ``labels-N.nii.gz`` (N = 0 ... 139) in one
  folder (``OrganSegmentations/`` in the TCIA download); a volume without its labels (or the
  reverse) is skipped and listed.
* The label values are the dataset's own map (:data:`CLASSES`: 1 liver, 2 bladder, 3 lungs,
  4 kidneys, 5 bone, 6 brain); the label maps are used as published (no copy), with
  ``classes.json``.
* The official test set is volumes 0-20 (organs annotated by hand, also the lungs and bones,
  which are partly automatic in the rest); the remaining scans are split 80/20 into train/val
  (seeded).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pandas as pd

from voxelfm.datasets._labelmaps import write_classes
from voxelfm.datasets._tables import patient_splits
from voxelfm.datasets.protocols import segmentation_suite
from voxelfm.datasets.recipe import Prepared, PrepareReport, Recipe, RecipeOption

__all__ = ["RECIPE", "CTOrgRecipe", "CLASSES", "TEST_CASES"]

#: label value → organ, as published.
CLASSES: dict[int, str] = {1: "liver", 2: "bladder", 3: "lungs", 4: "kidneys", 5: "bone", 6: "brain"}
#: the official test set (volume numbers).
TEST_CASES: range = range(0, 21)
_PAIR = re.compile(r"^(volume|labels)-(\d+)\.nii(\.gz)?$")


class CTOrgRecipe(Recipe):
    name = "ct-org"
    title = "CT-ORG"
    description = "140 CTs with six organ classes (liver, bladder, lungs, kidneys, bone, brain): 7-class segmentation"
    licence = "CC BY 3.0 (TCIA; cite Rister et al., Scientific Data 2020, and TCIA)"
    url = "https://www.cancerimagingarchive.net/collection/ct-org/ (DOI 10.7937/tcia.2019.tt7f4v7o)"
    layout = """\
ROOT/   (the TCIA download; the pairs may sit in ROOT/OrganSegmentations/ or any sub-folder)
  volume-0.nii.gz   labels-0.nii.gz
  volume-1.nii.gz   labels-1.nii.gz
  ...
  volume-139.nii.gz labels-139.nii.gz
  labels: 0 background, 1 liver, 2 bladder, 3 lungs, 4 kidneys, 5 bone, 6 brain"""
    paper = ("not one of the paper's evaluation sets (listed with CT-RATE among the field's public 3D CT datasets); "
             "the suite uses the paper's segmentation protocol (patch-token decoder, as for TotalSegmentator) with "
             "7 classes")
    version = "1"
    options = {
        "split": RecipeOption("official", "official: volumes 0-20 test, the rest 80/20 train/val (seeded); random: "
                              "seeded 70/15/15", ("official", "random")),
    }

    def build(self, root: Path, out: Path, report: PrepareReport, *, seed: int, **options: Any) -> Prepared:
        files: dict[str, dict[int, Path]] = {"volume": {}, "labels": {}}
        for p in sorted(root.rglob("*.nii*")):
            m = _PAIR.match(p.name)
            if m:
                files[m.group(1)].setdefault(int(m.group(2)), p)
        report.found["volumes"] = len(files["volume"])
        report.found["label maps"] = len(files["labels"])
        numbers = sorted(set(files["volume"]) | set(files["labels"]))
        expected = set(range(140))
        report.missing.extend(f"volume-{n}.nii.gz" for n in sorted(expected - set(files["volume"])))
        report.missing.extend(f"labels-{n}.nii.gz" for n in sorted(expected - set(files["labels"])))
        man, rows = [], []
        for n in numbers:
            if n not in files["volume"]:
                report.skip(f"volume-{n}", "label map without its volume")
                continue
            if n not in files["labels"]:
                report.skip(f"volume-{n}", "volume without its label map")
                continue
            man.append({"id": f"volume-{n}", "path": str(files["volume"][n])})
            rows.append({"id": f"volume-{n}", "patient_id": f"volume-{n}", "case": n,
                         "official_split": "test" if n in TEST_CASES else "train",
                         "seg_path": str(files["labels"][n])})
        table = pd.DataFrame(rows)
        manifest = pd.DataFrame(man, columns=["id", "path"])
        if table.empty:
            return Prepared(manifest, table, {})
        if options["split"] == "official":
            split = pd.Series("test", index=table.index, dtype=object)
            tr = table["official_split"] == "train"
            if tr.any():
                split[tr] = patient_splits(list(table.loc[tr, "id"]), list(table.loc[tr, "patient_id"]), report,
                                           seed=seed, fractions=(0.8, 0.2, 0.0)).to_numpy()
        else:
            split = patient_splits(list(table["id"]), list(table["patient_id"]), report, seed=seed)
        table.insert(2, "split", pd.Series(split).to_numpy())
        write_classes(out, CLASSES)
        return Prepared(manifest, table, segmentation_suite(
            "CT-ORG: liver, bladder, lungs, kidneys, bone, brain + background from patch tokens",
            "organs", len(CLASSES) + 1), {"classes": len(CLASSES) + 1})


RECIPE = CTOrgRecipe()
