"""Pre-norm transformer block: ``x + LS1(Attn(LN1(x)))`` then ``x + LS2(FFN(LN2(x)))``."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor, nn

from voxelfm.models.layers.attention import Attention
from voxelfm.models.layers.drop_path import DropPath, drop_add_residual_stochastic_depth
from voxelfm.models.layers.layer_scale import LayerScale
from voxelfm.models.layers.mlp import Mlp

__all__ = ["Block"]


class Block(nn.Module):
    """One ViT block with the reference state-dict names
    (``norm1, attn.qkv, attn.proj, ls1.gamma, norm2, mlp.*, ls2.gamma``; REFERENCE.md §1.6).

    Args:
        dim: width ``C``.
        num_heads: attention heads.
        mlp_ratio: FFN hidden width ``int(C · mlp_ratio)``.
        qkv_bias, proj_bias, ffn_bias: linear biases.
        drop: dropout after the attention projection and in the FFN (0 in VoxelFM).
        attn_drop: dropout on attention weights.
        init_values: LayerScale init; falsy → no LayerScale (``nn.Identity``, no ``gamma`` keys).
        drop_path: stochastic-depth rate of this block (training only).
        drop_path_mode: ``"reference"`` (batch-subset variant when ``drop_path > 0.1``, per-sample
            otherwise) or ``"per_sample"`` (always per-sample).
        act_layer: FFN activation (exact GELU).
        norm_layer: norm constructor (LayerNorm, eps 1e-5).
        ffn_layer: FFN constructor (:class:`Mlp`, :class:`SwiGLUFFN`, or one returning Identity).
        attention_mode: ``"sdpa"`` or ``"naive"``.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 proj_bias: bool = True, ffn_bias: bool = True, drop: float = 0.0,
                 attn_drop: float = 0.0, init_values: float | None = None, drop_path: float = 0.0,
                 drop_path_mode: str = "reference",
                 act_layer: Callable[..., nn.Module] = nn.GELU,
                 norm_layer: Callable[..., nn.Module] = partial(nn.LayerNorm, eps=1e-5),
                 ffn_layer: Callable[..., nn.Module] = Mlp, attention_mode: str = "sdpa") -> None:
        super().__init__()
        if drop_path_mode not in ("reference", "per_sample"):
            raise ValueError(f"drop_path_mode must be 'reference' or 'per_sample', got {drop_path_mode!r}")
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias, proj_bias=proj_bias,
                              attn_drop=attn_drop, proj_drop=drop, mode=attention_mode)
        self.ls1 = LayerScale(dim, init_values=init_values) if init_values else nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = ffn_layer(in_features=dim, hidden_features=int(dim * mlp_ratio),
                             act_layer=act_layer, drop=drop, bias=ffn_bias)
        self.ls2 = LayerScale(dim, init_values=init_values) if init_values else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.sample_drop_ratio = float(drop_path)
        self.drop_path_mode = drop_path_mode

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None = None,
                num_special: int = 0) -> Tensor:
        """``x [B, N, C]`` → ``[B, N, C]``; ``rope``/``num_special`` as in :class:`Attention`."""

        def attn_residual(t: Tensor) -> Tensor:
            return self.ls1(self.attn(self.norm1(t), rope=rope, num_special=num_special))

        def ffn_residual(t: Tensor) -> Tensor:
            return self.ls2(self.mlp(self.norm2(t)))

        if self.training and self.sample_drop_ratio > 0.1 and self.drop_path_mode == "reference":
            # Residual on a random subset of the batch (saves compute; reference rule for rate > 0.1).
            x = drop_add_residual_stochastic_depth(x, attn_residual, self.sample_drop_ratio)
            x = drop_add_residual_stochastic_depth(x, ffn_residual, self.sample_drop_ratio)
        elif self.training and self.sample_drop_ratio > 0.0:
            # Per-sample drop path. The reference applies drop_path1 to both residuals (a FIXME);
            # DropPath has no state, so using drop_path2 for the second one is the same distribution.
            x = x + self.drop_path1(attn_residual(x))
            x = x + self.drop_path2(ffn_residual(x))
        else:
            x = _add_scaled(x, self.attn(self.norm1(x), rope=rope, num_special=num_special), self.ls1)
            x = _add_scaled(x, self.mlp(self.norm2(x)), self.ls2)
        return x


def _add_scaled(x: Tensor, y: Tensor, scale: nn.Module) -> Tensor:
    """``x + scale(y)``; with a LayerScale and no gradient recorded, one pass (``addcmul``) instead
    of a multiply and an add over ``[B, N, C]``."""
    if isinstance(scale, LayerScale) and not scale.inplace and not torch.is_grad_enabled():
        return torch.addcmul(x, y, scale.gamma)
    return x + scale(y)
