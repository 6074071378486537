"""Miniature official layouts of the paper's evaluation datasets (RSNA-STR PE, iCTCF,
Mycobacterial, Merlin, TCIA CT Lymph Nodes, AirRC), made from phantoms: same folder trees, file
names and CSV columns as the published downloads, a handful of tiny scans."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from tests.datasets._layouts import TinyScan, write_mhd


def canonical_affine(spacing, origin=(-100.0, -120.0, -200.0)) -> np.ndarray:
    """LPS affine of the canonical SPL grid: d → S, h → P, w → L."""
    sz, sy, sx = spacing
    a = np.zeros((4, 4))
    a[0, 2], a[1, 1], a[2, 0], a[3, 3] = sx, sy, sz, 1.0
    a[:3, 3] = origin
    return a


def write_series(folder: Path, values: np.ndarray, spacing, uid_seed: str, *, modality: str = "CT",
                 intercept: float = -1024.0) -> list[Path]:
    """A canonical array as a DICOM series (one file per slice); ``modality`` patched after writing."""
    import pydicom

    from voxelfm.data.phantoms.writers import write_dicom_series

    stored = np.rint(values - intercept).astype(np.int16)
    paths = write_dicom_series(folder, stored, canonical_affine(spacing), intercept=intercept, uid_seed=uid_seed,
                               patient_id=uid_seed, patient_age=60, patient_sex="F", study_date="20200101",
                               kvp=120, kernel="B30f")
    if modality != "CT":
        for p in paths:
            ds = pydicom.dcmread(p)
            ds.Modality = modality
            ds.save_as(p)
    return paths


def series_uid(path: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID)


# ------------------------------------------------------------------------------------------- RSNA-STR PE
RSNA_COLUMNS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "pe_present_on_image",
                "negative_exam_for_pe", "qa_motion", "qa_contrast", "flow_artifact", "rv_lv_ratio_gte_1",
                "rv_lv_ratio_lt_1", "leftsided_pe", "chronic_pe", "true_filling_defect_not_pe", "rightsided_pe",
                "acute_and_chronic_pe", "central_pe", "indeterminate")


def write_rsna_pe(root: Path, scans: list[TinyScan], *, indeterminate: int, incomplete: int) -> dict[str, dict]:
    """Kaggle layout: train/<study>/<series>/<SOP>.dcm + per-image train.csv. Scan ``k`` has PE
    when ``k`` is odd; scan ``indeterminate`` is an indeterminate exam; scan ``incomplete`` misses
    one image file. Returns ``{study: {"pe", "series", "scan"}}``."""
    rows, truth = [], {}
    for k, s in enumerate(scans):
        study = f"1.2.826.0.1.3680043.{1000 + k}"
        tmp = root / "train" / study / "tmp"
        paths = write_series(tmp, s.hu, s.spacing, f"rsna{k}")
        series = series_uid(paths[0])
        folder = tmp.rename(root / "train" / study / series)
        pe = k % 2 == 1 and k != indeterminate
        exam = {c: 0 for c in RSNA_COLUMNS[4:]}
        exam.update(negative_exam_for_pe=int(not pe and k != indeterminate), indeterminate=int(k == indeterminate),
                    rv_lv_ratio_gte_1=int(pe and k % 4 == 1), rv_lv_ratio_lt_1=int(pe and k % 4 == 3),
                    rightsided_pe=int(pe), central_pe=int(pe and k % 4 == 1))
        for i, p in enumerate(sorted(folder.iterdir())):
            import pydicom

            sop = str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
            p.rename(folder / f"{sop}.dcm")
            rows.append({"StudyInstanceUID": study, "SeriesInstanceUID": series, "SOPInstanceUID": sop,
                         "pe_present_on_image": int(pe and i % 3 == 0), **exam})
        if k == incomplete:
            next(folder.iterdir()).unlink()
        truth[study] = {"pe": pe, "series": series, "scan": s, "indeterminate": k == indeterminate}
    pd.DataFrame(rows, columns=RSNA_COLUMNS).to_csv(root / "train.csv", index=False)
    return truth


# ------------------------------------------------------------------------------------------- iCTCF
def write_ictcf(root: Path, scans: list[TinyScan], *, missing_ct: int) -> pd.DataFrame:
    """clinical.csv (portal column names) + ct/<Patient N>/*.dcm (even N with '_' for the space)."""
    outcomes = ["Mild", "Regular", "Severe", "Critically ill", "Control", "Regular"]
    tests = ["Positive", "Negative", "Positive", "Positive", "Negative", "Positive"]
    rows = []
    for k, s in enumerate(scans):
        pid = f"Patient {k + 1}"
        if k != missing_ct:
            folder = root / "ct" / (pid.replace(" ", "_") if k % 2 == 0 else pid)
            write_series(folder, s.hu, s.spacing, f"ictcf{k}")
        rows.append({"ID": pid, "Hospital": "Union", "Age": int(s.row["age"]), "Gender": s.row["sex"],
                     "Body temperature": 37.5, "Underlying diseases": "None",
                     "SARS-CoV-2 nucleic acids": tests[k % len(tests)],
                     "Computed tomography (CT)": "Positive", "Morbidity outcome": outcomes[k % len(outcomes)],
                     "Mortality outcome": "Cured", "HGB": 120.0 + 3 * k, "WBC": 5.0 + k,
                     "CRP": np.nan if k == 1 else 10.0 * k, "PCT": 0.05 * (k + 1), "CK": 80.0 + 5 * k})
    df = pd.DataFrame(rows)
    root.mkdir(parents=True, exist_ok=True)
    df.to_csv(root / "clinical.csv", index=False)
    return df


# ------------------------------------------------------------------------------------------- Mycobacterial
def write_mycobacterial(base: Path, scans: list[TinyScan]) -> dict[str, TinyScan]:
    """NTMNiFTi/*.nii and TBNifTI/*.nii with intensities windowed to [0, 1] (centre -600, width 1500)."""
    import nibabel as nib

    from tests.datasets._layouts import canonical_to_file, lps_nifti_affine

    out = {}
    for k, s in enumerate(scans):
        folder, prefix = ("TBNifTI", "tb") if k % 2 else ("NTMNiFTi", "ntm")
        v = np.clip((s.hu - (-600 - 750)) / 1500.0, 0.0, 1.0).astype(np.float32)
        (base / folder).mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(canonical_to_file(v), lps_nifti_affine(s.spacing)), str(base / folder / f"{k:03d}.nii"))
        out[f"{prefix}_{k:03d}"] = s
    return out


# ------------------------------------------------------------------------------------------- Merlin
def write_merlin(root: Path, scans: list[TinyScan], *, unlabelled: int) -> dict[str, TinyScan]:
    """merlin_data/<study id>.nii.gz, zero_shot_findings_disease_cls.csv (1/0/-1),
    reports_final.xlsx (study id, Findings, Split)."""
    import nibabel as nib

    from tests.datasets._layouts import canonical_to_file, lps_nifti_affine
    from voxelfm.datasets.merlin import FINDINGS

    (root / "merlin_data").mkdir(parents=True, exist_ok=True)
    labels, reports, out = [], [], {}
    splits = ["train", "train", "train", "train", "val", "test"]
    for k, s in enumerate(scans):
        sid = f"AC42{k:04d}"
        raw = canonical_to_file(np.rint(s.hu)).astype(np.int16)
        nib.save(nib.Nifti1Image(raw, lps_nifti_affine(s.spacing)), str(root / "merlin_data" / f"{sid}.nii.gz"))
        out[sid] = s
        if k != unlabelled:
            row = {"study id": sid, **{f: (k + i) % 3 - 1 for i, f in enumerate(FINDINGS)}}
            row["pleural_effusion"] = int(bool(s.row["pleural_effusion"]))
            labels.append(row)
        reports.append({"study id": sid, "Findings": s.row["report"], "Split": splits[k % len(splits)],
                        "Few Shot": "no"})
    pd.DataFrame(labels).to_csv(root / "zero_shot_findings_disease_cls.csv", index=False)
    pd.DataFrame(reports).to_excel(root / "reports_final.xlsx", index=False)
    return out


# ------------------------------------------------------------------------------------------- CT Lymph Nodes
def write_dicom_seg(folder: Path, ct_paths: list[Path], mask: np.ndarray) -> Path:
    """A DICOM Segmentation object (BINARY, one segment, empty frames omitted) of canonical ``mask``
    over the CT series ``ct_paths``, as TCIA publishes them (made with highdicom)."""
    import highdicom as hd
    import pydicom
    from highdicom.seg import SegmentAlgorithmTypeValues, SegmentationTypeValues, SegmentDescription
    from pydicom.sr.codedict import codes

    cts = sorted((pydicom.dcmread(p) for p in ct_paths), key=lambda d: float(d.ImagePositionPatient[2]))
    for ds in cts:  # type 2 attributes highdicom copies from the source images
        ds.PatientBirthDate, ds.ReferringPhysicianName, ds.AccessionNumber, ds.StudyID = "", "", "", "1"
    desc = SegmentDescription(segment_number=1, segment_label="lymph node",
                              segmented_property_category=codes.SCT.Tissue,
                              segmented_property_type=codes.SCT.LymphNode,
                              algorithm_type=SegmentAlgorithmTypeValues.MANUAL)
    seg = hd.seg.Segmentation(source_images=cts, pixel_array=mask.astype(np.uint8),  # slice d = canonical d
                              segmentation_type=SegmentationTypeValues.BINARY, segment_descriptions=[desc],
                              series_instance_uid=hd.UID(), series_number=300, sop_instance_uid=hd.UID(),
                              instance_number=1, manufacturer="phantom", manufacturer_model_name="phantom",
                              software_versions="0", device_serial_number="0")
    folder.mkdir(parents=True, exist_ok=True)
    seg.save_as(folder / "1-1.dcm")
    return folder / "1-1.dcm"


def write_ct_lymph_nodes(root: Path, scans: list[TinyScan], organ: int) -> dict[str, TinyScan]:
    """NBIA download: metadata.csv + 'CT Lymph Nodes/<Subject>/<study>/<series>/*.dcm', a CT series
    and a DICOM-SEG (the phantom organ ``organ`` standing in for the nodes) per subject; the first
    subject's mask is a legacy 0/255 image series instead, the last subject is abdominal."""
    rows, out = [], {}
    for k, s in enumerate(scans):
        subject = f"ABD_LYMPH_{k:03d}" if k == len(scans) - 1 else f"MED_LYMPH_{k:03d}"
        study = f"CT Lymph Nodes/{subject}/09-14-2014-NA-Chest-{k}"
        ct = write_series(root / study / "1.000000-CT", s.hu, s.spacing, f"ln{k}")
        seg_dir = root / study / "300.000000-Segmentation"
        if k == 0:
            seg = write_series(seg_dir, (s.labels == organ) * 255.0, s.spacing, f"lnseg{k}", modality="SEG",
                               intercept=0.0)
        else:
            seg = [write_dicom_seg(seg_dir, ct, s.labels == organ)]
        for paths, modality, folder in ((ct, "CT", "1.000000-CT"), (seg, "SEG", "300.000000-Segmentation")):
            rows.append({"Series UID": series_uid(paths[0]), "Collection": "CT Lymph Nodes", "3rd Party Analysis": "NO",
                         "Subject ID": subject, "Study UID": f"1.2.3.{k}", "Study Description": "CHEST",
                         "Study Date": "09-14-2014", "Series Description": modality, "Manufacturer": "phantom",
                         "Modality": modality, "Number of Images": len(paths),
                         "File Location": f"./{study}/{folder}"})
        out[subject] = s
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    return out


# ------------------------------------------------------------------------------------------- AirRC
AIRRC_ORGANS = {7: 1, 8: 2, 9: 3, 10: 4}  # phantom airway, heart, aorta, pulmonary artery -> AirRC class value


def write_airrc(root: Path, scans: list[TinyScan], *, luna: Path) -> dict[str, TinyScan]:
    """labelsTr/<seriesuid>.nii.gz next to LUNA16's subset*/<seriesuid>.mhd (in another orientation)."""
    import SimpleITK as sitk

    out = {}
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    for k, s in enumerate(scans):
        uid = f"1.3.6.1.4.1.14519.5.2.1.6279.6001.{200000 + k}"
        code = ("LPS", "RAI", "PLS")[k % 3]
        mhd = luna / f"subset{k % 2}" / f"{uid}.mhd"
        write_mhd(mhd, s.hu, s.spacing, code)
        lab = np.zeros_like(s.labels, dtype=np.int16)
        for organ, value in AIRRC_ORGANS.items():
            lab[s.labels == organ] = value
        write_mhd(root / "tmp.mhd", lab, s.spacing, code)  # same geometry as the CT
        img = sitk.Cast(sitk.ReadImage(str(root / "tmp.mhd")), sitk.sitkUInt8)
        sitk.WriteImage(img, str(root / "labelsTr" / f"{uid}.nii.gz"))
        out[uid] = s
    for p in root.glob("tmp.*"):
        p.unlink()
    return out
