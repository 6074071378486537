"""``extract_features``: one CT volume → :class:`Features` (CLS, patch and register tokens).

Pipeline: read (``voxelfm.io.read_volume`` for paths) → :func:`voxelfm.preprocess.preprocess_volume`
with the chosen preset and the model's normalisation → one full forward pass, or overlapping
windows (:mod:`voxelfm.inference.chunked`) when the token grid does not fit the memory budget →
:class:`Features` on CPU in float32 with the preprocessing record.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from voxelfm.inference.chunked import (
    GiB,
    WindowPlan,
    choose_window,
    default_memory_budget,
    estimate_forward_bytes,
    parse_window,
    plan_windows,
    run_windows,
)
from voxelfm.inference.features import Features
from voxelfm.inference.heap import reuse_freed_memory
from voxelfm.models.layers.onednn_linear import packed_linears
from voxelfm.preprocess import PRESETS, Preprocessed, Preset, preprocess_volume

__all__ = ["extract_features", "extract_preprocessed", "resolve_preset", "resolve_device", "resolve_dtype",
           "MODES", "ForwardPlan", "plan_forward", "is_baseline", "check_baseline_options"]

MODES: tuple[str, ...] = ("auto", "full", "chunked")

_DTYPES: dict[str, torch.dtype | None] = {
    "fp32": None, "float32": None, "float": None, "32": None,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16, "16": torch.float16,
}


def resolve_preset(model: Any, preset: str | Preset) -> Preset:
    """A preset *name* takes that preset's rules with the **model's** normalisation
    (``model.preset.mean/std``); a :class:`Preset` instance is used as given."""
    if isinstance(preset, Preset):
        return preset
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)} or pass a Preset")
    base = PRESETS[preset]
    mp = getattr(model, "preset", None)
    return base if mp is None else base.with_normalisation(mp.mean, mp.std)


def resolve_device(device: str | torch.device | None, model: Any = None) -> torch.device:
    """``None`` → the model's device if it is not the CPU, else CUDA if available, else CPU."""
    if device is not None:
        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available; use device='cpu'")
        return dev
    if model is not None:
        try:
            mdev = next(model.parameters()).device
        except (StopIteration, AttributeError):
            mdev = torch.device("cpu")
        if mdev.type != "cpu":
            return mdev
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """Autocast dtype: ``None``/``"fp32"`` → ``None`` (plain fp32), ``"bf16"``, ``"fp16"``."""
    if dtype is None or dtype == torch.float32:
        return None
    if isinstance(dtype, torch.dtype):
        if dtype in (torch.bfloat16, torch.float16):
            return dtype
        raise ValueError(f"dtype must be fp32, bf16 or fp16, got {dtype}")
    key = str(dtype).lower().strip()
    if key not in _DTYPES:
        raise ValueError(f"dtype must be one of fp32, bf16, fp16; got {dtype!r}")
    return _DTYPES[key]


def _autocast_factory(device: torch.device, dtype: torch.dtype | None) -> Callable[[], Any] | None:
    if dtype is None:
        return None
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


@contextlib.contextmanager
def inference_scope(device: torch.device | str = "cpu") -> Iterator[None]:
    """What a run of forwards on ``device`` keeps for its whole length: on the CPU the linear weights
    packed once for oneDNN (:func:`voxelfm.models.layers.packed_linears`) and freed activations kept
    in the C heap for reuse (:func:`voxelfm.inference.heap.reuse_freed_memory`). Every extraction
    enters it around its forward; enter it around a loop of :func:`extract_features` calls to pack
    once and reuse memory across volumes (nested blocks share the outermost one). The model's
    weights must not change inside the block."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(packed_linears())
        if torch.device(device).type == "cpu":
            stack.enter_context(reuse_freed_memory())
        yield


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module):
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _move(model: torch.nn.Module, dev: torch.device) -> None:
    """Put ``model`` on ``dev`` if it is elsewhere."""
    try:
        mdev = next(model.parameters()).device
    except StopIteration:  # pragma: no cover - parameter-free model
        mdev = dev
    if mdev != dev:
        model.to(dev)


def _features(cls: torch.Tensor, patch: torch.Tensor, registers: torch.Tensor, pre: Preprocessed,
              record: dict[str, Any]) -> Features:
    """:class:`Features` on the CPU in float32."""
    return Features(
        cls=cls.detach().to("cpu", torch.float32).contiguous(),
        patch=patch.detach().to("cpu", torch.float32).contiguous(),
        registers=registers.detach().to("cpu", torch.float32).contiguous(),
        patch_size_mm=tuple(float(v) for v in pre.record["patch_size_mm"]),
        record=record,
    )


def _model_record(model: Any) -> dict[str, Any]:
    cfg = getattr(model, "config", None)
    rec: dict[str, Any] = {"config": cfg.to_dict() if hasattr(cfg, "to_dict") else None}
    src = getattr(model, "source", None)
    if isinstance(src, dict):
        rec["source"] = {k: v for k, v in src.items() if isinstance(v, (str, int, float, bool)) or v is None}
    return rec


@dataclass(frozen=True)
class ForwardPlan:
    """How one volume will run: ``mode`` (``"full"``/``"chunked"``), the windows (or ``None``),
    windows per forward, and the memory estimates (bytes) of the full forward and of one window."""

    mode: str
    plan: WindowPlan | None
    windows_per_batch: int
    full_bytes: int
    window_bytes: int

    def window_token_counts(self, grid: Sequence[int]) -> list[int]:
        """Patch tokens of every forward item (one entry per window, or the whole grid)."""
        if self.plan is None:
            return [math.prod(grid)]
        return [self.plan.window_tokens] * self.plan.count


def plan_forward(model: Any, grid: Sequence[int], *, mode: str = "auto",
                 window: int | str | Sequence[int] | None = None, overlap: float = 0.25,
                 dtype_bytes: int = 4, budget_bytes: int) -> ForwardPlan:
    """Decide full vs chunked (and the windows) for a token ``grid``, as :func:`extract_preprocessed` does."""
    from voxelfm.inference.chunked import _model_dims

    p = int(model.patch_size)
    dims = _model_dims(model)
    grid = tuple(int(g) for g in grid)
    full_bytes = estimate_forward_bytes(math.prod(grid), dtype_bytes=dtype_bytes, **dims)
    win = parse_window(window, p)
    mode_used = mode if mode != "auto" else ("full" if full_bytes <= budget_bytes and win is None else "chunked")
    if mode_used == "full":
        return ForwardPlan("full", None, 1, full_bytes, full_bytes)
    size = win if win is not None else choose_window(grid, model, budget_bytes, dtype_bytes=dtype_bytes,
                                                     overlap=overlap)
    plan = plan_windows(grid, size, overlap)
    per_window = estimate_forward_bytes(plan.window_tokens, dtype_bytes=dtype_bytes, **dims)
    per_batch = max(1, min(plan.count, budget_bytes // max(per_window, 1), 16))
    return ForwardPlan("chunked", plan, int(per_batch), full_bytes, per_window)


def extract_preprocessed(model: torch.nn.Module, pre: Preprocessed, *, mode: str = "auto",
                         window: int | str | Sequence[int] | None = None, overlap: float = 0.25,
                         device: str | torch.device | None = None, dtype: str | torch.dtype | None = None,
                         memory_budget_gb: float | None = None) -> Features:
    """Run the backbone on an already preprocessed (normalised) volume.

    Args:
        model: the backbone (:class:`voxelfm.models.VisionTransformer3D` or any module with the
            DINOv2 output dict and ``patch_size``/``embed_dim``); moved to ``device`` if needed.
        pre: output of :func:`voxelfm.preprocess.preprocess_volume` with ``normalise=True``.
        mode, window, overlap, device, dtype, memory_budget_gb: see :func:`extract_features`.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}")
    if is_baseline(model):
        return _extract_baseline(model, pre, mode=mode, window=window, device=device, dtype=dtype)
    if not pre.record.get("normalised", True):
        raise ValueError("extract_preprocessed needs a normalised volume (preprocess_volume(normalise=True))")
    p = int(model.patch_size)
    if pre.record.get("patch_size", p) != p:
        raise ValueError(f"volume was preprocessed for patch size {pre.record['patch_size']}, model has {p}")
    dev = resolve_device(device, model)
    ac_dtype = resolve_dtype(dtype)
    dtype_bytes = 2 if ac_dtype is not None else 4
    budget = int(memory_budget_gb * GiB) if memory_budget_gb is not None else default_memory_budget(dev)
    if budget <= 0:
        raise ValueError(f"memory_budget_gb must be > 0, got {memory_budget_gb}")
    grid = tuple(pre.record["token_grid"])
    fplan = plan_forward(model, grid, mode=mode, window=window, overlap=overlap, dtype_bytes=dtype_bytes,
                         budget_bytes=budget)
    mode_used = fplan.mode

    _move(model, dev)
    x = pre.array.to(dev, torch.float32)
    autocast = _autocast_factory(dev, ac_dtype)
    t0 = time.perf_counter()
    memory: dict[str, Any] = {"budget_gb": round(budget / GiB, 3),
                              "full_estimate_gb": round(fplan.full_bytes / GiB, 3)}
    windows: dict[str, Any] | None = None
    with torch.inference_mode(), _eval_mode(model), inference_scope(dev):
        if mode_used == "full":
            with autocast() if autocast is not None else contextlib.nullcontext():
                out = model(x[None])
            cls = out["x_norm_clstoken"][0].float()
            patch = out["x_norm_patchtokens"][0].float().reshape(*grid, -1)
            regs = out.get("x_norm_regtokens")
            registers = regs[0].float() if regs is not None else torch.zeros(0, cls.shape[0], device=dev)
        else:
            plan, per_batch = fplan.plan, fplan.windows_per_batch
            assert plan is not None
            cls, patch, registers = run_windows(model, x, plan, windows_per_batch=int(per_batch),
                                                autocast=autocast)
            windows = {**plan.to_dict(), "windows_per_batch": int(per_batch)}
            memory["window_estimate_gb"] = round(fplan.window_bytes * per_batch / GiB, 3)
    seconds = time.perf_counter() - t0
    record = dict(pre.record)
    record.update({
        "mode": mode_used,
        "windows": windows,
        "memory": memory,
        "device": str(dev),
        "dtype": "fp32" if ac_dtype is None else str(ac_dtype).removeprefix("torch."),
        "model": _model_record(model),
        "forward_seconds": round(seconds, 4),
    })
    return _features(cls, patch, registers, pre, record)


def is_baseline(model: Any) -> bool:
    """Whether ``model`` carries its own preprocessing (a :class:`voxelfm.baselines.BaselineBackbone`)."""
    return callable(getattr(model, "preprocess", None))


def check_baseline_options(model: Any, *, preset: Any = "default", crop_background: bool = False,
                           max_patches: int | None = None, mode: str = "auto", window: Any = None) -> None:
    """Options of the ViT pipeline that a baseline backbone cannot honour are errors, not silently ignored."""
    name = getattr(model, "family", type(model).__name__)
    bad = [opt for opt, used in (("preset", not (isinstance(preset, str) and preset == "default")),
                                 ("crop_background", bool(crop_background)),
                                 ("max_patches", max_patches is not None)) if used]
    if bad:
        raise ValueError(f"{', '.join(bad)} do(es) not apply to the {name} backbone: it preprocesses exactly as its "
                         "authors' code (see docs/baselines.md); leave them unset")
    if (mode == "chunked" or window is not None) and not getattr(model, "supports_chunked", False):
        raise ValueError(f"the {name} backbone runs one forward pass per volume at its own input size; "
                         "mode='chunked' / window= are for the VoxelFM ViT (use mode='auto' or 'full')")


def _extract_baseline(model: Any, pre: Preprocessed, *, mode: str, window: Any,
                      device: str | torch.device | None, dtype: str | torch.dtype | None) -> Features:
    """One forward of a baseline backbone on its own preprocessed input."""
    check_baseline_options(model, mode=mode, window=window)
    family = getattr(model, "family", "")
    if pre.record.get("preset") != family:
        raise ValueError(f"volume was preprocessed for {pre.record.get('preset')!r}, the model is {family!r}; "
                         "use model.preprocess(...)")
    dev = resolve_device(device, model)
    ac_dtype = resolve_dtype(dtype)
    _move(model, dev)
    x = pre.array.to(dev, torch.float32)
    autocast = _autocast_factory(dev, ac_dtype)
    grid = tuple(pre.record["token_grid"])
    t0 = time.perf_counter()
    with torch.inference_mode(), _eval_mode(model), inference_scope(dev):
        with autocast() if autocast is not None else contextlib.nullcontext():
            out = model(x[None])
        cls = out["x_norm_clstoken"][0].float()
        tokens = out["x_norm_patchtokens"][0].float()
        if tokens.shape[0] != grid[0] * grid[1] * grid[2]:
            raise RuntimeError(f"{family}: {tokens.shape[0]} patch tokens, record token_grid {list(grid)}")
        patch = tokens.reshape(*grid, -1)
        regs = out.get("x_norm_regtokens")
        registers = regs[0].float() if regs is not None else torch.zeros(0, cls.shape[0], device=dev)
    seconds = time.perf_counter() - t0
    record = dict(pre.record)
    record.update({
        "mode": "full", "windows": None, "memory": {}, "device": str(dev),
        "dtype": "fp32" if ac_dtype is None else str(ac_dtype).removeprefix("torch."),
        "model": {"config": None, "backbone": model.describe() if hasattr(model, "describe") else {"family": family},
                  **{k: v for k, v in _model_record(model).items() if k == "source"}},
        "forward_seconds": round(seconds, 4),
    })
    return _features(cls, patch, registers, pre, record)


def extract_features(model: torch.nn.Module, source: Any, *, preset: str | Preset = "default",
                     crop_background: bool = False, max_patches: int | None = None, mode: str = "auto",
                     window: int | str | Sequence[int] | None = None, overlap: float = 0.25,
                     device: str | torch.device | None = None, dtype: str | torch.dtype | None = None,
                     memory_budget_gb: float | None = None, spacing: Sequence[float] | None = None,
                     **options: Any) -> Features:
    """Embed one CT volume with a frozen backbone.

    Args:
        model: the backbone (e.g. ``voxelfm.load_backbone(...)``); put in eval mode for the call and
            moved to ``device`` if it is elsewhere.
        source: a path (NIfTI, DICOM folder, NRRD/MHA, npy ...; read with
            :func:`voxelfm.io.read_volume`), a :class:`voxelfm.io.Volume`, or a ``[D, H, W]``
            numpy array / torch tensor in HU (treated as isotropic 1 mm, as in the reference).
        preset: ``"default"`` (one HU window [-1000, 1900], canonical SPL orientation) or
            ``"paper"`` (the reference pipeline exactly, quirks included); a name uses the model's
            normalisation ``model.preset.mean/std``, a :class:`Preset` is used as given.
        crop_background: crop to the body (reference ``crop_volume``, k = 21) before resampling.
        max_patches: token budget (reference ``resize_max_patches``; the paper used 25,000).
        mode: ``"full"`` (one forward), ``"chunked"`` (overlapping windows, stitched) or
            ``"auto"`` (full when the estimated activation memory fits the budget, else chunked).
        window: chunk size: tokens per side (int, 3 ints, ``"16x16x8"``) or voxels (``"224vox"``);
            default: the window that fits the budget and repeats the fewest tokens (usually slabs
            spanning two axes; :func:`~voxelfm.inference.chunked.choose_window`). Passing a window
            in ``auto`` mode selects chunked.
        overlap: fraction of the window shared by neighbouring windows (0 ≤ overlap < 1).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` ...; default: the model's GPU, else CUDA if
            available, else CPU.
        dtype: ``None``/``"fp32"`` (exact), ``"bf16"`` or ``"fp16"`` (autocast).
        memory_budget_gb: activation-memory budget for ``auto``/window choice; default
            ``VOXELFM_MEMORY_BUDGET_GB`` or 60 % of free GPU memory or 4 GiB on CPU.
        spacing: ``(sz, sy, sx)`` mm of an array ``source`` (default 1 mm).
        options: backbone preprocessing options, only for a baseline backbone
            (``voxelfm.load_backbone("fmcib", ...)``: ``seed=``/``seed_space=``; see docs/baselines.md).

    A **baseline backbone** (one with a ``preprocess`` method: Merlin, CT-FM, FMCIB, ...) runs its
    own original preprocessing (``model.preprocess(source, spacing=..., **options)``) and one
    forward pass; ``preset``, ``crop_background``, ``max_patches``, chunked mode and ``window`` do
    not apply to it (an error if set).

    On the CPU each call packs the backbone's linear weights for oneDNN (ViT-B: 0.05–0.12 s); to
    embed many volumes in a loop, run the loop inside ``with voxelfm.inference.inference_scope():``
    (packed once) or use :func:`voxelfm.inference.extract_batch`, which does.

    Returns:
        :class:`Features` — ``cls [C]``, ``patch [d, h, w, C]``, ``registers [R, C]`` (float32,
        CPU), ``patch_size_mm`` and ``record`` (preprocessing geometry + mode, windows, device,
        dtype, model config).

    Example::

        model = voxelfm.load_backbone("vit_base")            # or released weights + config.yaml
        f = voxelfm.extract_features(model, "ct.nii.gz", crop_background=True, max_patches=25000)
        f.cls.shape, f.patch.shape                            # [864], [d, h, w, 864]
    """
    if not hasattr(model, "patch_size"):
        raise TypeError("model must be a voxelfm backbone (see voxelfm.load_backbone / build_backbone)")
    if is_baseline(model):
        check_baseline_options(model, preset=preset, crop_background=crop_background, max_patches=max_patches,
                               mode=mode, window=window)
        pre = model.preprocess(source, spacing=spacing, **options)
        return _extract_baseline(model, pre, mode=mode, window=window, device=device, dtype=dtype)
    if options:
        raise TypeError(f"extract_features got unexpected option(s) {', '.join(sorted(options))} "
                        "(backbone options are only for baseline backbones)")
    resolved = resolve_preset(model, preset)
    dev = resolve_device(device, model)
    pre = preprocess_volume(source, resolved, crop_background=crop_background, max_patches=max_patches,
                            patch_size=int(model.patch_size), normalise=True, spacing=spacing,
                            device=dev if dev.type == "cuda" else None)
    return extract_preprocessed(model, pre, mode=mode, window=window, overlap=overlap, device=dev,
                                dtype=dtype, memory_budget_gb=memory_budget_gb)
