"""SwiGLU feed-forward layer with the reference key names (``w12``, ``w3``)."""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["SwiGLUFFN"]


class SwiGLUFFN(nn.Module):
    """``w3(silu(x1) · x2)`` with ``[x1, x2] = w12(x).chunk(2)``.

    As in the reference (and unlike DINOv2's fused variant) the hidden width is used as given —
    ``int(C · mlp_ratio)`` — without the 2/3 rescaling. ``act_layer`` and ``drop`` are accepted for
    signature compatibility with :class:`Mlp` and ignored, as in the reference.
    """

    def __init__(self, in_features: int, hidden_features: int | None = None,
                 out_features: int | None = None, act_layer: Callable[..., nn.Module] | None = None,
                 drop: float = 0.0, bias: bool = True) -> None:
        super().__init__()
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        self.w12 = nn.Linear(in_features, 2 * hidden_features, bias=bias)
        self.w3 = nn.Linear(hidden_features, out_features, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        """``[..., C_in]`` → ``[..., C_out]``."""
        x1, x2 = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(x1) * x2)
