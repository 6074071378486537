"""Perceiver resampler: a fixed number of learned queries attend over a variable number of CT tokens.

Architecture of the reference ``AttentionalPoolProjector`` (REFERENCE.md §5), batched and masked:

    tokens   = (tokens − mean) / std          per channel (``input_norm="standardize"``)
    queries  [Q, W] (randn init, learned)
    keys     = Linear(C → W)(tokens)          values = Linear(C → W)(tokens)
    pooled   = MultiheadAttention(W, heads, dropout)(queries, keys, values, key_padding_mask)
    out      = Linear(W → W) ∘ GELU ∘ Linear(W → W) ∘ LayerNorm(W) → Linear(W → H)

(the final block is ``LayerNorm → Linear(W, W) → GELU → Linear(W, H)``). Reference defaults:
128 queries, width 2048, 8 heads, dropout 0.1; the CPU default here is 32 queries of width 256.

Unlike the reference, a whole batch goes through at once and padded tokens are masked out of the
attention (the reference looped over samples and never passed its mask), so a sample's output does
not depend on how much padding its batch needed.

Input standardisation: the CT tokens are standardised per channel with statistics of the training
set (:meth:`PerceiverResampler.set_input_statistics`, called by training before the first step),
kept as buffers in the projector's state dict so generation uses exactly the same transform. This
matters when the backbone's features vary little around a large common offset — a randomly
initialised ViT's CLS token (LayerScale ≈ 1e-5, so CLS ≈ LayerNorm(cls_token) for every volume)
differs between volumes by ~1 % of its norm; without standardisation the projector's inputs are
nearly identical, the gradient signal that separates volumes is tiny, and the language model
learns the marginal report (one text for every scan). A probe standardises its inputs for the
same reason. Models saved before this existed load with ``input_norm="none"``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

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
        input_norm: ``"standardize"`` (default): per-channel ``(x − mean) / std`` with stored
            training-set statistics before the key/value projections; ``"none"``: raw tokens (the
            reference; also what models saved without this field load as).
    """

    in_dim: int
    out_dim: int
    num_queries: int = 32
    width: int = 256
    num_heads: int = 8
    dropout: float = 0.1
    input_norm: Literal["standardize", "none"] = "standardize"

    def __post_init__(self) -> None:
        for name in ("in_dim", "out_dim", "num_queries", "width", "num_heads"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"projector {name} must be positive, got {getattr(self, name)}")
        if self.width % self.num_heads:
            raise ValueError(f"projector width {self.width} must be divisible by num_heads {self.num_heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"projector dropout must be in [0, 1), got {self.dropout}")
        if self.input_norm not in ("standardize", "none"):
            raise ValueError(f"projector input_norm must be 'standardize' or 'none', got {self.input_norm!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ProjectorConfig:
        """Inverse of :meth:`to_dict`; a dict without ``input_norm`` (saved before it existed) is ``"none"``."""
        d = {"input_norm": "none", **d}
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
        if c.input_norm == "standardize":
            self.register_buffer("input_mean", torch.zeros(c.in_dim))
            self.register_buffer("input_std", torch.ones(c.in_dim))
        self.queries = nn.Parameter(torch.randn(c.num_queries, c.width))
        self.key_proj = nn.Linear(c.in_dim, c.width)
        self.value_proj = nn.Linear(c.in_dim, c.width)
        self.attn = nn.MultiheadAttention(c.width, c.num_heads, dropout=c.dropout, batch_first=True)
        self.norm = nn.LayerNorm(c.width)
        self.mlp = nn.Sequential(nn.Linear(c.width, c.width), nn.GELU(), nn.Linear(c.width, c.out_dim))

    @property
    def num_queries(self) -> int:
        return self.config.num_queries

    @torch.no_grad()
    def set_input_statistics(self, mean: torch.Tensor, std: torch.Tensor, *, eps: float = 1e-6) -> None:
        """Store the per-channel ``[C]`` mean and standard deviation of the training tokens.

        Channels with ``std < eps`` (constant over the training set) get std 1, so they map to ~0
        instead of being blown up. Only for ``input_norm="standardize"``.
        """
        if self.config.input_norm != "standardize":
            raise ValueError("this projector has input_norm='none'; it stores no input statistics")
        C = self.config.in_dim
        mean = torch.as_tensor(mean, dtype=torch.float64).reshape(-1)
        std = torch.as_tensor(std, dtype=torch.float64).reshape(-1)
        if mean.shape != (C,) or std.shape != (C,):
            raise ValueError(f"mean and std must have {C} channels, got {tuple(mean.shape)} and {tuple(std.shape)}")
        if not (torch.isfinite(mean).all() and torch.isfinite(std).all()):
            raise ValueError("input statistics must be finite")
        std = torch.where(std < eps, torch.ones_like(std), std)
        self.input_mean.copy_(mean.to(self.input_mean.dtype))
        self.input_std.copy_(std.to(self.input_std.dtype))

    @staticmethod
    def token_statistics(tokens: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel mean and (population) std over all tokens of a list of ``[N_i, C]`` tensors."""
        if not tokens:
            raise ValueError("no tokens to compute statistics from")
        total = torch.zeros(tokens[0].shape[-1], dtype=torch.float64)
        sq = torch.zeros_like(total)
        n = 0
        for t in tokens:
            t = t.reshape(-1, t.shape[-1]).to(torch.float64)
            total += t.sum(0)
            n += t.shape[0]
        mean = total / n
        for t in tokens:
            t = t.reshape(-1, t.shape[-1]).to(torch.float64)
            sq += ((t - mean) ** 2).sum(0)
        return mean, (sq / n).sqrt()

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
        if self.config.input_norm == "standardize":
            x = (x - self.input_mean.to(dtype)) / self.input_std.to(dtype)
        k = self.key_proj(x)                                   # B, N, W
        v = self.value_proj(x)                                 # B, N, W
        q = self.queries.unsqueeze(0).expand(B, -1, -1)        # B, Q, W
        pooled, _ = self.attn(q, k, v, key_padding_mask=key_padding_mask, need_weights=False)
        return self.mlp(self.norm(pooled))                     # B, Q, H
