"""``BaselineBackbone``: the interface every backbone family implements (an ``nn.Module``).

A backbone carries its own preprocessing (:meth:`BaselineBackbone.preprocess`, exactly as its
authors' code) and returns the DINOv2 output dict from :meth:`forward`, so
``voxelfm.extract_features``, ``extract_batch``, ``voxelfm extract --backbone`` and the probes use
every family the same way. Axis convention everywhere outside the module: **SPL** ``[D, H, W]``
(axis 0 increasing towards Superior, 1 towards Posterior, 2 towards Left, as :class:`voxelfm.io.Volume`); a family that
works in another order permutes/flips inside ``forward`` (exact operations).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from voxelfm.preprocess import Preprocessed

__all__ = ["BaselineBackbone", "dinov2_output", "make_preprocessed"]


def dinov2_output(global_embedding: Tensor, feature_map: Tensor) -> dict[str, Tensor | None]:
    """The DINOv2 output dict from a global embedding and a feature map.

    Args:
        global_embedding: ``[B, C]``.
        feature_map: ``[B, C, d, h, w]`` in SPL axis order.

    Returns:
        ``x_norm_clstoken [B, C]``, ``x_norm_patchtokens [B, d·h·w, C]`` ((d h w) order),
        ``x_norm_regtokens [B, 0, C]``, ``x_prenorm [B, 1 + d·h·w, C]``, ``masks None``.
    """
    if global_embedding.ndim != 2 or feature_map.ndim != 5 or feature_map.shape[1] != global_embedding.shape[1]:
        raise ValueError(f"need global [B, C] and feature map [B, C, d, h, w] with the same C; got "
                         f"{tuple(global_embedding.shape)} and {tuple(feature_map.shape)}")
    b, c = global_embedding.shape
    tokens = feature_map.flatten(2).transpose(1, 2)
    return {
        "x_norm_clstoken": global_embedding,
        "x_norm_patchtokens": tokens,
        "x_norm_regtokens": tokens.new_zeros(b, 0, c),
        "x_prenorm": torch.cat([global_embedding[:, None], tokens], dim=1),
        "masks": None,
    }


def make_preprocessed(array: Tensor, *, family: str, info: Mapping[str, Any], input_shape: Sequence[int],
                      input_spacing: Sequence[float], spacing: Sequence[float], patch_size: Sequence[int],
                      to_source: Mapping[str, Sequence[float]], steps: list[dict[str, Any]],
                      affine: Any = None, **extra: Any) -> Preprocessed:
    """A :class:`~voxelfm.preprocess.Preprocessed` with the record keys downstream code reads.

    Args:
        array: ``[D, H, W]`` model input in SPL order, intensity-scaled as the original.
        family: backbone family (``record["preset"]``).
        info: from :func:`voxelfm.preprocess.source_grid` (``source``, ``orientation``).
        input_shape, input_spacing: the SPL source grid (``[D, H, W]``, mm).
        spacing: ``(sz, sy, sx)`` mm of ``array``.
        patch_size: feature stride in model-input voxels along (d, h, w).
        to_source: ``{"scale": [3], "offset": [3]}``: model voxel ``i`` ↔ source voxel ``scale·i + offset``.
        steps: the original preprocessing, one dict per step (``{"op": ..., ...}``).
        affine: 4×4 model-input voxel → LPS mm (``None`` for arrays).
        extra: more record entries (e.g. ``seed``).
    """
    x = array.detach().to("cpu", torch.float32).contiguous()
    if x.ndim != 3:
        raise ValueError(f"preprocessed array must be [D, H, W], got {tuple(x.shape)}")
    ps = [int(p) for p in patch_size]
    final = list(x.shape)
    record: dict[str, Any] = {
        "preset": family,
        "source": dict(info.get("source", {})),
        "orientation": info.get("orientation"),
        "input_shape": [int(n) for n in input_shape],
        "input_spacing": [float(s) for s in input_spacing],
        "crop_box": None,
        "final_shape": final,
        "spacing": [float(s) for s in spacing],
        "patch_size": ps,
        "token_grid": [max(1, -(-n // p)) for n, p in zip(final, ps)],
        "patch_size_mm": [float(s) * p for s, p in zip(spacing, ps)],
        "to_source": {"scale": [float(v) for v in to_source["scale"]],
                      "offset": [float(v) for v in to_source["offset"]]},
        "affine": affine,
        "normalised": True,
        "steps": steps,
    }
    record.update(extra)
    return Preprocessed(array=x, spacing=tuple(float(s) for s in spacing), record=record)  # type: ignore[arg-type]


class BaselineBackbone(nn.Module):
    """Base class of the backbone families (Merlin, CT-FM, FMCIB, M3D-CLIP, RadFM, CT-CLIP, 2D CLIPs).

    Attributes:
        family: registry name.
        embed_dim: ``C`` of the global embedding and of the patch tokens.
        patch_size: feature stride in model-input voxels along (d, h, w).
        num_register_tokens: always 0.
        source: provenance (``format``, ``path``, loaded/missing/unexpected keys ...).
        preset: ``None`` (the family's preprocessing is fixed; see :meth:`preprocess`).
        supports_chunked: whether ``mode="chunked"`` is meaningful (default no).

    Subclasses implement :meth:`preprocess` and :meth:`forward`; :meth:`options_from_columns`
    turns extra manifest columns (e.g. FMCIB seed points) into :meth:`preprocess` options.
    """

    family: str = ""
    embed_dim: int = 0
    patch_size: tuple[int, int, int] = (1, 1, 1)
    num_register_tokens: int = 0
    preset = None
    supports_chunked: bool = False

    def __init__(self) -> None:
        super().__init__()
        self.source: dict[str, Any] = {}

    def preprocess(self, source: Any, *, spacing: Sequence[float] | None = None, **options: Any) -> Preprocessed:
        """The original preprocessing of one volume.

        Args:
            source: a path (read with :func:`voxelfm.io.read_volume`: canonical SPL, HU), a
                :class:`voxelfm.io.Volume`, or a ``[D, H, W]`` HU array in SPL order (1 mm unless
                ``spacing`` is given).
            spacing: ``(sz, sy, sx)`` mm for arrays.
            options: family-specific (e.g. FMCIB ``seed``).

        Returns:
            :class:`~voxelfm.preprocess.Preprocessed` with ``array [D, H, W]`` float32 in SPL order,
            already scaled as the original; ``record`` as :func:`make_preprocessed`.
        """
        raise NotImplementedError

    def forward(self, x: Tensor) -> dict[str, Tensor | None]:  # noqa: D401 - interface
        """``x [B, D, H, W]`` (SPL, from :meth:`preprocess`) → the DINOv2 output dict
        (:func:`dinov2_output`)."""
        raise NotImplementedError

    def options_from_columns(self, columns: Mapping[str, str]) -> dict[str, Any]:
        """Preprocess options from the extra columns of a manifest row (default: none used)."""
        return {}

    def describe(self) -> dict[str, Any]:
        """JSON-able description stored with extracted features (family, dims, provenance)."""
        src = {k: v for k, v in self.source.items() if isinstance(v, (str, int, float, bool, list)) or v is None}
        return {"family": self.family, "embed_dim": int(self.embed_dim), "patch_size": list(self.patch_size),
                "source": src}
