"""Writing phantom volumes: NIfTI (varying axis orientation codes) and DICOM CT series.

Both writers take the canonical SPL array (``[D, H, W]``: inferior→superior, anterior→posterior,
right→left) with its LPS geometry and store it the way real data arrives: NIfTI files in one of
several axis orientations (``RAS``, ``LPS``, ``LAS``, ...; the affine is always correct), int16 with
``scl_slope = 1`` and ``scl_inter = -1024``; DICOM series with one file per slice, correct geometry
tags and rescale slope/intercept. Files are written atomically and byte-for-byte reproducibly
(gzip without a timestamp, UIDs derived from the case id and seed).
"""

from __future__ import annotations

import gzip
import io
import os
from pathlib import Path

import numpy as np

from voxelfm.utils import atomic_write_bytes

__all__ = ["file_axes", "write_nifti", "write_dicom_series"]


def file_axes(code: str, shape: tuple[int, int, int]) -> np.ndarray:
    """4×4 matrix mapping file voxel indices ``(i, j, k, 1)`` of a NIfTI stored with axis code
    ``code`` (e.g. ``"RAS"``: i increases towards patient right, ...) to canonical ``(d, h, w, 1)``."""
    D, H, W = shape
    m = np.zeros((4, 4))
    m[3, 3] = 1.0
    for file_axis, letter in enumerate(code.upper()):
        if letter in "LR":
            canon, n, positive = 2, W, letter == "L"
        elif letter in "PA":
            canon, n, positive = 1, H, letter == "P"
        elif letter in "SI":
            canon, n, positive = 0, D, letter == "S"
        else:
            raise ValueError(f"bad orientation code {code!r}")
        m[canon, file_axis] = 1.0 if positive else -1.0
        m[canon, 3] = 0.0 if positive else n - 1
    if sorted(np.nonzero(m[:3, :3])[0].tolist()) != [0, 1, 2]:
        raise ValueError(f"orientation code {code!r} must name each of L/R, P/A, S/I once")
    return m


def _to_file_order(arr: np.ndarray, code: str) -> np.ndarray:
    """Canonical ``[D, H, W]`` → file array ``[I, J, K]`` for axis code ``code``."""
    m = file_axes(code, arr.shape)
    perm = [int(np.nonzero(m[:3, f])[0][0]) for f in range(3)]  # canonical axis of each file axis
    out = np.transpose(arr, perm)
    for f in range(3):
        if m[perm[f], f] < 0:
            out = np.flip(out, axis=f)
    return np.ascontiguousarray(out)


def write_nifti(
    path: str | Path,
    canon: np.ndarray,
    affine_lps: np.ndarray,
    code: str,
    *,
    intercept: float | None = None,
    compresslevel: int = 1,
) -> None:
    """Write a canonical ``[D, H, W]`` array as NIfTI-1 in axis orientation ``code``.

    Args:
        canon: int16 stored values (with ``intercept``) or a uint8 label map.
        affine_lps: 4×4 canonical ``(d, h, w)`` → LPS mm.
        code: NIfTI axis code of the stored array, e.g. ``"RAS"``.
        intercept: rescale intercept (``scl_inter``, slope 1); None for label maps.
    """
    import nibabel as nib

    data = _to_file_order(canon, code)
    lps = affine_lps @ file_axes(code, canon.shape)
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    img = nib.Nifti1Image(data, ras)
    img.header.set_qform(ras, code=1)
    img.header.set_sform(ras, code=1)
    img.header.set_xyzt_units("mm", "sec")
    if intercept is not None:
        img.header.set_slope_inter(1.0, float(intercept))
    raw = img.to_bytes()
    if str(path).endswith(".gz"):
        raw = _gzip(raw, compresslevel)
    atomic_write_bytes(path, raw)


_GZIP_MEMBER = 32 << 20  # bytes per gzip member when compressing in parallel


def _gzip(raw: bytes, level: int, member_bytes: int | None = None) -> bytes:
    """Deterministic gzip (no timestamp). Data larger than one member is compressed as
    concatenated gzip members in threads (valid gzip, read by zlib, Python, nibabel and ITK);
    the output depends only on the data, never on the number of threads."""
    member_bytes = _GZIP_MEMBER if member_bytes is None else int(member_bytes)
    if len(raw) <= member_bytes:
        return gzip.compress(raw, compresslevel=level, mtime=0)
    from concurrent.futures import ThreadPoolExecutor

    view = memoryview(raw)
    chunks = [view[i:i + member_bytes] for i in range(0, len(raw), member_bytes)]
    with ThreadPoolExecutor(max_workers=min(len(chunks), os.cpu_count() or 1, 4)) as ex:
        parts = list(ex.map(lambda c: gzip.compress(c, compresslevel=level, mtime=0), chunks))
    return b"".join(parts)


def write_dicom_series(
    folder: str | Path,
    stored: np.ndarray,
    affine_lps: np.ndarray,
    *,
    intercept: float,
    uid_seed: str,
    patient_id: str,
    patient_age: float,
    patient_sex: str,
    study_date: str,
    kvp: int,
    kernel: str,
    slice_order: str = "descending",
    description: str = "voxelfm phantom",
    padding_value: int | None = None,
) -> list[Path]:
    """Write a canonical int16 ``[D, H, W]`` volume as a DICOM CT series, one file per slice.

    Geometry: ImageOrientationPatient ``[1,0,0, 0,1,0]`` (rows run to patient left, columns
    posterior), ImagePositionPatient of each slice's first voxel, PixelSpacing ``[sy, sx]``,
    SliceThickness = SpacingBetweenSlices = ``sz``; RescaleSlope 1, RescaleIntercept
    ``intercept``. ``slice_order="descending"`` numbers instances from the top slice down (as many
    scanners do). UIDs are derived deterministically from ``uid_seed``.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    D, H, W = stored.shape
    sz, sy, sx = float(affine_lps[2, 0]), float(affine_lps[1, 1]), float(affine_lps[0, 2])
    origin = affine_lps[:3, 3]
    study_uid = generate_uid(entropy_srcs=[uid_seed, "study"])
    series_uid = generate_uid(entropy_srcs=[uid_seed, "series"])
    frame_uid = generate_uid(entropy_srcs=[uid_seed, "frame"])
    paths = []
    order = list(range(D)) if slice_order == "ascending" else list(range(D - 1, -1, -1))
    for inst, d in enumerate(order, start=1):
        sop_uid = generate_uid(entropy_srcs=[uid_seed, "sop", str(d)])
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = generate_uid(entropy_srcs=["voxelfm"])
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.Modality = "CT"
        ds.Manufacturer = "voxelfm phantom"
        ds.PatientID = patient_id
        ds.PatientName = f"Phantom^{patient_id}"
        ds.PatientAge = f"{int(patient_age):03d}Y"
        ds.PatientSex = patient_sex
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = study_date
        ds.StudyTime = ds.SeriesTime = "120000"
        ds.SeriesDescription = description
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SeriesNumber = 1
        ds.InstanceNumber = inst
        ds.BodyPartExamined = "CHEST"
        ds.KVP = kvp
        ds.ConvolutionKernel = kernel
        ds.PatientPosition = "HFS"
        ds.ImagePositionPatient = [f"{v:.4f}" for v in (origin[0], origin[1], origin[2] + d * sz)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [f"{sy:.6f}", f"{sx:.6f}"]
        ds.SliceThickness = f"{sz:.4f}"
        ds.SpacingBetweenSlices = f"{sz:.4f}"
        ds.SliceLocation = f"{origin[2] + d * sz:.4f}"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = H, W
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = f"{intercept:.0f}"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        if padding_value is not None:  # reconstruction-circle padding, as scanners mark it
            ds.add_new(0x00280120, "SS", int(padding_value))
        ds.WindowCenter, ds.WindowWidth = "-600", "1500"
        ds.PixelData = np.ascontiguousarray(stored[d]).astype("<i2").tobytes()
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        p = folder / f"IM{inst:04d}.dcm"
        atomic_write_bytes(p, buf.getvalue())
        paths.append(p)
    return paths
