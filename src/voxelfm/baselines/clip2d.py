"""2D medical CLIP image encoders applied slice by slice (family ``clip2d``).

Variants (option ``model``), each loading its released file in its original layout:

============ ======================================================= ======================= =====
model        weights (Hugging Face repo / file)                      tower                   C
============ ======================================================= ======================= =====
biomedclip   microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224 timm ViT-B/16 (open_clip) 512
             ``open_clip_pytorch_model.bin``
pubmedclip   flaviagiammarino/pubmed-clip-vit-base-patch32           CLIP ViT-B/32             512
             ``pytorch_model.bin`` (transformers ``CLIPModel``)
pmc_clip     ryanyip7777/pmc_vit_l_14 ``open_clip_pytorch_model.bin`` CLIP ViT-L/14 (open_clip) 768
             (OpenAI ViT-L/14 fine-tuned on PMC-OA with open_clip)
medclip      MedCLIP-ViT release zip (RyanWangZf/MedCLIP), ``pytorch_model.bin``  Swin-T           512
============ ======================================================= ======================= =====

Every tower is a ``transformers`` class: ``CLIPVisionModelWithProjection`` for the three ViTs (the
timm ViT of BiomedCLIP maps onto it exactly: its patch-embedding bias is folded into the position
embeddings and CLIP's pre-LayerNorm, which timm's ViT has not, is removed) and ``SwinModel`` +
a bias-free projection for MedCLIP. open_clip itself is not needed (it cannot be imported without
torchvision).

Pipeline, per volume: canonical SPL orientation → axial slices (axis 0) → HU window (option
``window``: a name or ``[low, high]``; default ``wide`` = [-1000, 1000]) → grey image in [0, 1]
quantised to 8 bits as the models' PIL pipelines see it → the tower's own geometry (resize the
shorter side to the image size with antialiased bicubic and centre-crop — open_clip / CLIP
processors —, or pad to a square and resize — MedCLIP) → in :meth:`Clip2DBackbone.forward`: grey
repeated to 3 channels (MedCLIP: after normalising the single channel), normalised with the tower's
mean / std (read from the checkpoint's ``open_clip_config.json`` / ``preprocessor_config.json`` when
present), the tower on batches of ``slice_batch`` slices → one projected CLIP image embedding per
slice (not L2-normalised). ``x_norm_clstoken`` = mean of the slice embeddings;
``x_norm_patchtokens`` = the slice embeddings on a ``(T, 1, 1)`` grid, ``patch_size = (k, S, S)``:
with ``slice_stride=k`` one slice per block of k (the block's centre slice) is embedded.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from voxelfm.baselines.base import BaselineBackbone, dinov2_output, make_preprocessed
from voxelfm.baselines.registry import BackboneFamily
from voxelfm.errors import CheckpointError, ConfigError

__all__ = ["FAMILY", "MODELS", "WINDOWS", "Clip2DBackbone", "Clip2DModel", "check_weights", "load"]

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

#: named HU windows ``(low, high)``
WINDOWS: dict[str, tuple[float, float]] = {
    "wide": (-1000.0, 1000.0),
    "lung": (-1350.0, 150.0),          # level -600, width 1500
    "mediastinum": (-160.0, 240.0),    # level 40, width 400
    "abdomen": (-135.0, 215.0),        # level 40, width 350
    "bone": (-500.0, 1300.0),          # level 400, width 1800
}


@dataclass(frozen=True)
class Clip2DModel:
    """One 2D CLIP variant: where its weights are, their layout, its tower and preprocessing.

    Attributes:
        layout: ``"open_clip_timm"`` (BiomedCLIP), ``"hf_clip"`` (transformers ``CLIPModel``),
            ``"open_clip_vit"`` (OpenAI-style ViT in open_clip) or ``"medclip_swin"``.
        tower: keyword arguments of the transformers vision config (``CLIPVisionConfig`` or
            ``SwinConfig``); ``projection_dim`` is the embedding width ``C``.
        resize: ``"shortest_crop"`` (resize the shorter side, centre crop) or ``"pad_square"``.
        grey: the tower takes one normalised grey channel repeated to three (MedCLIP).
    """

    name: str
    layout: str
    hub_repo: str | None
    weight_files: tuple[str, ...]
    tower: Mapping[str, Any]
    mean: tuple[float, ...] = OPENAI_MEAN
    std: tuple[float, ...] = OPENAI_STD
    resize: str = "shortest_crop"
    grey: bool = False
    licence: str = ""
    description: str = ""
    weights_help: str = ""

    @property
    def embed_dim(self) -> int:
        return int(self.tower["projection_dim"])

    @property
    def image_size(self) -> int:
        return int(self.tower["image_size"])


_VIT_B = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
          "image_size": 224, "projection_dim": 512}

MODELS: dict[str, Clip2DModel] = {
    "biomedclip": Clip2DModel(
        name="biomedclip", layout="open_clip_timm", hub_repo="microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
        weight_files=("open_clip_pytorch_model.bin", "open_clip_model.safetensors"),
        tower={**_VIT_B, "patch_size": 16, "hidden_act": "gelu", "layer_norm_eps": 1e-6}, licence="MIT",
        description="BiomedCLIP (PMC-15M), timm ViT-B/16 image tower, 512-d projected CLS",
        weights_help="https://huggingface.co/microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"),
    "pubmedclip": Clip2DModel(
        name="pubmedclip", layout="hf_clip", hub_repo="flaviagiammarino/pubmed-clip-vit-base-patch32",
        weight_files=("pytorch_model.bin", "model.safetensors"),
        tower={**_VIT_B, "patch_size": 32, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}, licence="MIT",
        description="PubMedCLIP (CLIP ViT-B/32 fine-tuned on ROCO), 512-d projected CLS",
        weights_help="https://huggingface.co/flaviagiammarino/pubmed-clip-vit-base-patch32"),
    "pmc_clip": Clip2DModel(
        name="pmc_clip", layout="open_clip_vit", hub_repo="ryanyip7777/pmc_vit_l_14",
        weight_files=("open_clip_pytorch_model.bin", "open_clip_model.safetensors"),
        tower={"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
               "image_size": 224, "patch_size": 14, "projection_dim": 768, "hidden_act": "gelu",
               "layer_norm_eps": 1e-5},
        licence="see the model card",
        description="PMC-CLIP ViT-L/14 (OpenAI ViT-L/14 fine-tuned on PMC-OA + ROCO with open_clip), 768-d",
        weights_help="https://huggingface.co/ryanyip7777/pmc_vit_l_14"),
    "medclip": Clip2DModel(
        name="medclip", layout="medclip_swin", hub_repo=None, weight_files=("pytorch_model.bin",),
        tower={"image_size": 224, "patch_size": 4, "embed_dim": 96, "depths": [2, 2, 6, 2],
               "num_heads": [3, 6, 12, 24], "window_size": 7, "projection_dim": 512},
        mean=(0.5862785803043838,), std=(0.27950088968644304,), resize="pad_square", grey=True,
        licence="see the repository",
        description="MedCLIP-ViT (Swin-T, CheXpert + MIMIC-CXR), 512-d projected pooled output",
        weights_help="the MedCLIP-ViT release zip linked from github.com/RyanWangZf/MedCLIP "
                     "(unzip; pytorch_model.bin)"),
}


# ----------------------------------------------------------------------------- towers
class _ClipTower(nn.Module):
    """transformers ``CLIPVisionModelWithProjection``: images ``[N, 3, S, S]`` → ``image_embeds [N, C]``.

    ``pre_norm=False`` removes CLIP's pre-LayerNorm (timm ViTs have none)."""

    def __init__(self, config: Mapping[str, Any], pre_norm: bool = True) -> None:
        super().__init__()
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

        cfg = CLIPVisionConfig(**dict(config))
        self.model = CLIPVisionModelWithProjection(cfg)
        if not pre_norm:
            self.model.vision_model.pre_layrnorm = nn.Identity()

    def forward(self, pixels: Tensor) -> Tensor:
        return self.model(pixel_values=pixels).image_embeds


class _SwinTower(nn.Module):
    """transformers ``SwinModel`` + bias-free projection of its pooled output (MedCLIP-ViT)."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__()
        from transformers import SwinConfig, SwinModel

        cfg = dict(config)
        proj = int(cfg.pop("projection_dim"))
        self.model = SwinModel(SwinConfig(**cfg))
        self.projection_head = nn.Linear(self.model.num_features, proj, bias=False)

    def forward(self, pixels: Tensor) -> Tensor:
        return self.projection_head(self.model(pixel_values=pixels).pooler_output)


# ----------------------------------------------------------------------------- checkpoint layouts
def _split_qkv(prefix: str, w: Tensor, b: Tensor | None, out: dict[str, Tensor]) -> None:
    for name, wi in zip(("q_proj", "k_proj", "v_proj"), w.chunk(3, dim=0)):
        out[f"{prefix}.{name}.weight"] = wi
    if b is not None:
        for name, bi in zip(("q_proj", "k_proj", "v_proj"), b.chunk(3, dim=0)):
            out[f"{prefix}.{name}.bias"] = bi


_V = "model.vision_model."


def _from_open_clip_vit(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """open_clip / OpenAI CLIP ``visual.*`` keys → ``_ClipTower`` keys (text tower left out)."""
    out: dict[str, Tensor] = {}
    simple = {"visual.class_embedding": "embeddings.class_embedding",
              "visual.positional_embedding": "embeddings.position_embedding.weight",
              "visual.conv1.weight": "embeddings.patch_embedding.weight",
              "visual.ln_pre.weight": "pre_layrnorm.weight", "visual.ln_pre.bias": "pre_layrnorm.bias",
              "visual.ln_post.weight": "post_layernorm.weight", "visual.ln_post.bias": "post_layernorm.bias"}
    block = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
             "attn.out_proj": "self_attn.out_proj"}
    for key, value in sd.items():
        if not key.startswith("visual."):
            continue
        if key in simple:
            out[_V + simple[key]] = value
        elif key == "visual.proj":
            out["model.visual_projection.weight"] = value.t().contiguous()
        elif key.startswith("visual.transformer.resblocks."):
            i, rest = key[len("visual.transformer.resblocks."):].split(".", 1)
            pre = f"{_V}encoder.layers.{i}."
            if rest == "attn.in_proj_weight":
                _split_qkv(pre + "self_attn", value, sd.get(key.replace("weight", "bias")), out)
            elif rest == "attn.in_proj_bias":
                continue
            else:
                mod, _, leaf = rest.rpartition(".")
                out[pre + block.get(mod, mod) + "." + leaf] = value
        else:
            out[key] = value  # kept as is: reported as unexpected
    return out


def _from_open_clip_timm(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """open_clip ``TimmModel`` (``visual.trunk.*`` timm ViT + ``visual.head.proj``) → ``_ClipTower``
    keys without pre-LayerNorm; the patch-embedding bias is added to the patch position embeddings."""
    out: dict[str, Tensor] = {}
    t = "visual.trunk."
    block = {"norm1": "layer_norm1", "norm2": "layer_norm2", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
             "attn.proj": "self_attn.out_proj"}
    for key, value in sd.items():
        if not key.startswith("visual."):
            continue
        if key == t + "cls_token":
            out[_V + "embeddings.class_embedding"] = value.reshape(-1)
        elif key == t + "pos_embed":
            pos = value.reshape(value.shape[-2], value.shape[-1]).clone()
            bias = sd.get(t + "patch_embed.proj.bias")
            if bias is not None:
                pos[1:] += bias
            out[_V + "embeddings.position_embedding.weight"] = pos
        elif key == t + "patch_embed.proj.weight":
            out[_V + "embeddings.patch_embedding.weight"] = value
        elif key == t + "patch_embed.proj.bias":
            continue
        elif key in (t + "norm.weight", t + "norm.bias"):
            out[_V + "post_layernorm." + key.rsplit(".", 1)[1]] = value
        elif key == "visual.head.proj.weight":
            out["model.visual_projection.weight"] = value
        elif key.startswith(t + "blocks."):
            i, rest = key[len(t + "blocks."):].split(".", 1)
            pre = f"{_V}encoder.layers.{i}."
            if rest == "attn.qkv.weight":
                _split_qkv(pre + "self_attn", value, sd.get(key.replace("weight", "bias")), out)
            elif rest == "attn.qkv.bias":
                continue
            else:
                mod, _, leaf = rest.rpartition(".")
                out[pre + block.get(mod, mod) + "." + leaf] = value
        else:
            out[key] = value
    return out


#: key prefixes of the image tower in each layout (the rest — text tower, temperature — is left out)
_TOWER_PREFIX: dict[str, tuple[str, ...]] = {"open_clip_timm": ("visual.",), "open_clip_vit": ("visual.",),
                                             "hf_clip": ("vision_model.", "visual_projection."),
                                             "medclip_swin": ("vision_model.",)}


def _from_hf_clip(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """transformers ``CLIPModel`` keys → ``_ClipTower`` keys (text tower left out)."""
    return {"model." + k: v for k, v in sd.items() if k.startswith(_TOWER_PREFIX["hf_clip"])}


#: transformers 4.x Swin key parts → the names of the installed version (tried when they differ)
_SWIN_RENAMES = ((".attention.self.query.", ".attention.q_proj."), (".attention.self.key.", ".attention.k_proj."),
                 (".attention.self.value.", ".attention.v_proj."), (".attention.output.dense.", ".attention.o_proj."),
                 (".attention.self.relative_position_bias_table",
                  ".attention.relative_position_bias.relative_position_bias_table"),
                 (".intermediate.dense.", ".mlp.fc1."), (".output.dense.", ".mlp.fc2."))


def _from_medclip(sd: Mapping[str, Tensor], expected: Sequence[str]) -> dict[str, Tensor]:
    """MedCLIP ``vision_model.model.*`` (SwinModel, saved by transformers 4.x) and
    ``vision_model.projection_head.weight`` → ``_SwinTower`` keys of the installed transformers."""
    want = set(expected)
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        if key == "vision_model.projection_head.weight":
            out["projection_head.weight"] = value
            continue
        if not key.startswith("vision_model.model."):
            continue
        new = "model." + key[len("vision_model.model."):]
        if new.endswith("relative_position_index"):
            continue  # a constant buffer, rebuilt by the model
        if new not in want:
            for old, cur in _SWIN_RENAMES:
                if old in new:
                    new = new.replace(old, cur)
                    break
        out[new] = value
    return out


# ----------------------------------------------------------------------------- configs next to weights
def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, json.JSONDecodeError):
        return None


def _config_from_files(spec: Clip2DModel, folder: Path) -> Clip2DModel:
    """The variant with the architecture / normalisation of the config files next to its weights
    (``open_clip_config.json``; ``config.json`` + ``preprocessor_config.json`` of transformers)."""
    tower = dict(spec.tower)
    mean, std = spec.mean, spec.std
    oc = _read_json(folder / "open_clip_config.json")
    if oc and spec.layout.startswith("open_clip"):
        mc, pc = oc.get("model_cfg", {}), oc.get("preprocess_cfg", {})
        vc = mc.get("vision_cfg", {})
        if "embed_dim" in mc:
            tower["projection_dim"] = int(mc["embed_dim"])
        if "image_size" in vc:
            tower["image_size"] = int(vc["image_size"])
        if spec.layout == "open_clip_vit":
            width = int(vc.get("width", tower["hidden_size"]))
            tower.update(hidden_size=width, num_hidden_layers=int(vc.get("layers", tower["num_hidden_layers"])),
                         patch_size=int(vc.get("patch_size", tower["patch_size"])),
                         num_attention_heads=width // int(vc.get("head_width", 64)),
                         intermediate_size=int(width * float(vc.get("mlp_ratio", 4.0))),
                         hidden_act="quick_gelu" if mc.get("quick_gelu") else "gelu")
        mean, std = tuple(pc.get("mean", mean)), tuple(pc.get("std", std))
    hf = _read_json(folder / "config.json")
    if hf and spec.layout == "hf_clip":
        vc = hf.get("vision_config", hf)
        for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size",
                  "patch_size", "hidden_act", "layer_norm_eps"):
            if k in vc:
                tower[k] = vc[k]
        if "projection_dim" in hf:
            tower["projection_dim"] = int(hf["projection_dim"])
    pp = _read_json(folder / "preprocessor_config.json")
    if pp and spec.layout == "hf_clip":
        mean, std = tuple(pp.get("image_mean", mean)), tuple(pp.get("image_std", std))
    return replace(spec, tower=tower, mean=tuple(float(v) for v in mean), std=tuple(float(v) for v in std))


# ----------------------------------------------------------------------------- the backbone
class Clip2DBackbone(BaselineBackbone):
    """A 2D CLIP image tower applied to the axial slices of a CT volume (see the module docstring).

    Input of :meth:`forward`: ``[B, D, S, S]`` windowed grey slices in [0, 1] (SPL order, from
    :meth:`preprocess`); output: ``x_norm_clstoken [B, C]`` (mean of the slice embeddings) and
    ``x_norm_patchtokens [B, T, C]`` (one token per embedded slice, ``T = ceil(D / slice_stride)``).
    """

    family = "clip2d"
    supports_chunked = False

    def __init__(self, spec: Clip2DModel, *, window: tuple[float, float], slice_stride: int = 1,
                 slice_batch: int = 32) -> None:
        super().__init__()
        self.spec = spec
        self.window = (float(window[0]), float(window[1]))
        self.slice_stride = int(slice_stride)
        self.slice_batch = int(slice_batch)
        self.embed_dim = spec.embed_dim
        size = spec.image_size
        self.patch_size = (self.slice_stride, size, size)
        if spec.layout == "medclip_swin":
            self.tower: nn.Module = _SwinTower(spec.tower)
        else:
            self.tower = _ClipTower(spec.tower, pre_norm=spec.layout != "open_clip_timm")
        self.register_buffer("mean", torch.tensor(spec.mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    # -- preprocessing ------------------------------------------------------------------------
    def preprocess(self, source: Any, *, spacing: Sequence[float] | None = None, **options: Any) -> Any:
        """Axial slices of ``source`` at the HU window, as the tower's image pipeline sees them.

        Returns:
            ``Preprocessed`` with ``array [D, S, S]`` grey values in [0, 1] (8-bit levels), SPL
            order; ``record["to_source"]`` maps model voxels to the canonical source grid.
        """
        if options:
            raise ConfigError(f"clip2d preprocessing has no option(s) {', '.join(options)}")
        from voxelfm.preprocess import source_grid

        x, sp, info = source_grid(source, "default", spacing=None if spacing is None else tuple(spacing))
        d, h, w = x.shape
        lo, hi = self.window
        grey = x.clamp(lo, hi).sub_(lo).div_(hi - lo).mul_(255.0).round_().div_(255.0)  # [D, H, W], 8-bit levels
        size = self.spec.image_size
        steps: list[dict[str, Any]] = [
            {"op": "canonical_orientation", "orientation": info.get("orientation")},
            {"op": "hu_window", "low": lo, "high": hi, "to": [0, 1], "quantise": "uint8"}]
        img = grey[:, None]  # [D, 1, H, W]
        if self.spec.resize == "pad_square":
            side = max(h, w)
            top, left = (side - h) // 2, (side - w) // 2
            img = F.pad(img, (left, side - w - left, top, side - h - top), value=0.0)
            steps.append({"op": "pad_square", "side": side, "value": 0.0})
            scale_h = scale_w = size / side
            crop_top = crop_left = 0
            new_h = new_w = size
            off_h, off_w = -top, -left
        else:
            s = size / min(h, w)
            new_h, new_w = max(size, round(h * s)), max(size, round(w * s))
            scale_h, scale_w = new_h / h, new_w / w
            crop_top, crop_left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
            off_h = off_w = 0
        if (new_h, new_w) != tuple(img.shape[-2:]):
            img = F.interpolate(img, size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=True)
            img = (img.clamp(0.0, 1.0) * 255.0).round() / 255.0
        steps.append({"op": "resize", "size": [new_h, new_w], "mode": "bicubic-antialias", "quantise": "uint8"})
        img = img[..., crop_top:crop_top + size, crop_left:crop_left + size]
        if self.spec.resize != "pad_square":
            steps.append({"op": "center_crop", "size": [size, size], "offset": [crop_top, crop_left]})
        steps += [{"op": "normalise", "mean": list(self.spec.mean), "std": list(self.spec.std),
                   "channels": "grey normalised, repeated to 3" if self.spec.grey else "grey repeated to 3"},
                  {"op": "slices", "axis": 0, "stride": self.slice_stride, "batch": self.slice_batch,
                   "embedding": f"{self.spec.name} projected image embedding, one per slice; cls = mean"}]
        # model voxel (k, i, j) -> source voxel (k, (i + crop + 0.5) / scale - 0.5 + pad offset, ...)
        to_source = {"scale": [1.0, 1.0 / scale_h, 1.0 / scale_w],
                     "offset": [0.0, (crop_top + 0.5) / scale_h - 0.5 + off_h,
                                (crop_left + 0.5) / scale_w - 0.5 + off_w]}
        affine = info.get("affine")
        if affine is not None:
            m = torch.eye(4, dtype=torch.float64)
            m[0, 0], m[1, 1], m[2, 2] = 1.0, to_source["scale"][1], to_source["scale"][2]
            m[1, 3], m[2, 3] = to_source["offset"][1], to_source["offset"][2]
            affine = (torch.tensor(affine, dtype=torch.float64) @ m).tolist()
        out_spacing = (sp[0], sp[1] / scale_h, sp[2] / scale_w)
        return make_preprocessed(img[:, 0], family=self.family, info=info, input_shape=(d, h, w), input_spacing=sp,
                                 spacing=out_spacing, patch_size=self.patch_size, to_source=to_source, steps=steps,
                                 affine=affine, model=self.spec.name, window=[lo, hi])

    # -- forward ------------------------------------------------------------------------------
    def slice_indices(self, depth: int) -> list[int]:
        """The slices embedded for a volume of ``depth`` slices: the centre slice of each block of
        ``slice_stride`` (the last block may be shorter)."""
        k = self.slice_stride
        return [min(depth - 1, i * k + (min(k, depth - i * k) - 1) // 2) for i in range(math.ceil(depth / k))]

    def embed_slices(self, images: Tensor) -> Tensor:
        """Grey images ``[N, S, S]`` in [0, 1] → projected embeddings ``[N, C]`` (batches of ``slice_batch``)."""
        out = []
        for chunk in images.split(self.slice_batch):
            x = chunk[:, None]
            if self.spec.grey:
                x = ((x - self.mean) / self.std).expand(-1, 3, -1, -1)
            else:
                x = (x.expand(-1, 3, -1, -1) - self.mean) / self.std
            out.append(self.tower(x))
        return torch.cat(out)

    def forward(self, x: Tensor) -> dict[str, Tensor | None]:
        size = self.spec.image_size
        if x.ndim != 4 or tuple(x.shape[-2:]) != (size, size):
            raise ValueError(f"clip2d {self.spec.name} expects [B, D, {size}, {size}] slices from its preprocess(); "
                             f"got {tuple(x.shape)}")
        b, d = x.shape[:2]
        idx = self.slice_indices(d)
        emb = self.embed_slices(x[:, idx].reshape(b * len(idx), size, size))  # [B*T, C]
        tokens = emb.view(b, len(idx), -1)
        fmap = tokens.transpose(1, 2).reshape(b, tokens.shape[-1], len(idx), 1, 1)
        return dinov2_output(tokens.mean(1), fmap)


# ----------------------------------------------------------------------------- loading
def _variant(model: str | None, weights: Any) -> Clip2DModel:
    if model is None:
        text = str(weights or "").lower()
        hits = [m for m in MODELS.values() if m.hub_repo and m.hub_repo.lower() in text]
        return hits[0] if hits else MODELS["biomedclip"]
    key = str(model).strip().lower()
    if key not in MODELS:
        raise ConfigError(f"unknown clip2d model {model!r}; choose one of {', '.join(MODELS)}")
    return MODELS[key]


def _json_option(name: str, value: Any) -> Any:
    """Options given as text on a command line (``--backbone-option tower={...}``) are JSON."""
    if not isinstance(value, str) or value.strip()[:1] not in ("{", "["):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"clip2d option {name}: not valid JSON ({exc.msg}): {value!r}") from None


def _window(window: Any) -> tuple[float, float]:
    window = _json_option("window", window)
    if isinstance(window, str) and "," in window:
        window = window.split(",")
    if isinstance(window, str):
        if window not in WINDOWS:
            raise ConfigError(f"unknown window {window!r}; choose one of {', '.join(WINDOWS)} or give [low, high] HU")
        return WINDOWS[window]
    try:
        lo, hi = (float(v) for v in window)
    except (TypeError, ValueError):
        raise ConfigError(f"window must be a name ({', '.join(WINDOWS)}) or [low, high] HU, got {window!r}") from None
    if not hi > lo:
        raise ConfigError(f"window [low, high] needs high > low, got {window!r}")
    return lo, hi


def _family_for(spec: Clip2DModel) -> BackboneFamily:
    return replace(FAMILY, hub_repo=spec.hub_repo, weight_files=spec.weight_files, weights_help=spec.weights_help)


def check_weights(weights: str | os.PathLike[str], *, model: str | None = None, **_: Any) -> Path:
    """The local weights file of ``model`` named by ``weights`` (file, folder, hub id in the local
    cache), without loading it; one-line :class:`CheckpointError` when it is not there."""
    from voxelfm.baselines._weights import resolve_weights

    return resolve_weights(weights, _family_for(_variant(model, weights)))


def load(weights: str | os.PathLike[str] | None, *, device: Any = "cpu", model: str | None = None,
         window: Any = "wide", slice_stride: int = 1, slice_batch: int = 32,
         tower: Mapping[str, Any] | None = None) -> Clip2DBackbone:
    """Load a 2D medical CLIP image tower as a slice-wise backbone.

    Args:
        weights: the released file, a folder holding it, a Hugging Face repo id in the local hub
            cache (see :data:`MODELS`), or ``None`` for a seeded random init.
        model: ``biomedclip`` (default), ``pubmedclip``, ``pmc_clip`` or ``medclip``; inferred
            from a repo id in ``weights`` when not given.
        window: HU window: a name of :data:`WINDOWS` (default ``wide`` = [-1000, 1000]) or ``[low, high]``
            (on a command line also ``low,high`` or JSON).
        slice_stride: embed one slice per block of this many (the block's centre slice).
        slice_batch: slices per forward pass (memory).
        tower: overrides of the tower config (e.g. a small ``hidden_size`` / ``image_size`` for tests;
            JSON text on a command line).

    Raises:
        ConfigError: unknown model / window / bad numbers. CheckpointError: weights not found
            (one line: what to download, from where, where to put it) or of another model.
    """
    from voxelfm.baselines._weights import load_matching, random_init, read_state_dict

    spec = _variant(model, weights)
    win = _window(window)
    if int(slice_stride) < 1 or int(slice_batch) < 1:
        raise ConfigError(f"slice_stride and slice_batch must be >= 1, got {slice_stride} and {slice_batch}")
    path: Path | None = None
    if weights is not None:
        path = check_weights(weights, model=spec.name)
        spec = _config_from_files(spec, path.parent)
    tower = _json_option("tower", tower)
    if tower and not isinstance(tower, Mapping):
        raise ConfigError(f"clip2d option tower must be a mapping of config values, got {tower!r}")
    if tower:
        spec = replace(spec, tower={**spec.tower, **dict(tower)})

    def build() -> Clip2DBackbone:
        return Clip2DBackbone(spec, window=win, slice_stride=int(slice_stride), slice_batch=int(slice_batch))

    if path is None:
        net = random_init(f"clip2d {spec.name}", build, stacklevel=4)
        net.source = {"format": "random-init", "model": spec.name}
    else:
        net = build()
        sd = read_state_dict(path)
        expected = list(net.tower.state_dict())
        converted = {"open_clip_timm": _from_open_clip_timm, "open_clip_vit": _from_open_clip_vit,
                     "hf_clip": _from_hf_clip}.get(spec.layout)
        mapped = converted(sd) if converted else _from_medclip(sd, expected)
        if not mapped:
            raise CheckpointError(f"{path}: not a {spec.name} checkpoint — none of its {len(sd)} keys is an image-"
                                  f"tower key of the {spec.layout} layout (its keys: {', '.join(list(sd)[:4])}); "
                                  "pass this model's released weights or the right model= option")
        report = load_matching(net.tower, mapped, source=str(path), family=f"clip2d {spec.name}",
                               allow_missing=(r".*position_ids",))
        tower_prefix = _TOWER_PREFIX[spec.layout]
        net.source = {"format": spec.layout, "path": str(path), "model": spec.name, **report.to_dict(),
                      "dropped_keys": sum(not k.startswith(tower_prefix) for k in sd),
                      "dropped_prefixes": ["everything outside " + " / ".join(tower_prefix)]}
    return net.to(device).eval()


FAMILY = BackboneFamily(
    name="clip2d", load=load, embed_dim=512,
    description="2D medical CLIP image towers (BiomedCLIP, PubMedCLIP, PMC-CLIP, MedCLIP) on axial slices; "
                "cls = mean of the per-slice projected embeddings (512-d; 768 for pmc_clip)",
    weights_help="per model (option model=): " + "; ".join(f"{m.name}: {m.weights_help}" for m in MODELS.values()),
    requires=("transformers",), extra="baselines", weight_files=MODELS["biomedclip"].weight_files,
    hub_repo=MODELS["biomedclip"].hub_repo, licence="per model (BiomedCLIP, PubMedCLIP: MIT)", resolve=False,
)
