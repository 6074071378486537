"""The transformer feed-forward layer: Linear → GELU → Linear (keys ``fc1``, ``fc2``)."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from voxelfm.models.layers.onednn_linear import inference_mlp

__all__ = ["Mlp"]


class Mlp(nn.Module):
    """``fc2(drop(act(fc1(x))))`` followed by dropout; exact (erf) GELU by default.

    Args:
        in_features: input width ``C``.
        hidden_features: hidden width (default ``C``).
        out_features: output width (default ``C``).
        act_layer: activation module class.
        drop: dropout probability after the activation and after ``fc2``.
        bias: biases of both linears.
    """

    def __init__(self, in_features: int, hidden_features: int | None = None,
                 out_features: int | None = None, act_layer: Callable[..., nn.Module] = nn.GELU,
                 drop: float = 0.0, bias: bool = True) -> None:
        super().__init__()
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features, out_features, bias=bias)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        """``[..., C_in]`` → ``[..., C_out]``."""
        if type(self.act) is nn.GELU and self.act.approximate == "none" and (self.drop.p == 0 or not self.training):
            # where the CPU inference path applies: the exact GELU inside fc1's call, blocks of rows
            # (inference_mlp); the dropouts in between are identities here
            return inference_mlp(self.fc1, self.fc2, x)
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))
