"""Masks stored on another grid or in another format than their CT (DICOM-SEG next to a DICOM
series, NIfTI label maps next to ``.mhd`` scans): resampled onto the CT's voxel grid (nearest
neighbour, in patient space) and written as ``labels/<id>.nii.gz``, so
:func:`voxelfm.io.read_volume` reads the CT and its label map into the same canonical grid.
(Per-class masks already on the CT grid are merged by :mod:`voxelfm.datasets._labelmaps`.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["dicom_seg_on_reference", "is_dicom_seg", "read_sitk", "write_label_map"]


def read_sitk(path: Path) -> Any:
    """A SimpleITK image from a file or a DICOM series folder (4-D with one frame → 3-D)."""
    import SimpleITK as sitk

    if path.is_dir():
        reader = sitk.ImageSeriesReader()
        ids = reader.GetGDCMSeriesIDs(str(path))
        if not ids:
            raise ValueError(f"{path}: no DICOM series")
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(path), ids[0]))
        img = reader.Execute()
    else:
        img = sitk.ReadImage(str(path))
    if img.GetDimension() == 4 and img.GetSize()[-1] == 1:
        img = sitk.Extract(img, list(img.GetSize()[:3]) + [0], [0, 0, 0, 0])
    if img.GetDimension() != 3:
        raise ValueError(f"{path}: expected a 3-D image, got {img.GetDimension()}-D")
    return img


def write_label_map(mask: Any, reference: Any, out: Path, *, binary: bool = False) -> dict[int, int]:
    """Resample ``mask`` onto ``reference``'s grid (nearest neighbour) and write it as uint8 NIfTI.

    Args:
        mask, reference: SimpleITK images (the mask may have its own grid; patient space is used).
        out: the ``.nii.gz`` to write.
        binary: map every non-zero value to 1 (masks stored as 0/255).

    Returns:
        voxel count per label value present.
    """
    import SimpleITK as sitk

    res = sitk.Resample(mask, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, mask.GetPixelID())
    arr = sitk.GetArrayFromImage(res)
    arr = (arr > 0).astype(np.uint8) if binary else arr.astype(np.int64)
    if arr.min() < 0 or arr.max() > 255:
        raise ValueError(f"label values outside 0-255 in the mask for {out.name}")
    img = sitk.GetImageFromArray(arr.astype(np.uint8))
    img.CopyInformation(reference)
    out.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(out), True)
    values, counts = np.unique(arr, return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts)}


SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


def is_dicom_seg(folder: Path) -> Path | None:
    """The DICOM Segmentation object (SOP class Segmentation Storage) in ``folder``, or ``None``."""
    import pydicom

    for p in sorted(folder.iterdir()):
        if not p.is_file():
            continue
        try:
            ds = pydicom.dcmread(p, stop_before_pixels=True, specific_tags=["SOPClassUID"])
        except Exception:  # noqa: BLE001 - not DICOM
            continue
        if str(getattr(ds, "SOPClassUID", "")) == SEGMENTATION_STORAGE:
            return p
    return None


def dicom_seg_on_reference(path: Path, reference: Any) -> Any:
    """A DICOM-SEG (binary or fractional, one or several segments) as a 0/1 mask on ``reference``'s
    grid (SimpleITK image).

    Each frame is placed by its own ``PlanePositionSequence`` / ``PlaneOrientationSequence`` /
    ``PixelMeasuresSequence`` (per-frame or shared functional groups): every foreground pixel's
    patient position goes to the nearest reference voxel. GDCM's series reader is not used for SEG
    objects: it stacks only the frames present (empty frames are often omitted) with a spacing of
    its own.
    """
    import pydicom
    import SimpleITK as sitk

    ds = pydicom.dcmread(path)
    frames = ds.pixel_array
    if frames.ndim == 2:
        frames = frames[None]
    shared = ds.get("SharedFunctionalGroupsSequence", [None])[0]
    per_frame = ds.get("PerFrameFunctionalGroupsSequence", [])

    def item(k: int, seq: str) -> Any:
        for groups in (per_frame[k] if k < len(per_frame) else None, shared):
            if groups is not None and seq in groups:
                return groups[seq][0]
        raise ValueError(f"{path}: frame {k} has no {seq}")

    size = np.array(reference.GetSize())
    mask = np.zeros(tuple(size[::-1]), dtype=np.uint8)  # sitk array order (k, j, i)
    origin = np.array(reference.GetOrigin())
    inv = np.linalg.inv(np.array(reference.GetDirection()).reshape(3, 3) * np.array(reference.GetSpacing()))
    for k in range(frames.shape[0]):
        rr, cc = np.nonzero(frames[k] > 0)
        if not rr.size:
            continue
        pos = np.array(item(k, "PlanePositionSequence").ImagePositionPatient, dtype=float)
        iop = np.array(item(k, "PlaneOrientationSequence").ImageOrientationPatient, dtype=float)
        dr, dc = (float(v) for v in item(k, "PixelMeasuresSequence").PixelSpacing)  # row, column spacing
        pts = pos + np.outer(cc * dc, iop[:3]) + np.outer(rr * dr, iop[3:])  # LPS mm
        idx = np.rint((pts - origin) @ inv.T).astype(np.int64)  # (i, j, k) of the reference
        ok = ((idx >= 0) & (idx < size)).all(axis=1)
        mask[idx[ok, 2], idx[ok, 1], idx[ok, 0]] = 1
    img = sitk.GetImageFromArray(mask)
    img.CopyInformation(reference)
    return img
