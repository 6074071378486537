"""Per-scan reading overrides: spacing, orientation and rescale taken from a dataset's metadata
instead of the file header (CT-RATE's NIfTI headers, for one, carry none of them).

A manifest row may carry them as columns named ``override_<field>`` (:data:`MANIFEST_COLUMNS`; the
prefix keeps descriptive columns such as a cohort table's ``spacing_z`` from changing how a file is
read); :func:`voxelfm.io.read_volume` applies them before the volume is reoriented to canonical SPL:

* ``override_orientation``: three-letter code of the file's index axes ``(i, j, k)`` in nibabel's convention
  (the letter names the direction an axis *increases* towards: ``"LPS"`` = i → patient Left,
  j → Posterior, k → Superior, the layout of an axial DICOM series). Replaces the header's axis
  directions; the origin is kept.
* ``override_spacing_z, override_spacing_y, override_spacing_x``: voxel size in mm along the canonical axes (superior,
  posterior, left), i.e. the slice spacing and the two in-plane pixel spacings. Replaces the
  header's voxel sizes.
* ``override_rescale_slope, override_rescale_intercept``: ``HU = stored * slope + intercept`` on the file's *stored*
  values (any scaling in the header is undone first). A file with a stated geometry, no header
  scaling and values already in HU (air at -1000 while the intercept is below -500) is left as it
  is, with a warning: it was rescaled when it was written.

A header that states a geometry or scaling different from the override gets a warning naming both
(the override is used); a blank header (NIfTI without sform/qform, unit voxel sizes, no scaling)
does not. Overrides apply to single-file volumes (NIfTI, MHA/MHD, NRRD, numpy); DICOM series
carry their own geometry and rescale per slice.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["ReadOverrides", "MANIFEST_COLUMNS", "apply_overrides", "orientation_directions"]

#: Manifest columns read as overrides (all optional; empty cells mean "use the header").
MANIFEST_COLUMNS: tuple[str, ...] = ("override_spacing_z", "override_spacing_y", "override_spacing_x",
                                     "override_rescale_slope", "override_rescale_intercept", "override_orientation")
_P = "override_"

# LPS unit vector of each orientation letter.
_LETTER_LPS: dict[str, tuple[float, float, float]] = {
    "L": (1.0, 0.0, 0.0), "R": (-1.0, 0.0, 0.0), "P": (0.0, 1.0, 0.0), "A": (0.0, -1.0, 0.0),
    "S": (0.0, 0.0, 1.0), "I": (0.0, 0.0, -1.0),
}
_REL_TOL = 1e-3  # relative difference between header and override treated as a contradiction


def orientation_directions(code: str) -> np.ndarray:
    """``[3, 3]`` LPS direction of each index axis of an orientation code (column ``n`` = axis ``n``).

    Raises:
        ValueError: not three letters from L/R, P/A, S/I naming three different patient axes.
    """
    c = str(code).strip().upper()
    if len(c) != 3 or any(ch not in _LETTER_LPS for ch in c):
        raise ValueError(f"orientation {code!r} must be three letters from L/R, P/A, S/I (e.g. LPS)")
    m = np.array([_LETTER_LPS[ch] for ch in c], dtype=np.float64).T
    if sorted(int(np.argmax(np.abs(m[:, n]))) for n in range(3)) != [0, 1, 2]:
        raise ValueError(f"orientation {code!r} names one patient axis twice")
    return m


def _number(value: Any, name: str) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if math.isnan(v):
        return None
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return v


@dataclass(frozen=True)
class ReadOverrides:
    """Geometry and intensity facts that replace a file's header when reading it (module docstring).

    Attributes:
        spacing: ``(sz, sy, sx)`` mm along the canonical axes, or ``None``.
        rescale_slope, rescale_intercept: ``HU = stored * slope + intercept`` (either may be ``None``:
            slope 1, intercept 0), or both ``None``.
        orientation: code of the file's index axes ``(i, j, k)``, e.g. ``"LPS"``, or ``None``.
    """

    spacing: tuple[float, float, float] | None = None
    rescale_slope: float | None = None
    rescale_intercept: float | None = None
    orientation: str | None = None

    def __post_init__(self) -> None:
        if self.spacing is not None:
            sp = tuple(float(s) for s in self.spacing)
            if len(sp) != 3 or not all(math.isfinite(s) and s > 0 for s in sp):
                raise ValueError(f"override spacing must be three positive numbers (sz, sy, sx) mm, got {self.spacing}")
            object.__setattr__(self, "spacing", sp)
        if self.rescale_slope is not None and (not math.isfinite(self.rescale_slope) or self.rescale_slope == 0):
            raise ValueError(f"rescale_slope must be a finite non-zero number, got {self.rescale_slope}")
        if self.orientation is not None:
            orientation_directions(self.orientation)
            object.__setattr__(self, "orientation", str(self.orientation).strip().upper())

    @property
    def rescales(self) -> bool:
        return self.rescale_slope is not None or self.rescale_intercept is not None

    @property
    def is_empty(self) -> bool:
        return self.spacing is None and not self.rescales and self.orientation is None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (only the fields that are set)."""
        out: dict[str, Any] = {}
        if self.spacing is not None:
            out["spacing"] = list(self.spacing)
        if self.rescale_slope is not None:
            out["rescale_slope"] = self.rescale_slope
        if self.rescale_intercept is not None:
            out["rescale_intercept"] = self.rescale_intercept
        if self.orientation is not None:
            out["orientation"] = self.orientation
        return out

    def to_columns(self) -> dict[str, Any]:
        """The manifest columns of these overrides (:data:`MANIFEST_COLUMNS`; unset ones empty)."""
        sp = self.spacing or (None, None, None)
        values = (sp[0], sp[1], sp[2], self.rescale_slope, self.rescale_intercept, self.orientation)
        return dict(zip(MANIFEST_COLUMNS, values))

    @classmethod
    def from_mapping(cls, row: Mapping[str, Any]) -> ReadOverrides | None:
        """Overrides from a manifest row (:data:`MANIFEST_COLUMNS`); ``None`` when none is set.

        Raises:
            ValueError: a value is not a number / orientation code, or the spacing is partial.
        """
        sp = [_number(row.get(k), k) for k in MANIFEST_COLUMNS[:3]]
        if any(v is not None for v in sp) and any(v is None for v in sp):
            raise ValueError(f"give all three of {', '.join(MANIFEST_COLUMNS[:3])} or none")
        orient = row.get(_P + "orientation")
        orient = None if orient is None or (isinstance(orient, float) and math.isnan(orient)) \
            or not str(orient).strip() else str(orient)
        ov = cls(spacing=None if sp[0] is None else (sp[0], sp[1], sp[2]),  # type: ignore[arg-type]
                 rescale_slope=_number(row.get(_P + "rescale_slope"), _P + "rescale_slope"),
                 rescale_intercept=_number(row.get(_P + "rescale_intercept"), _P + "rescale_intercept"),
                 orientation=orient)
        return None if ov.is_empty else ov


def _header_is_blank(img: Any) -> bool:
    """A NIfTI header without sform/qform (nibabel's pixdim fallback): it states no geometry."""
    return img.source.get("nifti_affine") == "pixdim"


def _already_hu(img: Any, stored: np.ndarray, blank: bool, intercept: float) -> bool:
    """A file with a stated geometry, no header scaling and air already at -1000 holds HU: a
    re-released file whose values were rescaled when it was written (CT-RATE's ``*_fixed`` volumes
    may be such). In stored values that still need a -1024 intercept, air is near +24 and the
    range around -1000 (HU -2000) holds at most padding, which sits elsewhere (-2000 stored, or 0);
    so >= 0.5 % of voxels in [-1050, -950] means air in HU."""
    if blank or intercept > -500 or img.source.get("scl_slope") is not None or img.source.get("scl_inter") is not None:
        return False
    sub = stored[::4, ::4, ::4]
    return bool(np.mean((sub >= -1050) & (sub <= -950)) >= 0.005)


def apply_overrides(img: Any, ov: ReadOverrides, fmt: str) -> None:
    """Apply ``ov`` to a reader's :class:`~voxelfm.io._source.SourceImage` in place (before
    :func:`~voxelfm.io._source.build_volume`). Contradicting headers are noted in
    ``img.source["warnings"]`` (emitted as :class:`~voxelfm.io.VolumeReadWarning`).

    Raises:
        VolumeReadError: overrides on a DICOM series.
    """
    from voxelfm.errors import VolumeReadError
    from voxelfm.io.orientation import orientation_code

    path = img.source.get("path")
    if fmt in ("dicom", "zip"):
        raise VolumeReadError(path, "reading overrides (override_* manifest columns) apply to single-file "
                                    "volumes; a DICOM series carries its own geometry and rescale per slice")
    warn = img.source.setdefault("warnings", [])
    blank = _header_is_blank(img)
    affine = np.array(img.index_affine, dtype=np.float64, copy=True)
    itk = list(img.itk_axes)
    norms = np.linalg.norm(affine[:3, :3], axis=0)

    if ov.orientation is not None:
        header_code = orientation_code(affine[:, itk + [3]])
        if blank:
            warn[:] = [w for w in warn if "has no orientation" not in w]
        elif header_code != ov.orientation:
            warn.append(f"the header orientation {header_code} contradicts the metadata orientation "
                        f"{ov.orientation}; the metadata's was used")
        dirs = orientation_directions(ov.orientation)
        for n, a in enumerate(itk):
            affine[:3, a] = dirs[:, n] * norms[a]

    if ov.spacing is not None:
        new = norms.copy()
        for a in range(3):
            lps_axis = int(np.argmax(np.abs(affine[:3, a])))
            new[a] = ov.spacing[2 - lps_axis]  # canonical axis k runs along LPS axis 2 - k
        header = tuple(float(f"{norms[a]:.6g}") for a in range(3))
        unit = np.allclose(norms, 1.0)
        if not np.allclose(norms, new, rtol=_REL_TOL, atol=0) and not (blank and unit):
            warn.append(f"the header voxel size {header} mm (array axes) contradicts the metadata spacing "
                        f"{tuple(ov.spacing)} mm (sz, sy, sx); the metadata's was used")
        affine[:3, :3] = affine[:3, :3] / np.where(norms > 0, norms, 1.0) * new

    if ov.rescales:
        slope = 1.0 if ov.rescale_slope is None else float(ov.rescale_slope)
        inter = 0.0 if ov.rescale_intercept is None else float(ov.rescale_intercept)
        h_slope = img.source.get("scl_slope")
        h_inter = img.source.get("scl_inter")
        stored = np.asarray(img.array, dtype=np.float32)
        if _already_hu(img, stored, blank, inter):
            warn.append(f"the file's values are already Hounsfield units (air at -1000) although the metadata gives a "
                        f"rescale intercept of {inter:g}; the rescale was not applied")
            slope, inter = 1.0, 0.0
        elif h_slope is not None or h_inter is not None:  # the reader scaled: undo it
            hs, hi = float(h_slope if h_slope is not None else 1.0), float(h_inter if h_inter is not None else 0.0)
            if not (math.isclose(hs, slope, rel_tol=_REL_TOL) and math.isclose(hi, inter, abs_tol=1e-3)):
                warn.append(f"the header rescale (slope {hs:g}, intercept {hi:g}) contradicts the metadata "
                            f"rescale (slope {slope:g}, intercept {inter:g}); the metadata's was used")
            stored = (stored - np.float32(hi)) / np.float32(hs)
        img.array = stored * np.float32(slope) + np.float32(inter) if (slope, inter) != (1.0, 0.0) else stored
        img.storage_dtype = None

    img.index_affine = affine
    img.origin = affine[:3, 3].copy()
    img.direction = np.stack([affine[:3, a] / np.linalg.norm(affine[:3, a]) for a in itk], axis=1)
    sp = np.linalg.norm(affine[:3, :3], axis=0)
    img.reference_spacing = tuple(float(sp[p]) for p in img.reference_map.perm)
    img.source["read_overrides"] = ov.to_dict()
