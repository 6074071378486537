"""CT-FM (project-lighter): the SegResEncoder feature extractor as a voxelfm backbone.

* Network: MONAI ``SegResEncoder(spatial_dims=3, in_channels=1, init_filters=32,
  blocks_down=(1, 2, 2, 4, 4))`` — ``lighter_zoo.SegResEncoder`` is this class plus the Hugging Face
  hub mixin (BASELINES.md §5). 77.8 M parameters; a pyramid of 5 levels (strides 1-16, 32-512 channels).
* Weights: ``model.safetensors`` of ``project-lighter/ct_fm_feature_extractor`` (bare keys, as
  ``lighter_zoo``'s ``save_pretrained`` writes them); also the full ``ct_fm_segresnet`` file
  (``encoder.*``, decoder dropped) and Lightning checkpoints (``state_dict.backbone.*``).
* Preprocessing, ``pipeline="repo"`` (default; ``scripts/feature_extractor.py`` of the CT-FM
  repository, the authors' feature extraction): orientation SPL → spacing 3×1×1 mm (bilinear) →
  CropForeground on HU (MONAI default: voxels > 0, i.e. HU > 0) → HU [-1024, 2048] → [0, 1]
  (clipped). ``pipeline="hf"``: the Hugging Face model card's chain (SPL → scale → CropForeground on
  the scaled image, no resampling).
* Embedding: ``x_norm_clstoken`` = average-pooled last level (512, the authors' ``head_module``),
  computed over the whole volume in one forward (the network is fully convolutional);
  ``x_norm_patchtokens`` = the last level (512 channels, stride 16).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from voxelfm.baselines._weights import build_with_weights
from voxelfm.baselines.base import BaselineBackbone, dinov2_output, make_preprocessed
from voxelfm.baselines.registry import BackboneFamily

__all__ = ["FAMILY", "CTFMBackbone", "load", "preprocess_ctfm", "PIPELINES", "HU_RANGE", "SPACING"]

HU_RANGE: tuple[float, float] = (-1024.0, 2048.0)
#: Target spacing (S, P, L) mm of the repository's feature extraction.
SPACING: tuple[float, float, float] = (3.0, 1.0, 1.0)
PIPELINES: tuple[str, ...] = ("repo", "hf")
WEIGHTS_FILE = "model.safetensors"
_PREFIXES = ("state_dict.backbone.", "state_dict.model.backbone.", "backbone.", "encoder.")


def build_encoder() -> nn.Module:
    """MONAI SegResEncoder with CT-FM's configuration (HF ``config.json``)."""
    from monai.networks.nets.segresnet_ds import SegResEncoder

    return SegResEncoder(spatial_dims=3, in_channels=1, init_filters=32, blocks_down=(1, 2, 2, 4, 4))


def preprocess_ctfm(source: Any, *, spacing: Sequence[float] | None = None, pipeline: str = "repo") -> Any:
    """CT-FM's preprocessing of one volume (MONAI transforms as the original), SPL order.

    Args:
        source: path, :class:`voxelfm.io.Volume` or ``[D, H, W]`` SPL HU array.
        spacing: ``(sz, sy, sx)`` mm of an array.
        pipeline: ``"repo"`` (scripts/feature_extractor.py) or ``"hf"`` (model card); see the module doc.

    Returns:
        :class:`~voxelfm.preprocess.Preprocessed` (``array`` in [0, 1], cropped to the foreground).
    """
    if pipeline not in PIPELINES:
        raise ValueError(f"ctfm pipeline must be one of {list(PIPELINES)}, got {pipeline!r}")
    from monai.transforms import CropForeground, ScaleIntensityRange, Spacing

    from voxelfm.baselines._monai_grid import as_volume, oriented, to_metatensor, to_spl, volume_info

    vol = as_volume(source, spacing)
    img = oriented(to_metatensor(vol), "SPL")
    scale = ScaleIntensityRange(a_min=HU_RANGE[0], a_max=HU_RANGE[1], b_min=0.0, b_max=1.0, clip=True)
    scale_step = {"op": "scale_intensity_range", "hu": list(HU_RANGE), "to": [0.0, 1.0], "clip": True}
    steps: list[dict[str, Any]] = [{"op": "orientation", "axcodes": "SPL"}]
    if pipeline == "repo":
        img = scale(CropForeground()(Spacing(pixdim=list(SPACING), mode="bilinear")(img)))
        steps += [{"op": "spacing", "pixdim_spl_mm": list(SPACING), "mode": "bilinear"},
                  {"op": "crop_foreground", "select": "value > 0 (HU > 0)"}, scale_step]
    else:
        img = CropForeground()(scale(img))
        steps += [scale_step, {"op": "crop_foreground", "select": "scaled value > 0 (HU > -1024)"}]
    arr, geo = to_spl(img, vol)
    return make_preprocessed(arr, family=CTFMBackbone.family, info=volume_info(vol), input_shape=vol.shape,
                             input_spacing=vol.spacing, spacing=geo["spacing"], patch_size=CTFMBackbone.patch_size,
                             to_source=geo["to_source"], steps=steps, affine=geo["affine"],
                             rotation_deg=geo["rotation_deg"], pipeline=pipeline)


class CTFMBackbone(BaselineBackbone):
    """CT-FM's SegResEncoder. Input ``[B, D, H, W]`` SPL in [0, 1] (from :meth:`preprocess`)."""

    family = "ctfm"
    embed_dim = 512
    patch_size = (16, 16, 16)

    def __init__(self, pipeline: str = "repo") -> None:
        super().__init__()
        if pipeline not in PIPELINES:
            raise ValueError(f"ctfm pipeline must be one of {list(PIPELINES)}, got {pipeline!r}")
        self.pipeline = pipeline
        self.encoder = build_encoder()

    def preprocess(self, source: Any, *, spacing: Sequence[float] | None = None, **options: Any):
        """:func:`preprocess_ctfm` with this model's ``pipeline``."""
        if options:
            raise TypeError(f"ctfm preprocess takes no options ({', '.join(options)})")
        return preprocess_ctfm(source, spacing=spacing, pipeline=self.pipeline)

    def feature_maps(self, x: Tensor) -> list[Tensor]:
        """``x [B, D, H, W]`` → the 5 pyramid levels ``[B, 32·2^k, D/2^k, H/2^k, W/2^k]``."""
        if x.ndim != 4:
            raise ValueError(f"ctfm input must be [B, D, H, W], got {tuple(x.shape)}")
        return list(self.encoder(x[:, None]))

    def forward(self, x: Tensor) -> dict[str, Tensor | None]:
        last = self.feature_maps(x)[-1]
        return dinov2_output(last.mean(dim=(2, 3, 4)), last)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "pipeline": self.pipeline}


def load(weights: str | os.PathLike[str] | None, *, device: Any = "cpu", pipeline: str = "repo") -> CTFMBackbone:
    """CT-FM from ``model.safetensors`` (or a segresnet / Lightning checkpoint), or seeded random init.

    Args:
        pipeline: ``"repo"`` (default) or ``"hf"`` preprocessing (module docstring).
    """
    if pipeline not in PIPELINES:
        raise ValueError(f"ctfm pipeline must be one of {list(PIPELINES)}, got {pipeline!r}")
    model = build_with_weights("ctfm", lambda: CTFMBackbone(pipeline), weights, part=lambda m: m.encoder,
                               strip=_PREFIXES, select="auto")
    return model.eval().to(device)


FAMILY = BackboneFamily(
    name="ctfm", load=load, embed_dim=512,
    description="CT-FM SegResEncoder (intra-sample SimCLR on 148k CTs); 512-d pooled last level, last-level tokens",
    weights_help="https://huggingface.co/project-lighter/ct_fm_feature_extractor (Apache-2.0)",
    requires=("monai",), extra="baselines", weight_files=(WEIGHTS_FILE,),
    hub_repo="project-lighter/ct_fm_feature_extractor", licence="Apache-2.0 (weights), MIT (code)",
)
