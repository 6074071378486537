"""Cubic 3D patch embedding: a strided ``Conv3d`` from a single-channel volume to patch tokens.

In float32 the ``Conv3d`` itself runs (bit-for-bit as the reference). In bf16/fp16 (a reduced-
precision input or CPU/CUDA autocast) the same projection runs as one GEMM over the unfolded
patches, ``[B·N, p³] @ [p³, C]``: oneDNN's reduced-precision ``Conv3d`` with a 1-channel ``p³``
kernel ran at ~15 GFLOP/s on a 2-core AVX-512-bf16 CPU (2.1 s of a 10 s ViT-B forward at 8,000
tokens) where the GEMM takes 0.05 s (``benchmarks/forward_efficiency.py``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["PatchEmbed3D"]


class PatchEmbed3D(nn.Module):
    """Split a volume into non-overlapping ``p×p×p`` patches and project each to ``embed_dim``.

    State-dict keys: ``proj.weight [C, 1, p, p, p]``, ``proj.bias [C]`` (REFERENCE.md §1.2).

    Args:
        patch_size: patch side ``p`` in voxels (kernel = stride).
        embed_dim: output token width ``C``.
    """

    def __init__(self, patch_size: int = 14, embed_dim: int = 864) -> None:
        super().__init__()
        self.patch_size = int(patch_size)
        self.embed_dim = int(embed_dim)
        self.proj = nn.Conv3d(1, embed_dim, kernel_size=patch_size, stride=patch_size)

    def grid_size(self, shape: tuple[int, int, int] | torch.Size) -> tuple[int, int, int]:
        """Token grid ``(d, h, w) = (⌊D/p⌋, ⌊H/p⌋, ⌊W/p⌋)`` of a ``(D, H, W)`` volume."""
        p = self.patch_size
        return int(shape[-3]) // p, int(shape[-2]) // p, int(shape[-1]) // p

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, int, int]]:
        """Embed ``x [B, D, H, W]`` → ``(tokens [B, d·h·w, C] in (d h w) order, (d, h, w))``.

        The channel axis is added here. Voxels beyond the last full patch on each axis (trailing
        side) are dropped by the strided convolution, as in the reference.
        """
        low = _reduced_precision(x)
        if low is not None:
            return self._forward_gemm(x, low)
        x = self.proj(x.unsqueeze(1))  # B, C, d, h, w
        d, h, w = (int(s) for s in x.shape[2:])
        return x.flatten(2).transpose(1, 2), (d, h, w)  # B, (d h w), C

    def _forward_gemm(self, x: Tensor, dtype: torch.dtype) -> tuple[Tensor, tuple[int, int, int]]:
        """The projection as a GEMM over unfolded patches, in ``dtype`` (same result up to rounding)."""
        p = self.patch_size
        B = x.shape[0]
        d, h, w = self.grid_size(x.shape)
        x = x[:, :d * p, :h * p, :w * p].to(dtype)
        patches = x.reshape(B, d, p, h, p, w, p).permute(0, 1, 3, 5, 2, 4, 6).reshape(B, d * h * w, p ** 3)
        weight = self.proj.weight.reshape(self.embed_dim, p ** 3).to(dtype)
        bias = self.proj.bias.to(dtype) if self.proj.bias is not None else None
        return torch.nn.functional.linear(patches, weight, bias), (d, h, w)


def _reduced_precision(x: Tensor) -> torch.dtype | None:
    """bf16/fp16 when ``x`` is in it or autocast is on for ``x``'s device, else ``None``."""
    if x.dtype in (torch.bfloat16, torch.float16):
        return x.dtype
    device = x.device.type
    if device in ("cpu", "cuda") and torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return None
