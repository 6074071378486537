"""Acquisition of a phantom scan: grid and spacing draws, slice-profile partial volume, correlated
noise, beam-hardening-like cupping, reconstruction-circle padding and int16 storage.

Sizes (matrix and spacing are drawn per case; the field of view always holds a patient-sized trunk):

========  ==========  =====================  =====================================  ============
size      matrix      in-plane spacing (mm)  slice spacing (mm)                     slices
========  ==========  =====================  =====================================  ============
``full``  512 × 512   U(0.6, 1.0)            one of 0.625, 1, 1.25, 1.5, 2, 2.5, 3, 5  coverage / spacing
``small`` 192 × 192   U(1.6, 2.4)            one of 1.5, 2, 2.5, 3, 4, 5              coverage / spacing
``demo``  112 × 112   U(2.9, 3.7)            one of 2.5, 3, 3.5, 4                    80–136
========  ==========  =====================  =====================================  ============

Coverage (cranio-caudal) is U(330, 450) mm (never less than the lungs need) from just above the lung
apices into the upper abdomen. Smaller sizes keep the field of view of a full-size scan and scale the
spacing, so the same anatomy appears with coarser voxels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from voxelfm.data.phantoms.canvas import Grid

__all__ = ["SizeSpec", "SIZES", "Acquisition", "draw_acquisition", "render_grid", "finalize", "ORIENTATIONS"]


@dataclass(frozen=True)
class SizeSpec:
    name: str
    matrix: int
    inplane_mm: tuple[float, float]
    slice_mm: tuple[float, ...]
    slice_p: tuple[float, ...]
    depth_range: tuple[int, int] | None
    noise_ref_voxel_mm3: float = 0.7 * 0.7 * 1.25


SIZES: dict[str, SizeSpec] = {
    "full": SizeSpec(
        "full",
        512,
        (0.6, 1.0),
        (0.625, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 5.0),
        (0.12, 0.15, 0.2, 0.1, 0.13, 0.1, 0.08, 0.12),
        None,
    ),
    "small": SizeSpec("small", 192, (1.6, 2.4), (1.5, 2.0, 2.5, 3.0, 4.0, 5.0), (0.2, 0.2, 0.2, 0.2, 0.1, 0.1), None),
    "demo": SizeSpec("demo", 112, (2.9, 3.7), (2.5, 3.0, 3.5, 4.0), (0.25, 0.3, 0.25, 0.2), (80, 136)),
}

# NIfTI axis codes of the stored array (first, second, third array axis point towards ...).
ORIENTATIONS: tuple[str, ...] = ("LPS", "RAS", "LAS", "RPS", "LPI", "RAI", "LAI", "RPI")
_ORIENT_P = (0.2, 0.2, 0.15, 0.1, 0.1, 0.1, 0.1, 0.05)


@dataclass
class Acquisition:
    """Everything about how one scan was acquired and stored.

    Attributes:
        size: size name. shape: ``(D, H, W)`` canonical SPL. spacing: ``(sz, sy, sx)`` mm.
        origin: LPS mm of canonical voxel ``(0, 0, 0)``. offset: LPS mm of the patient-frame origin.
        contrast: ``none`` | ``arterial`` | ``venous``. noise_sd: HU (white-equivalent after
        correlation). noise_corr: in-plane gaussian sigma in voxels. cupping_hu: depth of the
        beam-hardening cupping (0 = none). circle_pad: reconstruction-circle padding present.
        orientation: NIfTI axis code of the stored file. intercept: rescale intercept (slope 1).
        kvp, kernel: recorded in DICOM headers. slice_order: ``ascending`` or ``descending``
        instance numbering (DICOM).
    """

    size: str
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    offset: tuple[float, float, float]
    contrast: str
    noise_sd: float
    noise_corr: float
    cupping_hu: float
    circle_pad: bool
    orientation: str
    intercept: float = -1024.0
    kvp: int = 120
    kernel: str = "STANDARD"
    slice_order: str = "descending"
    extras: dict = field(default_factory=dict)

    @property
    def grid(self) -> Grid:
        return Grid(self.shape, self.spacing, self.origin)


def draw_acquisition(
    rng: np.random.Generator,
    size: str,
    *,
    body_halfwidth_mm: float,
    apex_mm: float,
    patient_size: float,
    min_coverage_mm: float = 0.0,
) -> Acquisition:
    """Draw spacing, field of view, patient placement, contrast phase and noise for one scan.

    Args:
        body_halfwidth_mm: lateral half-width of the patient's trunk (sets the noise level).
        apex_mm: height of the lung apices above the patient-frame origin.
    """
    spec = SIZES[size]
    sx = float(rng.uniform(*spec.inplane_mm))
    sz = float(rng.choice(spec.slice_mm, p=np.asarray(spec.slice_p) / sum(spec.slice_p)))
    coverage = max(float(rng.uniform(330, 450)) * (0.85 + 0.15 * patient_size), min_coverage_mm)
    D = int(round(coverage / sz))
    if spec.depth_range is not None:
        lo, hi = spec.depth_range
        if D > hi:  # keep the whole chest: thicker slices rather than a shorter scan
            sz = float(np.ceil(coverage / hi / 0.125) * 0.125)
            D = int(round(coverage / sz))
        D = int(np.clip(D, lo, hi))
    H = W = spec.matrix
    fov = sx * W
    # scanner frame: isocentre at x = y = 0; the table top sits below the isocentre
    cx = float(rng.normal(0, 12))
    cy = float(rng.normal(-8, 14))
    top_z = float(rng.uniform(-120, 80))
    z_first_above_apex = float(rng.uniform(10, 35))
    oz = top_z - (D - 1) * sz
    offset_z = top_z - apex_mm - z_first_above_apex
    origin = (-(W - 1) / 2 * sx, -(H - 1) / 2 * sx, oz)
    contrast = str(rng.choice(["none", "arterial", "venous"], p=[0.45, 0.2, 0.35]))
    kvp = int(rng.choice([100, 120, 120, 140]))
    # quantum noise grows with patient width and shrinks with voxel volume (gently, so coarse
    # demo volumes keep visible noise)
    base = 16.0 * math.exp((body_halfwidth_mm - 165.0) / 70.0) * (120.0 / kvp) ** 0.7
    vol_ratio = spec.noise_ref_voxel_mm3 / (sx * sx * sz)
    noise_sd = float(np.clip(base * vol_ratio**0.25 * rng.uniform(0.85, 1.2), 4.0, 60.0))
    return Acquisition(
        size=size,
        shape=(D, H, W),
        spacing=(sz, sx, sx),
        origin=origin,
        offset=(cx, cy, offset_z),
        contrast=contrast,
        noise_sd=noise_sd,
        noise_corr=float(rng.uniform(0.6, 1.1)),
        cupping_hu=float(rng.uniform(4, 15)) if rng.random() < 0.5 else 0.0,
        circle_pad=bool(rng.random() < 0.3 and fov < 480),
        orientation=str(rng.choice(ORIENTATIONS, p=_ORIENT_P)),
        kvp=kvp,
        kernel=str(rng.choice(["STANDARD", "B30f", "SOFT", "FC07"])),
        slice_order=str(rng.choice(["ascending", "descending"])),
        extras={"fov_mm": fov, "coverage_mm": D * sz},
    )


def subslices(acq: Acquisition) -> int:
    """Sub-slices rendered per output slice so z partial volume follows the slice profile."""
    sz, sx = acq.spacing[0], acq.spacing[2]
    return max(1, int(round(sz / max(2.0 * sx, 1.25))))


def render_grid(acq: Acquisition) -> tuple[Grid, int]:
    """The finer grid the anatomy is rendered on (``k`` sub-slices per slice) and ``k``."""
    k = subslices(acq)
    D, H, W = acq.shape
    sz, sy, sx = acq.spacing
    ox, oy, oz = acq.origin
    return Grid((D * k, H, W), (sz / k, sy, sx), (ox, oy, oz - (k - 1) / 2 * sz / k)), k


def _gauss_norm(sigma: float, truncate: float) -> float:
    r = int(truncate * sigma + 0.5)
    x = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    k /= k.sum()
    return float(np.sqrt((k**2).sum()))


def finalize(
    hu: np.ndarray,
    label: np.ndarray,
    k: int,
    acq: Acquisition,
    rng: np.random.Generator,
    body_axes_mm: tuple[float, float],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Turn the rendered sub-slice volume into the stored scan.

    Averages ``k`` sub-slices per slice (slice profile), keeps the label of the central
    sub-slice, adds cupping, correlated noise and reconstruction-circle padding, and rounds to
    the stored int16 values.

    Returns:
        ``(hu [D,H,W] float32 — exactly the stored values times slope plus intercept,
        stored [D,H,W] int16, labels [D,H,W] uint8)``
    """
    from scipy.ndimage import gaussian_filter1d

    D, H, W = acq.shape
    if k > 1:
        out = hu.reshape(D, k, H, W).mean(axis=1, dtype=np.float32)
        lab = np.ascontiguousarray(label.reshape(D, k, H, W)[:, k // 2])
    else:
        out, lab = hu, label
    if acq.cupping_hu > 0:  # beam-hardening cupping: darker towards the body centre
        g = acq.grid
        cx, cy, _ = acq.offset
        a, b = body_axes_mm
        fx = ((g.axis(2) - cx) / a) ** 2
        fy = ((g.axis(1) - cy) / b) ** 2
        cup = np.clip(1.0 - fy[:, None] - fx[None, :], 0.0, 1.0).astype(np.float32)
        out -= np.float32(acq.cupping_hu) * cup[None]
    sigma = acq.noise_corr
    trunc = 2.5
    scale = np.float32(acq.noise_sd / _gauss_norm(sigma, trunc) ** 2 * math.sqrt(12.0))
    inter = np.float32(acq.intercept)
    pad = None
    if acq.circle_pad:
        g = acq.grid
        r2 = g.axis(1)[:, None] ** 2 + g.axis(2)[None, :] ** 2
        pad = r2 > (acq.extras["fov_mm"] / 2) ** 2
        lab[:, pad] = 0
    stored = np.empty((D, H, W), dtype=np.int16)
    step = max(1, (1 << 20) // (H * W))
    for d0 in range(0, D, step):  # slab by slab: cache-friendly, bounded memory
        d1 = min(d0 + step, D)
        # uniform white noise (7x cheaper to draw than normal); after the correlating filter the
        # weighted sum of ~25 uniforms is Gaussian to within a few percent in its tails
        noise = rng.random((d1 - d0, H, W), dtype=np.float32)
        noise -= np.float32(0.5)
        gaussian_filter1d(noise, sigma, axis=1, truncate=trunc, output=noise)
        gaussian_filter1d(noise, sigma, axis=2, truncate=trunc, output=noise)
        noise *= scale
        o = out[d0:d1]
        o += noise
        np.clip(o, -1024.0, 3071.0, out=o)
        if pad is not None:
            o[:, pad] = -3024.0
        o -= inter
        np.rint(o, out=o)
        stored[d0:d1] = o
        o += inter  # exactly the stored values in HU
    return out, stored, lab
