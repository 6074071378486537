"""Masks stored on another grid or in another format than their CT (DICOM-SEG next to a DICOM
series, NIfTI label maps next to ``.mhd`` scans): resampled onto the CT's voxel grid (nearest
neighbour, in patient space) and written as ``labels/<id>.nii.gz``, so
:func:`voxelfm.io.read_volume` reads the CT and its label map into the same canonical grid.
(Per-class masks already on the CT grid are merged by :mod:`voxelfm.datasets._labelmaps`.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["read_sitk", "write_label_map"]


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
