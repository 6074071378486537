"""Running an original MONAI preprocessing chain on a voxelfm volume, and back to SPL.

The originals (Merlin, CT-FM, FMCIB) preprocess with MONAI dictionary transforms on images that
MONAI's readers load with a voxel → **RAS** mm affine. :func:`to_metatensor` builds exactly that
input from a :class:`voxelfm.io.Volume` (canonical SPL array + voxel → LPS affine), so the same MONAI
array transforms give the same voxels as the original pipeline reading the file; :func:`to_spl`
brings the result into voxelfm's SPL axis order with exact permutes/flips and derives the record
geometry (model voxel → source voxel, model voxel → LPS mm) from the affines.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

__all__ = ["as_volume", "oriented", "to_metatensor", "to_spl", "volume_info"]

_LPS_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def as_volume(source: Any, spacing: Any = None) -> Any:
    """A :class:`voxelfm.io.Volume` from a path, a Volume, or a ``[D, H, W]`` SPL HU array (1 mm
    unless ``spacing``)."""
    from voxelfm.io import Volume, read_volume

    if isinstance(source, (str, os.PathLike)):
        if spacing is not None:
            return read_volume(source, spacing=tuple(spacing))
        return read_volume(source)
    if isinstance(source, Volume):
        if spacing is not None:
            raise ValueError("spacing= is only for arrays; a Volume carries its own spacing")
        return source
    if isinstance(source, (np.ndarray, torch.Tensor)):
        arr = source.detach().cpu().numpy() if isinstance(source, torch.Tensor) else np.asarray(source)
        if arr.ndim != 3 or min(arr.shape) < 1:
            raise ValueError(f"a CT volume must be 3-D [D, H, W]; got shape {tuple(arr.shape)}")
        sp = (1.0, 1.0, 1.0) if spacing is None else tuple(float(s) for s in spacing)
        if len(sp) != 3 or not all(s > 0 for s in sp):
            raise ValueError(f"spacing must be 3 positive values (sz, sy, sx) in mm, got {sp}")
        fmt = "tensor" if isinstance(source, torch.Tensor) else "array"
        return Volume.from_array(np.ascontiguousarray(arr, dtype=np.float32), sp, source={"format": fmt})
    raise TypeError("source must be a path, a voxelfm.io.Volume, a numpy array or a torch tensor; "
                    f"got {type(source).__name__}")


def volume_info(volume: Any) -> dict[str, Any]:
    """``source``/``orientation`` entries of the record for a Volume."""
    from voxelfm.preprocess.pipeline import _jsonable_source

    src = _jsonable_source(getattr(volume, "source", {}))
    return {"source": src, "orientation": "as_given" if src.get("format") in ("array", "tensor") else "SPL"}


def to_metatensor(volume: Any) -> Any:
    """``MetaTensor [1, D, H, W]`` (float32 HU, SPL order) with the voxel → RAS mm affine, as
    ``LoadImage(ensure_channel_first=True)`` would give for the same image in this axis order."""
    from monai.data import MetaTensor

    arr = torch.from_numpy(np.ascontiguousarray(volume.array, dtype=np.float32))[None]
    ras = _LPS_RAS @ np.asarray(volume.affine, dtype=np.float64)
    return MetaTensor(arr, affine=torch.as_tensor(ras, dtype=torch.float64))


def oriented(image: Any, axcodes: str) -> Any:
    """MONAI ``Orientation(axcodes)`` with a contiguous result (the permuted view it returns makes
    the following resampling up to 2x slower; the values are the same)."""
    from monai.transforms import Orientation

    # labels given explicitly (MONAI's RAS convention, its default until 1.6): leaving them out makes
    # MONAI >= 1.6 warn once per call, i.e. once per scan in a batch.
    return Orientation(axcodes=axcodes, labels=(("L", "R"), ("P", "A"), ("I", "S")))(image).contiguous()


def to_spl(image: Any, volume: Any) -> tuple[torch.Tensor, dict[str, Any]]:
    """The MONAI result ``[1, a, b, c]`` (any orientation) as an SPL ``[D, H, W]`` tensor + geometry.

    Returns:
        ``(array, geometry)``: ``geometry`` has ``spacing`` (sz, sy, sx mm), ``to_source``
        (per-axis scale/offset: model voxel ``i`` → canonical source voxel ``scale·i + offset``),
        ``affine`` (model voxel → LPS mm, 4×4 list), ``rotation_deg`` (residual angle between the
        model grid and the source grid, 0 unless the original resamples an oblique image onto an
        axis-aligned grid), ``orientation_in`` (axis codes of the MONAI result).
    """
    from nibabel.orientations import aff2axcodes, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

    aff = np.asarray(image.affine, dtype=np.float64)
    data = image.as_tensor() if hasattr(image, "as_tensor") else torch.as_tensor(image)
    data = data[0]
    ornt = io_orientation(aff)
    tr = ornt_transform(ornt, axcodes2ornt(("S", "P", "L")))
    perm = [0, 0, 0]
    flips = []
    for ax_in, (ax_out, sign) in enumerate(tr):
        perm[int(ax_out)] = ax_in
    out = data.permute(*perm)
    for k in range(3):
        if tr[perm[k]][1] < 0:
            flips.append(k)
    if flips:
        out = out.flip(flips)
    spl_aff = aff @ inv_ornt_aff(tr, tuple(data.shape))
    lps_aff = _LPS_RAS @ spl_aff
    src_lps = np.asarray(volume.affine, dtype=np.float64)
    m = np.linalg.solve(src_lps, lps_aff)  # model voxel -> source voxel (homogeneous)
    lin = m[:3, :3]
    scale = np.diag(lin).copy()
    off = lin - np.diag(scale)
    rot = float(np.degrees(np.arctan2(np.abs(off).max(), np.abs(scale).min()))) if off.any() else 0.0
    spacing = np.linalg.norm(lps_aff[:3, :3], axis=0)
    geometry = {
        "spacing": [float(s) for s in spacing],
        "to_source": {"scale": [float(s) for s in scale], "offset": [float(v) for v in m[:3, 3]]},
        "affine": lps_aff.tolist(),
        "rotation_deg": round(rot, 4),
        "orientation_in": "".join(aff2axcodes(aff)),
    }
    return out.contiguous().float(), geometry
