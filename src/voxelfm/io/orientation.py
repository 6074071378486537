"""Axis bookkeeping: permutations + flips between array layouts, and the canonical SPL frame.

Coordinates are LPS patient millimetres throughout (DICOM / ITK convention: +x towards the patient's
Left, +y Posterior, +z Superior). The canonical voxel layout of :class:`voxelfm.io.Volume` is
**SPL**: array axis 0 increases towards Superior, axis 1 towards Posterior, axis 2 towards Left,
i.e. canonical axis ``k`` runs along LPS axis ``2 - k``.

Orientation codes follow nibabel's convention: one letter per index axis naming the direction in which
that axis *increases* ("RAS" = i → Right, j → Anterior, k → Superior).

Reorientation never resamples: :func:`canonical_map` finds the permutation and flips that bring an
image's index axes closest to the canonical axes (nibabel's :func:`~nibabel.orientations.io_orientation`),
and any residual rotation is reported by :func:`obliquity_degrees`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "AxisMap",
    "canonical_map",
    "obliquity_degrees",
    "orientation_code",
    "lps_to_ras",
    "CANONICAL_CODE",
]

#: Orientation code of the canonical array axes (d, h, w).
CANONICAL_CODE = "SPL"

# LPS <-> RAS is a sign flip of x and y (an involution).
_LPS_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def lps_to_ras(affine: np.ndarray) -> np.ndarray:
    """Convert a 4x4 voxel->LPS affine to voxel->RAS (or back; the conversion is its own inverse)."""
    return _LPS_RAS @ np.asarray(affine, dtype=np.float64)


@dataclass(frozen=True)
class AxisMap:
    """A change of array layout made only of an axis permutation and flips (no resampling).

    ``out = flip(transpose(in, perm), axes where flips)``: output axis ``k`` is input axis
    ``perm[k]``, reversed when ``flips[k]``. Applying a map returns a view (no copy).
    """

    perm: tuple[int, int, int] = (0, 1, 2)
    flips: tuple[bool, bool, bool] = (False, False, False)

    def __post_init__(self) -> None:
        if sorted(self.perm) != [0, 1, 2] or len(self.flips) != 3:
            raise ValueError(f"invalid axis map perm={self.perm} flips={self.flips}")
        object.__setattr__(self, "perm", tuple(int(p) for p in self.perm))
        object.__setattr__(self, "flips", tuple(bool(f) for f in self.flips))

    @property
    def is_identity(self) -> bool:
        return self.perm == (0, 1, 2) and not any(self.flips)

    def apply(self, array: np.ndarray) -> np.ndarray:
        """Return ``array`` ([3 axes]) in the output layout, as a view."""
        out = np.transpose(array, self.perm)
        axes = tuple(k for k in range(3) if self.flips[k])
        return np.flip(out, axis=axes) if axes else out

    def then(self, other: AxisMap) -> AxisMap:
        """The map equivalent to applying ``self`` first and ``other`` second."""
        perm = tuple(self.perm[other.perm[k]] for k in range(3))
        flips = tuple(self.flips[other.perm[k]] != other.flips[k] for k in range(3))
        return AxisMap(perm, flips)  # type: ignore[arg-type]

    def inverse(self) -> AxisMap:
        inv = [0, 0, 0]
        for k, p in enumerate(self.perm):
            inv[p] = k
        flips = tuple(self.flips[inv[j]] for j in range(3))
        return AxisMap(tuple(inv), flips)  # type: ignore[arg-type]

    def out_shape(self, in_shape: Sequence[int]) -> tuple[int, int, int]:
        return tuple(int(in_shape[p]) for p in self.perm)  # type: ignore[return-value]

    def index_transform(self, in_shape: Sequence[int]) -> np.ndarray:
        """4x4 matrix taking homogeneous *output* indices to *input* indices.

        So ``affine_out = affine_in @ map.index_transform(in_shape)`` for any voxel->world affine.
        """
        t = np.zeros((4, 4))
        t[3, 3] = 1.0
        for k, p in enumerate(self.perm):
            if self.flips[k]:
                t[p, k] = -1.0
                t[p, 3] = in_shape[p] - 1
            else:
                t[p, k] = 1.0
        return t

    def to_dict(self) -> dict[str, list]:
        return {"perm": list(self.perm), "flips": list(self.flips)}


def canonical_map(affine_lps: np.ndarray) -> AxisMap:
    """The permutation + flips taking an image (index axes of ``affine_lps``) to canonical SPL.

    Args:
        affine_lps: 4x4 voxel index -> LPS mm affine of the source array.

    Raises:
        ValueError: if the affine is degenerate (an axis with zero length or two parallel axes).
    """
    from nibabel.orientations import io_orientation

    a = np.asarray(affine_lps, dtype=np.float64)
    if not np.all(np.isfinite(a)):
        raise ValueError("the image affine contains non-finite values")
    ornt = io_orientation(a)  # per input axis: (LPS output axis, +1/-1); NaN where undetermined
    if np.isnan(ornt).any():
        raise ValueError("the image affine is degenerate (zero-length or parallel axes)")
    perm = [0, 0, 0]
    flips = [False, False, False]
    for i, (lps_axis, sign) in enumerate(ornt):
        k = 2 - int(lps_axis)  # canonical axis k runs along LPS axis 2 - k
        perm[k] = i
        flips[k] = sign < 0
    return AxisMap(tuple(perm), tuple(flips))  # type: ignore[arg-type]


def obliquity_degrees(affine_lps: np.ndarray) -> float:
    """Largest angle (degrees) between a canonical array axis and the patient axis it stands for.

    Zero for an image aligned with the patient axes; e.g. a 5 degree gantry tilt gives ~5.
    ``affine_lps`` must already map canonical (d, h, w) indices.
    """
    m = np.asarray(affine_lps, dtype=np.float64)[:3, :3]
    norms = np.linalg.norm(m, axis=0)
    worst = 0.0
    for k in range(3):
        if norms[k] == 0:
            return 90.0
        c = abs(m[2 - k, k]) / norms[k]
        worst = max(worst, float(np.degrees(np.arccos(np.clip(c, -1.0, 1.0)))))
    return worst


def orientation_code(affine_lps: np.ndarray) -> str:
    """Three-letter code of the index axes of ``affine_lps`` (nibabel convention, e.g. "RAS", "LPS").

    Oblique axes get the letter of their closest patient axis.
    """
    from nibabel.orientations import aff2axcodes

    codes = aff2axcodes(lps_to_ras(affine_lps))
    return "".join(c if c is not None else "?" for c in codes)
