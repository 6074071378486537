"""Preprocessing in a backbone's native axis order, mapped back exactly to SPL.

M3D-CLIP, RadFM and CT-CLIP each preprocess a volume in their own array layout (CT-CLIP: the
raw nibabel order ``(k, i, j)`` of an LPS-stored NIfTI; RadFM: rows × columns × slices). A family
declares that layout as an :class:`~voxelfm.io.orientation.AxisMap` from the canonical SPL array,
runs its original steps on the native array (so asymmetric crops/pads fall exactly where the
original puts them), and :func:`native_to_preprocessed` permutes the result back to SPL and writes
the record (``to_source``, ``patch_size`` and ``spacing`` along the SPL axes, the model-input
affine). The forward of the family applies the same map, so the network sees exactly the original's
input.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from voxelfm.baselines.base import make_preprocessed
from voxelfm.io.orientation import AxisMap
from voxelfm.preprocess import Preprocessed, source_grid

__all__ = ["NativeGrid", "read_native", "native_to_preprocessed", "apply_map", "minmax_unit"]


class NativeGrid:
    """A source volume in a family's native axis order.

    Attributes:
        array: ``[A0, A1, A2]`` float32 HU tensor in the native order (unclipped).
        spacing: mm along the native axes.
        spl_shape, spl_spacing: the SPL source grid (record ``input_shape`` / ``input_spacing``).
        info: from :func:`voxelfm.preprocess.source_grid` (``source``, ``orientation``, ``affine``).
        native_map: SPL array → native array.
    """

    def __init__(self, array: torch.Tensor, spacing: tuple[float, float, float], spl_shape: Sequence[int],
                 spl_spacing: Sequence[float], info: dict[str, Any], native_map: AxisMap) -> None:
        self.array = array
        self.spacing = spacing
        self.spl_shape = tuple(int(n) for n in spl_shape)
        self.spl_spacing = tuple(float(s) for s in spl_spacing)
        self.info = info
        self.native_map = native_map


def apply_map(x: torch.Tensor, axis_map: AxisMap, *, first_axis: int = 0) -> torch.Tensor:
    """``axis_map`` applied to the three axes of ``x`` starting at ``first_axis`` (exact: permute/flip)."""
    lead = list(range(first_axis))
    perm = lead + [first_axis + p for p in axis_map.perm] + list(range(first_axis + 3, x.ndim))
    out = x.permute(*perm)
    dims = [first_axis + k for k in range(3) if axis_map.flips[k]]
    return out.flip(dims) if dims else out


def read_native(source: Any, native_map: AxisMap, *, spacing: Sequence[float] | None = None) -> NativeGrid:
    """Read ``source`` (path, Volume or SPL ``[D, H, W]`` HU array) and lay it out natively."""
    x, sp, info = source_grid(source, "default", spacing=None if spacing is None else tuple(spacing))
    native = apply_map(x, native_map)
    nsp = tuple(float(sp[p]) for p in native_map.perm)
    return NativeGrid(native, nsp, tuple(x.shape), sp, info, native_map)  # type: ignore[arg-type]


def minmax_unit(x: torch.Tensor, *, of: torch.Tensor | None = None) -> torch.Tensor:
    """Per-volume min-max to [0, 1] as M3D's and RadFM's code: ``(x - min) / max(max - min, 1e-8)``.

    ``of``: the volume whose min/max to use (default ``x``) — e.g. the full volume when ``x`` is a
    nearest-neighbour sample of it (then the result equals sampling the min-maxed volume, bit for bit:
    ``max(v - min) == max - min`` in floating point because subtraction is monotonic).
    """
    ref = x if of is None else of
    lo, hi = ref.min(), ref.max()
    return (x - lo) / torch.clamp(hi - lo, min=1e-8)


def native_to_preprocessed(array: torch.Tensor, grid: NativeGrid, *, family: str, scale: Sequence[float],
                           offset: Sequence[float], patch_size: Sequence[int], steps: list[dict[str, Any]],
                           **extra: Any) -> Preprocessed:
    """The :class:`~voxelfm.preprocess.Preprocessed` of a natively preprocessed array.

    Args:
        array: ``[N0, N1, N2]`` model input in the native order.
        grid: the :class:`NativeGrid` it came from.
        scale, offset: per native axis, model voxel ``i`` ↔ native source voxel ``scale·i + offset``.
        patch_size: the model's feature stride along the native axes.
    """
    m = grid.native_map
    inv = m.inverse()
    spl = apply_map(array, inv).contiguous()
    n_src = grid.array.shape
    s_spl, o_spl, p_spl = [0.0] * 3, [0.0] * 3, [1] * 3
    for a, k in enumerate(m.perm):  # native axis a is SPL axis k (reversed when flipped)
        s, o = float(scale[a]), float(offset[a])
        if m.flips[a]:  # native index j ↔ SPL index n-1-j on both the source and the model grid
            o = (n_src[a] - 1) - s * (array.shape[a] - 1) - o
        s_spl[k], o_spl[k], p_spl[k] = s, o, int(patch_size[a])
    final_spacing = [grid.spl_spacing[k] * s_spl[k] for k in range(3)]
    affine = grid.info.get("affine")
    if affine is not None:
        t = np.eye(4)
        t[:3, :3] = np.diag(s_spl)
        t[:3, 3] = o_spl
        affine = (np.asarray(affine) @ t).tolist()
    return make_preprocessed(spl, family=family, info=grid.info, input_shape=grid.spl_shape,
                             input_spacing=grid.spl_spacing, spacing=final_spacing, patch_size=p_spl,
                             to_source={"scale": s_spl, "offset": o_spl}, steps=steps, affine=affine,
                             native_order={"perm": list(m.perm), "flips": list(m.flips)}, **extra)
