"""``preprocess_volume``: a CT volume (or array) → model input, with a record of every geometric step.

Order of operations (REFERENCE.md §2.2, identical for both presets; what differs is where the
array comes from and how it is clipped):

1. pick the grid: ``default`` — the canonical SPL array of :class:`voxelfm.io.Volume`;
   ``paper`` — ``Volume.reference_layout()`` (the reference reader's axis order); arrays/tensors
   as given, assumed isotropic 1 mm (as the reference), unless ``spacing`` is passed;
2. HU clip: ``preset.hu_window`` (``default``: [-1000, 1900] for every input), or for ``paper``
   the reference reader's clip (``Volume.reference_clip``; arrays unclipped);
3. optional background crop on the native grid (:func:`voxelfm.preprocess.foreground_box`);
4. isotropic resampling (finest spacing floored at 0.75 mm, skipped when already isotropic);
5. optional token budget ``max_patches`` (reference candidate search);
6. centred crop to a multiple of the patch size;
7. optional normalisation ``(x - mean) / std`` in float32.

The :class:`Preprocessed` record (JSON-able) lets :mod:`voxelfm.preprocess.geometry` map label
maps and points from the source grid to the model-input grid.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from voxelfm.preprocess.background import crop_to_box, foreground_box
from voxelfm.preprocess.intensity import apply_hu_window, normalise_intensity
from voxelfm.preprocess.presets import Preset, get_preset
from voxelfm.preprocess.resample import (
    isotropic_target_spacing,
    max_patches_shape,
    patch_crop_offsets,
    resample_isotropic,
    resize_trilinear,
)

__all__ = ["Preprocessed", "preprocess_volume", "source_grid"]


@dataclass
class Preprocessed:
    """Model input of one volume.

    Attributes:
        array: ``[D, H, W]`` float32 CPU tensor, every side a multiple of the patch size;
            normalised ``(HU - mean) / std`` when ``normalise=True``, else HU.
        spacing: effective voxel spacing ``(sz, sy, sx)`` in mm of ``array``.
        record: JSON-able description of every step (see :func:`preprocess_volume`).
    """

    array: torch.Tensor
    spacing: tuple[float, float, float]
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def grid(self) -> tuple[int, int, int]:
        """Token grid ``(d, h, w)``."""
        return tuple(self.record["token_grid"])  # type: ignore[return-value]

    @property
    def num_tokens(self) -> int:
        d, h, w = self.grid
        return d * h * w


def _is_volume(obj: Any) -> bool:
    return hasattr(obj, "reference_layout") and hasattr(obj, "array") and hasattr(obj, "spacing")


def _jsonable_source(src: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in dict(src or {}).items():
        if isinstance(v, (str, int, float, bool)) or v is None:
            out[k] = v
        elif isinstance(v, os.PathLike):
            out[k] = os.fspath(v)
        elif isinstance(v, (list, tuple)) and all(isinstance(x, (str, int, float, bool)) for x in v):
            out[k] = list(v)
        elif isinstance(v, dict):  # e.g. the read_overrides a manifest applied
            out[k] = _jsonable_source(v)
    return out


def source_grid(source: Any, preset: Preset | str = "default", *,
                spacing: tuple[float, float, float] | None = None
                ) -> tuple[torch.Tensor, tuple[float, float, float], dict[str, Any]]:
    """The source array, spacing and provenance a preset works on (steps 1-2 without the clip).

    Returns:
        ``(array [D, H, W] float32 tensor (HU, unclipped), spacing (sz, sy, sx) mm, info)`` where
        ``info`` holds ``orientation`` (``"SPL"``, ``"reference_layout"`` or ``"as_given"``),
        ``hu_clip`` (the clip the preset applies), ``source`` (format, path, ...), and ``affine``
        (4×4 index → LPS mm of this grid, only for the canonical grid).
    """
    preset = get_preset(preset)
    if isinstance(source, (str, os.PathLike)):
        from voxelfm.io import read_volume

        source = read_volume(source)
    info: dict[str, Any] = {}
    if _is_volume(source):
        if spacing is not None:
            raise ValueError("spacing= is only for arrays; a Volume carries its own spacing")
        if preset.canonical_orientation:
            arr, sp = source.array, tuple(source.spacing)
            info["orientation"] = "SPL"
            aff = getattr(source, "affine", None)
            info["affine"] = None if aff is None else np.asarray(aff, dtype=float).tolist()
        else:
            arr, sp = source.reference_layout()
            info["orientation"] = "reference_layout"
            info["affine"] = None
        clip = preset.hu_window if preset.hu_window is not None else getattr(source, "reference_clip", None)
        info["source"] = _jsonable_source(getattr(source, "source", {}))
    elif isinstance(source, (np.ndarray, torch.Tensor)):
        arr = source
        sp = (1.0, 1.0, 1.0) if spacing is None else tuple(spacing)
        clip = preset.hu_window
        info["orientation"] = "as_given"
        info["affine"] = None
        info["source"] = {"format": "tensor" if isinstance(source, torch.Tensor) else "array"}
    else:
        raise TypeError("source must be a path, a voxelfm.io.Volume, a numpy array or a torch tensor; "
                        f"got {type(source).__name__}")
    if isinstance(arr, torch.Tensor):
        x = arr.detach().to("cpu", torch.float32)
    else:
        x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    if x.ndim != 3:
        raise ValueError(f"a CT volume must be 3-D [D, H, W]; got shape {tuple(x.shape)}")
    if min(x.shape) < 1:
        raise ValueError(f"empty volume of shape {tuple(x.shape)}")
    info["hu_clip"] = None if clip is None else [float(clip[0]), float(clip[1])]
    sp = tuple(float(s) for s in sp)
    if len(sp) != 3 or not all(s > 0 for s in sp):
        raise ValueError(f"spacing must be 3 positive values (sz, sy, sx) in mm, got {sp}")
    return x, sp, info  # type: ignore[return-value]


def preprocess_volume(source: Any, preset: Preset | str = "default", *, crop_background: bool = False,
                      max_patches: int | None = None, patch_size: int = 14, normalise: bool = True,
                      spacing: tuple[float, float, float] | None = None,
                      device: str | torch.device | None = None) -> Preprocessed:
    """Turn a CT volume into model input and record the geometry.

    Args:
        source: a :class:`voxelfm.io.Volume`, a path (read with :func:`voxelfm.io.read_volume`),
            or a ``[D, H, W]`` array/tensor in HU (isotropic 1 mm unless ``spacing`` is given).
        preset: a :class:`Preset` or its name. A name uses that preset's own ``mean``/``std``;
            :func:`voxelfm.extract_features` substitutes the model's normalisation.
        crop_background: crop to the body box (reference ``crop_volume``, k = 21) on the native grid.
        max_patches: token budget (reference ``resize_max_patches``); ``None`` = no limit.
        patch_size: the model's patch side in voxels.
        normalise: return ``(HU - mean) / std`` (model input) instead of HU.
        spacing: ``(sz, sy, sx)`` mm for array inputs.
        device: where to resample (e.g. ``"cuda"``; default CPU). The result is always on the CPU.

    Returns:
        :class:`Preprocessed`; ``record`` keys: ``preset``, ``source``, ``orientation``,
        ``input_shape``, ``input_spacing``, ``hu_clip``, ``crop_box`` (half-open, source-grid
        voxels, or ``None``), ``cropped_shape``, ``resample`` (``target_spacing``, ``shape``,
        ``spacing``), ``budget`` (``max_patches``, ``shape`` or ``None``), ``patch_crop``
        (``offsets``, ``shape``), ``final_shape``, ``spacing``, ``patch_size``, ``token_grid``,
        ``patch_size_mm``, ``to_source`` (per axis ``scale``/``offset``: source voxel
        coordinate = ``scale · i + offset`` for model-input voxel ``i``), ``affine`` (model-input
        voxel → LPS mm; only for the canonical grid of a Volume), ``normalised``.

    Raises:
        ValueError: bad arguments, not 3-D, no body found by the crop, or a volume smaller than
            one patch after preprocessing.
    """
    preset = get_preset(preset)
    if patch_size < 1:
        raise ValueError(f"patch_size must be >= 1, got {patch_size}")
    x, sp, info = source_grid(source, preset, spacing=spacing)
    record: dict[str, Any] = {
        "preset": preset.to_dict(),
        "source": info["source"],
        "orientation": info["orientation"],
        "input_shape": list(x.shape),
        "input_spacing": list(sp),
        "hu_clip": info["hu_clip"],
    }
    if info["hu_clip"] is not None:
        x = apply_hu_window(x, tuple(info["hu_clip"]))

    # 3. background crop on the native grid
    box = None
    if crop_background:
        box = foreground_box(x, threshold_hu=preset.crop_threshold_hu, kernel=preset.crop_kernel,
                             fraction=preset.crop_fraction, margin=preset.crop_margin)
        x = crop_to_box(x, box)
    record["crop_box"] = None if box is None else [list(b) for b in box]
    cropped_shape = tuple(x.shape)
    record["cropped_shape"] = list(cropped_shape)

    # 4. isotropic resampling (on ``device`` if given)
    if device is not None:
        x = x.to(device)
    target = isotropic_target_spacing(sp, preset)
    x, sp_iso, iso_shape = resample_isotropic(x, sp, preset)
    record["resample"] = {"target_spacing": target, "shape": list(iso_shape), "spacing": list(sp_iso)}

    # 5. token budget
    budget_shape = max_patches_shape(x.shape, patch_size, max_patches)
    if budget_shape is not None:
        x = resize_trilinear(x, budget_shape)
    record["budget"] = {"max_patches": max_patches, "shape": None if budget_shape is None else list(budget_shape)}
    resized_shape = tuple(x.shape)

    # 6. centred patch crop
    offsets, final_shape = patch_crop_offsets(resized_shape, patch_size)
    if min(final_shape) < patch_size:
        # Deliberately an error, not padding: a side shorter than one patch has no token (the
        # reference fails on it too), and padding would invent anatomy the model never saw.
        iso = tuple(float(v) for v in sp_iso)
        short = [ax for ax in range(3) if resized_shape[ax] < patch_size]
        why = (f"the token budget max_patches={max_patches} shrank it below one patch; raise max_patches"
               if budget_shape is not None and all(iso_shape[ax] >= patch_size for ax in short) else
               f"axis {short[0]} spans {iso_shape[short[0]] * iso[short[0]]:.1f} mm, less than one patch "
               f"({patch_size} voxels = {patch_size * iso[short[0]]:.1f} mm at {iso[short[0]]:.3g} mm); "
               f"pad the volume (e.g. with air, -1000 HU) or leave it out")
        raise ValueError(f"volume too small for the model: after preprocessing it is {tuple(resized_shape)} "
                         f"voxels but every side needs at least one patch of {patch_size} voxels — {why}")
    (d0, h0, w0), (D, H, W) = offsets, final_shape
    x = x[d0:d0 + D, h0:h0 + H, w0:w0 + W]
    record["patch_crop"] = {"offsets": list(offsets), "shape": list(final_shape)}

    # geometry: model voxel i ↔ source voxel  scale·i + offset  (composition of align_corners=False resizes)
    crop0 = [0, 0, 0] if box is None else [b[0] for b in box]
    scale = [a / c for a, c in zip(cropped_shape, resized_shape)]
    offset = [(o + 0.5) * s - 0.5 + c0 for o, s, c0 in zip(offsets, scale, crop0)]
    final_spacing = tuple(s0 * s for s0, s in zip(sp, scale))
    record.update({
        "final_shape": list(final_shape),
        "spacing": list(final_spacing),
        "patch_size": int(patch_size),
        "token_grid": [n // patch_size for n in final_shape],
        "patch_size_mm": [s * patch_size for s in final_spacing],
        "to_source": {"scale": scale, "offset": offset},
    })
    affine = info.get("affine")
    if affine is not None:
        t = np.eye(4)
        t[:3, :3] = np.diag(scale)
        t[:3, 3] = offset
        affine = (np.asarray(affine) @ t).tolist()
    record["affine"] = affine

    # 7. normalisation (fp32)
    if normalise:
        x = normalise_intensity(x, preset.mean, preset.std)
    record["normalised"] = bool(normalise)
    x = x.to("cpu").contiguous()
    return Preprocessed(array=x, spacing=final_spacing, record=record)  # type: ignore[arg-type]
