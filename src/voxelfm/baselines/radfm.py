"""RadFM (chaoyi-wu/RadFM) 3D ViT vision encoder as a voxelfm backbone (own compact module).

Architecture (``src/Model/RadFM/vit_3d.py``, built in ``my_embedding_layer.py`` as ``ViT(image_size=512,
frames=512, image_patch_size=32, frame_patch_size=4, dim=768, depth=12, heads=8, mlp_dim=2048)``):
lucidrains-style pre-norm ViT over ``3 × H × W × D`` volumes (**depth last**), patches ``32×32×4``
embedded by LayerNorm → Linear → LayerNorm, a learned 3-D position embedding of row/column/depth
tables (``256`` each, concatenated; a smaller grid takes the strided subset
``(arange(n) + 1) · (N // n) - 1``), attention with ``heads × dim_head = 8 × 64 = 512`` inner width,
GELU MLP, **no CLS token and no final norm**. Only the vision encoder of RadFM's full
``pytorch_model.bin`` (``embedding_layer.vision_encoder.*``) is loaded; the perceiver, the LLaMA-13B
language model and the rest are dropped without being read into memory (mmap).

Embedding: the mean of the 768-d tokens (RadFM has no CLS; its perceiver output is LLM space).
Tokens: ``16 × 16 × D/4`` (h, w, d), returned in SPL (d, h, w) order.

Preprocessing (the original code has no HU pipeline; it trains on Radiopaedia image stacks):
the volume as rows × columns × slices (``(H, W, D)`` = (posterior, left, superior) axes of SPL);
per-volume min-max to [0, 1] (``src/Dataset/dataset/radiopaedia.py``); channel repeat to 3;
``stack_images`` (``src/Dataset/multi_dataset_test.py``): nearest ``F.interpolate`` to
``512 × 512 × D'`` with ``D'`` the multiple of 4 in ``4..64`` closest to the depth.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from voxelfm.baselines._native import minmax_unit, native_to_preprocessed, read_native
from voxelfm.baselines._weights import build_with_weights
from voxelfm.baselines.base import BaselineBackbone, dinov2_output
from voxelfm.baselines.registry import BackboneFamily
from voxelfm.io.orientation import AxisMap
from voxelfm.preprocess import Preprocessed

__all__ = ["RadFMViT3D", "RadFMBackbone", "FAMILY", "load", "radfm_depth", "radfm_preprocess"]

#: SPL (D, H, W) → RadFM's (H, W, D): rows (A→P), columns (R→L), slices (I→S) last.
NATIVE = AxisMap((1, 2, 0), (False, False, False))
_PREFIXES = ("embedding_layer.vision_encoder.", "vision_encoder.")


def radfm_depth(depth: int, max_depth: int = 64, step: int = 4) -> int:
    """``stack_images``' target depth: the multiple of ``step`` in ``step..max_depth`` closest to
    ``depth`` (ties keep the smaller, as the original's strict ``<``)."""
    target = step
    for cand in range(step, max_depth + 1, step):
        if abs(cand - depth) < abs(target - depth):
            target = cand
    return target


def radfm_preprocess(source: Any, *, spacing: Sequence[float] | None = None,
                     hu_window: Sequence[float] | None = None, image_size: int = 512, max_depth: int = 64,
                     patch_size: Sequence[int] = (4, 32, 32)) -> Preprocessed:
    """RadFM's preprocessing (module docstring) → ``[D', 512, 512]`` in [0, 1], SPL order.

    Args:
        source: path, :class:`voxelfm.io.Volume` or SPL ``[D, H, W]`` HU array (``spacing`` mm).
        hu_window: ``(lo, hi)`` HU clip before the min-max (an adapter choice; ``None`` = the
            original code, min-max over the whole HU range).
        patch_size: the feature stride along SPL ``(d, h, w)``.
    """
    grid = read_native(source, NATIVE, spacing=spacing)
    x = grid.array
    steps: list[dict[str, Any]] = [{"op": "orient", "order": "(H, W, D) = rows (A->P), columns (R->L), "
                                                              "slices (I->S)"}]
    window = None if hu_window is None else tuple(float(v) for v in hu_window)
    if window is not None:
        steps.append({"op": "hu_clip", "window": list(window)})
    size = (int(image_size), int(image_size), radfm_depth(int(x.shape[2]), max_depth, int(patch_size[0])))
    # clip and min-max are per voxel, so they run on the nearest-neighbour sample (with the whole
    # volume's min/max): the same floats as the original's order, without full-volume copies
    extremes = torch.stack([x.min(), x.max()])
    x = F.interpolate(x[None, None], size=size, mode="nearest")[0, 0]
    if window is not None:
        x, extremes = x.clamp(*window), extremes.clamp(*window)
    x = minmax_unit(x, of=extremes)
    steps += [{"op": "minmax", "range": [0.0, 1.0]},
              {"op": "resize", "shape": list(size), "mode": "nearest", "note": "stack_images target depth"},
              {"op": "repeat_channels", "channels": 3}]
    scale = [n / s for n, s in zip(grid.array.shape, size)]
    native_patch = (patch_size[1], patch_size[2], patch_size[0])
    return native_to_preprocessed(x, grid, family="radfm", scale=scale, offset=[0.0, 0.0, 0.0],
                                  patch_size=native_patch, steps=steps)


class _PreNorm(nn.Module):
    def __init__(self, dim: int, fn: nn.Module) -> None:
        super().__init__()
        self.norm, self.fn = nn.LayerNorm(dim), fn

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(self.norm(x))


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int) -> None:
        super().__init__()
        self.heads = heads
        self.to_qkv = nn.Linear(dim, heads * dim_head * 3, bias=False)
        self.to_out = nn.Sequential(nn.Linear(heads * dim_head, dim))  # key to_out.0 as upstream

    def forward(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        q, k, v = self.to_qkv(x).view(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # scale dim_head ** -0.5 as upstream
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class _FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()  # keys net.0 / net.3 as upstream (GELU, Dropout in between)
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Identity(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class _Patches(nn.Module):
    """``b c (h p1) (w p2) (f pf) -> b (h w f) (p1 p2 pf c)``."""

    def __init__(self, p1: int, p2: int, pf: int) -> None:
        super().__init__()
        self.p = (p1, p2, pf)

    def forward(self, x: Tensor) -> Tensor:
        b, c, hh, ww, ff = x.shape
        p1, p2, pf = self.p
        x = x.reshape(b, c, hh // p1, p1, ww // p2, p2, ff // pf, pf)
        return x.permute(0, 2, 4, 6, 3, 5, 7, 1).reshape(b, (hh // p1) * (ww // p2) * (ff // pf), -1)


class _PositionEmbedding3d(nn.Module):
    """RadFM's ``PositionEmbeddingLearned3d``: row/col/depth tables concatenated."""

    def __init__(self, num_feats: int, h: int, w: int, d: int) -> None:
        super().__init__()
        self.n = (h, w, d)
        self.row_embed, self.col_embed, self.dep_embed = (nn.Embedding(h, num_feats), nn.Embedding(w, num_feats),
                                                          nn.Embedding(d, num_feats))

    def forward(self, h: int, w: int, d: int) -> Tensor:
        if h > self.n[0] or w > self.n[1] or d > self.n[2]:
            raise ValueError(f"radfm token grid {(h, w, d)} exceeds its position tables {self.n}; "
                             f"the input is larger than the model takes")
        dev = self.row_embed.weight.device
        idx = [(torch.arange(n, device=dev) + 1) * (big // n) - 1 for n, big in zip((h, w, d), self.n)]
        rows, cols, deps = self.row_embed(idx[0]), self.col_embed(idx[1]), self.dep_embed(idx[2])
        pos = torch.cat([rows[:, None, None].expand(h, w, d, -1), cols[None, :, None].expand(h, w, d, -1),
                         deps[None, None, :].expand(h, w, d, -1)], dim=-1)
        return pos.reshape(h * w * d, -1)


class RadFMViT3D(nn.Module):
    """RadFM's vision encoder with the upstream key names (``to_patch_embedding``, ``pos_embedding``,
    ``transformer.layers.i.{0,1}``). ``forward(x [B, C, H, W, D])`` → tokens ``[B, h·w·d, dim]``."""

    def __init__(self, *, image_size: int = 512, image_patch_size: int = 32, frames: int = 512,
                 frame_patch_size: int = 4, dim: int = 768, depth: int = 12, heads: int = 8, mlp_dim: int = 2048,
                 channels: int = 3, dim_head: int = 64) -> None:
        super().__init__()
        self.patch = (image_patch_size, image_patch_size, frame_patch_size)
        patch_dim = channels * image_patch_size * image_patch_size * frame_patch_size
        self.to_patch_embedding = nn.Sequential(_Patches(*self.patch), nn.LayerNorm(patch_dim),
                                                nn.Linear(patch_dim, dim), nn.LayerNorm(dim))
        g = image_size // image_patch_size
        self.pos_embedding = _PositionEmbedding3d(dim // 3, g, g, frames // frame_patch_size)
        self.transformer = nn.Module()
        self.transformer.layers = nn.ModuleList(
            nn.ModuleList([_PreNorm(dim, _Attention(dim, heads, dim_head)), _PreNorm(dim, _FeedForward(dim, mlp_dim))])
            for _ in range(depth))

    def forward(self, x: Tensor) -> Tensor:
        _, _, hh, ww, dd = x.shape
        p1, p2, pf = self.patch
        t = self.to_patch_embedding(x) + self.pos_embedding(hh // p1, ww // p2, dd // pf)
        for attn, ff in self.transformer.layers:  # type: ignore[attr-defined]
            t = attn(t) + t
            t = ff(t) + t
        return t


class RadFMBackbone(BaselineBackbone):
    """RadFM vision encoder. ``forward(x [B, D, H, W])`` (SPL, from :meth:`preprocess`) → DINOv2 dict:
    ``x_norm_clstoken [B, 768]`` = mean token, ``x_norm_patchtokens [B, (D/4)·16·16, 768]``."""

    family = "radfm"

    def __init__(self, *, image_size: int = 512, image_patch_size: int = 32, frames: int = 512,
                 frame_patch_size: int = 4, dim: int = 768, depth: int = 12, heads: int = 8, mlp_dim: int = 2048,
                 dim_head: int = 64, max_depth: int = 64) -> None:
        super().__init__()
        self.vision_encoder = RadFMViT3D(image_size=image_size, image_patch_size=image_patch_size, frames=frames,
                                         frame_patch_size=frame_patch_size, dim=dim, depth=depth, heads=heads,
                                         mlp_dim=mlp_dim, dim_head=dim_head)
        self.image_size, self.max_depth, self.embed_dim = int(image_size), int(max_depth), int(dim)
        # feature stride along SPL (d, h, w): depth 4 slices, rows/columns 32 pixels
        self.patch_size = (frame_patch_size, image_patch_size, image_patch_size)  # type: ignore[assignment]

    def preprocess(self, source: Any, *, spacing: Sequence[float] | None = None,
                   hu_window: Sequence[float] | None = None) -> Preprocessed:
        """:func:`radfm_preprocess` at this model's size and depth limit."""
        return radfm_preprocess(source, spacing=spacing, hu_window=hu_window, image_size=self.image_size,
                                max_depth=self.max_depth, patch_size=self.patch_size)

    def forward(self, x: Tensor) -> dict[str, Tensor | None]:
        if x.ndim != 4:
            raise ValueError(f"radfm takes [B, D, H, W] (from .preprocess); got {tuple(x.shape)}")
        pd, ph, pw = self.patch_size
        if x.shape[1] % pd or x.shape[2] % ph or x.shape[3] % pw:
            raise ValueError(f"radfm input [B, D, H, W] needs D % {pd} == 0 and H, W % {ph} == 0; got "
                             f"{tuple(x.shape)}")
        v = x.permute(0, 2, 3, 1)[:, None].expand(-1, 3, -1, -1, -1)  # B, 3, H, W, D
        tokens = self.vision_encoder(v)
        b, c = tokens.shape[0], tokens.shape[-1]
        h, w, d = x.shape[2] // ph, x.shape[3] // pw, x.shape[1] // pd
        fmap = tokens.transpose(1, 2).reshape(b, c, h, w, d).permute(0, 1, 4, 2, 3)  # → (d, h, w)
        return dinov2_output(tokens.mean(dim=1), fmap)


def load(weights: Any, *, device: str | torch.device = "cpu", image_size: int = 512, image_patch_size: int = 32,
         frames: int = 512, frame_patch_size: int = 4, dim: int = 768, depth: int = 12, heads: int = 8,
         mlp_dim: int = 2048, dim_head: int = 64, max_depth: int = 64) -> RadFMBackbone:
    """RadFM's vision encoder from its full ``pytorch_model.bin`` (only
    ``embedding_layer.vision_encoder.*`` is used) or a bare ViT state dict. Size options exist for
    tests (defaults = the released model)."""
    def build() -> RadFMBackbone:
        return RadFMBackbone(image_size=image_size, image_patch_size=image_patch_size, frames=frames,
                             frame_patch_size=frame_patch_size, dim=dim, depth=depth, heads=heads,
                             mlp_dim=mlp_dim, dim_head=dim_head, max_depth=max_depth)

    model = build_with_weights("radfm", build, weights, part=lambda m: m.vision_encoder, strip=_PREFIXES,
                               select="auto", fmt=lambda r: "radfm full model" if r.prefix else "radfm ViT")
    return model.to(device)


FAMILY = BackboneFamily(
    name="radfm", load=load, embed_dim=768,
    description="RadFM 3D ViT vision encoder (3x512x512xD, depth last, D<=64): mean of the 768-d tokens; "
                "16x16x(D/4) tokens",
    weights_help="Hugging Face chaoyi-wu/RadFM, pytorch_model.zip unzipped to pytorch_model.bin (no licence "
                 "stated; LLaMA-derived, research use)",
    requires=(), extra=None,
    weight_files=("pytorch_model.bin",), hub_repo="chaoyi-wu/RadFM", licence="none stated (research use)",
)
