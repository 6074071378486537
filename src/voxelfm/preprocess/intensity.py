"""Intensity handling: HU windowing and the weights' mean/std normalisation.

Both functions work on numpy arrays and torch tensors alike and return the same kind they get.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

__all__ = ["apply_hu_window", "normalise_intensity"]

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


def apply_hu_window(array: ArrayT, window: tuple[float, float] | None) -> ArrayT:
    """Clip intensities to ``window = (low, high)`` in HU; ``None`` returns the input unchanged.

    Args:
        array: ``[D, H, W]`` (any shape) HU values.
        window: ``(low, high)`` with ``low < high``, or ``None`` for no clipping.
    """
    if window is None:
        return array
    lo, hi = float(window[0]), float(window[1])
    if not lo < hi:
        raise ValueError(f"HU window must be (low, high) with low < high, got {window}")
    if isinstance(array, torch.Tensor):
        return array.clamp(lo, hi)
    return np.clip(array, lo, hi)


def normalise_intensity(array: ArrayT, mean: float, std: float) -> ArrayT:
    """Return ``(array - mean) / std`` (HU in, dimensionless out), as the reference does in fp32."""
    if std <= 0:
        raise ValueError(f"std must be > 0, got {std}")
    return (array - float(mean)) / float(std)
