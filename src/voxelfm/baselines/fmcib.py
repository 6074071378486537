"""FMCIB (AIM-Harvard foundation-cancer-image-biomarker): lesion-centred 50³ crops → 4096-d features.

* Network: MONAI ``resnet50(n_input_channels=1, widen_factor=2, conv1_t_stride=2,
  feed_forward=False, bias_downsample=True)`` exactly as ``fmcib.models.fmcib_model`` (184.5 M).
* Weights: ``model_weights.torch`` (Zenodo record 10528450) as FMCIB's ``LoadModel.load`` reads it:
  ``{"trunk_state_dict": ...}`` (VISSL-style) or a lighter/Lightning ``{"state_dict":
  {"model.trunk.*", "model.heads.*"}}``; heads dropped.
* Preprocessing (``fmcib/preprocessing/__init__.py`` ``get_transforms``): (HU + 1024) / 3072 (no
  clip) → spacing 1 mm (linear, align_corners, diagonal: axis-aligned grid, zeros outside) →
  orientation LPS → ``SeedBasedPatchCrop`` 50³ around the seed (seed voxel = ``int()`` of its
  continuous index, window ``[c - 25, c + 25)`` clamped to the image) → transpose to (S, P, L) →
  symmetric pad to 50³ with 0 (= -1024 HU). The 1 mm grid is MONAI's (the same helpers Spacing
  uses) but only the crop window is resampled — same voxels, seconds instead of a minute per lesion.
* Seeds: ``seed=(x, y, z)`` LPS mm (FMCIB's ``coordX, coordY, coordZ``; ``seed_space="lps_mm"``,
  default) or ``seed=(d, h, w)`` voxel indices of the canonical SPL grid (``seed_space="voxel"``,
  e.g. localisation / nodule coordinates). Manifest columns: ``coordX, coordY, coordZ`` or
  ``seed_d, seed_h, seed_w``; one row per lesion (ids must be unique). Without a seed the volume
  centre is used, with a warning (FMCIB is a lesion model).
* Embedding: ``x_norm_clstoken`` = average-pooled layer4 (4096, the features FMCIB's ``get_features``
  returns); ``x_norm_patchtokens`` = layer4 (2×2×2 tokens of 4096 for a 50³ crop, stride 32).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from voxelfm.baselines._weights import build_with_weights
from voxelfm.baselines.base import BaselineBackbone, dinov2_output, make_preprocessed
from voxelfm.baselines.registry import BackboneFamily

__all__ = ["FAMILY", "FMCIBBackbone", "load", "preprocess_fmcib", "CROP_SIZE", "SEED_SPACES"]

CROP_SIZE = 50
SEED_SPACES: tuple[str, ...] = ("lps_mm", "voxel")
WEIGHTS_FILE = "model_weights.torch"
_PREFIXES = ("trunk_state_dict.", "state_dict.model.trunk.", "state_dict.trunk.", "model.trunk.", "trunk.")
_DROP = ("head_state_dict.", "state_dict.model.heads.", "model.heads.", "heads.", "fc.")
_LPS_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def build_trunk() -> nn.Module:
    """The trunk of ``fmcib.models.fmcib_model``."""
    from monai.networks.nets import resnet50

    return resnet50(pretrained=False, n_input_channels=1, widen_factor=2, conv1_t_stride=2, feed_forward=False,
                    bias_downsample=True)


def _seed_lps(vol: Any, seed: Sequence[float] | None, seed_space: str) -> tuple[np.ndarray, dict[str, Any]]:
    if seed_space not in SEED_SPACES:
        raise ValueError(f"seed_space must be one of {list(SEED_SPACES)}, got {seed_space!r}")
    if seed is None:
        centre = (np.asarray(vol.shape, dtype=np.float64) - 1) / 2
        warnings.warn("fmcib: no seed point given; cropping at the volume centre (FMCIB embeds lesion-centred "
                      "crops: pass seed=, or coordX/coordY/coordZ manifest columns)", UserWarning, stacklevel=4)
        return vol.index_to_lps(centre)[0], {"space": "voxel", "given": None, "note": "volume centre"}
    pt = np.asarray([float(v) for v in seed], dtype=np.float64)
    if pt.shape != (3,) or not np.all(np.isfinite(pt)):
        raise ValueError(f"seed must be 3 finite numbers, got {seed!r}")
    lps = vol.index_to_lps(pt)[0] if seed_space == "voxel" else pt
    return lps, {"space": seed_space, "given": pt.tolist()}


def _lps_grid(img: Any) -> tuple[np.ndarray, list[int]]:
    """The grid ``Spacing(pixdim=1, diagonal=True)`` then ``Orientation("LPS")`` produce for ``img``:
    ``(voxel -> RAS mm affine, shape)``, computed with MONAI's own helpers (no resampling)."""
    from monai.data.utils import compute_shape_offset, zoom_affine
    from nibabel.orientations import axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

    src = np.asarray(img.affine, dtype=np.float64)
    new = zoom_affine(src, np.ones(3), diagonal=True)
    shape, offset = compute_shape_offset(list(img.shape[1:]), src, new, False)
    new[:3, 3] = offset[:3]
    tr = ornt_transform(io_orientation(new), axcodes2ornt(("L", "P", "S")))
    out_shape = [0, 0, 0]
    for ax_in, (ax_out, _) in enumerate(tr):
        out_shape[int(ax_out)] = int(shape[ax_in])
    return new @ inv_ornt_aff(tr, tuple(int(v) for v in shape)), out_shape


def preprocess_fmcib(source: Any, *, spacing: Sequence[float] | None = None, seed: Sequence[float] | None = None,
                     seed_space: str = "lps_mm", crop_size: int = CROP_SIZE) -> Any:
    """FMCIB's ``get_transforms`` on one volume around one seed point; ``[S, P, L]`` crop out.

    Args:
        source: path, :class:`voxelfm.io.Volume` or ``[D, H, W]`` SPL HU array.
        spacing: ``(sz, sy, sx)`` mm of an array.
        seed: ``(x, y, z)`` LPS mm, or ``(d, h, w)`` canonical voxel indices with ``seed_space="voxel"``.
        crop_size: crop side (default 50, the original's).

    Returns:
        :class:`~voxelfm.preprocess.Preprocessed` ``[crop, crop, crop]``, values (HU + 1024) / 3072;
        ``record["seed"]`` holds the seed in LPS mm and as given.
    """
    from monai.transforms import NormalizeIntensity

    from voxelfm.baselines._monai_grid import as_volume, to_metatensor, to_spl, volume_info

    n = int(crop_size)
    if n < 1:
        raise ValueError(f"crop_size must be >= 1, got {crop_size}")
    vol = as_volume(source, spacing)
    lps, seed_info = _seed_lps(vol, seed, seed_space)
    img = NormalizeIntensity(subtrahend=-1024, divisor=3072)(to_metatensor(vol))
    # The original resamples the whole volume to 1 mm (Spacing, diagonal=True), reorients it to LPS
    # and crops 50^3 around the seed. Only the crop is computed here: the same 1 mm grid (MONAI's own
    # zoom_affine / compute_shape_offset, as Spacing does), reoriented to LPS, then only the crop
    # window resampled (SpatialResample, bilinear, zeros, align_corners) - the same voxel values,
    # without resampling the whole CT for one lesion.
    aff, grid_shape = _lps_grid(img)  # (x, y, z) index of the 1 mm LPS grid -> RAS mm, its shape
    ras = _LPS_RAS @ np.array([*lps, 1.0])
    # the original truncates toward zero: a seed exactly on a voxel centre can fall either side by
    # float noise of the reader's affine (~1e-6 mm), i.e. a crop shifted by one voxel
    centre = [int(v) for v in (np.linalg.inv(aff) @ ras)[:3]]
    lo = [max(c - n // 2, 0) for c in centre]
    hi = [min(c + n // 2, g) for c, g in zip(centre, grid_shape)]
    if any(a >= b for a, b in zip(lo, hi)):
        raise ValueError(f"fmcib: seed {seed_info['given'] if seed is not None else 'centre'} ({seed_space}) "
                         f"lies outside the image (voxel {centre} of {list(grid_shape)} after 1 mm resampling)")
    from monai.transforms import SpatialResample

    start = np.eye(4)
    start[:3, 3] = lo
    crop_aff = aff @ start
    data = SpatialResample(mode="bilinear", padding_mode="zeros", align_corners=True)(
        img, dst_affine=torch.as_tensor(crop_aff), spatial_size=[b - a for a, b in zip(lo, hi)]).as_tensor()[0]
    patch = data.permute(2, 1, 0)  # (x, y, z) -> (z, y, x) = SPL
    before = [(n - s) // 2 if s < n else 0 for s in patch.shape]
    after = [max(n - s, 0) - b for s, b in zip(patch.shape, before)]
    patch = F.pad(patch, (before[2], after[2], before[1], after[1], before[0], after[0]))
    # geometry: SPL crop index (s, p, l) -> LPS-grid index (x, y, z) = (l, p, s) + lo - pad_before
    perm = np.zeros((4, 4))
    perm[0, 2] = perm[1, 1] = perm[2, 0] = perm[3, 3] = 1.0
    shift = np.eye(4)
    shift[:3, 3] = np.asarray(lo, dtype=np.float64) - np.asarray(before[::-1], dtype=np.float64)
    from monai.data import MetaTensor

    final = MetaTensor(patch[None].contiguous(), affine=torch.as_tensor(aff @ shift @ perm))
    arr, geo = to_spl(final, vol)
    steps = [
        {"op": "normalize_intensity", "subtrahend": -1024, "divisor": 3072, "clip": False},
        {"op": "spacing", "pixdim_mm": 1, "mode": "linear", "align_corners": True, "diagonal": True,
         "note": "the original's 1 mm grid, resampled only inside the crop window"},
        {"op": "orientation", "axcodes": "LPS"},
        {"op": "seed_based_patch_crop", "roi": [n, n, n], "centre_voxel_lps_grid": centre, "start": lo, "stop": hi},
        {"op": "transpose", "to": "SPL"},
        {"op": "spatial_pad", "size": [n, n, n], "before": before, "value": 0.0},
    ]
    return make_preprocessed(arr, family=FMCIBBackbone.family, info=volume_info(vol), input_shape=vol.shape,
                             input_spacing=vol.spacing, spacing=geo["spacing"], patch_size=FMCIBBackbone.patch_size,
                             to_source=geo["to_source"], steps=steps, affine=geo["affine"],
                             rotation_deg=geo["rotation_deg"],
                             seed={"lps_mm": [float(v) for v in lps], **seed_info})


class FMCIBBackbone(BaselineBackbone):
    """FMCIB's ResNet-50 (widen 2) trunk. Input ``[B, 50, 50, 50]`` SPL crops (from :meth:`preprocess`)."""

    family = "fmcib"
    embed_dim = 4096
    patch_size = (32, 32, 32)

    def __init__(self, crop_size: int = CROP_SIZE) -> None:
        super().__init__()
        self.crop_size = int(crop_size)
        self.trunk = build_trunk()

    def preprocess(self, source: Any, *, spacing: Sequence[float] | None = None, seed: Sequence[float] | None = None,
                   seed_space: str = "lps_mm", **options: Any):
        """:func:`preprocess_fmcib` at this model's crop size."""
        if options:
            raise TypeError(f"fmcib preprocess takes seed= and seed_space= only (got {', '.join(options)})")
        return preprocess_fmcib(source, spacing=spacing, seed=seed, seed_space=seed_space, crop_size=self.crop_size)

    def options_from_columns(self, columns: Mapping[str, Any]) -> dict[str, Any]:
        """``coordX, coordY, coordZ`` (LPS mm, FMCIB's CSV) or ``seed_d, seed_h, seed_w`` (voxels)."""
        def pick(names: tuple[str, str, str]) -> list[float] | None:
            present = [k for k in names if columns.get(k) not in (None, "")]
            if not present:
                return None
            if len(present) != 3:
                raise ValueError(f"fmcib seed columns: need all of {', '.join(names)}, got {', '.join(present)}")
            try:
                return [float(columns[k]) for k in names]
            except ValueError:
                raise ValueError(f"fmcib seed columns {', '.join(names)} must be numbers, got "
                                 f"{[columns[k] for k in names]}") from None

        mm, vox = pick(("coordX", "coordY", "coordZ")), pick(("seed_d", "seed_h", "seed_w"))
        if mm is not None and vox is not None:
            raise ValueError("give either coordX/coordY/coordZ (LPS mm) or seed_d/seed_h/seed_w (voxels), not both")
        if mm is not None:
            return {"seed": mm, "seed_space": "lps_mm"}
        if vox is not None:
            return {"seed": vox, "seed_space": "voxel"}
        return {}

    def feature_map(self, x: Tensor) -> Tensor:
        """``x [B, D, H, W]`` → layer4 ``[B, 4096, d, h, w]``."""
        if x.ndim != 4:
            raise ValueError(f"fmcib input must be [B, D, H, W], got {tuple(x.shape)}")
        t = self.trunk
        y = t.maxpool(t.act(t.bn1(t.conv1(x[:, None]))))
        for layer in (t.layer1, t.layer2, t.layer3, t.layer4):
            y = layer(y)
        return y

    def forward(self, x: Tensor) -> dict[str, Tensor | None]:
        fmap = self.feature_map(x)
        return dinov2_output(fmap.mean(dim=(2, 3, 4)), fmap)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "crop_size": self.crop_size}


def load(weights: str | os.PathLike[str] | None, *, device: Any = "cpu", crop_size: int = CROP_SIZE) -> FMCIBBackbone:
    """FMCIB from ``model_weights.torch`` (trunk_state_dict or lighter state_dict), or seeded random init.

    Args:
        crop_size: crop side in 1 mm voxels (default 50, the original's).
    """
    if int(crop_size) < 1:
        raise ValueError(f"crop_size must be >= 1, got {crop_size}")
    model = build_with_weights("fmcib", lambda: FMCIBBackbone(crop_size), weights, part=lambda m: m.trunk,
                               strip=_PREFIXES, drop=_DROP, select="auto",
                               fmt=lambda r: "fmcib-" + (r.prefix.split(".")[0] or "bare"))
    return model.eval().to(device)


FAMILY = BackboneFamily(
    name="fmcib", load=load, embed_dim=4096,
    description="FMCIB ResNet-50x2 (SimCLR on 11k DeepLesion lesions); 4096-d pooled layer4 of a 50^3 lesion crop",
    weights_help="https://zenodo.org/records/10528450 (model_weights.torch; code MIT, weights licence see record)",
    requires=("monai",), extra="baselines", weight_files=(WEIGHTS_FILE,), hub_repo=None,
    licence="code MIT; weights: see the Zenodo record",
)
