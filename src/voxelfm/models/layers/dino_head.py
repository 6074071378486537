"""DINO projection head: MLP → L2-normalise → weight-normalised linear to the prototypes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.init import trunc_normal_
from torch.nn.utils.parametrizations import weight_norm

__all__ = ["DINOHead"]


class DINOHead(nn.Module):
    """The reference ``DINOHead`` (REFERENCE.md §1.8) with identical state-dict names.

    Keys (``nlayers = 3``): ``mlp.0`` (in → hidden), ``mlp.2`` (hidden → hidden), ``mlp.4``
    (hidden → bottleneck) with GELU between (and BatchNorm1d after each hidden linear if
    ``use_bn``, which shifts the indices), then ``last_layer.parametrizations.weight.original0``
    ``[out_dim, 1]`` (the weight-norm magnitude g, initialised to 1) and ``...original1``
    ``[out_dim, bottleneck_dim]`` (the direction v), no bias. ``nlayers = 1`` makes ``mlp`` a
    single ``Linear(in, bottleneck)``.

    Init as the reference: MLP linears trunc-normal (std 0.02) with zero bias; the last layer
    keeps PyTorch's default ``nn.Linear`` init for v and sets g to 1.

    Args:
        in_dim: input width (the backbone ``embed_dim``).
        out_dim: number of prototypes (65536 in VoxelFM).
        hidden_dim: MLP hidden width.
        bottleneck_dim: width before the prototype layer.
        nlayers: MLP depth (≥ 1).
        use_bn: BatchNorm1d after each hidden linear.
        mlp_bias: biases of the MLP linears.
    """

    def __init__(self, in_dim: int, out_dim: int = 65536, hidden_dim: int = 2048,
                 bottleneck_dim: int = 256, nlayers: int = 3, use_bn: bool = False,
                 mlp_bias: bool = True) -> None:
        super().__init__()
        nlayers = max(int(nlayers), 1)
        self.in_dim, self.out_dim = int(in_dim), int(out_dim)
        self.mlp = _build_mlp(nlayers, in_dim, bottleneck_dim, hidden_dim, use_bn, mlp_bias)
        self.apply(self._init_weights)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        with torch.no_grad():
            self.last_layer.parametrizations.weight.original0.fill_(1.0)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        """``x [..., in_dim]`` → prototype logits ``[..., out_dim]``.

        The bottleneck output is L2-normalised (eps 1e-12, or 1e-6 for float16) before the
        weight-normalised last layer.
        """
        x = self.mlp(x)
        eps = 1e-6 if x.dtype == torch.float16 else 1e-12
        x = F.normalize(x, dim=-1, p=2, eps=eps)
        return self.last_layer(x)


def _build_mlp(nlayers: int, in_dim: int, bottleneck_dim: int, hidden_dim: int, use_bn: bool,
               bias: bool) -> nn.Module:
    if nlayers == 1:
        return nn.Linear(in_dim, bottleneck_dim, bias=bias)
    layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim, bias=bias)]
    if use_bn:
        layers.append(nn.BatchNorm1d(hidden_dim))
    layers.append(nn.GELU())
    for _ in range(nlayers - 2):
        layers.append(nn.Linear(hidden_dim, hidden_dim, bias=bias))
        if use_bn:
            layers.append(nn.BatchNorm1d(hidden_dim))
        layers.append(nn.GELU())
    layers.append(nn.Linear(hidden_dim, bottleneck_dim, bias=bias))
    return nn.Sequential(*layers)
