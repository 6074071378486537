"""Localisation head (REFERENCE §4.5 ``PositionalAttentionRegressor3D``) with padding masks.

Predicts one relative position ``(z, y, x) ∈ [0, 1]³`` on the model-input grid as an attention-
weighted average of the token positions, so the prediction always lies inside the convex hull of
the token centres.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

__all__ = ["PositionalAttentionRegressor3D"]


@contextlib.contextmanager
def _without_mha_fastpath(device: torch.device):
    """Keep ``nn.MultiheadAttention`` on its SDPA path in eval mode on the CPU: the fused inference
    path (``torch._native_multi_head_attention``) was ~2.4× slower there for ~1000 padded tokens
    (0.97 s vs 0.41 s for 9 scans), and validation runs after every epoch. Same numbers either way."""
    mha = getattr(torch.backends, "mha", None)
    if device.type != "cpu" or mha is None or not hasattr(mha, "get_fastpath_enabled") \
            or not mha.get_fastpath_enabled():
        yield
        return
    mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        mha.set_fastpath_enabled(True)


class PositionalAttentionRegressor3D(nn.Module):
    """``tokens [B, T, C]``, ``coords [B, T, 3]`` relative positions, ``mask [B, T]`` ``-> [B, 3]``.

    ``x ← x + pos_linear(coords)``; one ``nn.MultiheadAttention(C, n_heads)`` self-attention over
    the tokens (``key_padding_mask = ~mask``; no residual, no norm, as the reference); per-token
    score ``MLP(C → hidden → ReLU → 1)``; softmax over the real tokens; prediction
    ``Σ_t w_t · coords_t``. Parameter names match the reference module.

    The reference computes the positions itself as ``linspace(0, 1, n)`` per axis and cannot mask
    padding, so it needs equal grids within a batch. Here the positions come with the batch
    (:func:`voxelfm.probes.data.token_coords`, ``"centre"`` or ``"corner"`` convention), and padded
    tokens get zero weight.

    Args:
        embed_dim: token width ``C`` (divisible by ``n_heads``).
        n_heads: attention heads (reference 4).
        hidden_dim: scoring MLP width (reference 128).
    """

    input_kind = "tokens"

    def __init__(self, embed_dim: int, *, n_heads: int = 4, hidden_dim: int = 128) -> None:
        super().__init__()
        if embed_dim % n_heads:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by n_heads ({n_heads})")
        self.out_dim = 3
        self.pos_linear = nn.Linear(3, embed_dim)
        self.attn = nn.MultiheadAttention(embed_dim, n_heads, batch_first=True)
        self.spatial_attn = nn.Sequential(nn.Linear(embed_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, 1))

    def token_weights(self, tokens: torch.Tensor, coords: torch.Tensor,
                      mask: torch.Tensor | None = None) -> torch.Tensor:
        """Softmax weights over tokens ``[B, T]`` (0 on padding)."""
        if mask is None:
            mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        x = tokens + self.pos_linear(coords)
        with _without_mha_fastpath(tokens.device):
            out, _ = self.attn(x, x, x, key_padding_mask=~mask, need_weights=False)
        scores = self.spatial_attn(out).squeeze(-1).masked_fill(~mask, float("-inf"))
        return torch.softmax(scores, dim=1)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None,
                coords: torch.Tensor | None = None) -> torch.Tensor:
        if coords is None:
            raise ValueError("the localisation head needs token coordinates (use feature=patch)")
        w = self.token_weights(tokens, coords, mask)
        return (w.unsqueeze(-1) * coords).sum(dim=1)
