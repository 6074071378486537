"""Map label maps and points from the source grid to the model-input grid (and back).

Every resize in the pipeline is ``F.interpolate(..., align_corners=False)``, whose voxel centres
satisfy ``src = (dst + 0.5) · (n_src / n_dst) - 0.5``. A chain of such resizes is again one
such map, so with the crop box and the centred patch crop, model-input voxel ``i`` on an axis sits
at source-grid coordinate::

    x = scale · i + offset,   scale = n_cropped / n_resized,
                              offset = (patch_offset + 0.5) · scale - 0.5 + crop_start

(``record["to_source"]``). The *source grid* is the one the preset worked on: the canonical SPL
array of the Volume for ``default``, ``Volume.reference_layout()`` for ``paper``, the array as
given for array inputs (``record["orientation"]``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["apply_geometry_to_labels", "apply_geometry_to_points", "model_points_to_source",
           "labels_to_token_grid"]


def _maps(record: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    try:
        t = record["to_source"]
        return np.asarray(t["scale"], dtype=np.float64), np.asarray(t["offset"], dtype=np.float64)
    except (KeyError, TypeError):
        raise ValueError("record has no geometry ('to_source'); pass Features.record or "
                         "Preprocessed.record from voxelfm") from None


def apply_geometry_to_labels(labels: np.ndarray | torch.Tensor, record: dict[str, Any]) -> np.ndarray:
    """Resample a label map from the source grid onto the model-input grid (nearest neighbour).

    Args:
        labels: ``[D, H, W]`` integer labels on the source grid (same shape as
            ``record["input_shape"]``; canonical SPL for ``default``, the reference layout for
            ``paper``).
        record: ``Features.record`` or ``Preprocessed.record``.

    Returns:
        ``[D', H', W']`` labels (same dtype) on the model-input grid ``record["final_shape"]``.
    """
    lab = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if lab.ndim != 3:
        raise ValueError(f"labels must be [D, H, W], got shape {lab.shape}")
    if list(lab.shape) != list(record.get("input_shape", lab.shape)):
        raise ValueError(f"labels have shape {lab.shape} but the volume was {tuple(record['input_shape'])} "
                         f"(grid {record.get('orientation')}); give labels on the same grid")
    scale, offset = _maps(record)
    box = record.get("crop_box") or [[0, n] for n in lab.shape]
    idx = []
    for ax in range(3):
        i = np.arange(record["final_shape"][ax], dtype=np.float64)
        src = np.floor(scale[ax] * i + offset[ax] + 0.5).astype(np.int64)  # nearest voxel centre
        idx.append(np.clip(src, box[ax][0], box[ax][1] - 1))
    return lab[np.ix_(*idx)]


def apply_geometry_to_points(points: np.ndarray | torch.Tensor, record: dict[str, Any]) -> np.ndarray:
    """Map voxel coordinates ``[K, 3]`` (d, h, w) on the source grid to model-input voxel coordinates.

    Continuous coordinates (voxel centres at integers) in, continuous out; points cropped away by
    the background or patch crop land outside ``[0, final_shape)`` — check before using them.
    Divide by ``record["patch_size"]`` to get token-grid coordinates.
    """
    p = points.detach().cpu().numpy() if isinstance(points, torch.Tensor) else np.asarray(points)
    p = np.asarray(p, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 3:
        raise ValueError(f"points must be [K, 3] (d, h, w), got shape {p.shape}")
    scale, offset = _maps(record)
    return (p - offset) / scale


def model_points_to_source(points: np.ndarray | torch.Tensor, record: dict[str, Any]) -> np.ndarray:
    """Inverse of :func:`apply_geometry_to_points`: model-input voxel coords → source-grid voxel coords."""
    p = points.detach().cpu().numpy() if isinstance(points, torch.Tensor) else np.asarray(points)
    p = np.asarray(p, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 3:
        raise ValueError(f"points must be [K, 3] (d, h, w), got shape {p.shape}")
    scale, offset = _maps(record)
    return p * scale + offset


def labels_to_token_grid(labels: np.ndarray, patch_size: int, *, num_classes: int | None = None) -> np.ndarray:
    """Majority label per patch: ``[D', H', W']`` model-grid labels → ``[d, h, w]`` token labels.

    Ties go to the smaller label. ``num_classes`` defaults to ``labels.max() + 1``.
    """
    lab = np.asarray(labels)
    if lab.ndim != 3 or any(n % patch_size for n in lab.shape):
        raise ValueError(f"labels must be [D, H, W] with sides multiple of {patch_size}, got {lab.shape}")
    if lab.size and lab.min() < 0:
        raise ValueError("labels must be non-negative integers")
    k = int(lab.max()) + 1 if num_classes is None else int(num_classes)
    d, h, w = (n // patch_size for n in lab.shape)
    blocks = lab.reshape(d, patch_size, h, patch_size, w, patch_size).transpose(0, 2, 4, 1, 3, 5)
    blocks = blocks.reshape(d, h, w, -1)
    counts = np.stack([(blocks == c).sum(-1) for c in range(k)], axis=-1)
    return counts.argmax(-1).astype(lab.dtype)
