"""The unnormalised row softmax of fp32 attention scores (AVX-512 CPUs): ``exp_rows_f32_``."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from voxelfm.models.kernels.loader import load_kernel

__all__ = ["fp32_exp_rows"]


def fp32_exp_rows() -> Callable[[Tensor], Tensor] | None:
    """``exp_rows_f32_(scores [R, N] fp32) -> row_sums [R] fp32``, or ``None`` if unavailable.

    In place, ``scores[r, j] ← exp(scores[r, j] − max_j scores[r, j])``, accurate to about 3e-7
    relative for the terms within e⁻⁵ of the maximum and 5e-6 below (PyTorch's is about 1e-7 but
    3–4× slower here); rows contiguous, scores finite. ``None`` without a C++ compiler, on CPUs
    without AVX-512, or with ``VOXELFM_CPU_KERNELS=0``.
    """
    return torch.ops.voxelfm_kernels.exp_rows_f32_ if load_kernel("fp32_softmax") else None
