"""Attentive pooling over a variable set of tokens (the reference's one-query "Q-Former",
generalised to ``k`` learned queries, with padding masks)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["AttentivePoolingHead"]


class AttentivePoolingHead(nn.Module):
    """``tokens [B, T, C]`` + ``mask [B, T]`` (True = real token) ``-> [B, K]`` (``[B]`` if ``K = 1``).

    ``token_proj`` Linear(C → hidden) + Dropout on the tokens; ``num_queries`` learned queries
    (randn init) attend to them with ``nn.MultiheadAttention(hidden, num_heads, dropout=attn_dropout)``
    and ``key_padding_mask = ~mask``; the query outputs (Dropout) are concatenated,
    ``[B, k·hidden]``, and a classifier Dropout + Linear maps them to ``K`` outputs. With
    ``num_queries = 1`` this is exactly the reference ``QFormer`` (same parameter names).

    Args:
        in_dim: token width ``C``.
        out_dim: outputs ``K``.
        hidden_dim: attention width (must be divisible by ``num_heads``).
        num_queries: number of learned queries ``k``.
        num_heads: attention heads (reference 4).
        dropout: dropout on projected tokens, pooled output and before the classifier (reference 0.5).
        attn_dropout: dropout on the attention weights (reference 0.1).
    """

    input_kind = "tokens"

    def __init__(self, in_dim: int, out_dim: int = 1, *, hidden_dim: int = 256, num_queries: int = 1,
                 num_heads: int = 4, dropout: float = 0.5, attn_dropout: float = 0.1) -> None:
        super().__init__()
        if hidden_dim % num_heads:
            raise ValueError(f"hidden_dim ({hidden_dim}) must be divisible by num_heads ({num_heads})")
        if num_queries < 1:
            raise ValueError("num_queries must be >= 1")
        self.out_dim = out_dim
        self.num_queries = num_queries
        self.token_proj = nn.Linear(in_dim, hidden_dim)
        self.dropout = nn.Dropout(dropout)
        self.queries = nn.Parameter(torch.randn(1, num_queries, hidden_dim))
        self.attn = nn.MultiheadAttention(hidden_dim, num_heads, dropout=attn_dropout, batch_first=True)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(num_queries * hidden_dim, out_dim))

    def pool(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled ``[B, k·hidden]`` and attention weights ``[B, k, T]``."""
        b = tokens.shape[0]
        if mask is None:
            mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        t = self.dropout(self.token_proj(tokens))
        q = self.queries.expand(b, -1, -1)
        out, weights = self.attn(q, t, t, key_padding_mask=~mask, need_weights=True)
        return self.dropout(out).reshape(b, -1), weights

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None,
                coords: torch.Tensor | None = None) -> torch.Tensor:
        del coords
        out = self.classifier(self.pool(tokens, mask)[0])
        return out.squeeze(-1) if self.out_dim == 1 else out
