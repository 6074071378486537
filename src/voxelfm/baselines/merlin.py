"""Merlin (StanfordMIMI/Merlin): the I3D-inflated ResNet-152 image encoder as a voxelfm backbone.

* Network: MONAI ``ResNet`` (bottleneck, layers 3-8-36-3, conv1 3×7×7 stride 1×2×2, shortcut B,
  no downsample bias), which has exactly the state-dict keys of Merlin's ``I3ResNet`` and computes
  the same function (BASELINES.md §1). The contrastive / phenotype heads are dropped.
* Weights: ``i3_resnet_clinical_longformer_best_clip_04-02-2024_23-21-36_epoch_99.pt`` from
  ``stanfordmimi/Merlin`` (a raw ``OrderedDict``; image keys ``encode_image.i3_resnet.*``), or the
  image-only five-year-prediction file (bare ``I3ResNet`` keys).
* Preprocessing (``merlin/data/monai_transforms.py``): orientation RAS → spacing 1.5×1.5×3 mm
  (bilinear) → HU [-1000, 1000] → [0, 1] (clipped) → pad to 224×224×160 (value 0) → centre crop,
  all in RAS order as the original; returned in SPL order. ``forward`` permutes to Merlin's
  (S, R, A) network order and feeds one channel to conv1 with its weights summed over the three
  identical input channels (the original repeats the channel 3×; same result up to rounding).
* Embedding: ``x_norm_clstoken`` = average-pooled layer4 (2048, Merlin's "image embedding");
  ``x_norm_patchtokens`` = layer4 (2048 channels; stride 16 in depth, 32 in-plane: 10×7×7 tokens
  at the default size).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from voxelfm.baselines._weights import build_with_weights
from voxelfm.baselines.base import BaselineBackbone, dinov2_output, make_preprocessed
from voxelfm.baselines.registry import BackboneFamily

__all__ = ["FAMILY", "MerlinBackbone", "load", "preprocess_merlin", "INPUT_SIZE", "SPACING", "HU_RANGE"]

#: Merlin's fixed input size in its RAS order (R, A, S voxels).
INPUT_SIZE: tuple[int, int, int] = (224, 224, 160)
#: Target spacing (R, A, S) in mm.
SPACING: tuple[float, float, float] = (1.5, 1.5, 3.0)
HU_RANGE: tuple[float, float] = (-1000.0, 1000.0)
WEIGHTS_FILE = "i3_resnet_clinical_longformer_best_clip_04-02-2024_23-21-36_epoch_99.pt"
_PREFIX = "encode_image.i3_resnet."
_HEADS = ("classifier.", "contrastive_head.", "fc.")


def build_encoder() -> nn.Module:
    """The MONAI ResNet equal to Merlin's I3ResNet trunk (3 input channels, no fc)."""
    from monai.networks.nets.resnet import ResNet, ResNetBottleneck

    return ResNet(block=ResNetBottleneck, layers=[3, 8, 36, 3], block_inplanes=[64, 128, 256, 512],
                  spatial_dims=3, n_input_channels=3, conv1_t_size=(3, 7, 7), conv1_t_stride=(1, 2, 2),
                  shortcut_type="B", bias_downsample=False, feed_forward=False)


def _size3(value: Any, name: str) -> tuple[int, int, int]:
    try:
        out = tuple(int(v) for v in value)
    except TypeError:
        out = (int(value),) * 3
    if len(out) != 3 or min(out) < 1:
        raise ValueError(f"{name} must be 3 positive integers, got {value!r}")
    return out  # type: ignore[return-value]


class MerlinBackbone(BaselineBackbone):
    """Merlin's image encoder. Input ``[B, D, H, W]`` SPL in [0, 1] (from :meth:`preprocess`)."""

    family = "merlin"
    embed_dim = 2048
    patch_size = (16, 32, 32)

    def __init__(self, input_size: Sequence[int] = INPUT_SIZE) -> None:
        super().__init__()
        self.input_size = _size3(input_size, "input_size")
        self.encoder = build_encoder()

    # -------------------------------------------------------------- preprocessing
    def preprocess(self, source: Any, *, spacing: Sequence[float] | None = None, **options: Any):
        """Merlin's MONAI pipeline on one volume (:func:`preprocess_merlin` at this model's input size)."""
        if options:
            raise TypeError(f"merlin preprocess takes no options ({', '.join(options)})")
        return preprocess_merlin(source, spacing=spacing, input_size=self.input_size)

    # -------------------------------------------------------------- network
    def feature_map(self, x: Tensor) -> Tensor:
        """``x [B, D, H, W]`` SPL → layer4 ``[B, 2048, d, h, w]`` in SPL order."""
        if x.ndim != 4:
            raise ValueError(f"merlin input must be [B, D, H, W], got {tuple(x.shape)}")
        e = self.encoder
        net = x.flip(2, 3).transpose(2, 3)[:, None]  # (S, P, L) -> Merlin's (S, R, A)
        conv = e.conv1
        y = F.conv3d(net, conv.weight.sum(1, keepdim=True), conv.bias, conv.stride, conv.padding,
                     conv.dilation)
        y = e.maxpool(e.act(e.bn1(y)))
        for layer in (e.layer1, e.layer2, e.layer3, e.layer4):
            y = layer(y)
        return y.transpose(3, 4).flip(3, 4)  # (s, r, a) -> (s, p, l)

    def forward(self, x: Tensor) -> dict[str, Tensor | None]:
        fmap = self.feature_map(x)
        return dinov2_output(fmap.mean(dim=(2, 3, 4)), fmap)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "input_size_ras": list(self.input_size)}


def preprocess_merlin(source: Any, *, spacing: Sequence[float] | None = None,
                      input_size: Sequence[int] = INPUT_SIZE) -> Any:
    """Merlin's ``ImageTransforms`` on one volume, returned in SPL order.

    Orientation RAS → Spacing 1.5×1.5×3 mm (bilinear) → ScaleIntensityRange [-1000, 1000] → [0, 1]
    (clipped) → SpatialPad to ``input_size`` (R, A, S; value 0) → CenterSpatialCrop, all with the
    MONAI transforms the original uses, on the image as MONAI's reader would give it.

    Args:
        source: path, :class:`voxelfm.io.Volume` or ``[D, H, W]`` SPL HU array.
        spacing: ``(sz, sy, sx)`` mm of an array.
        input_size: pad/crop size in RAS order (default 224×224×160).

    Returns:
        :class:`~voxelfm.preprocess.Preprocessed`: ``array [S, P, L]`` float32 in [0, 1] (for the
        default size ``[160, 224, 224]``), record with geometry and ``steps``.
    """
    from monai.transforms import CenterSpatialCrop, ScaleIntensityRange, Spacing, SpatialPad

    from voxelfm.baselines._monai_grid import as_volume, oriented, to_metatensor, to_spl, volume_info

    size = list(_size3(input_size, "input_size"))
    vol = as_volume(source, spacing)
    img = oriented(to_metatensor(vol), "RAS")
    img = Spacing(pixdim=SPACING, mode="bilinear")(img)
    img = ScaleIntensityRange(a_min=HU_RANGE[0], a_max=HU_RANGE[1], b_min=0.0, b_max=1.0, clip=True)(img)
    img = SpatialPad(spatial_size=size)(img)
    img = CenterSpatialCrop(roi_size=size)(img)
    arr, geo = to_spl(img, vol)
    steps = [
        {"op": "orientation", "axcodes": "RAS"},
        {"op": "spacing", "pixdim_ras_mm": list(SPACING), "mode": "bilinear"},
        {"op": "scale_intensity_range", "hu": list(HU_RANGE), "to": [0.0, 1.0], "clip": True},
        {"op": "spatial_pad", "size_ras": size, "value": 0.0},
        {"op": "center_spatial_crop", "size_ras": size},
        {"op": "to_spl", "from": geo["orientation_in"]},
        {"op": "forward", "note": "SPL -> (S, R, A) permute/flip, 3-channel repeat folded into conv1"},
    ]
    return make_preprocessed(arr, family=MerlinBackbone.family, info=volume_info(vol), input_shape=vol.shape,
                             input_spacing=vol.spacing, spacing=geo["spacing"], patch_size=MerlinBackbone.patch_size,
                             to_source=geo["to_source"], steps=steps, affine=geo["affine"],
                             rotation_deg=geo["rotation_deg"])


def load(weights: str | os.PathLike[str] | None, *, device: Any = "cpu",
         input_size: Sequence[int] = INPUT_SIZE) -> MerlinBackbone:
    """Merlin from its released ``.pt`` (full CLIP model or image-only), or seeded random init.

    Args:
        input_size: pad/crop size in Merlin's RAS order (default 224×224×160, the original's; smaller
            sizes are for tests and quick checks).
    """
    size = _size3(input_size, "input_size")
    model = build_with_weights("merlin", lambda: MerlinBackbone(size), weights, part=lambda m: m.encoder,
                               fmt=lambda r: "merlin-clip" if r.prefix else "merlin-i3resnet", strip=(_PREFIX,),
                               select="auto", drop=_HEADS)
    if tuple(model.input_size) != INPUT_SIZE:
        model.source["input_size_note"] = f"input_size {list(model.input_size)} (original {list(INPUT_SIZE)})"
    return model.eval().to(device)


FAMILY = BackboneFamily(
    name="merlin", load=load, embed_dim=2048,
    description="Merlin I3D ResNet-152 (CT + EHR + reports); 2048-d average-pooled layer4, layer4 tokens",
    weights_help="https://huggingface.co/stanfordmimi/Merlin (MIT)",
    requires=("monai",), extra="baselines", weight_files=(WEIGHTS_FILE,), hub_repo="stanfordmimi/Merlin",
    licence="MIT",
)
