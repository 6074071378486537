"""Miniature copies of the official download layouts, made from phantoms (same folder trees, file
names and CSV columns as the real datasets; a handful of tiny scans)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

STEP = 3  # phantom voxels taken along each axis (the demo phantom is ~134 x 112 x 112)


@dataclass
class TinyScan:
    """A phantom scan shrunk by :data:`STEP`: canonical SPL HU, labels, spacing, and its row."""

    id: str
    patient: str
    hu: np.ndarray          # [D, H, W] float32 HU, canonical SPL
    labels: np.ndarray      # [D, H, W] uint8 organ labels (voxelfm.data.phantoms.LABELS)
    spacing: tuple[float, float, float]
    row: dict


@lru_cache(maxsize=None)
def _tiny_case(seed: int, i: int) -> TinyScan:
    from voxelfm.data.phantoms import generate_case

    c = generate_case(seed, i)
    sp = tuple(float(s) * STEP for s in c.acquisition.spacing)
    hu = np.ascontiguousarray(c.hu[::STEP, ::STEP, ::STEP], dtype=np.float32)
    lab = np.ascontiguousarray(c.labels[::STEP, ::STEP, ::STEP])
    hu.flags.writeable = False  # shared between tests (cached)
    lab.flags.writeable = False
    return TinyScan(c.id, c.patient_id, hu, lab, sp, dict(c.row))  # type: ignore[arg-type]


def tiny_scans(n: int, seed: int = 0) -> list[TinyScan]:
    """Phantom cases ``0 .. n-1`` of ``seed`` shrunk by :data:`STEP` (~0.9 s each, cached per session)."""
    return [_tiny_case(seed, i) for i in range(n)]


def canonical_to_file(a: np.ndarray) -> np.ndarray:
    """SPL ``[d, h, w]`` → DICOM-pixel file order ``[i (→L), j (→P), k (→S)]``."""
    return np.ascontiguousarray(a.transpose(2, 1, 0))


def lps_nifti_affine(spacing_zyx: tuple[float, float, float], origin_lps=(0.0, 0.0, 0.0)) -> np.ndarray:
    """RAS affine of a file in ``[i → L, j → P, k → S]`` order with the given canonical spacing."""
    sz, sy, sx = spacing_zyx
    a = np.diag([-sx, -sy, sz, 1.0])  # L = -R, P = -A in RAS
    a[:3, 3] = [-origin_lps[0], -origin_lps[1], origin_lps[2]]
    return a


# ---------------------------------------------------------------------------------------- CT-RATE
CT_RATE_FINDINGS = {  # phantom finding -> CT-RATE column
    "lung_nodule": "Lung nodule", "pleural_effusion": "Pleural effusion", "emphysema": "Emphysema",
    "cardiomegaly": "Cardiomegaly", "arterial_wall_calcification": "Arterial wall calcification",
    "coronary_artery_wall_calcification": "Coronary artery wall calcification", "lung_opacity": "Lung opacity",
    "consolidation": "Consolidation", "atelectasis": "Atelectasis", "lymphadenopathy": "Lymphadenopathy",
    "hiatal_hernia": "Hiatal hernia", "pericardial_effusion": "Pericardial effusion",
}


def write_ct_rate(root: Path, scans: list[TinyScan], *, n_valid: int, wrong_header: set[str] = frozenset(),
                  skip_files: tuple[str, ...] = ()) -> dict[str, TinyScan]:
    """CT-RATE as published (blank NIfTI headers, float raw values, facts in the metadata CSV).

    Scan ``i`` becomes ``<split>_<p>_a_1`` (the last ``n_valid`` are the valid set); patients with
    two phantom scans get ``_a_1`` and ``_b_1``. Ids in ``wrong_header`` get an sform with 1 mm
    voxels (a header that contradicts the metadata). Returns ``{volume name: scan}``.
    """
    import nibabel as nib
    import pandas as pd

    from voxelfm.datasets.ct_rate import ABNORMALITIES

    base = root / "dataset"
    by_name: dict[str, TinyScan] = {}
    rows = {"train": ([], [], []), "valid": ([], [], [])}
    patients: dict[str, int] = {}
    for k, s in enumerate(scans):
        split = "valid" if k >= len(scans) - n_valid else "train"
        pnum = patients.setdefault(s.patient, len(patients) + 1)
        letter = "a"
        while f"{split}_{pnum}_{letter}_1" in by_name:
            letter = chr(ord(letter) + 1)
        name = f"{split}_{pnum}_{letter}_1"
        by_name[name] = s
        raw = canonical_to_file(s.hu) + 1024.0  # stored values: HU = raw * 1 + (-1024)
        if name in wrong_header:
            img = nib.Nifti1Image(raw.astype(np.float32), np.eye(4))  # RAS, 1 mm: both wrong
            img.header.set_sform(img.affine, code=1)
        else:
            img = nib.Nifti1Image(raw.astype(np.float32), None)
        path = base / split / f"{split}_{pnum}" / f"{split}_{pnum}_{letter}" / f"{name}.nii.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(img, str(path))
        meta, lab, rep = rows[split]
        sz, sy, sx = s.spacing
        meta.append({"VolumeName": f"{name}.nii.gz", "Manufacturer": "PHANTOM", "PatientSex": s.row["sex"],
                     "PatientAge": f"{int(s.row['age']):03d}Y", "XYSpacing": f"[{sy}, {sx}]", "ZSpacing": sz,
                     "RescaleIntercept": -1024, "RescaleSlope": 1,
                     "ImageOrientationPatient": "[1, 0, 0, 0, 1, 0]",
                     "ImagePositionPatient": "[-100, -100, -200]"})
        flags = {v: int(bool(s.row.get(k))) for k, v in CT_RATE_FINDINGS.items()}
        lab.append({"VolumeName": f"{name}.nii.gz", **{a: flags.get(a, 0) for a in ABNORMALITIES}})
        rep.append({"VolumeName": f"{name}.nii.gz", "ClinicalInformation_EN": "Phantom.",
                    "Technique_EN": "Non-contrast chest CT.", "Findings_EN": s.row["report"],
                    "Impressions_EN": "See findings."})
    for split, (meta, lab, rep) in rows.items():
        mname = "train_metadata.csv" if split == "train" else "validation_metadata.csv"
        rname = "train_reports.csv" if split == "train" else "validation_reports.csv"
        for rel, table in ((f"metadata/{mname}", meta), (f"multi_abnormality_labels/{split}_predicted_labels.csv", lab),
                           (f"radiology_text_reports/{rname}", rep)):
            if rel in skip_files:
                continue
            (base / rel).parent.mkdir(parents=True, exist_ok=True)
            pd.DataFrame(table).to_csv(base / rel, index=False)
    return by_name


# ---------------------------------------------------------------------------------------- geometry
_LPS_AXIS = {"L": (0, 1), "R": (0, -1), "P": (1, 1), "A": (1, -1), "S": (2, 1), "I": (2, -1)}


def file_layout(a: np.ndarray, spacing_zyx, code: str):
    """Lay a canonical SPL array out as a file whose index axes (i, j, k) point along ``code``.

    Returns ``(f [i, j, k], spacing_ijk, direction 3x3 (columns = i, j, k in LPS), to_file)`` where
    ``to_file(c)`` maps a canonical voxel ``(d, h, w)`` to its file index ``(i, j, k)``.
    """
    ks, flips, dirs = [], [], np.zeros((3, 3))
    for n, letter in enumerate(code):
        axis, sign = _LPS_AXIS[letter]
        ks.append(2 - axis)
        flips.append(sign < 0)
        dirs[axis, n] = sign
    f = np.transpose(a, ks)
    f = np.flip(f, axis=tuple(n for n in range(3) if flips[n])) if any(flips) else f
    spacing_ijk = tuple(float(spacing_zyx[k]) for k in ks)

    def to_file(c):
        return np.array([(a.shape[ks[n]] - 1 - c[ks[n]]) if flips[n] else c[ks[n]] for n in range(3)], dtype=float)

    return np.ascontiguousarray(f), spacing_ijk, dirs, to_file


def write_mhd(path: Path, a: np.ndarray, spacing_zyx, code: str, origin=(-150.0, -160.0, -300.0)):
    """Write canonical ``a`` as ``path`` (.mhd + .raw) in orientation ``code``; returns a function
    canonical voxel → LPS world mm."""
    import SimpleITK as sitk

    f, sp, dirs, to_file = file_layout(a, spacing_zyx, code)
    img = sitk.GetImageFromArray(np.ascontiguousarray(f.transpose(2, 1, 0)).astype(np.int16))
    img.SetSpacing(sp)
    img.SetDirection(tuple(dirs.ravel()))
    img.SetOrigin(tuple(float(o) for o in origin))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))

    def world(c):
        return np.asarray(origin) + dirs @ (to_file(c) * np.asarray(sp))

    return world


# ---------------------------------------------------------------------------------------- LUNA16
LUNA_CODES = ("LPS", "RAI", "LPI", "RPS", "PLS", "LAS")


def write_luna16(root: Path, scans: list[TinyScan], *, nodule_every: int = 2, subsets=None) -> dict[str, dict]:
    """LUNA16 as published: subsetN/<uid>.mhd + .raw in various orientations, annotations.csv in
    world mm. Every ``nodule_every``-th scan gets two bright nodules (the larger one is the
    target). Returns ``{uid: {"nodules": [(canonical voxel, diameter)], "shape": ...}}``."""
    import pandas as pd

    truth: dict[str, dict] = {}
    ann = []
    for k, s in enumerate(scans):
        uid = f"1.3.6.1.4.1.14519.5.2.1.6279.6001.{100000 + k}"
        a = s.hu.copy()
        nods = []
        if k % nodule_every == 0:
            d, h, w = a.shape
            for c, diam in (((d // 2, h // 2, w // 3), 12.0), ((d // 3, h // 2 + 2, 2 * w // 3), 6.0)):
                a[c[0] - 1:c[0] + 2, c[1] - 1:c[1] + 2, c[2] - 1:c[2] + 2] = 150.0
                a[c] = 3000.0
                nods.append((c, diam))
        subset = (subsets[k] if subsets else k % 10)
        world = write_mhd(root / f"subset{subset}" / f"{uid}.mhd", a, s.spacing, LUNA_CODES[(k // 2) % len(LUNA_CODES)])
        for c, diam in nods:
            x, y, z = world(c)
            ann.append({"seriesuid": uid, "coordX": x, "coordY": y, "coordZ": z, "diameter_mm": diam})
        truth[uid] = {"nodules": nods, "code": LUNA_CODES[(k // 2) % len(LUNA_CODES)], "hu": a}
    pd.DataFrame(ann, columns=["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"]).to_csv(
        root / "annotations.csv", index=False)
    pd.DataFrame([{"seriesuid": r["seriesuid"], "coordX": r["coordX"], "coordY": r["coordY"], "coordZ": r["coordZ"],
                   "class": 1} for r in ann]).to_csv(root / "candidates_V2.csv", index=False)
    return truth


def write_nifti(path: Path, canonical: np.ndarray, spacing_zyx, dtype=np.int16) -> None:
    """Write a canonical SPL array as a NIfTI in ``[i → L, j → P, k → S]`` order with a proper header."""
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(canonical_to_file(canonical).astype(dtype), lps_nifti_affine(spacing_zyx))
    img.header.set_sform(img.affine, code=1)
    img.header.set_qform(img.affine, code=1)
    nib.save(img, str(path))


# ---------------------------------------------------------------------------------------- TotalSegmentator
PHANTOM_TO_TS = {"lung_right": "lung_lower_lobe_right", "lung_left": "lung_upper_lobe_left", "airway": "trachea",
                 "heart": "heart", "aorta": "aorta", "esophagus": "esophagus", "vertebrae": "vertebrae_T8",
                 "ribs": "rib_left_5", "sternum": "sternum", "liver": "liver", "spleen": "spleen",
                 "kidney_right": "kidney_right", "kidney_left": "kidney_left", "stomach": "stomach"}


def write_totalsegmentator(root: Path, scans: list[TinyScan], splits: list[str]) -> dict[str, TinyScan]:
    """TotalSegmentator v2 as published: sXXXX/ct.nii.gz + segmentations/<structure>.nii.gz (the
    mapped phantom organs, plus empty masks for two structures), meta.csv with ';'."""
    import pandas as pd

    from voxelfm.data.phantoms import LABELS

    by_id, meta = {}, []
    for k, (s, split) in enumerate(zip(scans, splits)):
        sid = f"s{k:04d}"
        by_id[sid] = s
        write_nifti(root / sid / "ct.nii.gz", s.hu, s.spacing)
        for value, organ in LABELS.items():
            if organ in PHANTOM_TO_TS:
                write_nifti(root / sid / "segmentations" / f"{PHANTOM_TO_TS[organ]}.nii.gz",
                            (s.labels == value).astype(np.uint8), s.spacing, np.uint8)
        for empty in ("brain", "prostate"):
            write_nifti(root / sid / "segmentations" / f"{empty}.nii.gz", np.zeros_like(s.labels), s.spacing, np.uint8)
        meta.append({"image_id": sid, "age": int(s.row["age"]), "gender": s.row["sex"].lower()[:1],
                     "institute": "A", "study_type": "ct thorax", "split": split,
                     "manufacturer": "phantom", "scanner_model": "tiny", "kvp": 120,
                     "pathology": "no_pathology", "pathology_location": ""})
    pd.DataFrame(meta).to_csv(root / "meta.csv", sep=";", index=False)
    return by_id


# ---------------------------------------------------------------------------------------- CT-ORG
PHANTOM_TO_CTORG = {"liver": 1, "lung_right": 3, "lung_left": 3, "kidney_right": 4, "kidney_left": 4, "vertebrae": 5,
                    "ribs": 5, "sternum": 5}


def ct_org_labels(s: TinyScan) -> np.ndarray:
    from voxelfm.data.phantoms import LABELS

    out = np.zeros_like(s.labels)
    for value, organ in LABELS.items():
        if organ in PHANTOM_TO_CTORG:
            out[s.labels == value] = PHANTOM_TO_CTORG[organ]
    return out


def write_ct_org(root: Path, scans: list[TinyScan], numbers: list[int]) -> dict[int, TinyScan]:
    """CT-ORG as published: OrganSegmentations/volume-N.nii.gz + labels-N.nii.gz."""
    folder = root / "OrganSegmentations"
    for n, s in zip(numbers, scans):
        write_nifti(folder / f"volume-{n}.nii.gz", s.hu, s.spacing)
        write_nifti(folder / f"labels-{n}.nii.gz", ct_org_labels(s), s.spacing, np.uint8)
    return dict(zip(numbers, scans))


# ---------------------------------------------------------------------------------------- DICOM datasets
def write_dicom(folder: Path, s: TinyScan, patient_id: str, uid_seed: str) -> None:
    from voxelfm.data.phantoms.writers import write_dicom_series

    sz, sy, sx = s.spacing
    affine = np.zeros((4, 4))
    affine[2, 0], affine[1, 1], affine[0, 2], affine[3, 3] = sz, sy, sx, 1.0
    affine[:3, 3] = (-150.0, -150.0, -300.0)
    stored = np.rint(s.hu + 1024.0).astype(np.int16)
    write_dicom_series(folder, stored, affine, intercept=-1024.0, uid_seed=uid_seed, patient_id=patient_id,
                       patient_age=float(s.row["age"]), patient_sex=str(s.row["sex"])[:1], study_date="20200101",
                       kvp=120, kernel="B30f")


def write_nsclc(root: Path, scans: list[TinyScan], *, clinical_extra: tuple[str, ...] = ()) -> dict[str, TinyScan]:
    """NSCLC-Radiomics as downloaded: NSCLC-Radiomics/LUNG1-xxx/<study>/<series>/1-xxx.dcm + the
    clinical CSV (version 3 columns)."""
    import pandas as pd

    base = root / "NSCLC-Radiomics"
    out, rows = {}, []
    for k, s in enumerate(scans):
        pid = f"LUNG1-{k + 1:03d}"
        out[pid] = s
        write_dicom(base / pid / "09-18-2008-StudyID-69331" / "0.000000-NA-82046", s, pid, f"nsclc{k}")
        rows.append({"PatientID": pid, "age": int(s.row["age"]), "clinical.T.Stage": 2, "Clinical.N.Stage": 0,
                     "Clinical.M.Stage": 0, "Overall.Stage": "I", "Histology": "adenocarcinoma",
                     "gender": "male" if str(s.row["sex"]).upper().startswith("M") else "female",
                     "Survival.time": int(s.row["survival_time"]), "deadstatus.event": int(s.row["event"])})
    for pid in clinical_extra:
        rows.append({**rows[0], "PatientID": pid})
    pd.DataFrame(rows).to_csv(root / "NSCLC-Radiomics-Lung1.clinical-version3-Oct-2019.csv", index=False)
    return out


def write_osic(root: Path, scans: list[TinyScan]) -> dict[str, dict]:
    """OSIC as on Kaggle: train.csv (one row per visit) + train/<Patient>/<n>.dcm."""
    import pandas as pd

    truth, rows = {}, []
    rng = np.random.default_rng(0)
    for k, s in enumerate(scans):
        pid = f"ID00{k:03d}637202177411956430"
        write_dicom(root / "train" / pid, s, pid, f"osic{k}")
        # the slices are numbered files directly in the patient folder, as on Kaggle
        for f in sorted((root / "train" / pid).rglob("*.dcm")):
            f.rename(root / "train" / pid / f.name)
        predicted = 2500.0 + 40 * k
        visits = [(w, predicted * p / 100.0, p) for w, p in ((-4, 70.0 - k), (3, 68.0 - k), (30, 60.0 - k))]
        for w, fvc, pct in visits:
            rows.append({"Patient": pid, "Weeks": w, "FVC": round(fvc), "Percent": pct, "Age": int(s.row["age"]),
                         "Sex": "Male", "SmokingStatus": rng.choice(["Ex-smoker", "Never smoked"])})
        truth[pid] = {"baseline_fvc": round(visits[1][1]), "percent": visits[1][2],
                      "predicted": float(np.mean([round(f) * 100 / p for _, f, p in visits]))}
    pd.DataFrame(rows).to_csv(root / "train.csv", index=False)
    return truth
