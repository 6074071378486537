"""CT-CLIP (ibrahimethemhamamci/CT-CLIP) CTViT image encoder as a voxelfm backbone (own compact module).

Architecture (``transformer_maskgit/ctvit.py`` ``CTViT(dim=512, codebook_size=8192, image_size=480,
patch_size=20, temporal_patch_size=10, spatial_depth=4, temporal_depth=4, dim_head=32, heads=8)``,
from ``scripts/run_zero_shot.py``): ``10×20×20`` patches (LayerNorm → Linear → LayerNorm), 4
spatial blocks per slab with a continuous position bias, then 4 temporal (depth) blocks; every block
is a causal depthwise-conv PEG + attention (l2-normalised q/k with learned scales, scale 8) + GEGLU
feed-forward, each transformer ending in a bias-less LayerNorm; then a cosine-similarity vector
quantiser (codebook 8192 × 512). This module keeps only the encoder path: no VQ training state, no
decoder / ``to_pixels`` heads, no discriminator, and no hard-coded CUDA device.

Embedding (``CT_CLIP/ct_clip/ct_clip.py`` ``CTCLIP.forward``): the post-VQ tokens
``[B, 24, 24, 24, 512]`` (t = depth, h, w) are averaged over depth, flattened ``(h w c)`` and
projected by ``to_visual_latent`` (``Linear(294912, 512, bias=False)``), then L2-normalised: the
512-d CLIP image latent. Tokens: the post-VQ grid (``tokens="quantized"``, what CTCLIP returns as
``enc_image``) or the encoder output before quantisation (``tokens="encoder"``).

Preprocessing (``scripts/data_inference_nii.py``): HU clipped to [-1000, 1000]; axes ``(k, i, j)`` of
the raw nibabel array (CT-RATE volumes are LPS-stored, so D runs I→S, H runs R→L and W runs A→P:
"SLP"); trilinear resize to 1.5 mm (z) × 0.75 mm × 0.75 mm with the new size truncated
``int(n · spacing / target)``; ``/ 1000``; centred crop/pad to 480 × 480 × 240 with pad value -1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from voxelfm.baselines._native import native_to_preprocessed, read_native
from voxelfm.baselines._weights import build_with_weights
from voxelfm.baselines.base import BaselineBackbone, dinov2_output
from voxelfm.baselines.registry import BackboneFamily
from voxelfm.errors import ConfigError
from voxelfm.io.orientation import AxisMap
from voxelfm.preprocess import Preprocessed

__all__ = ["CTViTEncoder", "CTCLIPBackbone", "FAMILY", "load", "crop_or_pad", "ctclip_preprocess"]

#: SPL (D, H, W) → CT-CLIP's (D, H', W') = (k, i, j) of an LPS-stored file: depth, R→L, A→P.
NATIVE = AxisMap((0, 2, 1), (False, False, False))
#: Parts of a CT-CLIP checkpoint the image embedding does not use.
_DROP = (r"(?!visual_transformer\.|to_visual_latent\.weight$).*",  # text tower, temperature, *_extra ...
         "visual_transformer.to_pixels", "visual_transformer.to_patch_emb_first_frame",
         "visual_transformer.vq._codebook.initted", "visual_transformer.vq._codebook.cluster_size",
         "visual_transformer.vq._codebook.embed_avg")
HU_CLIP = (-1000.0, 1000.0)


def crop_or_pad(x: Tensor, target: Sequence[int], value: float = -1.0) -> tuple[Tensor, list[int]]:
    """CT-CLIP's centred crop/pad: start ``max((n - t) // 2, 0)``, pad before ``(t - n') // 2``.

    Returns the result and, per axis, the source index of output voxel 0 (crop start − pad before).
    """
    starts = [max((n - t) // 2, 0) for n, t in zip(x.shape, target)]
    x = x[tuple(slice(s, min(s + t, n)) for s, t, n in zip(starts, target, x.shape))]
    before = [(t - n) // 2 for n, t in zip(x.shape, target)]
    pad: list[int] = []
    for b, n, t in reversed(list(zip(before, x.shape, target))):
        pad += [b, t - n - b]
    return F.pad(x, pad, value=value), [s - b for s, b in zip(starts, before)]


def ctclip_preprocess(source: Any, *, spacing: Sequence[float] | None = None,
                      input_size: Sequence[int] = (240, 480, 480),
                      target_spacing: Sequence[float] = (1.5, 0.75, 0.75),
                      patch_size: Sequence[int] = (10, 20, 20)) -> Preprocessed:
    """CT-CLIP's preprocessing (module docstring) → ``input_size`` (``[240, 480, 480]``) in [-1, 1], SPL.

    Args:
        source: path, :class:`voxelfm.io.Volume` or SPL ``[D, H, W]`` HU array (``spacing`` mm).
        input_size: ``(D, H, W)``; target_spacing: ``(z, xy, xy)`` mm; patch_size: along SPL axes.
    """
    input_size = tuple(int(n) for n in input_size)
    target_spacing = tuple(float(s) for s in target_spacing)
    grid = read_native(source, NATIVE, spacing=spacing)
    x = grid.array.clamp(*HU_CLIP)
    new = [int(n * s / t) for n, s, t in zip(x.shape, grid.spacing, target_spacing)]
    if min(new) < 1:
        raise ValueError(f"volume {tuple(grid.spl_shape)} at {grid.spl_spacing} mm is smaller than one voxel "
                         f"at CT-CLIP's {target_spacing} mm")
    x = F.interpolate(x[None, None], size=new, mode="trilinear", align_corners=False)[0, 0] / 1000.0
    x, first = crop_or_pad(x, input_size, value=-1.0)
    scale = [n / m for n, m in zip(grid.array.shape, new)]
    offset = [(f + 0.5) * s - 0.5 for f, s in zip(first, scale)]
    steps = [{"op": "orient", "order": "(k, i, j) of an LPS-stored file: D (I->S), H (R->L), W (A->P)"},
             {"op": "hu_clip", "window": list(HU_CLIP)},
             {"op": "resize", "spacing": list(target_spacing), "shape": new, "mode": "trilinear",
              "align_corners": False, "size_rule": "int(n * spacing / target)"},
             {"op": "scale", "divide_by": 1000.0},
             {"op": "crop_or_pad", "shape": list(input_size), "pad_value": -1.0, "rule": "centred"}]
    return native_to_preprocessed(x, grid, family="ct_clip", scale=scale, offset=offset,
                                  patch_size=tuple(patch_size), steps=steps)


class _LayerNorm(nn.Module):
    """Bias-less LayerNorm of the original (``gamma`` parameter, ``beta`` zero buffer)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))
        self.register_buffer("beta", torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, x.shape[-1:], self.gamma, self.beta)


class _PEG(nn.Module):
    """Causal depthwise-conv position generator: input reshaped to ``video_shape`` *as stored*
    (the original reinterprets the temporal ``(b h w) t`` order as ``b t h w``; kept exactly)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dsconv = nn.Conv3d(dim, dim, 3, groups=dim)

    def forward(self, x: Tensor, shape: tuple[int, int, int, int]) -> Tensor:
        orig = x.shape
        v = x.reshape(*shape, -1).permute(0, 4, 1, 2, 3)
        v = self.dsconv(F.pad(v, (1, 1, 1, 1, 2, 0)))
        return v.permute(0, 2, 3, 4, 1).reshape(orig)


class _Attention(nn.Module):
    def __init__(self, dim: int, dim_head: int, heads: int, scale: float = 8.0) -> None:
        super().__init__()
        inner = dim_head * heads
        self.heads, self.scale = heads, scale
        self.norm, self.context_norm = _LayerNorm(dim), _LayerNorm(dim)
        self.null_kv = nn.Parameter(torch.zeros(heads, 0, dim_head))  # self-attention: no null kv
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.q_scale = nn.Parameter(torch.ones(dim_head))
        self.k_scale = nn.Parameter(torch.ones(dim_head))
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: Tensor, attn_bias: Tensor | None = None) -> Tensor:
        b, n, _ = x.shape
        # as upstream: q from the normed input, k/v from the raw input (context_norm is for cross-attention)
        q = self.to_q(self.norm(x)).view(b, n, self.heads, -1).transpose(1, 2)
        k, v = self.to_kv(x).view(b, n, 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        q = F.normalize(q, dim=-1) * self.q_scale
        k = F.normalize(k, dim=-1) * self.k_scale
        if attn_bias is None:
            out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        else:  # torch's CPU SDPA with a float mask falls back to a slow path in bf16 (2x, 2x memory)
            sim = (q * self.scale) @ k.transpose(-1, -2)  # scale on q: one elementwise pass on N×N less
            out = sim.add_(attn_bias.to(sim.dtype)).softmax(dim=-1) @ v
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class _GEGLU(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        x, gate = x.chunk(2, dim=-1)
        return F.gelu(gate) * x


def _feed_forward(dim: int, mult: int = 4) -> nn.Sequential:
    inner = int(mult * (2 / 3) * dim)  # keys 0 (LayerNorm), 1, 4 as upstream
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, inner * 2, bias=False), _GEGLU(), nn.Identity(),
                         nn.Linear(inner, dim, bias=False))


class _Transformer(nn.Module):
    def __init__(self, dim: int, depth: int, dim_head: int, heads: int) -> None:
        super().__init__()  # layers.i = [PEG, self-attention, (cross-attention: none), feed-forward]
        self.layers = nn.ModuleList(
            nn.ModuleList([_PEG(dim), _Attention(dim, dim_head, heads), nn.Identity(), _feed_forward(dim)])
            for _ in range(depth))
        self.norm_out = _LayerNorm(dim)

    def forward(self, x: Tensor, video_shape: tuple[int, int, int, int], attn_bias: Tensor | None = None) -> Tensor:
        for peg, attn, _, ff in self.layers:  # type: ignore[misc]
            x = peg(x, video_shape) + x
            x = attn(x, attn_bias) + x
            x = ff(x) + x
        return self.norm_out(x)


class _ContinuousPositionBias(nn.Module):
    """Log-distance MLP bias over the ``h × w`` patch grid → ``[heads, h·w, h·w]``."""

    def __init__(self, dim: int, heads: int, layers: int = 2) -> None:
        super().__init__()
        self.net = nn.ModuleList([nn.Sequential(nn.Linear(2, dim), nn.LeakyReLU(0.1))])
        for _ in range(layers - 1):
            self.net.append(nn.Sequential(nn.Linear(dim, dim), nn.LeakyReLU(0.1)))
        self.net.append(nn.Linear(dim, heads))

    def forward(self, h: int, w: int) -> Tensor:
        dev = self.net[-1].weight.device
        grid = torch.stack(torch.meshgrid(torch.arange(h, device=dev), torch.arange(w, device=dev), indexing="ij"))
        grid = grid.reshape(2, -1).T
        rel = (grid[:, None, :] - grid[None, :, :]).float()
        rel = torch.sign(rel) * torch.log(rel.abs() + 1)
        for layer in self.net:
            rel = layer(rel)
        return rel.permute(2, 0, 1)


class _Codebook(nn.Module):
    def __init__(self, codebook_size: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("embed", torch.nn.functional.normalize(torch.rand(1, codebook_size, dim), dim=-1))


class _VectorQuantize(nn.Module):
    """Eval-mode cosine-similarity lookup of ``vector_quantize_pytorch`` 1.1.2: the code whose
    l2-normalised vector is most similar to the l2-normalised input (the stored code is returned)."""

    def __init__(self, codebook_size: int, dim: int) -> None:
        super().__init__()
        self._codebook = _Codebook(codebook_size, dim)

    def forward(self, x: Tensor) -> Tensor:
        embed = self._codebook.embed[0].float()
        with torch.autocast(x.device.type, enabled=False):  # fp32 as upstream's @autocast(enabled=False)
            flat = F.normalize(x.float().reshape(-1, x.shape[-1]), dim=-1)
            ind = (flat @ F.normalize(embed, dim=-1).T).argmax(dim=-1)
        return embed[ind].reshape(x.shape).to(x.dtype)


class CTViTEncoder(nn.Module):
    """CTViT's encoder with the upstream key names. ``forward(x [B, 1, D, H, W])`` →
    ``(quantized, encoded)`` each ``[B, D/pt, H/p, W/p, dim]``."""

    def __init__(self, *, dim: int = 512, codebook_size: int = 8192, patch_size: int = 20,
                 temporal_patch_size: int = 10, spatial_depth: int = 4, temporal_depth: int = 4,
                 dim_head: int = 32, heads: int = 8, channels: int = 1) -> None:
        super().__init__()
        self.p, self.pt = int(patch_size), int(temporal_patch_size)
        patch_dim = channels * self.p * self.p * self.pt
        self.spatial_rel_pos_bias = _ContinuousPositionBias(dim, heads)
        self.to_patch_emb = nn.Sequential(nn.Identity(), nn.LayerNorm(patch_dim), nn.Linear(patch_dim, dim),
                                          nn.LayerNorm(dim))
        self.enc_spatial_transformer = _Transformer(dim, spatial_depth, dim_head, heads)
        self.enc_temporal_transformer = _Transformer(dim, temporal_depth, dim_head, heads)
        self.vq = _VectorQuantize(codebook_size, dim)

    def patches(self, x: Tensor) -> Tensor:
        """``b c (t pt) (h p1) (w p2) -> b t h w (c pt p1 p2)``."""
        b, c, d, hh, ww = x.shape
        p, pt = self.p, self.pt
        x = x.reshape(b, c, d // pt, pt, hh // p, p, ww // p, p).permute(0, 2, 4, 6, 1, 3, 5, 7)
        return x.reshape(b, d // pt, hh // p, ww // p, -1)

    def encode(self, tokens: Tensor) -> Tensor:
        b, t, h, w, d = tokens.shape
        shape = (b, t, h, w)
        x = self.enc_spatial_transformer(tokens.reshape(b * t, h * w, d), shape,
                                         self.spatial_rel_pos_bias(h, w))
        x = x.reshape(b, t, h, w, d).permute(0, 2, 3, 1, 4).reshape(b * h * w, t, d)
        x = self.enc_temporal_transformer(x, shape)
        return x.reshape(b, h, w, t, d).permute(0, 3, 1, 2, 4)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        enc = self.encode(self.to_patch_emb[1:](self.patches(x)))
        return self.vq(enc), enc


class CTCLIPBackbone(BaselineBackbone):
    """CT-CLIP image encoder. ``forward(x [B, D, H, W])`` (SPL, from :meth:`preprocess`) → DINOv2 dict:
    ``x_norm_clstoken [B, 512]`` = the L2-normalised CLIP image latent, ``x_norm_patchtokens
    [B, 24·24·24, 512]`` (post-VQ by default)."""

    family = "ct_clip"

    def __init__(self, *, image_size: int = 480, depth_size: int = 240, dim: int = 512, codebook_size: int = 8192,
                 patch_size: int = 20, temporal_patch_size: int = 10, spatial_depth: int = 4,
                 temporal_depth: int = 4, dim_head: int = 32, heads: int = 8, dim_latent: int = 512,
                 target_spacing: Sequence[float] = (1.5, 0.75, 0.75), tokens: str = "quantized") -> None:
        super().__init__()
        if tokens not in ("quantized", "encoder"):
            raise ConfigError(f"ct_clip tokens must be 'quantized' or 'encoder', got {tokens!r}")
        if image_size % patch_size or depth_size % temporal_patch_size:
            raise ConfigError(f"ct_clip image_size {image_size} / depth_size {depth_size} must be multiples of "
                              f"patch_size {patch_size} / temporal_patch_size {temporal_patch_size}")
        self.visual_transformer = CTViTEncoder(dim=dim, codebook_size=codebook_size, patch_size=patch_size,
                                               temporal_patch_size=temporal_patch_size,
                                               spatial_depth=spatial_depth, temporal_depth=temporal_depth,
                                               dim_head=dim_head, heads=heads)
        g = image_size // patch_size
        self.to_visual_latent = nn.Linear(g * g * dim, dim_latent, bias=False)
        if dim_latent != dim:
            raise ConfigError(f"ct_clip needs dim_latent == dim (the latent is the global embedding next to "
                              f"{dim}-d tokens); got {dim_latent} and {dim}")
        self.embed_dim, self.tokens = int(dim), tokens
        self.input_size = (int(depth_size), int(image_size), int(image_size))  # SPL (D, H, W)
        self.target_spacing = tuple(float(s) for s in target_spacing)
        self.patch_size = (temporal_patch_size, patch_size, patch_size)  # type: ignore[assignment]

    def preprocess(self, source: Any, *, spacing: Sequence[float] | None = None) -> Preprocessed:
        """:func:`ctclip_preprocess` at this model's input size."""
        return ctclip_preprocess(source, spacing=spacing, input_size=self.input_size,
                                 target_spacing=self.target_spacing, patch_size=self.patch_size)

    def forward(self, x: Tensor) -> dict[str, Tensor | None]:
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_size:
            raise ValueError(f"ct_clip takes [B, {', '.join(map(str, self.input_size))}] (from .preprocess); "
                             f"got {tuple(x.shape)}")
        quant, enc = self.visual_transformer(x.transpose(2, 3)[:, None])  # SPL → (D, R→L, A→P)
        latent = F.normalize(self.to_visual_latent(quant.mean(dim=1).flatten(1)), dim=-1)
        tok = quant if self.tokens == "quantized" else enc
        fmap = tok.permute(0, 4, 1, 3, 2)  # B, C, t, w(A→P), h(R→L) = SPL (d, h, w)
        return dinov2_output(latent, fmap)


def load(weights: Any, *, device: str | torch.device = "cpu", tokens: str = "quantized", image_size: int = 480,
         depth_size: int = 240, dim: int = 512, codebook_size: int = 8192, patch_size: int = 20,
         temporal_patch_size: int = 10, spatial_depth: int = 4, temporal_depth: int = 4, dim_head: int = 32,
         heads: int = 8, target_spacing: Sequence[float] = (1.5, 0.75, 0.75)) -> CTCLIPBackbone:
    """CT-CLIP from ``CT-CLIP_v2.pt`` (a ``CTCLIP`` state dict: ``visual_transformer.*`` and
    ``to_visual_latent.weight`` are used; the text tower, temperature, decoder heads and VQ training
    buffers are dropped). ``tokens``: ``"quantized"`` (post-VQ, as CTCLIP) or ``"encoder"`` (pre-VQ).
    Size options exist for tests (defaults = the released model)."""
    def build() -> CTCLIPBackbone:
        return CTCLIPBackbone(image_size=image_size, depth_size=depth_size, dim=dim, codebook_size=codebook_size,
                              patch_size=patch_size, temporal_patch_size=temporal_patch_size,
                              spatial_depth=spatial_depth, temporal_depth=temporal_depth, dim_head=dim_head,
                              heads=heads, dim_latent=dim, target_spacing=target_spacing, tokens=tokens)

    model = build_with_weights("ct_clip", build, weights, drop=_DROP, fmt="ct_clip CTCLIP state dict")
    return model.to(device)


FAMILY = BackboneFamily(
    name="ct_clip", load=load, embed_dim=512,
    description="CT-CLIP CTViT image encoder (1x240x480x480, HU/1000): L2-normalised 512-d CLIP image latent; "
                "24x24x24 post-VQ tokens",
    weights_help="Hugging Face dataset ibrahimhamamci/CT-RATE (gated), models/CT-CLIP-Related/CT-CLIP_v2.pt "
                 "(CC-BY-NC-SA-4.0)",
    requires=(), extra=None,
    weight_files=("CT-CLIP_v2.pt", "models/CT-CLIP-Related/CT-CLIP_v2.pt"), hub_repo="ibrahimhamamci/CT-RATE",
    hub_repo_type="dataset", licence="CC-BY-NC-SA-4.0",
)
