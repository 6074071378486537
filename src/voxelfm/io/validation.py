"""Checks that turn bad CT input into a clear :class:`~voxelfm.errors.VolumeReadError`.

The rules (also in docs/io.md):

* **finite**: every voxel must be finite (NaN/inf -> error).
* **spacing**: three finite values > 0 mm.
* **slice positions** (DICOM): positions along the slice normal must be evenly spaced. Jitter is
  tolerated (each gap within 50 % of the median gap and no slice more than 25 % of a gap away from
  the straight line through all positions); a missing slice, mixed slice spacing or two slices at one
  position is an error. A uniform gap different from SliceThickness is fine (recorded).
* **padding**: voxels below -1500 HU do not exist in a patient (air is -1000); scanners write
  -2000, -3024, -3072 or -32768 outside the reconstruction field of view. They, and DICOM
  PixelPaddingValue voxels, become -1024 HU (air); the count is recorded in ``source``.
* **HU**: padding excluded, a volume is rejected as "not HU" when
  (1) the reference's ``is_HU`` fails (after clipping to [-1000, 1900]: min >= 800 or max <= -100);
  (2) its values span less than 50 units (normalised to [0, 1], z-scored, a mask ...);
  (3) it has no value below -10 but values of 1000 or more (raw unsigned stored values, e.g. 0..4095,
      with no RescaleIntercept: air at ~0, soft tissue at ~1050; a HU scan of a body always has air or
      fat below 0);
  (4) it is stored as 8-bit integers (a windowed screen image).
  Warnings (volume still read): no voxel below -500 HU (no air: cropped, or not HU?), values above
  4000 HU (metal, or mis-scaled data).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from voxelfm.errors import VolumeReadError

__all__ = [
    "PADDING_THRESHOLD_HU",
    "AIR_HU",
    "check_finite",
    "check_spacing",
    "check_slice_positions",
    "map_padding",
    "check_hu",
    "sample_voxels",
]

#: Voxels below this value are padding (outside the field of view), never tissue or air.
PADDING_THRESHOLD_HU = -1500.0
#: HU given to padding voxels.
AIR_HU = -1024.0

_SAMPLE = 1_000_000


def sample_voxels(array: np.ndarray, n: int = _SAMPLE) -> np.ndarray:
    """A strided sample of about ``n`` voxels (all voxels when the array is small), flattened."""
    flat = array.reshape(-1)
    step = max(1, flat.size // n)
    return flat[::step]


def check_finite(array: np.ndarray, path: object) -> None:
    """Raise if any voxel is NaN or infinite."""
    if not np.isfinite(array).all():
        bad = int(np.count_nonzero(~np.isfinite(array)))
        raise VolumeReadError(path, f"{bad} voxel(s) are NaN or infinite; replace them (e.g. with -1024 HU "
                                    f"for air outside the body) before reading")


def check_spacing(spacing: Sequence[float], path: object) -> tuple[float, float, float]:
    """Return the spacing as floats; raise unless there are three finite values > 0 mm."""
    sp = tuple(float(s) for s in spacing)
    if len(sp) != 3 or not all(np.isfinite(s) and s > 0 for s in sp):
        raise VolumeReadError(path, f"voxel spacing {sp} mm is not three positive numbers; fix the header "
                                    f"or pass spacing=(sz, sy, sx)")
    return sp  # type: ignore[return-value]


def check_slice_positions(positions: np.ndarray, path: object, *, rel_gap_tol: float = 0.5,
                          rel_line_tol: float = 0.25) -> float:
    """Validate sorted slice positions (mm along the slice normal) and return the mean gap.

    Raises:
        VolumeReadError: duplicate positions, a missing slice or mixed slice spacing.
    """
    pos = np.asarray(positions, dtype=np.float64)
    if pos.size < 2:
        raise VolumeReadError(path, "fewer than two slices; pass the folder of the whole series")
    gaps = np.diff(pos)
    med = float(np.median(gaps))
    if med <= 1e-4 or np.min(gaps) <= 1e-4:
        n_dup = int(np.count_nonzero(gaps <= 1e-4))
        raise VolumeReadError(path, f"{n_dup + 1 if n_dup else 2} slices share one position (two acquisitions, "
                                    f"echoes or phases in one series?); split the series or pass "
                                    f"series_uid=... of a single stack")
    worst = np.argmax(np.abs(gaps - med))
    if abs(gaps[worst] - med) > rel_gap_tol * med:
        raise VolumeReadError(
            path, f"uneven slice spacing: gap of {gaps[worst]:.3f} mm after slice {worst} where the series "
                  f"has {med:.3f} mm (a missing slice or mixed slice thickness); voxelfm does not "
                  f"interpolate missing slices — re-export the complete series")
    idx = np.arange(pos.size)
    slope, intercept = np.polyfit(idx, pos, 1)
    resid = np.abs(pos - (slope * idx + intercept))
    if resid.max() > rel_line_tol * med:
        raise VolumeReadError(
            path, f"slice spacing changes along the series (slice {int(resid.argmax())} lies "
                  f"{resid.max():.3f} mm off an even grid of {slope:.3f} mm); mixed slice thicknesses "
                  f"cannot be stacked into one volume — re-export a single reconstruction")
    return float((pos[-1] - pos[0]) / (pos.size - 1))


def map_padding(array: np.ndarray, *, extra_mask: np.ndarray | None = None) -> tuple[int, float | None]:
    """Set padding voxels (< -1500 HU, or ``extra_mask``) to -1024 HU in place.

    Returns:
        ``(count, lowest_value)``: number of voxels changed and the lowest padding value seen (HU),
        or ``(0, None)``.
    """
    mask = array < PADDING_THRESHOLD_HU
    if extra_mask is not None:
        mask |= extra_mask
    n = int(np.count_nonzero(mask))
    if n == 0:
        return 0, None
    lowest = float(array[mask].min())
    array[mask] = AIR_HU
    return n, lowest


def check_hu(array: np.ndarray, path: object, *, storage_dtype: object = None, full_fov: bool = True
             ) -> list[str]:
    """Raise when ``array`` is clearly not Hounsfield units; return warnings otherwise.

    Call after :func:`map_padding` (padding is then -1024 and counts as air). ``storage_dtype`` is the
    on-disk dtype (8-bit data is rejected); ``full_fov`` enables the "no air" warning (files and
    series; off for arrays and crops).
    """
    lo, hi = float(array.min()), float(array.max())
    hint = "convert to HU (HU = stored value x RescaleSlope + RescaleIntercept) or fix the header"
    label = " (reading a label map? use read_volume(path, check_hu=False))"
    if not (min(max(lo, -1000.0), 1900.0) < 800.0 and max(min(hi, 1900.0), -1000.0) > -100.0):
        raise VolumeReadError(path, f"values are not Hounsfield units (range [{lo:.4g}, {hi:.4g}]: after clipping "
                                    f"to [-1000, 1900] a CT needs min < 800 and max > -100); {hint}")
    if hi - lo < 50.0:
        raise VolumeReadError(path, f"values span only [{lo:.4g}, {hi:.4g}]: this looks normalised (e.g. [0, 1] or "
                                    f"z-scored) or like a mask, not a CT in Hounsfield units; pass the "
                                    f"original HU data{label}")
    if storage_dtype is not None and np.dtype(storage_dtype).itemsize == 1:
        raise VolumeReadError(path, f"stored as 8-bit {np.dtype(storage_dtype).name} ({lo:.4g}..{hi:.4g}): "
                                    f"this is a windowed screen image, not a CT in Hounsfield units{label}")
    if lo >= -10.0 and hi >= 1000.0:
        raise VolumeReadError(path, f"no value below {lo:.4g} but values up to {hi:.4g}: these look like raw "
                                    f"unsigned stored values (air ~0, water ~1024) with no RescaleIntercept; "
                                    f"{hint} (often HU = value - 1024)")
    warnings: list[str] = []
    if full_fov and lo > -500.0:
        warnings.append(f"no voxel below {lo:.4g} HU (no air): the volume is cropped or not in HU")
    if hi > 4000.0:
        warnings.append(f"values up to {hi:.4g} HU (metal, or mis-scaled data)")
    return warnings
