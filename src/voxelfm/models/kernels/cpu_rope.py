"""3D RoPE on q and k straight from the qkv projection (AVX512-BF16 CPUs): ``rope_qk``."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from voxelfm.models.kernels.loader import load_kernel

__all__ = ["cpu_rope_qk"]


def cpu_rope_qk(dtype: torch.dtype) -> Callable[[Tensor, Tensor, Tensor, int], Tensor] | None:
    """``rope_qk(qkv [B, N, 3, H, hd], cos2, sin2 [N − num_special, hd] fp32, num_special)
    → qk [B, N, 2, H, hd]`` for ``qkv`` of ``dtype`` (bf16 or fp32), or ``None`` if unavailable.

    Rotates every channel pair of q and k of the patch tokens, ``x · cos2 + swap(x) · sin2``
    (pair tables of :func:`voxelfm.models.layers.rope._pair_tables` in fp32), and copies the
    first ``num_special`` tokens: what :func:`voxelfm.models.layers.rope.rope_qk` computes, in one
    fp32 pass (bf16: with one rounding to bf16) instead of PyTorch's four passes. ``qkv`` must be
    contiguous. ``None`` for other dtypes, without a C++ compiler, on CPUs without AVX512-BF16, or
    with ``VOXELFM_CPU_KERNELS=0``.
    """
    if dtype not in (torch.bfloat16, torch.float32):
        return None
    return torch.ops.voxelfm_kernels.rope_qk if load_kernel("rope") else None
