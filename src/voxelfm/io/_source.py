"""What every reader hands over (:class:`SourceImage`) and how it becomes a :class:`Volume`."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from voxelfm.errors import VolumeReadError
from voxelfm.io.orientation import AxisMap, canonical_map, obliquity_degrees, orientation_code
from voxelfm.io.validation import check_finite, check_hu, check_spacing, map_padding
from voxelfm.io.volume import Volume, VolumeReadWarning

__all__ = ["SourceImage", "build_volume", "snap_spacing", "OBLIQUE_WARN_DEG"]

#: Residual obliquity (degrees) above which reading warns.
OBLIQUE_WARN_DEG = 0.5


@dataclass
class SourceImage:
    """A decoded image in its reader's own numpy layout, with the geometry to reorient it.

    Attributes:
        array: ``[a0, a1, a2]`` voxels in HU (any real dtype) in the reader's numpy layout.
        index_affine: 4x4 mapping numpy indices of ``array`` to LPS mm.
        direction: 3x3 source direction (ITK order: columns = x/column, y/row, z/slice index axes).
        origin: LPS mm of the first voxel.
        itk_axes: which numpy axis of ``array`` is ITK index axis i, j, k (for the orientation code).
        reference_map: numpy layout of ``array`` -> the reference reader's layout.
        reference_spacing: spacing the reference reader reports, ``(sz, sy, sx)``.
        reference_clip: HU clip of the reference reader.
        source: metadata (format, path, ...); ``warnings`` are appended here.
        padding_mask: extra voxels to treat as padding (DICOM PixelPaddingValue), numpy layout.
        map_padding: map voxels < -1500 HU to -1024 (False for plain arrays).
        full_fov: the image is a whole scan (enables the "no air" warning).
        storage_dtype: dtype on disk (8-bit data is rejected as not HU).
        may_be_nonfinite: False when the values come from integers with finite scaling (skips the
            O(N) finiteness check).
    """

    array: np.ndarray
    index_affine: np.ndarray
    direction: np.ndarray
    origin: np.ndarray
    itk_axes: tuple[int, int, int]
    reference_map: AxisMap
    reference_spacing: tuple[float, float, float]
    reference_clip: tuple[float, float] | None
    source: dict[str, Any] = field(default_factory=dict)
    padding_mask: np.ndarray | None = None
    map_padding: bool = True
    full_fov: bool = True
    storage_dtype: Any = None
    may_be_nonfinite: bool = True


def snap_spacing(affine: np.ndarray) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Remove storage noise from the voxel sizes of a voxel->mm ``affine``.

    The same scan stores 0.8 mm as the decimal string ``"0.8"`` in DICOM but as the float32
    0.800000011920929 in NIfTI, and DICOM slice gaps computed from positions carry float64 noise
    (2.5000000000000004). Left as they are, such values flip Python's banker's rounding of the
    resampled size (37.5 -> 38 vs 37.49999 -> 37) and the same scan gets different features from
    different formats. Each column norm is snapped to its 7-significant-digit value when that is
    within 1e-7 relative (float32 carries ~7 digits; no CT spacing has more), and the column is
    rescaled to it. Returns ``(affine, (s0, s1, s2))`` with the spacing exactly the snapped values.
    """
    out = np.array(affine, dtype=np.float64, copy=True)
    spacing = []
    for k in range(3):
        n = float(np.linalg.norm(out[:3, k]))
        s = float(f"{n:.7g}") if np.isfinite(n) and n > 0 else n
        if s != n and abs(s - n) <= 1e-7 * n:
            out[:3, k] = out[:3, k] / n * s
        else:
            s = n
        spacing.append(s)
    return out, (spacing[0], spacing[1], spacing[2])


def _warn(source: dict[str, Any], message: str) -> None:
    source.setdefault("warnings", []).append(message)
    warnings.warn(f"{source.get('path')}: {message}", VolumeReadWarning, stacklevel=4)


def build_volume(img: SourceImage, *, check_values: bool = True) -> Volume:
    """Reorient ``img`` to canonical SPL, validate it and wrap it in a :class:`Volume`."""
    src = img.source
    path = src.get("path")
    pending = list(src.get("warnings", []))
    src["warnings"] = []
    if img.array.ndim != 3:
        raise VolumeReadError(path, f"expected a 3-D image, got shape {img.array.shape}")
    if min(img.array.shape) < 1:
        raise VolumeReadError(path, f"the image is empty (shape {img.array.shape})")
    if not np.issubdtype(img.array.dtype, np.number) or np.issubdtype(img.array.dtype, np.complexfloating):
        raise VolumeReadError(path, f"voxel type {img.array.dtype} is not a real number; a CT needs HU values")

    check_spacing(np.linalg.norm(np.asarray(img.index_affine)[:3, :3], axis=0), path)
    try:
        cmap = canonical_map(img.index_affine)
    except ValueError as exc:
        raise VolumeReadError(path, f"{exc}; fix the image geometry in the header") from None
    canon_affine, spacing = snap_spacing(img.index_affine @ cmap.index_transform(img.array.shape))
    spacing = check_spacing(spacing, path)

    # At most one copy: reorient (a view) and convert to contiguous float32. Readers hand over
    # buffers they own, so padding may be mapped in place.
    array = np.ascontiguousarray(cmap.apply(img.array), dtype=np.float32)
    pad_mask = None if img.padding_mask is None else np.ascontiguousarray(cmap.apply(img.padding_mask))

    if img.may_be_nonfinite:
        check_finite(array, path)
    if img.map_padding:
        n_pad, lowest = map_padding(array, extra_mask=pad_mask)
        src["padding_voxels"] = n_pad
        if n_pad:
            src["padding_value_hu"] = lowest
    if check_values:
        for message in check_hu(array, path, storage_dtype=img.storage_dtype, full_fov=img.full_fov):
            _warn(src, message)

    for message in pending:  # the reader's own findings, emitted once the volume is known to be good
        _warn(src, message)
    src["orientation"] = orientation_code(img.index_affine[:, list(img.itk_axes) + [3]])
    oblique = obliquity_degrees(canon_affine)
    src["obliquity_deg"] = round(oblique, 4)
    if oblique > OBLIQUE_WARN_DEG:
        _warn(src, f"the image is oblique by {oblique:.2f} degrees to the patient axes; it was reoriented "
                   f"to the nearest axes without resampling (the affine keeps the true geometry)")
    src["shape"] = list(array.shape)

    return Volume(
        array=array,
        spacing=spacing,
        affine=canon_affine,
        direction=img.direction,
        origin=img.origin,
        source=src,
        reference_clip=img.reference_clip,
        reference_map=cmap.inverse().then(img.reference_map),
        reference_spacing=img.reference_spacing,
    )
