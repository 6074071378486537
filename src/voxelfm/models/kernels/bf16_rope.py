"""3D RoPE on bf16 q and k straight from the qkv projection (AVX512-BF16 CPUs): ``rope_qk``."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from voxelfm.models.kernels.loader import load_kernel

__all__ = ["bf16_rope_qk"]


def bf16_rope_qk() -> Callable[[Tensor, Tensor, Tensor, int], Tensor] | None:
    """``rope_qk(qkv [B, N, 3, H, hd] bf16, cos2, sin2 [N − num_special, hd] fp32, num_special)
    → qk [B, N, 2, H, hd] bf16``, or ``None`` if unavailable.

    Rotates every channel pair of q and k of the patch tokens, ``x · cos2 + swap(x) · sin2``
    (pair tables of :func:`voxelfm.models.layers.rope._pair_tables` in fp32), and copies the
    first ``num_special`` tokens: what :func:`voxelfm.models.layers.rope.rope_qk` computes, in one
    fp32 pass with one rounding to bf16. ``qkv`` must be contiguous. ``None`` under the same
    conditions as :func:`voxelfm.models.kernels.cpu_attention`.
    """
    return torch.ops.voxelfm_kernels.rope_qk if load_kernel("bf16_rope") else None
