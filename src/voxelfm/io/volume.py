"""The :class:`Volume` type: one CT scan as a float32 HU array in canonical SPL orientation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from voxelfm.io.orientation import CANONICAL_CODE, AxisMap

__all__ = ["Volume", "VolumeReadWarning"]


class VolumeReadWarning(UserWarning):
    """Something about a CT volume is unusual but could be handled (the volume was still read).

    Every such warning is also recorded in ``Volume.source["warnings"]``.
    """


@dataclass(eq=False)
class Volume:
    """One CT volume in canonical orientation.

    Attributes:
        array: ``[D, H, W]`` float32 Hounsfield units in canonical **SPL** orientation: axis 0 runs
            inferior -> superior, axis 1 anterior -> posterior, axis 2 right -> left (the layout of an
            axial DICOM series sorted by slice position: LPS x = axis 2, y = axis 1, z = axis 0).
        spacing: ``(sz, sy, sx)`` voxel size in mm along axes 0, 1, 2.
        affine: 4x4 float64 mapping canonical indices ``(d, h, w, 1)`` to LPS patient mm.
        direction: 3x3 direction cosines of the *source* image in LPS as read; column ``i`` is the
            source's ``i``-th index axis in (x/column, y/row, z/slice) order, as SimpleITK's
            ``GetDirection()`` (identity for arrays without geometry).
        origin: ``(3,)`` LPS mm position of the source's first voxel (SimpleITK ``GetOrigin()``).
        source: JSON-able metadata: ``format``, ``path``, ``modality``, ``series_uid``,
            ``manufacturer``, ``kernel``, ``n_slices``, ``orientation`` (source axis code),
            ``obliquity_deg``, ``padding_voxels``, ``warnings`` (list of str), ... (see docs/io.md).
        reference_clip: HU clip the reference implementation's reader applies to this format
            (DICOM ``(-1000, 1000)``; NIfTI/MHA/MHD/NRRD ``(-1000, 1900)``; arrays ``None``).
        reference_map: axis permutation + flips taking :attr:`array` to the reference reader's layout.
        reference_spacing: the spacing ``(sz, sy, sx)`` the reference reader would report.
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    origin: np.ndarray = field(default_factory=lambda: np.zeros(3))
    source: dict[str, Any] = field(default_factory=dict)
    reference_clip: tuple[float, float] | None = None
    reference_map: AxisMap = field(default_factory=AxisMap)
    reference_spacing: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        a = np.asarray(self.array)
        if a.ndim != 3:
            raise ValueError(f"Volume.array must be 3-D [D, H, W], got shape {a.shape}")
        if a.dtype != np.float32:
            a = a.astype(np.float32)
        self.array = a
        sp = tuple(float(s) for s in self.spacing)
        if len(sp) != 3:
            raise ValueError(f"spacing must have 3 values (sz, sy, sx), got {self.spacing}")
        self.spacing = sp  # type: ignore[assignment]
        self.affine = np.asarray(self.affine, dtype=np.float64).reshape(4, 4)
        self.direction = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)
        self.origin = np.asarray(self.origin, dtype=np.float64).reshape(3)
        if self.reference_spacing is None:
            self.reference_spacing = tuple(self.spacing[p] for p in self.reference_map.perm)  # type: ignore[assignment]
        else:
            self.reference_spacing = tuple(float(s) for s in self.reference_spacing)  # type: ignore[assignment]
        self.source.setdefault("warnings", [])

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_array(cls, array: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0), *,
                   origin: Sequence[float] = (0.0, 0.0, 0.0), source: dict[str, Any] | None = None
                   ) -> Volume:
        """Wrap an HU array that is already ``[D, H, W]`` in SPL order (no checks, no copy if float32).

        The affine is diagonal (axis 0 -> +z, axis 1 -> +y, axis 2 -> +x in LPS) with ``origin`` the
        LPS ``(x, y, z)`` mm of voxel ``(0, 0, 0)``; :meth:`reference_layout` returns the array as is
        (the reference does not reorient arrays) and :attr:`reference_clip` is None.
        """
        sz, sy, sx = (float(s) for s in spacing)
        affine = np.zeros((4, 4))
        affine[2, 0], affine[1, 1], affine[0, 2] = sz, sy, sx
        affine[:3, 3] = np.asarray(origin, dtype=np.float64)
        affine[3, 3] = 1.0
        direction = np.eye(3)
        src = {"format": "array", "path": None}
        src.update(source or {})
        return cls(array=array, spacing=(sz, sy, sx), affine=affine, direction=direction,
                   origin=affine[:3, 3].copy(), source=src)

    # ------------------------------------------------------------------ views
    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape)  # type: ignore[return-value]

    @property
    def orientation(self) -> str:
        """Orientation code of :attr:`array` (always ``"SPL"``)."""
        return CANONICAL_CODE

    @property
    def warnings(self) -> list[str]:
        return list(self.source.get("warnings", []))

    def reference_layout(self) -> tuple[np.ndarray, tuple[float, float, float]]:
        """The volume as the reference implementation's reader would lay it out (``paper`` preset).

        Returns:
            ``(array [D', H', W'] float32 HU, (sz, sy, sx) mm)`` in the reference reader's axis
            order (NIfTI: file order with axes reversed; DICOM: slices by ascending z, rows, cols;
            MHA/MHD/NRRD: SimpleITK array order; arrays: as is), **not clipped** (clip with
            :attr:`reference_clip`). Intensities are this reader's HU (per-slice rescale, padding
            mapped to -1024), which only differ from the reference's where the reference is wrong.
            The array is a view of :attr:`array` when no reordering is needed; do not modify it.
        """
        out = self.reference_map.apply(self.array)
        if not self.reference_map.is_identity:
            out = np.ascontiguousarray(out)
        return out, tuple(self.reference_spacing)  # type: ignore[return-value]

    def index_to_lps(self, indices: np.ndarray) -> np.ndarray:
        """Map canonical voxel indices ``[K, 3]`` (d, h, w) to LPS mm ``[K, 3]``."""
        idx = np.atleast_2d(np.asarray(indices, dtype=np.float64))
        return idx @ self.affine[:3, :3].T + self.affine[:3, 3]

    def lps_to_index(self, points: np.ndarray) -> np.ndarray:
        """Map LPS mm points ``[K, 3]`` to (fractional) canonical voxel indices ``[K, 3]`` (d, h, w)."""
        pts = np.atleast_2d(np.asarray(points, dtype=np.float64))
        return np.linalg.solve(self.affine[:3, :3], (pts - self.affine[:3, 3]).T).T

    def __repr__(self) -> str:
        fmt = self.source.get("format", "?")
        sp = ", ".join(f"{s:.3g}" for s in self.spacing)
        return f"Volume(shape={self.shape}, spacing=({sp}) mm, format={fmt!r}, path={self.source.get('path')!r})"
