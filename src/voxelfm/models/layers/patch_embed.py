"""Cubic 3D patch embedding: a strided ``Conv3d`` from a single-channel volume to patch tokens."""

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
        x = self.proj(x.unsqueeze(1))  # B, C, d, h, w
        d, h, w = (int(s) for s in x.shape[2:])
        return x.flatten(2).transpose(1, 2), (d, h, w)  # B, (d h w), C
