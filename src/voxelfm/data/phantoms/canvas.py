"""Rendering machinery of the phantom generator: a voxel grid in patient millimetres and a painter.

Every structure of a phantom is an analytic signed-distance field (SDF, mm; negative inside) that is
evaluated only on the voxels of its bounding box, in slabs of slices so memory stays bounded at
512×512×300. Painting composites the structure's intensity over what is already there with a
coverage ``alpha = clip(0.5 - sdf / w, 0, 1)`` (``w`` the in-plane voxel size), which is the partial
volume of a voxel cut by a locally flat surface; along z, partial volume comes from rendering
several sub-slices per output slice and averaging them (see :mod:`.acquisition`).

Coordinates are LPS patient millimetres (x → patient left, y → posterior, z → superior). The array
is in canonical SPL order ``[D, H, W] = [z, y, x]`` with increasing millimetres along each axis.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Grid",
    "Canvas",
    "RandomField",
    "SDF",
    "Value",
    "sdf_ellipsoid",
    "sdf_capsule",
    "sdf_cone",
    "sdf_sphere",
    "smoothstep",
]

Array = np.ndarray
# A signed-distance function of broadcastable coordinate arrays X [1,1,w], Y [1,h,1], Z [d,1,1] (mm).
SDF = Callable[[Array, Array, Array], Array]
# An intensity: a constant (HU) or a function of the coordinates returning HU.
Value = "float | Callable[[Array, Array, Array], Array]"

_SLAB_VOXELS = 1 << 22  # voxels per slab when evaluating a structure (~16 MB of float32)


def smoothstep(edge0: float, edge1: float, x: Array | float) -> Array | float:
    """Hermite step from 0 (at ``edge0``) to 1 (at ``edge1``); works for edge0 > edge1 too."""
    t = np.clip((np.asarray(x, dtype=np.float32) - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


@dataclass(frozen=True)
class Grid:
    """A regular grid of voxel centres in LPS mm.

    Attributes:
        shape: ``(D, H, W)`` voxels (z, y, x).
        spacing: ``(sz, sy, sx)`` mm.
        origin: LPS ``(x, y, z)`` mm of voxel ``(0, 0, 0)``.
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]

    def axis(self, k: int) -> Array:
        """Voxel-centre coordinates (mm) along array axis ``k`` (0 = z, 1 = y, 2 = x)."""
        o = self.origin[2 - k]
        return (o + np.arange(self.shape[k], dtype=np.float64) * self.spacing[k]).astype(np.float32)

    def index_slice(self, k: int, lo: float, hi: float) -> slice:
        """Indices along axis ``k`` whose centres lie in ``[lo, hi]`` mm (possibly empty)."""
        o, s, n = self.origin[2 - k], self.spacing[k], self.shape[k]
        i0 = int(np.ceil((lo - o) / s - 1e-6))
        i1 = int(np.floor((hi - o) / s + 1e-6)) + 1
        return slice(max(i0, 0), max(min(i1, n), 0))

    def mm_to_index(self, xyz: Sequence[float]) -> tuple[float, float, float]:
        """LPS mm ``(x, y, z)`` → fractional canonical index ``(d, h, w)``."""
        x, y, z = xyz
        ox, oy, oz = self.origin
        sz, sy, sx = self.spacing
        return ((z - oz) / sz, (y - oy) / sy, (x - ox) / sx)

    def affine_lps(self) -> Array:
        """4×4 matrix mapping canonical indices ``(d, h, w, 1)`` to LPS ``(x, y, z, 1)`` mm."""
        sz, sy, sx = self.spacing
        a = np.zeros((4, 4))
        a[0, 2], a[1, 1], a[2, 0] = sx, sy, sz
        a[:3, 3] = self.origin
        a[3, 3] = 1.0
        return a


class Canvas:
    """HU and label volumes being painted, ``[D, H, W]`` float32 / uint8 on a :class:`Grid`.

    Args:
        grid: the voxel grid.
        background: initial HU (air, −1000).
        pv_width: partial-volume width in mm used for the coverage ramp (in-plane voxel size).
    """

    def __init__(self, grid: Grid, background: float = -1000.0, pv_width: float | None = None) -> None:
        self.grid = grid
        self.hu = np.full(grid.shape, background, dtype=np.float32)
        self.label = np.zeros(grid.shape, dtype=np.uint8)
        self.pv_width = float(pv_width if pv_width is not None else min(grid.spacing[1:]))
        self.subslices = 1  # rendered sub-slices per output slice (set by the acquisition)
        self._z, self._y, self._x = (grid.axis(0), grid.axis(1), grid.axis(2))

    # -- bounding boxes -------------------------------------------------------------------------
    def box(self, bbox: Sequence[Sequence[float]]) -> tuple[slice, slice, slice] | None:
        """Voxel slices ``(sd, sh, sw)`` of an LPS mm box ``((x0, x1), (y0, y1), (z0, z1))``;
        None when it misses the grid. The box is padded by one partial-volume width."""
        p = self.pv_width
        (x0, x1), (y0, y1), (z0, z1) = bbox
        sl = (
            self.grid.index_slice(0, z0 - p, z1 + p),
            self.grid.index_slice(1, y0 - p, y1 + p),
            self.grid.index_slice(2, x0 - p, x1 + p),
        )
        if any(s.stop <= s.start for s in sl):
            return None
        return sl

    def slabs(self, sl: tuple[slice, slice, slice]):
        """Yield ``(slices, X, Y, Z)`` over z-slabs of a box with broadcastable coordinates."""
        sd, sh, sw = sl
        plane = (sh.stop - sh.start) * (sw.stop - sw.start)
        step = max(1, _SLAB_VOXELS // max(plane, 1))
        X = self._x[sw][None, None, :]
        Y = self._y[sh][None, :, None]
        for d0 in range(sd.start, sd.stop, step):
            d1 = min(d0 + step, sd.stop)
            yield (slice(d0, d1), sh, sw), X, Y, self._z[d0:d1][:, None, None]

    # -- painting -------------------------------------------------------------------------------
    def paint(
        self,
        sdf: SDF,
        bbox: Sequence[Sequence[float]],
        value,
        label: int | None,
        *,
        within: Sequence[int] | None = None,
        outside: Sequence[int] | None = None,
        opacity: float = 1.0,
        add: bool = False,
    ) -> int:
        """Composite one structure over the canvas; returns the number of voxels it covers (≥ half).

        Args:
            sdf: signed distance (mm, negative inside) of the structure.
            bbox: LPS mm box enclosing the structure.
            value: HU constant or function of ``(X, Y, Z)`` (of ``(X, Y, Z, hu)`` when it has an
                attribute ``uses_hu = True``; ``hu`` is the current intensity of the slab).
            label: label value written where coverage ≥ 0.5 (None: intensities only).
            within: only voxels currently carrying one of these labels are changed.
            outside: voxels carrying one of these labels are left untouched.
            opacity: scales the coverage (e.g. 0.5 blends half-way).
            add: add ``alpha * value`` to the intensities instead of blending towards ``value``.
        """
        sl = self.box(bbox)
        if sl is None:
            return 0
        count = 0
        inv_w = np.float32(-1.0 / self.pv_width)
        lut = None
        if within is not None or outside is not None:
            lut = np.zeros(256, dtype=np.float32) if within is not None else np.ones(256, dtype=np.float32)
            if within is not None:
                lut[list(within)] = 1.0
            if outside is not None:
                lut[list(outside)] = 0.0
        for s, X, Y, Z in self.slabs(sl):
            alpha = np.asarray(sdf(X, Y, Z), dtype=np.float32)
            if alpha.shape != self.hu[s].shape:
                alpha = np.broadcast_to(alpha, self.hu[s].shape).copy()
            elif not alpha.flags.writeable or alpha.base is not None and alpha.base is X:
                alpha = alpha.copy()
            alpha *= inv_w  # in place: the distance array is ours
            alpha += np.float32(0.5)
            np.clip(alpha, 0.0, 1.0, out=alpha)
            if opacity != 1.0:
                alpha *= np.float32(opacity)
            lab = self.label[s]
            if lut is not None:
                alpha *= lut[lab]
            m = alpha >= np.float32(0.5 * opacity)
            if not m.any() and not alpha.any():
                continue
            hu = self.hu[s]
            if callable(value):
                v = value(X, Y, Z, hu) if getattr(value, "uses_hu", False) else value(X, Y, Z)
            else:
                v = np.float32(value)
            if add:
                alpha *= v
                hu += alpha
            else:
                hu += alpha * (v - hu)
            count += int(np.count_nonzero(m))
            if label is not None:
                lab[m] = label
        return count


# ---- signed-distance primitives (all mm; arrays broadcast) ----------------------------------------


def _rotate(X: Array, Y: Array, Z: Array, center: Sequence[float], rot: Array | None):
    px, py, pz = X - np.float32(center[0]), Y - np.float32(center[1]), Z - np.float32(center[2])
    if rot is None:
        return px, py, pz
    r = np.asarray(rot, dtype=np.float32)  # rows: local axes in LPS
    return (
        r[0, 0] * px + r[0, 1] * py + r[0, 2] * pz,
        r[1, 0] * px + r[1, 1] * py + r[1, 2] * pz,
        r[2, 0] * px + r[2, 1] * py + r[2, 2] * pz,
    )


def sdf_ellipsoid(center: Sequence[float], radii: Sequence[float], rot: Array | None = None) -> SDF:
    """Ellipsoid with semi-axes ``radii`` (mm) along the rows of ``rot`` (local axes; None = LPS).

    Uses the first-order distance ``k0 (k0 - 1) / k1`` (exact on the surface, good near it)."""
    rx, ry, rz = (np.float32(r) for r in radii)

    def f(X: Array, Y: Array, Z: Array) -> Array:
        px, py, pz = _rotate(X, Y, Z, center, rot)
        k0 = np.sqrt((px / rx) ** 2 + (py / ry) ** 2 + (pz / rz) ** 2)
        k1 = np.sqrt((px / (rx * rx)) ** 2 + (py / (ry * ry)) ** 2 + (pz / (rz * rz)) ** 2)
        return k0 * (k0 - 1.0) / np.maximum(k1, 1e-6)

    return f


def sdf_sphere(center: Sequence[float], radius: float) -> SDF:
    cx, cy, cz = (np.float32(c) for c in center)
    r = np.float32(radius)

    def f(X: Array, Y: Array, Z: Array) -> Array:
        return np.sqrt((X - cx) ** 2 + (Y - cy) ** 2 + (Z - cz) ** 2) - r

    return f


def sdf_capsule(a: Sequence[float], b: Sequence[float], radius: float) -> SDF:
    """Segment ``a``–``b`` (mm) thickened by ``radius``."""
    return sdf_cone(a, b, radius, radius)


def sdf_cone(a: Sequence[float], b: Sequence[float], ra: float, rb: float) -> SDF:
    """Tapered capsule from ``a`` (radius ``ra``) to ``b`` (radius ``rb``); approximate distance."""
    a = np.asarray(a, dtype=np.float32)
    ba = np.asarray(b, dtype=np.float32) - a
    L2 = np.float32(max(float(ba @ ba), 1e-6))
    ra, rb = np.float32(ra), np.float32(rb)

    def f(X: Array, Y: Array, Z: Array) -> Array:
        px, py, pz = X - a[0], Y - a[1], Z - a[2]
        t = np.clip((px * ba[0] + py * ba[1] + pz * ba[2]) / L2, 0.0, 1.0)
        dx, dy, dz = px - t * ba[0], py - t * ba[1], pz - t * ba[2]
        return np.sqrt(dx * dx + dy * dy + dz * dz) - (ra + t * (rb - ra))

    return f


def capsule_bbox(a: Sequence[float], b: Sequence[float], radius: float):
    lo = np.minimum(a, b) - radius
    hi = np.maximum(a, b) + radius
    return ((lo[0], hi[0]), (lo[1], hi[1]), (lo[2], hi[2]))


def ellipsoid_bbox(center: Sequence[float], radii: Sequence[float], rot: Array | None = None):
    r = np.asarray(radii, dtype=np.float64)
    if rot is None:
        ext = r
    else:  # extent of a rotated ellipsoid along each world axis
        R = np.asarray(rot, dtype=np.float64)
        ext = np.sqrt(((R.T * r[None, :]) ** 2).sum(axis=1))
    c = np.asarray(center, dtype=np.float64)
    return tuple((c[k] - ext[k], c[k] + ext[k]) for k in range(3))


class RandomField:
    """Smooth zero-mean, unit-variance random field over an LPS mm box.

    Gaussian white noise on a coarse lattice with pitch ``corr_mm`` (smoothed by one lattice
    step), evaluated by separable linear interpolation, so evaluating it on a fine box costs about
    three passes over the box whatever its correlation length.
    """

    def __init__(self, rng: np.random.Generator, bbox: Sequence[Sequence[float]], corr_mm: float) -> None:
        from scipy.ndimage import gaussian_filter

        self.lo = np.array([b[0] for b in bbox], dtype=np.float64) - 2 * corr_mm
        hi = np.array([b[1] for b in bbox], dtype=np.float64) + 2 * corr_mm
        self.step = float(corr_mm)
        n = np.maximum(np.ceil((hi - self.lo) / self.step).astype(int) + 1, 2)  # x, y, z
        field = rng.standard_normal((n[2], n[1], n[0])).astype(np.float32)
        field = gaussian_filter(field, 0.7, mode="wrap")
        field /= max(float(field.std()), 1e-6)
        self.field = field  # [z, y, x]

    def _interp(self, arr: Array, coords: Array, axis: int, k: int) -> Array:
        u = (np.asarray(coords, dtype=np.float64).ravel() - self.lo[k]) / self.step
        n = arr.shape[axis]
        u = np.clip(u, 0, n - 1.000001)
        i0 = np.floor(u).astype(np.intp)
        t = (u - i0).astype(np.float32)
        shape = [1, 1, 1]
        shape[axis] = t.size
        t = t.reshape(shape)
        return np.take(arr, i0, axis=axis) * (1 - t) + np.take(arr, i0 + 1, axis=axis) * t

    def __call__(self, X: Array, Y: Array, Z: Array) -> Array:
        X, Y, Z = (np.asarray(v, dtype=np.float32) for v in (X, Y, Z))
        sub = 1
        if X.size > 64 and Y.size > 64 and X.ndim == 3 and Y.ndim == 3 and X.shape[2] > 1 and Y.shape[1] > 1:
            pitch = min(abs(float(X[0, 0, 1] - X[0, 0, 0])), abs(float(Y[0, 1, 0] - Y[0, 0, 0])))
            if pitch * 4 <= self.step:  # fine grid: evaluate at every 2nd voxel in-plane, repeat
                sub = 2
        if sub == 1:
            f = self._interp(self.field, X, 2, 0)
            f = self._interp(f, Y, 1, 1)
            return self._interp(f, Z, 0, 2)
        h, w = Y.shape[1], X.shape[2]
        f = self._interp(self.field, X[:, :, ::2], 2, 0)
        f = self._interp(f, Y[:, ::2, :], 1, 1)
        f = self._interp(f, Z, 0, 2)
        d, h2, w2 = f.shape
        out = np.broadcast_to(f[:, :, None, :, None], (d, h2, 2, w2, 2)).reshape(d, 2 * h2, 2 * w2)
        return out[:, :h, :w]
