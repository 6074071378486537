"""Perceiver resampler: a fixed number of learned queries attend over a variable number of CT tokens.

Architecture of the reference ``AttentionalPoolProjector`` (REFERENCE.md §5), batched and masked:

    queries  [Q, W] (randn init, learned)
    keys     = Linear(C → W)(tokens)          values = Linear(C → W)(tokens)
    pooled   = MultiheadAttention(W, heads, dropout)(queries, keys, values, key_padding_mask)
    out      = Linear(W → W) ∘ GELU ∘ Linear(W → W) ∘ LayerNorm(W) → Linear(W → H)

(the final block is ``LayerNorm → Linear(W, W) → GELU → Linear(W, H)``). Reference defaults:
128 queries, width 2048, 8 heads, dropout 0.1; the CPU default here is 32 queries of width 256.

Unlike the reference, a whole batch goes through at once and padded tokens are masked out of the
attention (the reference looped over samples and never passed its mask), so a sample's output does
not depend on how much padding its batch needed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

__all__ = ["ProjectorConfig", "PerceiverResampler"]


@dataclass
class ProjectorConfig:
    """Hyper-parameters of :class:`PerceiverResampler`.

    Attributes:
        in_dim: width ``C`` of the CT tokens (864 for VoxelFM ViT-B).
        out_dim: hidden size ``H`` of the language model.
        num_queries: number of output tokens ``Q`` (reference 128).
        width: attention width ``W`` (reference 2048); must be divisible by ``num_heads``.
        num_heads: attention heads (reference 8).
        dropout: attention dropout (reference 0.1).
    """

    in_dim: int
    out_dim: int
    num_queries: int = 32
    width: int = 256
    num_heads: int = 8
    dropout: float = 0.1

    def __post_init__(self) -> None:
        for name in ("in_dim", "out_dim", "num_queries", "width", "num_heads"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"projector {name} must be positive, got {getattr(self, name)}")
        if self.width % self.num_heads:
            raise ValueError(f"projector width {self.width} must be divisible by num_heads {self.num_heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"projector dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ProjectorConfig:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


class PerceiverResampler(nn.Module):
    """Project ``[B, N, C]`` CT tokens (any ``N``, padded) to ``[B, Q, H]`` language-model embeddings.

    Args:
        config: a :class:`ProjectorConfig` (or pass its fields as keyword arguments).

    Example::

        proj = PerceiverResampler(ProjectorConfig(in_dim=864, out_dim=576))
        out = proj(tokens, key_padding_mask=pad)   # tokens [B, N, 864], pad [B, N] bool (True = padding)
        out.shape                                   # [B, 32, 576]
    """

    def __init__(self, config: ProjectorConfig | None = None, **kwargs) -> None:
        super().__init__()
        if config is None:
            config = ProjectorConfig(**kwargs)
        elif kwargs:
            raise TypeError("pass either a ProjectorConfig or keyword arguments, not both")
        self.config = config
        c = config
        self.queries = nn.Parameter(torch.randn(c.num_queries, c.width))
        self.key_proj = nn.Linear(c.in_dim, c.width)
        self.value_proj = nn.Linear(c.in_dim, c.width)
        self.attn = nn.MultiheadAttention(c.width, c.num_heads, dropout=c.dropout, batch_first=True)
        self.norm = nn.LayerNorm(c.width)
        self.mlp = nn.Sequential(nn.Linear(c.width, c.width), nn.GELU(), nn.Linear(c.width, c.out_dim))

    @property
    def num_queries(self) -> int:
        return self.config.num_queries

    def forward(self, tokens: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Resample.

        Args:
            tokens: ``[B, N, C]`` float (a single CLS vector is ``N = 1``).
            key_padding_mask: ``[B, N]`` bool, True where the token is padding; every sample needs
                at least one real token. ``None`` = no padding.

        Returns:
            ``[B, Q, H]`` in the dtype of the projector's parameters.
        """
        if tokens.ndim != 3 or tokens.shape[-1] != self.config.in_dim:
            raise ValueError(f"tokens must be [B, N, {self.config.in_dim}], got {tuple(tokens.shape)}")
        B, N, _ = tokens.shape
        if key_padding_mask is not None:
            if key_padding_mask.shape != (B, N) or key_padding_mask.dtype != torch.bool:
                raise ValueError(f"key_padding_mask must be bool [B, N] = [{B}, {N}], got "
                                 f"{key_padding_mask.dtype} {tuple(key_padding_mask.shape)}")
            if bool(key_padding_mask.all(dim=1).any()):
                raise ValueError("a sample in the batch has only padding tokens")
        dtype = self.queries.dtype
        x = tokens.to(dtype)
        k = self.key_proj(x)                                   # B, N, W
        v = self.value_proj(x)                                 # B, N, W
        q = self.queries.unsqueeze(0).expand(B, -1, -1)        # B, Q, W
        pooled, _ = self.attn(q, k, v, key_padding_mask=key_padding_mask, need_weights=False)
        return self.mlp(self.norm(pooled))                     # B, Q, H
