"""Windowed (chunked) inference within a memory budget, and the memory model that decides it.

A volume whose token grid is too large for one forward pass is cut into overlapping windows
aligned to the patch grid. Each window is a complete forward pass of its own (its own CLS and
registers; RoPE coordinates normalised to (-1, 1) *within the window*), and the patch tokens are
stitched back into the full grid:

* per axis, window starts are ``0, stride, 2·stride, ...`` with ``stride = round(w·(1-overlap))``
  and the last window flush with the end of the grid, so every token is covered and all windows
  have the same size (they are batched);
* each window's tokens are weighted by a linear ramp that falls towards the window's *interior*
  borders (borders that touch the volume edge keep full weight) over the overlap width, and
  overlapping tokens are averaged with those weights — tokens far from a window border dominate;
* CLS and register tokens are the token-count-weighted mean over windows.

What is lost: attention across windows (global context beyond the window) and the global RoPE
frame (coordinates restart in every window). For a trained model the stitched tokens therefore
agree with a full pass only approximately, best in window interiors; when one window covers the
whole grid the result equals the full pass exactly. See ``docs/extraction.md``.

Memory model (:func:`estimate_forward_bytes`): with SDPA attention, activation memory of one
block is linear in the number of tokens, about ``16 · N · C`` elements at the peak (residual,
norm, qkv, rotated q/k, attention output, MLP hidden + GELU, allocator slack; calibrated on ViT-B
at 8,000 tokens on CPU: measured 624 MiB vs 618 MiB estimated), plus the patch-embedding input;
the reference's explicit attention adds ``2 · heads · N²`` elements (measured 6.29 GiB vs 6.35
estimated at 8,000 tokens).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "WindowPlan", "plan_windows", "parse_window", "estimate_forward_bytes", "default_memory_budget",
    "choose_window", "max_tokens_for_budget", "run_windows",
]

GiB = 1024 ** 3
#: Default activation-memory budget on CPU (GiB); override with ``memory_budget_gb`` or
#: the ``VOXELFM_MEMORY_BUDGET_GB`` environment variable.
CPU_DEFAULT_BUDGET_GB = 4.0
#: Fraction of free GPU memory used as the default budget on CUDA.
CUDA_BUDGET_FRACTION = 0.6
_ACTIVATION_FACTOR = 16  # peak live [N, C] tensors per block in inference (see module docstring)


def estimate_forward_bytes(num_tokens: int, *, embed_dim: int, num_heads: int, patch_size: int,
                           mlp_ratio: float = 4.0, num_special: int = 5, batch: int = 1,
                           dtype_bytes: int = 4, naive_attention: bool = False) -> int:
    """Estimated peak activation memory (bytes) of one inference forward, weights excluded.

    Args:
        num_tokens: patch tokens per volume ``N``.
        embed_dim, num_heads, patch_size, mlp_ratio: the architecture.
        num_special: CLS + register tokens.
        batch: volumes (windows) per forward.
        dtype_bytes: 4 for fp32, 2 under bf16/fp16 autocast.
        naive_attention: the explicit ``softmax(q kᵀ) v`` (N×N matrix + its softmax).
    """
    n = int(num_tokens) + int(num_special)
    factor = max(_ACTIVATION_FACTOR, 2 + 2 * mlp_ratio)
    act = factor * n * embed_dim * dtype_bytes
    if naive_attention:
        act += 2 * num_heads * n * n * dtype_bytes
    voxels = int(num_tokens) * patch_size ** 3 * 4 * 2  # input + patch-embed unfold
    return int(batch * (act + voxels))


def default_memory_budget(device: torch.device | str) -> int:
    """Activation-memory budget in bytes: ``VOXELFM_MEMORY_BUDGET_GB`` if set, else
    ``CUDA_BUDGET_FRACTION`` of the free memory on CUDA, else ``CPU_DEFAULT_BUDGET_GB``."""
    env = os.environ.get("VOXELFM_MEMORY_BUDGET_GB", "").strip()
    if env:
        try:
            gb = float(env)
        except ValueError:
            raise ValueError(f"VOXELFM_MEMORY_BUDGET_GB must be a number of GiB, got {env!r}") from None
        if gb <= 0:
            raise ValueError(f"VOXELFM_MEMORY_BUDGET_GB must be > 0, got {env!r}")
        return int(gb * GiB)
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * CUDA_BUDGET_FRACTION)
    return int(CPU_DEFAULT_BUDGET_GB * GiB)


def _model_dims(model: Any) -> dict[str, Any]:
    cfg = getattr(model, "config", None)
    return {
        "embed_dim": int(model.embed_dim),
        "num_heads": int(getattr(model, "num_heads", getattr(cfg, "num_heads", 1))),
        "patch_size": int(model.patch_size),
        "mlp_ratio": float(getattr(cfg, "mlp_ratio", 4.0)),
        "num_special": 1 + int(getattr(model, "num_register_tokens", 0)),
        "naive_attention": getattr(model, "attention_mode", "sdpa") == "naive",
    }


def max_tokens_for_budget(model: Any, budget_bytes: int, *, dtype_bytes: int = 4) -> int:
    """Largest token count whose estimated forward fits ``budget_bytes`` (at least 1)."""
    dims = _model_dims(model)
    lo, hi = 1, 1
    while estimate_forward_bytes(hi, dtype_bytes=dtype_bytes, **dims) <= budget_bytes and hi < 2 ** 31:
        hi *= 2
    while lo < hi:  # largest n with estimate(n) <= budget
        mid = (lo + hi + 1) // 2
        if estimate_forward_bytes(mid, dtype_bytes=dtype_bytes, **dims) <= budget_bytes:
            lo = mid
        else:
            hi = mid - 1
    return max(lo, 1)


def parse_window(window: int | str | Sequence[int] | None, patch_size: int) -> tuple[int, int, int] | None:
    """Window size in tokens per axis from ``window``.

    Accepted: ``None`` (choose from the budget); an int or 3 ints = tokens per side; a string
    ``"16"`` (tokens), ``"224vox"`` / ``"224v"`` (voxels, floored to whole patches) or
    ``"16x16x8"`` (tokens per axis).
    """
    if window is None:
        return None
    if isinstance(window, str):
        s = window.strip().lower()
        voxels = s.endswith(("vox", "v"))
        s = s.removesuffix("vox").removesuffix("v").removesuffix("tok")
        try:
            vals = [int(v) for v in s.split("x")]
        except ValueError:
            raise ValueError(f"window {window!r}: use tokens ('16', '16x16x8') or voxels ('224vox')") from None
        if voxels:
            vals = [v // patch_size for v in vals]
    elif isinstance(window, int):
        vals = [window]
    else:
        vals = [int(v) for v in window]
    if len(vals) == 1:
        vals = vals * 3
    if len(vals) != 3 or min(vals) < 1:
        raise ValueError(f"window must be >= 1 token (>= {patch_size} voxels) per axis, got {window!r}")
    return tuple(vals)  # type: ignore[return-value]


def choose_window(grid: Sequence[int], model: Any, budget_bytes: int, *, dtype_bytes: int = 4,
                  overlap: float = 0.25) -> tuple[int, int, int]:
    """The window (tokens per axis) that fits the budget and costs the least compute.

    Candidates: every window of at most ``n_max`` tokens (:func:`max_tokens_for_budget`) and at
    least ``n_max / 2`` (windows keep at least half the context the budget allows), each side at
    least half the side of the largest cube and >= 4 tokens (no degenerate slabs). Cost: the tokens
    processed by all windows of the plan at this ``overlap`` (the overlap is computed twice),
    then the analytic FLOPs (attention ∝ tokens²), then the larger window. In practice this
    selects slabs spanning the grid on two axes, which repeat far fewer tokens than cubes: for
    ViT-B at 20×20×20 tokens and a budget of ~4,000 tokens, 3 slabs of 20×20×8 process 1.2× the
    grid's tokens where 15³ cubes process 3.4× it. The whole grid is one window when it fits.
    """
    grid = tuple(int(g) for g in grid)
    n_max = max_tokens_for_budget(model, budget_bytes, dtype_bytes=dtype_bytes)
    if math.prod(grid) <= n_max:
        return grid  # type: ignore[return-value]
    dims = _model_dims(model)
    C, special = dims["embed_dim"], dims["num_special"]
    linear = (8 + 4 * dims["mlp_ratio"]) * C * C  # per token (24 C² at ratio 4)

    def flops(tokens: int) -> float:
        n = tokens + special
        return linear * n + 4.0 * C * n * n

    cube = max(1, int(round(n_max ** (1 / 3))))
    while cube > 1 and cube ** 3 > n_max:
        cube -= 1
    low = [min(g, cube, max(4, (cube + 1) // 2)) for g in grid]
    counts = [{w: len(_axis_starts(g, w, overlap)) for w in range(lo, g + 1)} for g, lo in zip(grid, low)]
    best: tuple[int, float, int, tuple[int, int, int]] | None = None
    for a in range(low[0], grid[0] + 1):
        for b in range(low[1], grid[1] + 1):
            if a * b * low[2] > n_max:
                break
            c_hi = min(grid[2], n_max // (a * b))
            c_lo = max(low[2], -(-n_max // (2 * a * b)))
            for c in range(c_lo, c_hi + 1):
                tokens = a * b * c
                count = counts[0][a] * counts[1][b] * counts[2][c]
                key = (count * tokens, count * flops(tokens), -tokens, (a, b, c))
                if best is None or key < best:
                    best = key
    if best is None:  # budget below half a cube in every shape: the largest cube that fits
        return tuple(min(cube, g) for g in grid)  # type: ignore[return-value]
    return best[3]


def _axis_starts(g: int, w: int, overlap: float) -> list[int]:
    if w >= g:
        return [0]
    stride = max(1, int(round(w * (1.0 - overlap))))
    starts = list(range(0, g - w + 1, stride))
    if starts[-1] != g - w:
        starts.append(g - w)
    return starts


@dataclass(frozen=True)
class WindowPlan:
    """Windows over a token grid.

    Attributes:
        grid: full token grid ``(d, h, w)``.
        size: window size in tokens per axis (clamped to the grid).
        overlap: requested overlap fraction.
        starts: per axis, the window start indices (tokens).
    """

    grid: tuple[int, int, int]
    size: tuple[int, int, int]
    overlap: float
    starts: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]

    @property
    def origins(self) -> list[tuple[int, int, int]]:
        """All window origins ``(d0, h0, w0)`` in tokens, (d h w) order."""
        return [(a, b, c) for a in self.starts[0] for b in self.starts[1] for c in self.starts[2]]

    @property
    def count(self) -> int:
        return len(self.starts[0]) * len(self.starts[1]) * len(self.starts[2])

    @property
    def window_tokens(self) -> int:
        return math.prod(self.size)

    def axis_weights(self, axis: int, start: int) -> torch.Tensor:
        """``[w]`` blending weights of a window starting at ``start`` on ``axis``.

        A linear ramp ``(e + 1) / (r + 1)`` (capped at 1), ``e`` = distance to the nearest window
        border that is interior to the volume, ``r`` = overlap width in tokens.
        """
        w, g = self.size[axis], self.grid[axis]
        ramp = max(0, w - int(round(w * (1.0 - self.overlap)))) if w < g else 0
        j = torch.arange(w, dtype=torch.float32)
        inf = torch.full((w,), float("inf"))
        left = j if start > 0 else inf
        right = (w - 1 - j) if start + w < g else inf
        e = torch.minimum(left, right)
        return torch.clamp((e + 1) / (ramp + 1), max=1.0)

    def weights(self, origin: Sequence[int]) -> torch.Tensor:
        """``[wd, wh, ww]`` blending weights of the window at ``origin``."""
        a, b, c = (self.axis_weights(ax, origin[ax]) for ax in range(3))
        return a[:, None, None] * b[None, :, None] * c[None, None, :]

    def to_dict(self) -> dict[str, Any]:
        return {"grid": list(self.grid), "size": list(self.size), "overlap": self.overlap,
                "starts": [list(s) for s in self.starts], "count": self.count, "blend": "linear-ramp"}


def plan_windows(grid: Sequence[int], size: Sequence[int], overlap: float = 0.25) -> WindowPlan:
    """Plan windows of ``size`` tokens with ``overlap`` (fraction in [0, 1)) over ``grid``."""
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be a fraction in [0, 1), got {overlap}")
    grid = tuple(int(g) for g in grid)
    size = tuple(min(int(s), g) for s, g in zip(size, grid))
    if min(size) < 1:
        raise ValueError(f"window size must be >= 1 token per axis, got {size}")
    starts = tuple(tuple(_axis_starts(g, w, overlap)) for g, w in zip(grid, size))
    return WindowPlan(grid=grid, size=size, overlap=float(overlap), starts=starts)  # type: ignore[arg-type]


def run_windows(model: Any, x: torch.Tensor, plan: WindowPlan, *, windows_per_batch: int = 1,
                autocast: Any = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run ``model`` on every window of ``x`` and stitch the tokens.

    Args:
        model: backbone (DINOv2 output dict), in eval mode, on ``x.device``.
        x: ``[D, H, W]`` normalised model input; ``D = grid[0] · p`` etc.
        plan: the windows (token units).
        windows_per_batch: windows per forward (all windows have the same shape).
        autocast: a context-manager factory (e.g. ``lambda: torch.autocast(...)``) or ``None``.

    Returns:
        ``(cls [C], patch [d, h, w, C], registers [R, C])`` float32 on ``x.device``.
    """
    import contextlib

    p = int(model.patch_size)
    C = int(model.embed_dim)
    d, h, w = plan.grid
    if tuple(x.shape) != (d * p, h * p, w * p):
        raise ValueError(f"input {tuple(x.shape)} does not match the token grid {plan.grid} × {p}")
    acc = torch.zeros(d, h, w, C, dtype=torch.float32, device=x.device)
    wsum = torch.zeros(d, h, w, 1, dtype=torch.float32, device=x.device)
    cls_sum = torch.zeros(C, dtype=torch.float32, device=x.device)
    reg_sum: torch.Tensor | None = None
    wd, wh, ww = plan.size
    origins = plan.origins
    ctx = autocast if autocast is not None else contextlib.nullcontext
    for i in range(0, len(origins), max(1, windows_per_batch)):
        batch = origins[i:i + windows_per_batch]
        xb = torch.stack([x[a * p:(a + wd) * p, b * p:(b + wh) * p, c * p:(c + ww) * p] for a, b, c in batch])
        with ctx():
            out = model(xb)
        patch = out["x_norm_patchtokens"].float().reshape(len(batch), wd, wh, ww, C)
        cls_sum += out["x_norm_clstoken"].float().sum(0)
        regs = out.get("x_norm_regtokens")
        if regs is not None:
            regs = regs.float().sum(0)
            reg_sum = regs if reg_sum is None else reg_sum + regs
        for k, (a, b, c) in enumerate(batch):
            wt = plan.weights((a, b, c)).to(x.device)[..., None]
            acc[a:a + wd, b:b + wh, c:c + ww] += patch[k] * wt
            wsum[a:a + wd, b:b + wh, c:c + ww] += wt
    n = len(origins)  # equal token count per window → the token-weighted mean is the plain mean
    cls = cls_sum / n
    registers = reg_sum / n if reg_sum is not None else torch.zeros(0, C, device=x.device)
    return cls, acc / wsum, registers
