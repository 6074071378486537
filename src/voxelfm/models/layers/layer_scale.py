"""LayerScale: a learned per-channel gain on a residual branch."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["LayerScale"]


class LayerScale(nn.Module):
    """``x · gamma`` with ``gamma [C]`` initialised to ``init_values`` (state-dict key ``gamma``)."""

    def __init__(self, dim: int, init_values: float = 1e-5, inplace: bool = False) -> None:
        super().__init__()
        self.inplace = inplace
        self.init_values = float(init_values)
        self.gamma = nn.Parameter(torch.full((dim,), self.init_values))

    def reset_parameters(self) -> None:
        nn.init.constant_(self.gamma, self.init_values)

    def forward(self, x: Tensor) -> Tensor:
        """``x [..., C]`` → ``x · gamma``."""
        return x.mul_(self.gamma) if self.inplace else x * self.gamma
