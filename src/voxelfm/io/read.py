"""``read_volume``: one call for every supported CT input."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from voxelfm.errors import VolumeReadError
from voxelfm.io._source import SourceImage, build_volume
from voxelfm.io.overrides import ReadOverrides, apply_overrides
from voxelfm.io.volume import Volume

__all__ = ["read_volume", "detect_format", "VOLUME_SUFFIXES"]

#: File-name endings of single-file volume formats, mapped to format names.
VOLUME_SUFFIXES: dict[str, str] = {
    ".nii.gz": "nifti", ".nii": "nifti", ".nrrd": "nrrd", ".nhdr": "nrrd", ".mha": "mha", ".mhd": "mhd",
    ".npy": "npy", ".npz": "npz", ".zip": "zip", ".dcm": "dicom", ".dicom": "dicom", ".ima": "dicom",
}


def detect_format(path: str | Path) -> str:
    """Format name of ``path``: ``dicom`` (folder or file), ``zip``, ``nifti``, ``nrrd``, ``mha``, ``mhd``,
    ``npy``, ``npz``; files without a known ending are probed for a DICOM header.

    Raises:
        VolumeReadError: unknown file type or missing path.
    """
    p = Path(path)
    if not p.exists():
        raise VolumeReadError(p, "no such file or folder")
    if p.is_dir():
        return "dicom"
    name = p.name.lower()
    for suffix, fmt in VOLUME_SUFFIXES.items():
        if name.endswith(suffix):
            return fmt
    from voxelfm.io.dicom import is_dicom_file

    if is_dicom_file(p):
        return "dicom"
    import zipfile

    if zipfile.is_zipfile(p):
        return "zip"
    raise VolumeReadError(p, "unsupported file type; voxelfm reads a DICOM series folder, a zip of one, an "
                             "Enhanced CT DICOM file, NIfTI (.nii/.nii.gz), NRRD, MHA/MHD and .npy/.npz")


def read_volume(path: str | Path, *, spacing: Sequence[float] | None = None, series_uid: str | None = None,
                check_hu: bool = True, overrides: ReadOverrides | None = None) -> Volume:
    """Read a CT volume into a :class:`Volume` (float32 HU ``[D, H, W]`` in canonical SPL orientation).

    Args:
        path: a DICOM series folder (searched recursively; files with or without ``.dcm``; junk such as
            DICOMDIR and text files ignored), a zip of one, an Enhanced CT (multi-frame) DICOM file,
            NIfTI ``.nii``/``.nii.gz``, NRRD ``.nrrd``/``.nhdr``, ``.mha``/``.mhd`` or ``.npy``/``.npz``.
        spacing: ``(sz, sy, sx)`` mm for numpy arrays (default: an ``.npz`` ``spacing`` entry, else
            1 mm with a warning). Ignored for formats that store their geometry.
        series_uid: SeriesInstanceUID to read when a folder holds several series (default: the CT
            series with the most slices; scouts/localizers are never picked).
        check_hu: reject values that are clearly not Hounsfield units (see docs/io.md); set False
            only for data you know to be HU.
        overrides: spacing / orientation / rescale that replace the file header's (a dataset's
            metadata, e.g. CT-RATE's); see :mod:`voxelfm.io.overrides`. A header that contradicts
            them is warned about. Not for DICOM.

    Raises:
        VolumeReadError: the message names the file and the reason (not a CT, a single 2-D slice, no
            DICOM found, corrupt/truncated file, non-finite voxels, bad spacing, missing slices,
            values not in HU, ...) and what to do.
    """
    p = Path(path)
    fmt = detect_format(p)
    if series_uid is not None and fmt not in ("dicom", "zip"):
        raise VolumeReadError(p, f"series_uid applies to DICOM input only, not {fmt}")
    img: SourceImage
    if fmt in ("dicom", "zip"):
        from voxelfm.io.dicom import read_dicom

        img = read_dicom(p, series_uid=series_uid)
    elif fmt == "nifti":
        from voxelfm.io.nifti import read_nifti

        img = read_nifti(p)
    elif fmt in ("nrrd", "mha", "mhd"):
        from voxelfm.io.sitk_formats import read_sitk_image

        img = read_sitk_image(p, fmt)
    else:
        from voxelfm.io.arrays import read_array_file

        img = read_array_file(p, spacing)
    if spacing is not None and fmt not in ("npy", "npz"):
        img.source.setdefault("warnings", []).append(
            f"spacing={tuple(spacing)} was ignored: a {fmt} file stores its own voxel spacing")
    if overrides is not None and not overrides.is_empty:
        apply_overrides(img, overrides, fmt)
    return build_volume(img, check_values=check_hu)
