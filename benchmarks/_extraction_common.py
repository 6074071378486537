"""Shared helpers of the benchmarks: synthetic CT, JSON output, peak RSS."""

from __future__ import annotations

import json
import platform
import resource
import sys
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def synthetic_ct(shape, seed: int = 0, *, body=(0.8, 0.7, 0.75)) -> np.ndarray:
    """float32 HU: air, an elliptic body (soft tissue), two lungs, a spine, noise. Axes (S, P, L)."""
    rng = np.random.default_rng(seed)
    D, H, W = shape
    d = np.linspace(-1, 1, D, dtype=np.float32)[:, None, None]
    h = np.linspace(-1, 1, H, dtype=np.float32)[None, :, None]
    w = np.linspace(-1, 1, W, dtype=np.float32)[None, None, :]
    inplane = (h / body[1]) ** 2 + (w / body[2]) ** 2
    vol = np.full(shape, -1000.0, np.float32)
    in_body = (np.abs(d) < body[0]) & (inplane < 1)
    vol[in_body] = 40.0
    lungs = in_body & (((h + 0.1) / 0.45) ** 2 + ((np.abs(w) - 0.35) / 0.25) ** 2 < 1)
    vol[lungs] = -850.0
    vol[in_body & ((h - 0.5) ** 2 + w ** 2 < 0.01)] = 700.0
    vol += rng.normal(0, 15, size=shape).astype(np.float32)
    return vol


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, MiB (Linux ru_maxrss is KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def write_json(path: Path | str, result: dict, *, indent: int = 2, default=str) -> str:
    """Print ``result`` as JSON and write it to ``path`` atomically (parent folders created)."""
    from voxelfm.utils import atomic_write_text

    text = json.dumps(result, indent=indent, default=default)
    print(text)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text + "\n")
    return text


def write_result(name: str, result: dict) -> None:
    import torch

    result = {"benchmark": name, "python": sys.version.split()[0], "torch": torch.__version__,
              "machine": platform.machine(), "threads": torch.get_num_threads(), **result}
    write_json(RESULTS / f"{name}.json", result, indent=1, default=float)


def write_nifti_ras(path: Path, canonical: np.ndarray, spacing) -> None:
    """Canonical (S, P, L) HU → RAS+ int16 NIfTI (i = L→R, j = P→A, k = S)."""
    import nibabel as nib

    sz, sy, sx = spacing
    data = np.ascontiguousarray(np.transpose(canonical, (2, 1, 0))[::-1, ::-1, :])
    affine = np.diag([sx, sy, sz, 1.0])
    img = nib.Nifti1Image(np.round(data).astype(np.int16), affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    nib.save(img, str(path))


def write_dicom_axial(folder: Path, canonical: np.ndarray, spacing, *, uid_file_names: bool = False) -> None:
    """Canonical (S, P, L) HU → one uncompressed axial CT series (int16, intercept -1024).

    ``uid_file_names``: name the files by random UIDs (their order says nothing about the slice
    order, so a reader must sort by position) instead of ``IM00000.dcm, ...``.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    series, study = generate_uid(), generate_uid()
    sz, sy, sx = spacing
    for k in range(canonical.shape[0]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.Modality, ds.PatientID, ds.InstanceNumber = "CT", "BENCH", k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [0.0, 0.0, float(k * sz)]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [float(sy), float(sx)]
        ds.SliceThickness = float(sz)
        ds.RescaleSlope, ds.RescaleIntercept = 1.0, -1024.0
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = canonical.shape[1:]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = np.round(canonical[k] + 1024).astype(np.int16).tobytes()
        name = f"{generate_uid()}" if uid_file_names else f"IM{k:05d}.dcm"
        ds.save_as(folder / name, enforce_file_format=True)
