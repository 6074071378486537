"""The MLP probe on a vector (REFERENCE §4.2 ``Mlp``): Linear → ReLU → Dropout → Linear."""

from __future__ import annotations

import torch
from torch import nn

from voxelfm.probes.heads.linear import Standardizer

__all__ = ["MLPHead"]


class MLPHead(nn.Module):
    """``[B, C] -> [B, K]`` (``[B]`` when ``K = 1``).

    Layer names (``mlp.0``, ``mlp.3``) match the reference ``Mlp``, so its state dicts load with
    ``standardize=False``.

    Args:
        in_dim: feature width ``C``.
        out_dim: outputs ``K``.
        hidden_dim: hidden width (reference 1024).
        dropout: dropout probability after the ReLU (reference 0.5).
        standardize: z-score inputs with training statistics (``.norm.fit(x_train)``).
    """

    input_kind = "vector"

    def __init__(self, in_dim: int, out_dim: int = 1, *, hidden_dim: int = 1024, dropout: float = 0.5,
                 standardize: bool = True) -> None:
        super().__init__()
        if hidden_dim < 1 or not 0 <= dropout < 1:
            raise ValueError("hidden_dim must be >= 1 and dropout in [0, 1)")
        self.out_dim = out_dim
        self.norm = Standardizer(in_dim) if standardize else nn.Identity()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(hidden_dim, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.mlp(self.norm(x))
        return out.squeeze(-1) if self.out_dim == 1 else out
