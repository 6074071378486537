"""M3D-CLIP (BAAI-DCAI/M3D) vision encoder as a voxelfm backbone: MONAI ``ViT``.

Architecture (``LaMed/src/model/CLIP.py`` ``M3DCLIPConfig``, HF ``GoodBaiBai88/M3D-CLIP``): a
MONAI-1.3 ViT with a CLS token and a final LayerNorm, ``in_channels=1``, input ``1×32×256×256``
(C, D, H, W), patches ``4×16×16`` → ``8×16×16 = 2048`` tokens, width 768, 12 blocks, 12 heads,
perceptron patch embedding, learnable position embedding (so the input size is fixed), no qkv bias.
MONAI's own :class:`monai.networks.nets.ViT` has the same keys; MONAI ≥ 1.4 adds an unused
``norm_cross_attn`` LayerNorm per block (absent from the checkpoint; replaced by an identity, it is
only used with cross-attention) and we drop its classification head.

Embedding: the CLS token after the final norm (768), as ``M3DCLIP.encode_image(...)[:, 0]`` before
its ``mm_vision_proj``. Tokens: ``norm(x)[:, 1:]`` on the ``8×16×16`` grid (LaMed's
``select_feature="patch"``).

Preprocessing (the original CT path, ``Data/process/m3d_seg_data_preprocess.py`` ``normalize`` then
``m3d_seg_data_prepare.py``): clip to the 0.05-99.95 percentiles of the voxels above the volume mean
and z-score; swap axes to C, D, H, W (``(k, j, i)`` of the file = SPL for an LPS-stored volume);
per-volume min-max to [0, 1]; ``CropForeground`` (voxels > 0, no margin); ``Resize`` to
``32×256×256`` (trilinear, ``align_corners=False``, no anti-aliasing).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from voxelfm.baselines._native import minmax_unit, native_to_preprocessed, read_native
from voxelfm.baselines._weights import build_with_weights
from voxelfm.baselines.base import BaselineBackbone, dinov2_output
from voxelfm.baselines.registry import BackboneFamily
from voxelfm.io.orientation import AxisMap
from voxelfm.preprocess import Preprocessed

__all__ = ["M3DCLIPBackbone", "FAMILY", "load", "m3d_normalize", "m3d_preprocess"]

#: SPL → M3D's (D, H, W): identity (the file's (k, j, i) for an LPS-stored volume / DICOM series).
NATIVE = AxisMap()
#: Prefixes of the released files: bare ViT (``pretrained_ViT.bin``) or the full CLIP
#: (``model.safetensors`` / ``pytorch_model.bin``: ``vision_encoder.*``).
_PREFIXES = ("vision_encoder.",)
_DROP = ("language_encoder.", "mm_vision_proj.", "mm_language_proj.", "logit_scale", "classification_head.")


def m3d_normalize(x: np.ndarray) -> np.ndarray:
    """M3D's CT intensity normalisation (``m3d_seg_data_preprocess.normalize``): clip to the
    0.05/99.95 percentiles of the voxels above the mean, then z-score with their mean/std."""
    flat = x.reshape(-1)
    thred = np.mean(flat)
    fg = flat[flat > thred]
    if fg.size == 0:  # a constant volume: nothing above the mean
        return np.zeros_like(x)
    upper, lower = np.percentile(fg, 99.95), np.percentile(fg, 0.05)
    mean, std = np.mean(fg), np.std(fg)
    return (np.clip(x, lower, upper) - mean) / max(std, 1e-8)


def _foreground_box(x: Tensor) -> list[tuple[int, int]]:
    """MONAI ``CropForeground`` default (``x > 0``, margin 0) box, half-open per axis."""
    nz = torch.nonzero(x > 0)
    if nz.numel() == 0:  # MONAI returns the whole image when nothing is foreground
        return [(0, n) for n in x.shape]
    lo, hi = nz.min(0).values.tolist(), nz.max(0).values.tolist()
    return [(int(a), int(b) + 1) for a, b in zip(lo, hi)]


def m3d_preprocess(source: Any, *, spacing: Sequence[float] | None = None,
                   hu_window: Sequence[float] | None = None, img_size: Sequence[int] = (32, 256, 256),
                   patch_size: Sequence[int] = (4, 16, 16)) -> Preprocessed:
    """M3D's CT preprocessing (module docstring) → ``img_size`` (``[32, 256, 256]``) in [0, 1], SPL.

    Args:
        source: path, :class:`voxelfm.io.Volume` or SPL ``[D, H, W]`` HU array (``spacing`` mm).
        hu_window: ``(lo, hi)`` HU clip used *instead of* M3D's percentile normalisation (an
            adapter choice; ``None`` = the original code).
    """
    img_size = tuple(int(n) for n in img_size)
    grid = read_native(source, NATIVE, spacing=spacing)
    steps: list[dict[str, Any]] = [{"op": "orient", "order": "SPL (= (k, j, i) of an LPS-stored file)"}]
    if hu_window is None:
        x = torch.from_numpy(np.ascontiguousarray(m3d_normalize(grid.array.numpy()), dtype=np.float32))
        steps.append({"op": "m3d_normalize", "clip": "percentiles 0.05/99.95 of voxels > mean", "zscore": True})
    else:
        lo, hi = (float(v) for v in hu_window)
        x = grid.array.clamp(lo, hi)
        steps.append({"op": "hu_clip", "window": [lo, hi]})
    x = minmax_unit(x)
    box = _foreground_box(x)
    x = x[tuple(slice(a, b) for a, b in box)]
    cropped = tuple(x.shape)
    x = torch.nn.functional.interpolate(x[None, None], size=img_size, mode="trilinear",
                                        align_corners=False)[0, 0]
    steps += [{"op": "minmax", "range": [0.0, 1.0]},
              {"op": "crop_foreground", "select": "x > 0", "box": [list(b) for b in box]},
              {"op": "resize", "shape": list(img_size), "mode": "trilinear", "align_corners": False}]
    scale = [c / n for c, n in zip(cropped, img_size)]
    offset = [0.5 * s - 0.5 + b[0] for s, b in zip(scale, box)]
    return native_to_preprocessed(x, grid, family="m3d_clip", scale=scale, offset=offset,
                                  patch_size=tuple(patch_size), steps=steps)


class M3DCLIPBackbone(BaselineBackbone):
    """M3D-CLIP's vision tower (MONAI ViT). ``forward(x [B, D, H, W])`` → DINOv2 dict with
    ``x_norm_clstoken [B, 768]`` (CLS after the final norm) and ``x_norm_patchtokens [B, 2048, 768]``."""

    family = "m3d_clip"

    def __init__(self, *, img_size: Sequence[int] = (32, 256, 256), patch_size: Sequence[int] = (4, 16, 16),
                 hidden_size: int = 768, mlp_dim: int = 3072, num_layers: int = 12, num_heads: int = 12) -> None:
        super().__init__()
        from monai.networks.nets import ViT

        self.img_size = tuple(int(n) for n in img_size)
        self.patch_size = tuple(int(p) for p in patch_size)  # type: ignore[assignment]
        if any(n % p for n, p in zip(self.img_size, self.patch_size)):
            raise ValueError(f"img_size {self.img_size} must be a multiple of patch_size {self.patch_size}")
        self.embed_dim = int(hidden_size)
        vit = ViT(in_channels=1, img_size=self.img_size, patch_size=self.patch_size, hidden_size=hidden_size,
                  mlp_dim=mlp_dim, num_layers=num_layers, num_heads=num_heads, proj_type="perceptron",
                  pos_embed_type="learnable", classification=True, qkv_bias=False, dropout_rate=0.0,
                  spatial_dims=3)
        # the parts of MONAI's ViT M3D uses (its classification head is commented out upstream)
        self.patch_embedding, self.cls_token, self.blocks, self.norm = (vit.patch_embedding, vit.cls_token,
                                                                         vit.blocks, vit.norm)
        for blk in self.blocks:
            blk.attn.use_flash_attention = True  # MONAI's own switch to torch SDPA (same maths, no N×N matrix)
            blk.norm_cross_attn = nn.Identity()  # MONAI >= 1.4's unused cross-attention norm (not in M3D's files)

    @property
    def token_grid(self) -> tuple[int, int, int]:
        return tuple(n // p for n, p in zip(self.img_size, self.patch_size))  # type: ignore[return-value]

    def preprocess(self, source: Any, *, spacing: Sequence[float] | None = None,
                   hu_window: Sequence[float] | None = None) -> Preprocessed:
        """:func:`m3d_preprocess` at this model's input size."""
        return m3d_preprocess(source, spacing=spacing, hu_window=hu_window, img_size=self.img_size,
                              patch_size=self.patch_size)

    def encode(self, x: Tensor) -> Tensor:
        """``x [B, 1, D, H, W]`` → ``norm(x)`` ``[B, 1 + N, C]`` (the original ``ViT.forward(x)[0]``)."""
        h = self.patch_embedding(x)
        h = torch.cat([self.cls_token.expand(h.shape[0], -1, -1), h], dim=1)
        for blk in self.blocks:
            h = blk(h)
        return self.norm(h)

    def forward(self, x: Tensor) -> dict[str, Tensor | None]:
        if x.ndim != 4 or tuple(x.shape[1:]) != self.img_size:
            raise ValueError(f"m3d_clip takes [B, {', '.join(map(str, self.img_size))}] (from .preprocess); "
                             f"got {tuple(x.shape)}")
        out = self.encode(x[:, None])
        b, c = out.shape[0], out.shape[-1]
        fmap = out[:, 1:].transpose(1, 2).reshape(b, c, *self.token_grid)  # MONAI: (D H W) patch order
        return dinov2_output(out[:, 0], fmap)


def load(weights: Any, *, device: str | torch.device = "cpu", img_size: Sequence[int] = (32, 256, 256),
         patch_size: Sequence[int] = (4, 16, 16), hidden_size: int = 768, mlp_dim: int = 3072,
         num_layers: int = 12, num_heads: int = 12) -> M3DCLIPBackbone:
    """M3D-CLIP from ``pretrained_ViT.bin`` (bare ViT keys), ``model.safetensors`` or a full-CLIP
    ``pytorch_model.bin`` (``vision_encoder.*``; text tower and projections dropped); bf16 → fp32.
    Size options exist for tests (defaults = the released model)."""
    def build() -> M3DCLIPBackbone:
        return M3DCLIPBackbone(img_size=img_size, patch_size=patch_size, hidden_size=hidden_size,
                               mlp_dim=mlp_dim, num_layers=num_layers, num_heads=num_heads)

    model = build_with_weights("m3d_clip", build, weights, strip=_PREFIXES, select="auto", drop=_DROP,
                               fmt=lambda r: "m3d_clip full CLIP" if r.prefix else "m3d_clip ViT")
    return model.to(device)


FAMILY = BackboneFamily(
    name="m3d_clip", load=load, embed_dim=768,
    description="M3D-CLIP vision encoder (MONAI ViT, 1x32x256x256): CLS token after the final norm, 768-d; "
                "8x16x16 patch tokens",
    weights_help="Hugging Face GoodBaiBai88/M3D-CLIP, pretrained_ViT.bin or model.safetensors (Apache-2.0)",
    requires=("monai",), extra="baselines",
    weight_files=("pretrained_ViT.bin", "model.safetensors", "pytorch_model.bin"),
    hub_repo="GoodBaiBai88/M3D-CLIP", licence="Apache-2.0",
)
