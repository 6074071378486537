"""Geometry of a volume file from its header alone (no voxel data read): where each canonical
voxel of :func:`voxelfm.io.read_volume`'s output lies in patient space.

Used to map world coordinates published with a dataset (LUNA16's nodule centres in ``.mhd`` LPS
mm, for one) onto the canonical SPL grid without reading the scans.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from voxelfm.errors import VolumeReadError

__all__ = ["HeaderGeometry", "read_header_geometry"]


@dataclass(frozen=True)
class HeaderGeometry:
    """Canonical geometry of a volume file.

    Attributes:
        shape: ``(D, H, W)`` of the canonical SPL array :func:`~voxelfm.io.read_volume` returns.
        spacing: ``(sz, sy, sx)`` mm.
        affine: 4x4 canonical index ``(d, h, w, 1)`` → LPS mm (the :class:`~voxelfm.io.Volume` affine).
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    affine: np.ndarray

    def lps_to_index(self, points: np.ndarray) -> np.ndarray:
        """LPS mm points ``[K, 3]`` → fractional canonical voxel indices ``[K, 3]`` (d, h, w)."""
        pts = np.atleast_2d(np.asarray(points, dtype=np.float64))
        return np.linalg.solve(self.affine[:3, :3], (pts - self.affine[:3, 3]).T).T

    def index_to_lps(self, indices: np.ndarray) -> np.ndarray:
        """Canonical voxel indices ``[K, 3]`` → LPS mm ``[K, 3]``."""
        idx = np.atleast_2d(np.asarray(indices, dtype=np.float64))
        return idx @ self.affine[:3, :3].T + self.affine[:3, 3]


def _sitk_header(path: Path) -> tuple[np.ndarray, tuple[int, int, int]]:
    import SimpleITK as sitk

    from voxelfm.io.sitk_formats import sitk_index_affine

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise VolumeReadError(path, "cannot read the image header; the file is corrupt or not MHA/MHD/NRRD") from None
    size = reader.GetSize()
    if len(size) != 3:
        raise VolumeReadError(path, f"expected a 3-D image, the header says size {size}")
    affine = sitk_index_affine(np.asarray(reader.GetDirection()), np.asarray(reader.GetSpacing()),
                               np.asarray(reader.GetOrigin()))
    return affine, (int(size[2]), int(size[1]), int(size[0]))


def _nifti_header(path: Path) -> tuple[np.ndarray, tuple[int, int, int]]:
    import nibabel as nib

    from voxelfm.io.orientation import lps_to_ras

    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for bad files
        raise VolumeReadError(path, f"not a readable NIfTI header ({type(exc).__name__})") from None
    shape = tuple(int(s) for s in img.shape[:3])
    return lps_to_ras(np.asarray(img.affine, dtype=np.float64)), shape  # type: ignore[return-value]


_HEADER_READERS = {"mhd": _sitk_header, "mha": _sitk_header, "nrrd": _sitk_header, "nifti": _nifti_header}


def read_header_geometry(path: str | Path) -> HeaderGeometry:
    """The canonical geometry :func:`~voxelfm.io.read_volume` gives ``path``, from its header only.

    Supports NIfTI, MHA/MHD and NRRD (DICOM series and arrays: read the volume).

    Raises:
        VolumeReadError: unreadable header or unsupported format.
    """
    from voxelfm.io._source import snap_spacing
    from voxelfm.io.orientation import canonical_map
    from voxelfm.io.read import detect_format

    p = Path(path)
    fmt = detect_format(p)
    reader = _HEADER_READERS.get(fmt)
    if reader is None:
        raise VolumeReadError(p, f"header-only geometry is available for NIfTI, MHA/MHD and NRRD, not {fmt}")
    index_affine, shape = reader(p)
    cmap = canonical_map(index_affine)
    affine, spacing = snap_spacing(index_affine @ cmap.index_transform(shape))
    return HeaderGeometry(shape=cmap.out_shape(shape), spacing=spacing, affine=affine)
