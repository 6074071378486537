"""LUNA16: 888 chest CTs from LIDC-IDRI with 1,186 nodules >= 3 mm accepted by at least 3 of 4
radiologists (Setio et al. 2017).

Traps handled:

* Nodule centres are published in **world millimetres** of the ``.mhd`` image space
  (``coordX, coordY, coordZ`` = ITK/LPS physical points), not voxels. The recipe maps them through
  each ``.mhd`` header's origin, spacing and direction (read without the voxel data) onto the
  canonical SPL grid :func:`voxelfm.io.read_volume` returns, whatever the file's orientation
  (flipped or permuted direction matrices included). The probe then maps these canonical voxels
  into the token frame of each embedding through its preprocessing record (``coords: voxel``).
* Scans have several nodules, a localisation probe predicts one point: the target is the largest
  nodule (``nodule_count`` says how many there are; ``nodules.csv`` lists them all).
* ``candidates_V2.csv`` (or ``candidates.csv``), when present, is mapped the same way into the
  prepared ``candidates.csv`` (canonical voxel, class, inside) for candidate-classification work.
* The download is ten ``subsetN`` folders (zip extraction sometimes nests them as
  ``subsetN/subsetN/``); both are found.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from voxelfm.datasets._tables import patient_splits, read_official_csv
from voxelfm.datasets.protocols import SUITE_COMMON, classification_heads, localisation_heads
from voxelfm.datasets.recipe import Prepared, PrepareReport, Recipe, RecipeOption
from voxelfm.io.header import HeaderGeometry, read_header_geometry

__all__ = ["RECIPE", "Luna16Recipe", "nodule_voxels"]

_ANNOTATION_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm")
_CANDIDATE_FILES = ("candidates_V2/candidates_V2.csv", "candidates_V2.csv", "candidates.csv")


def nodule_voxels(mhd: str | Path, world_lps: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Canonical SPL voxel indices ``[K, 3]`` (d, h, w; fractional) of LUNA16 world points ``[K, 3]``
    (``coordX, coordY, coordZ`` mm) in the scan ``mhd``, and the canonical shape."""
    g = read_header_geometry(mhd)
    return g.lps_to_index(np.asarray(world_lps, dtype=np.float64)), g.shape


def _voxels(geometry: HeaderGeometry, points: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Canonical voxels ``[K, 3]`` of the ``coordX, coordY, coordZ`` rows and whether each lies in the scan."""
    vox = geometry.lps_to_index(points[["coordX", "coordY", "coordZ"]].to_numpy(dtype=float))
    inside = ((vox >= -0.5) & (vox <= np.asarray(geometry.shape) - 0.5)).all(axis=1)
    return vox, inside


def _element_data_file(mhd: Path) -> Path | None:
    """The data file a MetaImage header names (``ElementDataFile = <uid>.raw``); the header itself
    for ``LOCAL``; ``None`` when the header names none."""
    try:
        head = mhd.read_text(encoding="latin-1", errors="replace")[:4096]
    except OSError:
        return None
    for line in head.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == "ElementDataFile":
            value = value.strip()
            return mhd if value == "LOCAL" else mhd.parent / value
    return None


class Luna16Recipe(Recipe):
    name = "luna16"
    title = "LUNA16"
    description = "888 chest CTs (LIDC-IDRI) with 1,186 annotated nodules: nodule localisation and presence"
    licence = ("CC BY 4.0 (LUNA16 challenge data, derived from LIDC-IDRI, CC BY 3.0 via TCIA); cite Setio et al. "
               "2017 and the LIDC-IDRI publications")
    url = "https://luna16.grand-challenge.org/Data/ (files mirrored on Zenodo: records 3723295 and 4121926)"
    layout = """\
ROOT/
  subset0/ ... subset9/            <seriesuid>.mhd + <seriesuid>.raw  (also subsetN/subsetN/ as some unzip tools make)
  annotations.csv                  seriesuid,coordX,coordY,coordZ,diameter_mm   (world mm, LPS, of the .mhd space)
  candidates_V2.csv or candidates.csv   seriesuid,coordX,coordY,coordZ,class  (optional: candidates.csv out)
  seg-lungs-LUNA16/, evaluationScript/, sampleSubmission.csv                  (optional, ignored)"""
    paper = ("nodule localisation from annotations.csv: the reference resampled to 1 mm and cut 6 cubic crops per "
             "nodule (side U(max(40, 2·diameter), 240) mm) resized to 224³, target = relative position in the "
             "crop; attention-pooled regressor over patch tokens, AdamW 1e-4, wd 1e-2, 20 epochs, batch 4 × 4, "
             "noise p 1.0 σ 0.1, SmoothL1, metric = mean Euclidean distance (relative), 70/15/15 by scan")
    version = "1"
    options = {
        "split": RecipeOption("random", "random: seeded 70/15/15 stratified by nodule presence (the reference's "
                              "proportions); subsets: subset0-7 train, subset8 val, subset9 test",
                              ("random", "subsets")),
    }

    def build(self, root: Path, out: Path, report: PrepareReport, *, seed: int, **options: Any) -> Prepared:
        scans: dict[str, tuple[Path, int]] = {}
        for k in range(10):
            folders = [d for d in (root / f"subset{k}", root / f"subset{k}" / f"subset{k}") if d.is_dir()]
            if not folders:
                report.missing.append(f"subset{k}/")
            for d in folders:
                for mhd in sorted(d.glob("*.mhd")):
                    data_file = _element_data_file(mhd)
                    if data_file is None or not data_file.is_file():
                        report.skip(mhd.stem, f"the .mhd's data file {data_file.name if data_file else '?'} is missing")
                        continue
                    scans.setdefault(mhd.stem, (mhd, k))
        report.found["scans"] = len(scans)
        ann_path = root / "annotations.csv"
        if ann_path.is_file():
            ann = read_official_csv(ann_path, _ANNOTATION_COLUMNS, dtype={"seriesuid": str})
            for c in _ANNOTATION_COLUMNS[1:]:
                ann[c] = pd.to_numeric(ann[c], errors="coerce")
        else:
            report.missing.append("annotations.csv")
            ann = None
        report.found["annotations"] = 0 if ann is None else len(ann)
        cand_path = next((root / c for c in _CANDIDATE_FILES if (root / c).is_file()), None)
        cand = None
        if cand_path is not None:
            cand = read_official_csv(cand_path, (*_ANNOTATION_COLUMNS[:4], "class"), dtype={"seriesuid": str})
            for c in ("coordX", "coordY", "coordZ", "class"):
                cand[c] = pd.to_numeric(cand[c], errors="coerce")
            report.found[f"candidates ({cand_path.name})"] = len(cand)
        if ann is None:
            return Prepared(pd.DataFrame(columns=["id", "path"]), pd.DataFrame(), {})
        missing_scans = sorted(set(ann["seriesuid"]) - set(scans))
        report.missing.extend(f"scan {u}.mhd (has annotations)" for u in missing_scans)

        rows, nodules, candidates = [], [], []
        by_uid = {u: g for u, g in ann.groupby("seriesuid")}
        cand_by_uid = {u: g for u, g in cand.groupby("seriesuid")} if cand is not None else {}
        for uid in sorted(scans):
            mhd, subset = scans[uid]
            g = by_uid.get(uid)
            row: dict[str, Any] = {"id": uid, "patient_id": uid, "subset": subset, "has_nodule": int(g is not None),
                                   "nodule_count": 0 if g is None else len(g)}
            try:
                geometry = read_header_geometry(mhd)
            except Exception as exc:  # noqa: BLE001 - an unreadable header skips the scan, recorded
                report.skip(uid, f"unreadable .mhd header ({type(exc).__name__})")
                continue
            c = cand_by_uid.get(uid)
            if c is not None:
                cvox, cin = _voxels(geometry, c)
                frame = c[["coordX", "coordY", "coordZ", "class"]].reset_index(drop=True)
                frame.insert(0, "id", uid)
                frame[["d", "h", "w"]] = cvox
                frame["inside"] = cin
                candidates.append(frame)
            if g is not None:
                vox, inside = _voxels(geometry, g)
                for j, (r, v, ok) in enumerate(zip(g.itertuples(index=False), vox, inside)):
                    nodules.append({"id": uid, "nodule": j, "coordX": r.coordX, "coordY": r.coordY, "coordZ": r.coordZ,
                                    "diameter_mm": r.diameter_mm, "d": v[0], "h": v[1], "w": v[2], "inside": bool(ok)})
                if not inside.all():
                    report.notes.append(f"{uid}: {int((~inside).sum())} annotation(s) outside the scan")
                if inside.any():
                    best = int(np.argmax(np.where(inside, g["diameter_mm"].to_numpy(dtype=float), -np.inf)))
                    r = g.iloc[best]
                    row.update({"nodule_d": vox[best, 0], "nodule_h": vox[best, 1], "nodule_w": vox[best, 2],
                                "nodule_diameter_mm": float(r["diameter_mm"]), "nodule_x_mm": float(r["coordX"]),
                                "nodule_y_mm": float(r["coordY"]), "nodule_z_mm": float(r["coordZ"])})
            rows.append((row, mhd))
        cols = ["id", "patient_id", "subset", "has_nodule", "nodule_count", "nodule_d", "nodule_h", "nodule_w",
                "nodule_diameter_mm", "nodule_x_mm", "nodule_y_mm", "nodule_z_mm"]
        table = pd.DataFrame([r for r, _ in rows], columns=cols)
        manifest = pd.DataFrame({"id": [r["id"] for r, _ in rows], "path": [str(p) for _, p in rows]})
        if table.empty:
            return Prepared(manifest, table, {})
        if options["split"] == "subsets":
            split = table["subset"].map(lambda s: "test" if s == 9 else ("val" if s == 8 else "train"))
        else:
            split = patient_splits(list(table["id"]), list(table["patient_id"]), report, seed=seed,
                                   stratify=list(table["has_nodule"])).to_numpy()
        table.insert(2, "split", split)
        pd.DataFrame(nodules, columns=["id", "nodule", "coordX", "coordY", "coordZ", "diameter_mm", "d", "h", "w",
                                       "inside"]).to_csv(out / "nodules.csv", index=False, lineterminator="\n")
        counts = {"scans_with_nodules": int(table["has_nodule"].sum()), "nodules": len(nodules)}
        if candidates:
            cands = pd.concat(candidates, ignore_index=True)
            cands.to_csv(out / "candidates.csv", index=False, lineterminator="\n")
            counts["candidates"] = len(cands)
        return Prepared(manifest, table, _suite(), counts)


def _suite() -> dict[str, Any]:
    return {
        "description": "LUNA16: localisation of the largest nodule (canonical voxels -> token frame) and presence",
        **SUITE_COMMON,
        "head_defaults": {**localisation_heads(), **classification_heads()},
        "tasks": [
            {"name": "nodule_position", "task": "localisation", "target": ["nodule_d", "nodule_h", "nodule_w"],
             "probes": ["localisation:patch"], "hparams": {"coords": "voxel", "positions": "corner",
                                                            "loc_loss": "smooth_l1"}},
            {"name": "nodule_present", "task": "binary", "target": "has_nodule", "probes": ["mlp", "attentive:patch"]},
        ],
        "figures": {"roc": True, "cls_vs_patch": True},
    }


RECIPE = Luna16Recipe()
