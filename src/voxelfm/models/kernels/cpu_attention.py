"""Fused CPU attention for inference (AVX-512 CPUs): ``softmax(scale · q kᵀ) v`` in one pass."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from voxelfm.models.kernels.loader import load_kernel

__all__ = ["cpu_attention"]

#: kernel name (C++ file) and operator for each dtype
_KERNEL_FOR: dict[torch.dtype, tuple[str, str]] = {
    torch.bfloat16: ("bf16_attention", "attention_bf16"),
    torch.float32: ("fp32_attention", "attention_f32"),
}


def cpu_attention(dtype: torch.dtype) -> Callable[[Tensor, Tensor, Tensor, float], Tensor] | None:
    """``attention(q, k, v, scale) -> out`` for ``dtype`` (bf16 or fp32), or ``None`` if unavailable.

    ``q, k, v [B, heads, N, head_dim]`` (any strides with a unit stride along ``head_dim``; the
    model passes strided views of its qkv projection) → ``out [B, heads, N, head_dim]``, a view of a
    contiguous ``[B, N, heads, head_dim]`` tensor, so that the model's ``[B, N, C]`` reshape is free.
    ``head_dim`` ≤ 128 (even for bf16). No gradient, no dropout, no mask.

    Flash-attention style (``flash_attention.h``): for blocks of 48 query rows of one head the keys
    are walked in tiles of 256 with a running row maximum and sum, so no more than a 48 × 256 tile
    of scores exists at any time; both products run in AVX-512 register-blocked micro-kernels on k
    and v repacked once per head. bf16: products with ``vdpbf16ps`` (fp32 accumulation), ``exp``
    at 7.5·10⁻⁵ relative, probabilities rounded to bf16 as in PyTorch's bf16 attention. fp32: fp32
    throughout, ``exp`` at ≈ 3·10⁻⁷ relative. Rows run on ATen's intra-op thread pool.

    Built on first call (a few seconds, see :func:`voxelfm.models.kernels.build_torch_library`);
    ``None`` for other dtypes, without a C++ compiler, on CPUs without AVX-512 (AVX512-BF16 for
    bf16), or with ``VOXELFM_CPU_KERNELS=0`` (:func:`voxelfm.models.kernels.kernel_status` says why).
    """
    if dtype not in _KERNEL_FOR:
        return None
    kernel, op = _KERNEL_FOR[dtype]
    return getattr(torch.ops.voxelfm_kernels, op) if load_kernel(kernel) else None
