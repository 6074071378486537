"""Stochastic depth: per-sample drop path and the reference's batch-subset residual variant."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = ["DropPath", "drop_path", "drop_add_residual_stochastic_depth"]


def drop_path(x: Tensor, drop_prob: float = 0.0, training: bool = False) -> Tensor:
    """Zero whole samples of ``x [B, ...]`` with probability ``drop_prob``; scale survivors by ``1/keep``."""
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1.0 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = x.new_empty(shape).bernoulli_(keep_prob)
    if keep_prob > 0.0:
        mask.div_(keep_prob)
    return x * mask


class DropPath(nn.Module):
    """Per-sample drop path (stochastic depth) of a residual branch; identity in eval mode."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: Tensor) -> Tensor:
        return drop_path(x, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


def drop_add_residual_stochastic_depth(x: Tensor, residual_func: Callable[[Tensor], Tensor],
                                       sample_drop_ratio: float = 0.0) -> Tensor:
    """``x + residual`` where the residual is computed only on a random subset of the batch.

    The subset has ``max(⌊B·(1 − ratio)⌋, 1)`` samples; their residual is added with weight
    ``B / subset`` (DINOv2 / reference ``Block`` for drop-path rates above 0.1). Saves compute.

    Args:
        x: ``[B, N, C]`` tokens.
        residual_func: the residual branch, ``[b, N, C] → [b, N, C]``.
        sample_drop_ratio: fraction of samples whose residual is skipped.
    """
    b = x.shape[0]
    subset = max(int(b * (1.0 - sample_drop_ratio)), 1)
    brange = torch.randperm(b, device=x.device)[:subset]
    residual = residual_func(x[brange])
    out = torch.index_add(x.flatten(1), 0, brange, residual.flatten(1).to(dtype=x.dtype),
                          alpha=b / subset)
    return out.view_as(x)
