"""Resampling rules: isotropic target spacing, the token budget, and the centred patch crop.

All three reproduce the reference (REFERENCE.md §2.2, ``inference/processing.py``) exactly:

* :func:`isotropic_target_spacing` / :func:`resample_isotropic` — target spacing is the finest
  native spacing floored at ``preset.min_spacing_mm`` (0.75 mm); new size per axis is Python
  ``round(n · s / target)`` (banker's rounding); volumes whose three spacings are exactly equal
  are left untouched (``preset.skip_if_isotropic``), even when finer than the floor.
* :func:`max_patches_shape` / :func:`resize_max_patches` — when the token count exceeds the budget,
  scale ``s = (max / P)^(1/3)`` and try ``s·δ`` for δ ∈ {0.98, 0.99, 1.00, 1.01, 1.02} with
  ``int`` (floor) sizes; keep the first candidate with the largest token count ≤ budget; if none
  fits, use ``s·0.95`` unchecked.
* :func:`patch_crop_offsets` / :func:`patch_crop` — drop ``r = n mod p`` voxels per axis,
  ``⌊r/2⌋`` at the start and the rest at the end.

Resizing is ``F.interpolate(mode="trilinear", align_corners=False)`` in float32.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from voxelfm.preprocess.presets import Preset, get_preset

__all__ = [
    "isotropic_target_spacing", "isotropic_shape", "resample_isotropic", "max_patches_shape",
    "resize_max_patches", "patch_crop_offsets", "patch_crop", "resize_trilinear",
]

Shape = tuple[int, int, int]
Spacing = tuple[float, float, float]


def _spacing3(spacing: Sequence[float]) -> Spacing:
    if len(spacing) != 3:
        raise ValueError(f"spacing must have 3 values (sz, sy, sx) in mm, got {spacing!r}")
    sp = tuple(float(s) for s in spacing)
    if not all(s > 0 and np.isfinite(s) for s in sp):
        raise ValueError(f"spacing must be positive and finite, got {spacing!r}")
    return sp  # type: ignore[return-value]


def resize_trilinear(array: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Trilinear resize of ``[D, H, W]`` to ``size`` (``align_corners=False``, as the reference)."""
    size = tuple(int(s) for s in size)
    if tuple(array.shape) == size:
        return array
    if min(size) < 1:
        raise ValueError(f"cannot resize a volume to {size}: every side must be >= 1 voxel")
    return F.interpolate(array[None, None], size=size, mode="trilinear", align_corners=False)[0, 0]


def isotropic_target_spacing(spacing: Sequence[float], preset: Preset | str = "default") -> float | None:
    """Target isotropic spacing in mm, or ``None`` when the volume is left as it is.

    ``max(min(spacing), preset.min_spacing_mm)``; ``None`` when ``preset.skip_if_isotropic`` and
    all three spacings are exactly equal (the reference's quirk).
    """
    preset = get_preset(preset)
    sz, sy, sx = _spacing3(spacing)
    if preset.skip_if_isotropic and sz == sy == sx:
        return None
    return max(min(sz, sy, sx), preset.min_spacing_mm)


def isotropic_shape(shape: Sequence[int], spacing: Sequence[float], target: float) -> Shape:
    """New size per axis: Python ``round(n * s / target)`` (banker's rounding, as the reference)."""
    sp = _spacing3(spacing)
    return tuple(round(int(n) * s / target) for n, s in zip(shape, sp))  # type: ignore[return-value]


def resample_isotropic(array: np.ndarray | torch.Tensor, spacing: Sequence[float],
                       preset: Preset | str = "default") -> tuple[torch.Tensor, Spacing, Shape]:
    """Resample ``[D, H, W]`` to isotropic spacing per the preset's rule.

    Args:
        array: ``[D, H, W]`` HU (numpy or torch); converted to a float32 tensor.
        spacing: ``(sz, sy, sx)`` in mm.
        preset: the rules (``min_spacing_mm``, ``skip_if_isotropic``).

    Returns:
        ``(array [D', H', W'] float32 tensor, new_spacing (sz', sy', sx') mm, new_shape)``.
        ``new_spacing`` is the effective spacing per axis (``n · s / n'``; equals the target up to
        the rounding of the size), or the input spacing when nothing was done.
    """
    x = torch.as_tensor(array, dtype=torch.float32)
    if x.ndim != 3:
        raise ValueError(f"expected a 3-D [D, H, W] volume, got shape {tuple(x.shape)}")
    sp = _spacing3(spacing)
    target = isotropic_target_spacing(sp, preset)
    if target is None:
        return x, sp, tuple(x.shape)  # type: ignore[return-value]
    shape = isotropic_shape(x.shape, sp, target)
    y = resize_trilinear(x, shape)
    new_sp = tuple(n * s / m for n, s, m in zip(x.shape, sp, shape))
    return y, new_sp, shape  # type: ignore[return-value]


def _num_patches(shape: Sequence[int], p: int) -> int:
    return (shape[0] // p) * (shape[1] // p) * (shape[2] // p)


def max_patches_shape(shape: Sequence[int], patch_size: int, max_patches: int | None) -> Shape | None:
    """The reference token-budget size, or ``None`` when the volume already fits.

    Args:
        shape: ``(D, H, W)`` voxels.
        patch_size: patch side in voxels.
        max_patches: the budget (number of tokens); ``None``/0 disables it (reference: falsy).
    """
    if not max_patches:
        return None
    if max_patches < 1:
        raise ValueError(f"max_patches must be a positive number of tokens, got {max_patches}")
    D, H, W = (int(n) for n in shape)
    num = _num_patches((D, H, W), patch_size)
    if num <= max_patches:
        return None
    scale = (max_patches / num) ** (1 / 3)

    def candidate(s: float) -> tuple[int, int, int, int]:
        nd, nh, nw = int(D * s), int(H * s), int(W * s)
        return _num_patches((nd, nh, nw), patch_size), nd, nh, nw

    best = None
    for delta in (0.98, 0.99, 1.0, 1.01, 1.02):
        c = candidate(scale * delta)
        if c[0] <= max_patches and (best is None or c[0] > best[0]):
            best = c
    if best is None:
        best = candidate(scale * 0.95)
    return best[1], best[2], best[3]


def resize_max_patches(array: np.ndarray | torch.Tensor, patch_size: int,
                       max_patches: int | None) -> torch.Tensor:
    """Shrink ``[D, H, W]`` (trilinear) so that at most ~``max_patches`` tokens remain (reference rule)."""
    x = torch.as_tensor(array, dtype=torch.float32)
    shape = max_patches_shape(x.shape, patch_size, max_patches)
    return x if shape is None else resize_trilinear(x, shape)


def patch_crop_offsets(shape: Sequence[int], patch_size: int) -> tuple[Shape, Shape]:
    """``(start offsets, cropped shape)`` of the centred crop to a multiple of ``patch_size``."""
    if patch_size < 1:
        raise ValueError(f"patch_size must be >= 1, got {patch_size}")
    starts = tuple((int(n) % patch_size) // 2 for n in shape)
    sizes = tuple(int(n) - int(n) % patch_size for n in shape)
    return starts, sizes  # type: ignore[return-value]


def patch_crop(array, patch_size: int):
    """Centre-crop every axis of ``[D, H, W]`` to a multiple of ``patch_size`` (a view)."""
    (d0, h0, w0), (d, h, w) = patch_crop_offsets(array.shape, patch_size)
    return array[d0:d0 + d, h0:h0 + h, w0:w0 + w]
