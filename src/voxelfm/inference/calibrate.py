"""Expected wall time of a batch extraction on this machine, from a short calibration.

``voxelfm extract --dry-run`` reads and preprocesses a few volumes of the manifest (spread over
it), times a forward pass of the model (best of two) at the requested dtype on a cut of the first one
(≤ ``calibration_tokens`` tokens), turns that into a compute rate (GFLOP/s of the analytic FLOPs,
:func:`forward_flops`) and predicts every sampled volume's forward from its FLOPs (full or
chunked, as :func:`~voxelfm.inference.extract.plan_forward` decides). The manifest's total is the
per-volume mean times the number of volumes; with background workers, reading overlaps compute
so the wall time is the larger of the two (workers share the CPU with the model, so on a CPU-only
machine reading still costs compute: it is added as CPU time over all cores).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["WallTimeEstimate", "estimate_wall_time", "forward_flops"]


def forward_flops(num_patches: int, model: Any) -> float:
    """Analytic FLOPs (multiply-add = 2) of one forward over ``num_patches`` patch tokens.

    Patch embedding ``2 N p³ C``; per block ``(8 + 4·mlp_ratio) n C²`` for the four linears
    (24 n C² at ratio 4) plus ``4 n² C`` for the attention, ``n = N + 1 + registers``.
    """
    C = int(model.embed_dim)
    cfg = getattr(model, "config", None)
    mlp_ratio = float(getattr(cfg, "mlp_ratio", 4.0))
    depth = int(getattr(model, "depth", getattr(cfg, "depth", 1)))
    n = int(num_patches) + 1 + int(getattr(model, "num_register_tokens", 0))
    per_block = (8 + 4 * mlp_ratio) * n * C * C + 4.0 * n * n * C
    return 2.0 * num_patches * int(model.patch_size) ** 3 * C + depth * per_block


def _duration(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


@dataclass
class WallTimeEstimate:
    """Prediction for ``items`` volumes (per-volume means from the ``sampled`` ones).

    Attributes (seconds unless named otherwise): ``read_seconds`` read + preprocess per volume;
    ``tokens`` mean patch tokens per volume; ``forward_seconds`` predicted forward per volume;
    ``gflops`` calibrated compute rate; ``calibration`` the timed forward (tokens, seconds);
    ``seconds`` expected wall time of the whole manifest; ``failed`` sampled volumes that could
    not be read (with errors).
    """

    items: int
    sampled: int
    workers: int
    threads: int
    dtype: str
    read_seconds: float
    tokens: float
    forward_seconds: float
    gflops: float
    seconds: float
    calibration: dict[str, Any]
    failed: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        model_total = self.forward_seconds * self.items
        read_total = self.read_seconds * self.items
        lines = [
            f"voxelfm extract --dry-run: {self.items} volume(s); calibration on {self.sampled}: "
            f"read + preprocess {self.read_seconds:.2f} s each, {self.tokens:,.0f} tokens on average, "
            f"model {self.gflops:.0f} GFLOP/s ({self.dtype}, {self.threads} thread(s); "
            f"{self.calibration['tokens']:,} tokens in {self.calibration['seconds']:.2f} s)",
            f"expected wall time {_duration(self.seconds)} (model {_duration(model_total)}, "
            f"reading {_duration(read_total)}{' in ' + str(self.workers) + ' worker(s)' if self.workers else ''}; "
            f"{self.forward_seconds:.2f} s per volume). Nothing was written.",
        ]
        if self.failed:
            lines.append(f"{len(self.failed)} sampled volume(s) could not be read: {self.failed[0]}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _sample_positions(n: int, k: int) -> list[int]:
    if n <= k:
        return list(range(n))
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)}) if k > 1 else [0]


def estimate_wall_time(model: torch.nn.Module, items: Sequence[Any], *, sample: int = 3,
                       workers: int = 0, preset: Any = "default", crop_background: bool = False,
                       max_patches: int | None = None, mode: str = "auto", window: Any = None,
                       overlap: float = 0.25, dtype: Any = None, memory_budget_gb: float | None = None,
                       spacing: Sequence[float] | None = None,
                       calibration_tokens: int = 2048) -> WallTimeEstimate:
    """Predict the wall time of :func:`~voxelfm.inference.extract_batch` on ``items`` (CPU or GPU).

    Args:
        model: the backbone.
        items: as :func:`~voxelfm.inference.extract_batch` (paths, (id, source) pairs ...).
        sample: volumes read for the calibration (spread over the manifest).
        workers: background reading workers of the real run.
        calibration_tokens: the timed forward runs on at most this many tokens (a cut of the
            first sampled volume), so the calibration stays short at 25,000-token settings.
        Others: as :func:`~voxelfm.inference.extract_batch`.

    Raises:
        ValueError: no items, or no sampled volume could be read.
    """
    from voxelfm.inference.batch import _as_items, _ReadPreprocess
    from voxelfm.inference.chunked import GiB, default_memory_budget
    from voxelfm.inference.extract import (
        extract_preprocessed,
        inference_scope,
        plan_forward,
        resolve_device,
        resolve_dtype,
        resolve_preset,
    )

    all_items = _as_items(items)
    if not all_items:
        raise ValueError("no volumes to estimate")
    if sample < 1:
        raise ValueError(f"sample must be >= 1, got {sample}")
    resolved = resolve_preset(model, preset)
    ds = _ReadPreprocess([all_items[i] for i in _sample_positions(len(all_items), sample)], resolved,
                         crop_background, max_patches, int(model.patch_size),
                         tuple(spacing) if spacing is not None else None)
    pres, reads, failed = [], [], []
    for i in range(len(ds)):
        _, pre, err, read_s = ds[i]
        reads.append(read_s)
        if err is None:
            pres.append(pre)
        else:
            failed.append(f"{ds.items[i].id}: {err}")
    if not pres:
        raise ValueError(f"none of the {len(ds)} sampled volumes could be read: {failed[0]}")

    dev = resolve_device(None, model)
    ac_dtype = resolve_dtype(dtype)
    dtype_bytes = 2 if ac_dtype is not None else 4
    budget = int(memory_budget_gb * GiB) if memory_budget_gb is not None else default_memory_budget(dev)
    # calibration: one forward (after a warm-up on a tiny cut) on ≤ calibration_tokens tokens
    pre0 = pres[0]
    grid0 = list(pre0.record["token_grid"])
    while math.prod(grid0) > calibration_tokens:
        grid0[grid0.index(max(grid0))] -= 1
    p = int(model.patch_size)
    cut = _cut(pre0, grid0, p)
    cal_seconds = float("inf")
    with inference_scope(dev):  # as extract_batch runs: the linear weights are packed once, in the warm-up
        extract_preprocessed(model, _cut(pre0, [min(g, 2) for g in grid0], p), mode="full", dtype=dtype)
        for _ in range(2):  # best of two: the first call of a shape pays one-time set-up, and load spikes
            t = time.perf_counter()
            extract_preprocessed(model, cut, mode="full", dtype=dtype)
            cal_seconds = min(cal_seconds, time.perf_counter() - t)
    cal_tokens = math.prod(grid0)
    rate = forward_flops(cal_tokens, model) / cal_seconds

    forward = []
    for pre in pres:
        grid = tuple(pre.record["token_grid"])
        fplan = plan_forward(model, grid, mode=mode, window=window, overlap=overlap,
                             dtype_bytes=dtype_bytes, budget_bytes=budget)
        forward.append(sum(forward_flops(n, model) for n in fplan.window_token_counts(grid)) / rate)
    read_mean = sum(reads) / len(reads)
    fwd_mean = sum(forward) / len(forward)
    n = len(all_items)
    if workers > 0:
        cores = max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
        cpu_read = read_mean / cores if dev.type == "cpu" else 0.0  # readers take CPU from the model
        per_item = max(fwd_mean + cpu_read, read_mean / workers)
    else:
        per_item = fwd_mean + read_mean
    return WallTimeEstimate(
        items=n, sampled=len(ds), workers=workers, threads=torch.get_num_threads(),
        dtype="fp32" if ac_dtype is None else str(ac_dtype).removeprefix("torch."),
        read_seconds=read_mean, tokens=sum(math.prod(q.record["token_grid"]) for q in pres) / len(pres),
        forward_seconds=fwd_mean, gflops=rate / 1e9, seconds=per_item * n,
        calibration={"tokens": cal_tokens, "grid": grid0, "seconds": round(cal_seconds, 4)}, failed=failed)


def _cut(pre: Any, grid: Sequence[int], p: int) -> Any:
    """A :class:`Preprocessed` holding the first ``grid`` tokens of ``pre`` (for timing only)."""
    from voxelfm.preprocess import Preprocessed

    arr = pre.array[:grid[0] * p, :grid[1] * p, :grid[2] * p].contiguous()
    record = {**pre.record, "token_grid": list(grid)}
    return Preprocessed(array=arr, spacing=pre.spacing, record=record)
