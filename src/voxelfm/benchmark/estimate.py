"""Disk space and compute time of a benchmark cell, estimated before anything runs.

* Disk: an embedding file holds ``(N + 1 + R) · C`` float32 values (``N`` patch tokens on the
  token grid, CLS, ``R`` registers, width ``C``) plus a small JSON header. ``N`` per scan comes
  from the scan's header (shape and spacing, no pixels read for NIfTI / NRRD / MHA / numpy; DICOM
  and zips are read) through the same resampling, token-budget and patch-crop rules as
  :func:`voxelfm.preprocess.preprocess_volume` — without the optional background crop, so with
  ``crop_background`` it is an upper bound.
* Time: a short calibration forward on this machine measures the ViT's arithmetic rate
  (FLOP/s at a few hundred tokens); a scan's forward time is its FLOP count
  (:func:`vit_forward_flops`: linear layers ∝ N C², attention ∝ N² C) over that rate, summed over
  the windows :mod:`voxelfm.inference.chunked` would use when the scan does not fit the memory
  budget. Backbones with their own fixed-size preprocessing (other families) are timed with one
  forward at that size. Reading and preprocessing time is not included.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Calibration", "CellEstimate", "calibrate", "embedding_bytes", "estimate_tokens", "forward_seconds",
           "scan_geometry", "token_grid", "vit_forward_flops"]

_HEADER_FORMATS = ("nifti", "nrrd", "mha", "mhd")
_HEADER_BYTES = 2048  # safetensors header with the preprocessing record (measured ~1-2 KB)


def scan_geometry(path: str | os.PathLike[str], series_uid: str | None = None, overrides: Any = None
                  ) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """``(shape, spacing mm)`` of the canonical volume :func:`voxelfm.io.read_volume` would return.

    Header only for NIfTI / NRRD / MHA / MHD (:func:`voxelfm.io.header.read_header_geometry`, with a
    manifest's spacing override applied) and numpy files (memory-mapped); DICOM folders, zips and
    files with an orientation override are read with :func:`voxelfm.io.read_volume`.
    """
    from voxelfm.io.read import detect_format

    p = Path(path)
    fmt = detect_format(p)
    sp_override = getattr(overrides, "spacing", None)
    if fmt in _HEADER_FORMATS and getattr(overrides, "orientation", None) is None:
        from voxelfm.io.header import read_header_geometry

        g = read_header_geometry(p)
        return tuple(g.shape), tuple(sp_override or g.spacing)  # type: ignore[return-value]
    if fmt == "npy":
        arr = np.load(p, mmap_mode="r")
        return tuple(int(n) for n in arr.shape[-3:]), tuple(sp_override or (1.0, 1.0, 1.0))  # type: ignore[return-value]
    from voxelfm.io import read_volume

    vol = read_volume(p, series_uid=series_uid, overrides=overrides)
    return tuple(int(n) for n in vol.array.shape), tuple(float(s) for s in vol.spacing)  # type: ignore[return-value]


def token_grid(shape: Sequence[int], spacing: Sequence[float], *, patch_size: int, preset: Any = "default",
               max_patches: int | None = None) -> tuple[int, int, int]:
    """Token grid ``(d, h, w)`` of a scan of ``shape`` voxels at ``spacing`` mm (no background crop)."""
    from voxelfm.preprocess.resample import (
        isotropic_shape,
        isotropic_target_spacing,
        max_patches_shape,
        patch_crop_offsets,
    )

    target = isotropic_target_spacing(spacing, preset)
    iso = tuple(int(n) for n in shape) if target is None else isotropic_shape(shape, spacing, target)
    budget = max_patches_shape(iso, patch_size, max_patches)
    _, final = patch_crop_offsets(budget if budget is not None else iso, patch_size)
    return tuple(n // patch_size for n in final)  # type: ignore[return-value]


def vit_forward_flops(num_tokens: int, *, embed_dim: int, depth: int, patch_size: int, mlp_ratio: float = 4.0,
                      num_special: int = 5) -> float:
    """Floating-point operations of one ViT forward over ``num_tokens`` patch tokens.

    Per block: qkv + output projections ``8 N C²``, feed-forward ``4 r N C²`` (``r`` = mlp ratio),
    attention scores and weighted sum ``4 N² C``; plus the patch embedding ``2 N p³ C``.
    """
    n = float(num_tokens + num_special)
    c = float(embed_dim)
    per_block = 8 * n * c * c + 4 * mlp_ratio * n * c * c + 4 * n * n * c
    return depth * per_block + 2.0 * num_tokens * patch_size ** 3 * c


@dataclass
class Calibration:
    """Measured speed of one backbone on this machine.

    Attributes:
        kind: ``"vit-flops"`` (rate in FLOP/s, scaled by token count) or ``"fixed-input"`` (one
            forward at the backbone's own input size, ``seconds_per_scan``).
        flops_per_second: the ViT's measured arithmetic rate (``vit-flops``).
        seconds_per_scan: measured forward time of a fixed-input backbone.
        grid: token grid of the calibration input.
        seconds: measured forward time of the calibration input (best of the repeats).
    """

    kind: str
    flops_per_second: float | None
    seconds_per_scan: float | None
    grid: tuple[int, int, int]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _dims(model: Any) -> dict[str, Any] | None:
    cfg = getattr(model, "config", None)
    if cfg is None or not hasattr(cfg, "depth") or hasattr(model, "preprocess"):
        return None
    return {"embed_dim": int(cfg.embed_dim), "depth": int(cfg.depth), "patch_size": int(cfg.patch_size),
            "mlp_ratio": float(cfg.mlp_ratio), "num_special": 1 + int(cfg.num_register_tokens)}


def _time_forward(model: Any, x: Any, repeats: int) -> float:
    import torch

    best = math.inf
    with torch.inference_mode():
        model(x)  # warm-up (allocations, kernels)
        for _ in range(max(1, repeats)):
            t0 = time.perf_counter()
            model(x)
            best = min(best, time.perf_counter() - t0)
    return best


def calibrate(model: Any, *, device: str = "cpu", side: int | None = None, repeats: int = 2) -> Calibration:
    """Time a short forward of ``model`` on ``device``.

    A ViT runs on a ``side³``-token input (default: 8³ = 512 tokens, or fewer for wide models so
    the calibration stays under a few seconds on a CPU) and the rate in FLOP/s is returned; a
    backbone with its own ``preprocess`` (other families, fixed input size) runs once at its input
    size and its time per scan is returned.
    """
    import torch

    model = model.to(device).eval()
    dims = _dims(model)
    if dims is None:
        pre = model.preprocess(np.full((48, 48, 48), -1000.0, dtype=np.float32), spacing=(1.0, 1.0, 1.0))
        x = torch.as_tensor(pre.array, dtype=torch.float32)[None].to(device)
        secs = _time_forward(model, x, repeats)
        grid = tuple(int(g) for g in pre.record.get("token_grid", (0, 0, 0)))
        return Calibration("fixed-input", None, secs, grid, secs)  # type: ignore[arg-type]
    if side is None:
        side = 8 if dims["embed_dim"] <= 512 else 6
    p = dims["patch_size"]
    x = torch.zeros(1, side * p, side * p, side * p, device=device)
    secs = _time_forward(model, x, repeats)
    flops = vit_forward_flops(side ** 3, **dims)
    return Calibration("vit-flops", flops / max(secs, 1e-9), None, (side, side, side), secs)


def forward_seconds(model: Any, grid: Sequence[int], calibration: Calibration, *,
                    memory_budget_gb: float | None = None, device: str = "cpu") -> float:
    """Estimated forward time (s) of one scan with token ``grid`` (full pass or the windows the
    auto mode of :func:`voxelfm.extract_features` would use within the memory budget)."""
    if calibration.kind == "fixed-input":
        return float(calibration.seconds_per_scan or 0.0)
    from voxelfm.inference.chunked import (
        GiB,
        _model_dims,
        choose_window,
        default_memory_budget,
        estimate_forward_bytes,
        plan_windows,
    )

    dims = _dims(model)
    assert dims is not None and calibration.flops_per_second
    n = int(math.prod(grid))
    budget = int(memory_budget_gb * GiB) if memory_budget_gb is not None else default_memory_budget(device)
    if estimate_forward_bytes(n, **_model_dims(model)) <= budget:
        return vit_forward_flops(n, **dims) / calibration.flops_per_second
    plan = plan_windows(grid, choose_window(grid, model, budget), 0.25)
    return plan.count * vit_forward_flops(plan.window_tokens, **dims) / calibration.flops_per_second


@dataclass
class CellEstimate:
    """Estimated cost of one dataset × backbone cell.

    Attributes:
        n_scans: scans in the manifest; ``n_sampled``: scans whose geometry was read.
        mean_tokens: mean patch tokens per scan over the sample; ``grid_example``: one sampled grid.
        bytes_per_scan: mean embedding file size; ``disk_bytes``: for all scans.
        seconds_per_scan: mean estimated forward time; ``extract_seconds``: for all scans.
        probe_runs: probe trainings of the cell (tasks × probes × fractions).
        notes: caveats (unreadable samples, crop upper bound, ...).
    """

    n_scans: int
    n_sampled: int
    mean_tokens: float
    grid_example: tuple[int, int, int] | None
    bytes_per_scan: float
    disk_bytes: float
    seconds_per_scan: float
    extract_seconds: float
    probe_runs: int
    notes: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def estimate_tokens(model: Any, geometries: Sequence[tuple[Sequence[int], Sequence[float]]], *,
                    preset: Any, max_patches: int | None, calibration: Calibration) -> list[tuple[int, int, int]]:
    """Token grids of scans of the given ``(shape, spacing)`` for ``model``."""
    if calibration.kind == "fixed-input":
        return [tuple(calibration.grid) for _ in geometries]  # type: ignore[misc]
    from voxelfm.inference.extract import resolve_preset

    resolved = resolve_preset(model, preset)
    return [token_grid(shape, spacing, patch_size=int(model.patch_size), preset=resolved, max_patches=max_patches)
            for shape, spacing in geometries]


def embedding_bytes(num_tokens: float, model: Any) -> float:
    """Bytes of one embedding file: ``(N + 1 + R) · C · 4`` plus the header."""
    c = int(getattr(model, "embed_dim"))
    r = int(getattr(model, "num_register_tokens", 0))
    return (num_tokens + 1 + r) * c * 4 + _HEADER_BYTES
