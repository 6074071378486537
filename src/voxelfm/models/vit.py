"""The VoxelFM 3D Vision Transformer: patch embedding, [CLS, registers, patches], 3D RoPE blocks.

Numerically and state-dict compatible with the reference ``DinoVisionTransformer``
(REFERENCE.md §1): parameter names ``cls_token, register_tokens, mask_token, patch_embed.proj.*,
rope_embed.periods, blocks.{i}.*, norm.*``; no absolute position embedding; LayerNorm eps 1e-5;
final norm on all tokens; output dict in the DINOv2 convention.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
import torch.utils.checkpoint
from torch import Tensor, nn
from torch.nn.init import trunc_normal_

from voxelfm.models.config import ViTConfig
from voxelfm.models.layers import (
    ATTENTION_MODES,
    Block,
    Mlp,
    PatchEmbed3D,
    RopePositionEmbedding3D,
    SwiGLUFFN,
)
from voxelfm.preprocess.presets import Preset

__all__ = ["VisionTransformer3D"]


def _identity_ffn(*args: Any, **kwargs: Any) -> nn.Module:
    return nn.Identity()


_FFN = {"mlp": Mlp, "swiglu": SwiGLUFFN, "identity": _identity_ffn}


class VisionTransformer3D(nn.Module):
    """3D ViT for single-channel CT volumes.

    Input ``[B, D, H, W]`` float (already intensity-normalised, see :attr:`preset`); every volume
    of a batch has the same shape; each side must hold at least one patch. Voxels beyond the last
    full patch on each axis are ignored. Output of :meth:`forward` (``R`` registers, ``N = d·h·w``
    patches in (d h w) order, ``(d, h, w) = (⌊D/p⌋, ⌊H/p⌋, ⌊W/p⌋)``)::

        x_norm_clstoken     [B, C]
        x_norm_regtokens    [B, R, C]
        x_norm_patchtokens  [B, N, C]
        x_prenorm           [B, 1 + R + N, C]   (before the final LayerNorm)
        masks               the ``masks`` argument (or None)

    Args:
        config: the architecture (:class:`ViTConfig`); default = the VoxelFM ViT-B.
        attention_mode: ``"sdpa"`` (fused, memory linear in tokens) or ``"naive"`` (explicit
            ``softmax(q kᵀ) v`` as the reference; for parity tests). Change later with
            :meth:`set_attention_mode`.
        preset: the preprocessing :class:`~voxelfm.preprocess.Preset` these weights expect
            (normalisation mean/std); default ``Preset("default")`` (mean −573.8, std 461.3 HU).

    Attributes:
        embed_dim, depth, num_heads, patch_size, num_register_tokens: from ``config``.
        config: the :class:`ViTConfig`.
        preset: the :class:`~voxelfm.preprocess.Preset` of the weights.
        source: provenance of the weights (set by :func:`voxelfm.models.load_backbone`).
    """

    def __init__(self, config: ViTConfig | None = None, *, attention_mode: str = "sdpa",
                 preset: Preset | None = None) -> None:
        super().__init__()
        config = config if config is not None else ViTConfig()
        if not isinstance(config, ViTConfig):
            raise TypeError(f"config must be a ViTConfig, got {type(config).__name__}; "
                            "use voxelfm.models.build_backbone for names and dicts")
        self.config = config
        self.preset = preset if preset is not None else Preset(name="default")
        self.source: dict[str, Any] = {"format": "random-init"}
        self.num_features = self.embed_dim = config.embed_dim
        self.depth = config.depth
        self.num_heads = config.num_heads
        self.patch_size = config.patch_size
        self.num_register_tokens = config.num_register_tokens
        self.grad_checkpointing = False
        C = config.embed_dim

        self.patch_embed = PatchEmbed3D(patch_size=config.patch_size, embed_dim=C)
        self.rope_embed = RopePositionEmbedding3D(C, num_heads=config.num_heads, base=config.rope_base,
                                                  rescale_coords=config.rope_rescale_coords)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, C))
        self.register_tokens = (nn.Parameter(torch.zeros(1, config.num_register_tokens, C))
                                if config.num_register_tokens else None)
        norm_layer = partial(nn.LayerNorm, eps=1e-5)
        self.blocks = nn.ModuleList([
            Block(C, config.num_heads, mlp_ratio=config.mlp_ratio, qkv_bias=config.qkv_bias,
                  proj_bias=config.proj_bias, ffn_bias=config.ffn_bias, init_values=config.layerscale,
                  drop_path=rate, drop_path_mode=config.drop_path_mode, act_layer=nn.GELU,
                  norm_layer=norm_layer, ffn_layer=_FFN[config.ffn_layer], attention_mode=attention_mode)
            for rate in config.block_drop_path_rates()
        ])
        self.norm = norm_layer(C)
        self.mask_token = nn.Parameter(torch.zeros(1, C))
        self.init_weights()

    # ------------------------------------------------------------------ set-up
    def init_weights(self) -> None:
        """Reference init (§1.7): cls/register ~ N(0, 1e-6²); every Linear trunc-normal std 0.02 with
        zero bias; mask_token zeros; Conv3d PyTorch default; LayerScale = ``config.layerscale``."""
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.register_tokens is not None:
            nn.init.normal_(self.register_tokens, std=1e-6)
        nn.init.zeros_(self.mask_token)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def set_attention_mode(self, mode: str) -> VisionTransformer3D:
        """Use ``"sdpa"`` or ``"naive"`` attention in every block; returns ``self``."""
        if mode not in ATTENTION_MODES:
            raise ValueError(f"attention mode must be one of {list(ATTENTION_MODES)}, got {mode!r}")
        for blk in self.blocks:
            blk.attn.set_mode(mode)
        return self

    @property
    def attention_mode(self) -> str:
        """The attention implementation in use (``"sdpa"`` or ``"naive"``)."""
        return self.blocks[0].attn.mode

    def set_grad_checkpointing(self, enable: bool = True) -> VisionTransformer3D:
        """Recompute block activations in the backward pass (training memory ↓, time ↑)."""
        self.grad_checkpointing = bool(enable)
        return self

    def grid_size(self, shape: Sequence[int]) -> tuple[int, int, int]:
        """Token grid ``(d, h, w)`` of an input whose last three sizes are ``(D, H, W)``."""
        return self.patch_embed.grid_size(tuple(shape))

    def num_parameters(self) -> int:
        """Number of parameters (buffers excluded)."""
        return sum(p.numel() for p in self.parameters())

    # ------------------------------------------------------------------ forward
    def _check_input(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor):
            raise TypeError(f"input must be a torch.Tensor [B, D, H, W], got {type(x).__name__}")
        if x.ndim == 5 and x.shape[1] == 1:
            x = x[:, 0]
        if x.ndim != 4:
            raise ValueError(f"input must be [B, D, H, W] (or [B, 1, D, H, W]), got shape "
                             f"{tuple(x.shape)}; add a batch axis with x[None] for a single volume")
        if not x.is_floating_point():
            raise TypeError(f"input must be a floating-point tensor, got {x.dtype}")
        if min(x.shape[1:]) < self.patch_size:
            raise ValueError(f"every side of the input {tuple(x.shape[1:])} must be at least one patch "
                             f"({self.patch_size} voxels)")
        return x

    def prepare_tokens_with_masks(self, x: Tensor, masks: Tensor | None = None
                                  ) -> tuple[Tensor, tuple[int, int, int]]:
        """Embed ``x [B, D, H, W]`` → (``[B, 1 + R + N, C]`` tokens, grid ``(d, h, w)``).

        ``masks [B, N]`` bool replaces the masked patch tokens by ``mask_token`` (iBOT).
        """
        x = self._check_input(x)
        B = x.shape[0]
        tokens, grid = self.patch_embed(x)  # B, N, C
        if masks is not None:
            if masks.shape != tokens.shape[:2]:
                raise ValueError(f"masks must be [B, N] = {tuple(tokens.shape[:2])} for grid {grid}, "
                                 f"got {tuple(masks.shape)}")
            tokens = torch.where(masks.bool().unsqueeze(-1), self.mask_token.to(tokens.dtype).unsqueeze(0),
                                 tokens)
        special = [self.cls_token.expand(B, -1, -1)]
        if self.register_tokens is not None:
            special.append(self.register_tokens.expand(B, -1, -1))
        return torch.cat([*special, tokens], dim=1), grid

    def _run_block(self, blk: nn.Module, x: Tensor, rope: tuple[Tensor, Tensor]) -> Tensor:
        num_special = 1 + self.num_register_tokens
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(blk, x, rope, num_special, use_reentrant=False)
        return blk(x, rope=rope, num_special=num_special)

    def _blocks_forward(self, x: Tensor, masks: Tensor | None,
                        take: set[int] | None = None) -> tuple[Tensor, list[Tensor], tuple[int, int, int]]:
        x, (d, h, w) = self.prepare_tokens_with_masks(x, masks)
        rope = self.rope_embed(D=d, H=h, W=w)
        taken: list[Tensor] = []
        for i, blk in enumerate(self.blocks):
            x = self._run_block(blk, x, rope)
            if take is not None and i in take:
                taken.append(x)
        return x, taken, (d, h, w)

    def forward(self, x: Tensor, masks: Tensor | None = None) -> dict[str, Tensor | None]:
        """Run the backbone on ``x [B, D, H, W]``; see the class docstring for the output dict."""
        x, _, _ = self._blocks_forward(x, masks)
        x_norm = self.norm(x)
        R = self.num_register_tokens
        return {
            "x_norm_clstoken": x_norm[:, 0],
            "x_norm_regtokens": x_norm[:, 1:R + 1],
            "x_norm_patchtokens": x_norm[:, R + 1:],
            "x_prenorm": x,
            "masks": masks,
        }

    forward_features = forward

    # ------------------------------------------------------------------ intermediate layers
    def _block_indices(self, n: int | Sequence[int]) -> list[int]:
        if isinstance(n, int):
            if not 1 <= n <= self.depth:
                raise ValueError(f"n must be in [1, {self.depth}] (last n blocks), got {n}")
            return list(range(self.depth - n, self.depth))
        idx = [int(i) + self.depth if int(i) < 0 else int(i) for i in n]
        bad = [i for i in idx if not 0 <= i < self.depth]
        if bad or not idx:
            raise ValueError(f"block indices must be in [0, {self.depth}), got {list(n)}")
        return idx

    def get_intermediate_layers(self, x: Tensor, n: int | Sequence[int] = 1, reshape: bool = False,
                                return_class_token: bool = False, norm: bool = True
                                ) -> tuple[Tensor, ...] | tuple[tuple[Tensor, Tensor], ...]:
        """Patch tokens after some blocks (DINOv2 semantics).

        Args:
            x: ``[B, D, H, W]``.
            n: the last ``n`` blocks (int) or explicit block indices (0-based; negatives count
                from the end).
            reshape: return patch tokens as ``[B, C, d, h, w]`` instead of ``[B, N, C]``.
            return_class_token: return ``(patch, cls [B, C])`` pairs.
            norm: apply the final LayerNorm to each output.

        Returns:
            A tuple with one entry per requested block, in block order.
        """
        indices = self._block_indices(n)
        _, outs, (d, h, w) = self._blocks_forward(x, None, take=set(indices))
        by_index = dict(zip(sorted(set(indices)), outs))
        outs = [by_index[i] for i in indices]
        if norm:
            outs = [self.norm(o) for o in outs]
        R = self.num_register_tokens
        cls_tokens = [o[:, 0] for o in outs]
        patches = [o[:, 1 + R:] for o in outs]
        if reshape:
            B = patches[0].shape[0]
            patches = [p.reshape(B, d, h, w, -1).permute(0, 4, 1, 2, 3).contiguous() for p in patches]
        if return_class_token:
            return tuple(zip(patches, cls_tokens))
        return tuple(patches)

    def forward_intermediates(self, x: Tensor, indices: int | Sequence[int] | None = None, *,
                              norm: bool = False, output_fmt: str = "NCDHW",
                              intermediates_only: bool = False, return_prefix_tokens: bool = False
                              ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """timm-style intermediate features.

        Args:
            x: ``[B, D, H, W]``.
            indices: last ``n`` blocks (int), explicit block indices, or ``None`` for all blocks.
            norm: apply the final LayerNorm to the intermediates.
            output_fmt: ``"NCDHW"`` (``[B, C, d, h, w]``) or ``"NLC"`` (``[B, N, C]``).
            intermediates_only: return only the list of intermediates.
            return_prefix_tokens: each intermediate becomes ``(patches, prefix [B, 1 + R, C])``.

        Returns:
            ``(final normed tokens [B, 1 + R + N, C], intermediates)`` or the intermediates alone.
        """
        if output_fmt not in ("NCDHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCDHW' or 'NLC', got {output_fmt!r}")
        idx = self._block_indices(self.depth if indices is None else indices)
        final, outs, (d, h, w) = self._blocks_forward(x, None, take=set(idx))
        by_index = dict(zip(sorted(set(idx)), outs))
        result: list[Any] = []
        R1 = 1 + self.num_register_tokens
        for i in idx:
            o = self.norm(by_index[i]) if norm else by_index[i]
            prefix, patches = o[:, :R1], o[:, R1:]
            if output_fmt == "NCDHW":
                patches = patches.reshape(o.shape[0], d, h, w, -1).permute(0, 4, 1, 2, 3).contiguous()
            result.append((patches, prefix) if return_prefix_tokens else patches)
        if intermediates_only:
            return result
        return self.norm(final), result

    def extra_repr(self) -> str:
        c = self.config
        return (f"embed_dim={c.embed_dim}, depth={c.depth}, num_heads={c.num_heads}, "
                f"patch_size={c.patch_size}, registers={c.num_register_tokens}, "
                f"attention={self.attention_mode!r}")
