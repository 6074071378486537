"""NRRD / MHA / MHD reader (SimpleITK). SimpleITK already reports geometry in LPS."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from voxelfm.errors import VolumeReadError
from voxelfm.io._source import SourceImage
from voxelfm.io.orientation import AxisMap

__all__ = ["read_sitk_image", "sitk_index_affine", "SITK_REFERENCE_CLIP"]

#: HU clip of the reference's ``load_mhd``.
SITK_REFERENCE_CLIP = (-1000.0, 1900.0)


def sitk_index_affine(direction: np.ndarray, spacing_ijk: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """4x4 affine from ``GetArrayFromImage`` indices ``[k, j, i]`` to LPS mm, from SimpleITK's
    direction (3x3), spacing ``(i, j, k)`` and origin."""
    d = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    sp = np.asarray(spacing_ijk, dtype=np.float64)
    index_affine = np.eye(4)
    for a in range(3):  # numpy axis a is ITK index axis 2 - a
        index_affine[:3, a] = d[:, 2 - a] * sp[2 - a]
    index_affine[:3, 3] = np.asarray(origin, dtype=np.float64)
    return index_affine


def read_sitk_image(path: str | Path, fmt: str) -> SourceImage:
    """Read an image SimpleITK understands (NRRD, MHA, MHD+RAW) into a :class:`SourceImage`.

    The numpy layout is SimpleITK's ``GetArrayFromImage`` order ``[k, j, i]`` (which is also the
    reference reader's layout); the affine is built from ``GetDirection``/``GetSpacing``/``GetOrigin``.
    """
    import SimpleITK as sitk

    path = Path(path)
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip().startswith(("Description", "Could", "Unable"))), "")
        hint = " (an .mhd needs its data file, named in ElementDataFile, next to it)" if fmt == "mhd" else ""
        raise VolumeReadError(path, f"cannot read this {fmt.upper()} file{hint}; it is corrupt, truncated or "
                                    f"not {fmt.upper()}{(': ' + first) if first else ''}") from None
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise VolumeReadError(path, f"the image has {img.GetNumberOfComponentsPerPixel()} components per voxel "
                                    f"(RGB or vector image), not a CT in HU")
    size = img.GetSize()
    dim = img.GetDimension()
    if dim == 4:
        if size[3] != 1:
            raise VolumeReadError(path, f"the image is 4-D with size {size}; save one 3-D volume per file")
        img = img[:, :, :, 0]
        size = img.GetSize()
        dim = 3
    if dim != 3 or min(size) == 1:
        raise VolumeReadError(path, f"the image is a single 2-D slice (size {size}); a CT volume needs "
                                    f"several slices — convert the whole series")
    try:
        array = sitk.GetArrayFromImage(img)  # [k, j, i]
    except RuntimeError as exc:
        raise VolumeReadError(path, f"cannot read the voxel data ({exc}); the file is corrupt or truncated") from None
    storage = array.dtype

    spacing_ijk = np.asarray(img.GetSpacing(), dtype=np.float64)
    direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(3, 3)
    origin = np.asarray(img.GetOrigin(), dtype=np.float64)
    index_affine = sitk_index_affine(direction, spacing_ijk, origin)

    source = {
        "format": fmt,
        "path": str(path),
        "modality": "CT",
        "series_uid": None,
        "storage_dtype": str(storage),
        "warnings": [],
    }
    return SourceImage(
        array=array,
        index_affine=index_affine,
        direction=direction,
        origin=origin,
        itk_axes=(2, 1, 0),
        reference_map=AxisMap(),  # reference: GetArrayFromImage order, spacing reversed
        reference_spacing=(float(spacing_ijk[2]), float(spacing_ijk[1]), float(spacing_ijk[0])),
        reference_clip=SITK_REFERENCE_CLIP,
        source=source,
        storage_dtype=storage,
        may_be_nonfinite=storage.kind == "f",
    )
