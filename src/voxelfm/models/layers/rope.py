"""3D rotary position embedding (RoPE) with per-axis coordinates and interleaved channel pairs.

Layout (REFERENCE.md §1.4): each head of width ``hd`` is split into three contiguous axis blocks of
``hd/3`` channels — ``[0, hd/3)`` ↔ z (depth, D), ``[hd/3, 2hd/3)`` ↔ y (H), ``[2hd/3, hd)`` ↔ x (W).
Each block holds ``hd/6`` interleaved pairs ``(2i, 2i+1)`` rotated by the angle
``θ = 2π · c / period_i`` with ``period_i = base ** (2i / (hd/3))`` and the patch coordinate
``c = 2 (n + 0.5) / N_axis − 1`` normalised by that axis's own patch count. Only patch tokens of q
and k are rotated; CLS/register tokens and v are untouched.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from voxelfm.models.kernels import cpu_rope_qk

__all__ = ["RopePositionEmbedding3D", "apply_rope_3d", "rope_coords", "rope_qk"]


def rope_coords(D: int, H: int, W: int, *, device: torch.device | str | None = None) -> Tensor:
    """Patch-centre coordinates ``[D·H·W, 3]`` (z, y, x) in (−1, 1), float32, in (d h w) order."""
    axes = [torch.arange(0.5, n, device=device, dtype=torch.float32) / float(n) for n in (D, H, W)]
    coords = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)
    return 2.0 * coords - 1.0


class RopePositionEmbedding3D(nn.Module):
    """Computes the RoPE angles' ``(sin, cos)`` for a patch grid.

    State-dict: the persistent float32 buffer ``periods [head_dim // 6]`` (as the reference).

    Args:
        embed_dim: model width ``C``.
        num_heads: attention heads; ``C`` must be divisible by ``6 · num_heads``.
        base: period base (100 in VoxelFM).
        rescale_coords: training-time jitter ``r``: in training mode all coordinates are
            multiplied by one scalar ``exp(U(−log r, log r))`` per call; ``None`` disables it.
    """

    periods: Tensor

    def __init__(self, embed_dim: int, *, num_heads: int, base: float = 100.0,
                 rescale_coords: float | None = None) -> None:
        super().__init__()
        if embed_dim % (6 * num_heads):
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by 6 * num_heads "
                             f"({6 * num_heads}) for 3D RoPE")
        self.embed_dim = int(embed_dim)
        self.num_heads = int(num_heads)
        self.head_dim = embed_dim // num_heads
        self.base = float(base)
        self.rescale_coords = rescale_coords
        self.rot_pair_count = self.head_dim // 6
        self.register_buffer("periods", self.compute_periods(), persistent=True)

    def compute_periods(self, device: torch.device | str | None = None) -> Tensor:
        """``[head_dim // 6]`` float32: ``base ** (2 i / (head_dim // 3))``."""
        i = torch.arange(self.rot_pair_count, dtype=torch.float32, device=device)
        return self.base ** (2.0 * i / (self.head_dim // 3))

    def reset_parameters(self) -> None:
        """Regenerate ``periods`` from ``base`` and ``head_dim`` (e.g. after building on meta)."""
        with torch.no_grad():
            self.periods.copy_(self.compute_periods(self.periods.device))

    def forward(self, *, D: int, H: int, W: int) -> tuple[Tensor, Tensor]:
        """Return ``(sin, cos)``, each ``[D·H·W, 3, head_dim // 6]`` float32 (axes z, y, x)."""
        device = self.periods.device
        coords = rope_coords(D, H, W, device=device)  # N, 3
        if self.training and self.rescale_coords is not None:
            log_r = math.log(self.rescale_coords)
            scale = torch.empty(1, device=device, dtype=torch.float32).uniform_(-log_r, log_r).exp()
            coords = coords * scale
        periods = self.periods.to(device=device, dtype=torch.float32)
        angles = 2.0 * math.pi * coords[:, :, None] / periods[None, None, :]  # N, 3, pairs
        angles = torch.remainder(angles, 2.0 * math.pi)
        return torch.sin(angles), torch.cos(angles)

    def extra_repr(self) -> str:
        return (f"head_dim={self.head_dim}, base={self.base}, pairs_per_axis={self.rot_pair_count}, "
                f"rescale_coords={self.rescale_coords}")


def apply_rope_3d(q: Tensor, k: Tensor, sin: Tensor, cos: Tensor,
                  num_special: int) -> tuple[Tensor, Tensor]:
    """Rotate the patch tokens of ``q`` and ``k``; the first ``num_special`` tokens pass unchanged.

    Args:
        q, k: ``[B, heads, num_special + Np, head_dim]``.
        sin, cos: ``[Np, 3, head_dim // 6]`` from :class:`RopePositionEmbedding3D` (float32; cast
            to the dtype of q/k before the multiply, so bf16/fp16 autocast works).
        num_special: CLS + register tokens at the front of the sequence.

    Returns:
        ``(q, k)`` with the same shapes and dtypes.
    """
    n_patches = q.shape[-2] - num_special
    _check_tables(sin, n_patches, q.shape[-1])
    cos2, sin2 = _pair_tables(sin, cos, q.dtype)  # [Np, head_dim] broadcast over batch and heads
    q = torch.cat((q[:, :, :num_special], _rotate(q[:, :, num_special:], cos2, sin2)), dim=2)
    k = torch.cat((k[:, :, :num_special], _rotate(k[:, :, num_special:], cos2, sin2)), dim=2)
    return q, k


def rope_qk(qkv: Tensor, sin: Tensor | None, cos: Tensor | None, num_special: int) -> tuple[Tensor, Tensor]:
    """Rotated ``q, k [B, heads, N, head_dim]`` straight from the qkv projection's token-major
    output ``qkv [B, N, 3, heads, head_dim]`` (what :func:`apply_rope_3d` computes).

    Rotating in the projection's own layout reads and writes contiguous memory (≈ 3× faster in fp32
    than on the head-major views), and q and k are rotated by one pair of operations. ``sin is None``:
    no rotation (views of ``qkv``); otherwise views of one new ``[B, N, 2, heads, head_dim]`` tensor.
    """
    B, N = qkv.shape[:2]
    if sin is None or cos is None:
        qk = qkv[:, :, :2]
    else:
        n_patches = N - num_special
        _check_tables(sin, n_patches, qkv.shape[-1])
        cos2, sin2 = _pair_tables(sin, cos, qkv.dtype)
        x = qkv[:, num_special:, :2]
        cos2, sin2 = cos2[:, None, None], sin2[:, None, None]  # Np, 1, 1, head_dim
        fused = _kernel(qkv)
        if fused is not None:  # one fp32 pass, fp32 tables (PyTorch's bf16 path rounds them to bf16)
            cos32, sin32 = _pair_tables(sin, cos, torch.float32)
            qk = fused(qkv, cos32, sin32, num_special)
        elif torch.is_grad_enabled() and qkv.requires_grad:
            qk = torch.cat((qkv[:, :num_special, :2], _rotate(x, cos2, sin2)), dim=1)
        else:  # no copy for the concatenation: rotate into the output
            qk = qkv.new_empty(B, N, 2, *qkv.shape[3:])
            qk[:, :num_special] = qkv[:, :num_special, :2]
            _rotate(x, cos2, sin2, out=qk[:, num_special:])
    q, k = qk.permute(2, 0, 3, 1, 4).unbind(0)
    return q, k


def _kernel(qkv: Tensor) -> Callable[[Tensor, Tensor, Tensor, int], Tensor] | None:
    """voxelfm's compiled RoPE for inference on contiguous bf16 or fp32 CPU tensors, else ``None``."""
    if (qkv.device.type != "cpu" or not qkv.is_contiguous() or (torch.is_grad_enabled() and qkv.requires_grad)):
        return None
    return cpu_rope_qk(qkv.dtype)


def _check_tables(sin: Tensor, n_patches: int, head_dim: int) -> None:
    if sin.shape[0] != n_patches or sin.shape[1] != 3 or 6 * sin.shape[2] != head_dim:
        raise ValueError(f"RoPE tables {tuple(sin.shape)} do not match {n_patches} patch tokens of "
                         f"head_dim {head_dim}")


def _pair_tables(sin: Tensor, cos: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """``[Np, 3, P]`` sin/cos → ``cos2, sin2 [Np, 6P]`` over the interleaved pairs of a head:
    ``cos2 = (c, c)`` and ``sin2 = (−s, s)`` per pair (float32 tables cast to ``dtype``, so bf16/fp16
    autocast works)."""
    n, axes, pairs = sin.shape
    s, c = sin.to(dtype), cos.to(dtype)
    cos2 = c[..., None].expand(n, axes, pairs, 2).reshape(n, axes * pairs * 2)
    sin2 = torch.stack((-s, s), dim=-1).reshape(n, axes * pairs * 2)
    return cos2, sin2


def _rotate(x: Tensor, cos2: Tensor, sin2: Tensor, out: Tensor | None = None) -> Tensor:
    """Rotate each channel pair ``(x₀, x₁)`` of ``x [..., head_dim]`` to
    ``(x₀ cos − x₁ sin, x₀ sin + x₁ cos)``: ``x · cos2 + swap(x) · sin2`` (tables broadcast)."""
    swapped = x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)
    return torch.addcmul(x * cos2, swapped, sin2, out=out)
