"""NIfTI-1/2 reader (nibabel): ``.nii`` and ``.nii.gz``, scl_slope/scl_inter applied, any orientation."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from voxelfm.errors import VolumeReadError
from voxelfm.io._source import SourceImage
from voxelfm.io.orientation import AxisMap, lps_to_ras

__all__ = ["read_nifti", "NIFTI_REFERENCE_CLIP"]

#: HU clip of the reference's ``load_nifti``.
NIFTI_REFERENCE_CLIP = (-1000.0, 1900.0)


def _squeeze_to_3d(shape: tuple[int, ...], path: Path) -> tuple[int, ...] | None:
    """Index selecting the 3-D volume, or None when the image is 3-D already."""
    if len(shape) > 3 and any(s != 1 for s in shape[3:]):
        raise VolumeReadError(path, f"the image is {len(shape)}-D with shape {shape} (a time series or "
                                    f"several volumes); save one 3-D volume per file")
    if len(shape) < 3 or any(s == 1 for s in shape[:3]):
        raise VolumeReadError(path, f"the image is a single 2-D slice (shape {shape}); a CT volume needs "
                                    f"several slices — convert the whole series")
    if len(shape) == 3:
        return None
    return (slice(None),) * 3 + (0,) * (len(shape) - 3)


def read_nifti(path: str | Path) -> SourceImage:
    """Read a NIfTI file into a :class:`SourceImage` (file order ``[i, j, k]``).

    The voxel->RAS affine is nibabel's ``img.affine`` (sform when sform_code > 0, else qform when
    qform_code > 0, else a pixdim-only fallback, which is warned about); it is converted to LPS.
    Intensities are ``stored * scl_slope + scl_inter`` when the header sets a slope.
    """
    import nibabel as nib

    path = Path(path)
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for bad files
        raise VolumeReadError(path, f"not a readable NIfTI file ({type(exc).__name__}: {exc}); the file is "
                                    f"corrupt, truncated or not NIfTI") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise VolumeReadError(path, f"not a NIfTI image (nibabel read a {type(img).__name__})")
    hdr = img.header
    shape = tuple(int(s) for s in img.shape)
    storage = img.get_data_dtype()
    if storage.names is not None or np.issubdtype(storage, np.complexfloating):
        raise VolumeReadError(path, f"voxel type {storage} (RGB/complex) is not a CT in HU")
    index = _squeeze_to_3d(shape, path)
    try:
        proxy = img.dataobj if index is None else img.dataobj[index]
        array = np.asarray(proxy, dtype=np.float32) if index is not None else img.get_fdata(dtype=np.float32)
    except Exception as exc:
        raise VolumeReadError(path, f"cannot read the voxel data ({type(exc).__name__}: {exc}); the file is "
                                    f"corrupt or truncated") from None

    warnings: list[str] = []
    sform_code, qform_code = int(hdr["sform_code"]), int(hdr["qform_code"])
    if sform_code > 0:
        affine_from = "sform"
    elif qform_code > 0:
        affine_from = "qform"
    else:
        affine_from = "pixdim"
        warnings.append("the header has no orientation (sform_code = qform_code = 0); nibabel's "
                        "pixdim-only fallback orientation was assumed — check left/right")
    affine_ras = np.asarray(img.affine, dtype=np.float64)
    index_affine = lps_to_ras(affine_ras)
    zooms = np.linalg.norm(affine_ras[:3, :3], axis=0)
    direction = index_affine[:3, :3] / np.where(zooms > 0, zooms, 1.0)
    # nibabel moves scl_slope/scl_inter from the header into the data proxy when loading
    slope = float(getattr(img.dataobj, "slope", 1.0))
    inter = float(getattr(img.dataobj, "inter", 0.0))
    scaled = not (slope == 1.0 and inter == 0.0)

    source = {
        "format": "nifti",
        "path": str(path),
        "modality": "CT",
        "series_uid": None,
        "storage_dtype": str(storage),
        "nifti_affine": affine_from,
        "scl_slope": slope if scaled else None,
        "scl_inter": inter if scaled else None,
        "description": (bytes(hdr["descrip"]).split(b"\0")[0].decode("latin-1").strip() or None),
        "warnings": warnings,
    }
    return SourceImage(
        array=array,
        index_affine=index_affine,
        direction=direction,
        origin=index_affine[:3, 3].copy(),
        itk_axes=(0, 1, 2),
        # reference: get_fdata() then "x y z -> z y x"; spacing = column norms reversed
        reference_map=AxisMap((2, 1, 0)),
        reference_spacing=(float(zooms[2]), float(zooms[1]), float(zooms[0])),
        reference_clip=NIFTI_REFERENCE_CLIP,
        source=source,
        storage_dtype=None if scaled else storage,
        may_be_nonfinite=storage.kind == "f" or not (np.isfinite(slope) and np.isfinite(inter)),
    )
