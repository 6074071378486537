"""Linear layers for CPU inference through oneDNN with pre-packed weights (``inference_linear``).

PyTorch runs ``nn.Linear`` on the CPU with MKL in fp32 and with an unpacked oneDNN call in bf16.
On the 2-core AMD EPYC (AVX-512, AVX512-BF16) this project is measured on, oneDNN's matmul with
the weight reordered once into its blocked layout is **2.1–2.3× faster in fp32** and 1.1–1.3× in
bf16 for ViT-B's linears (97–8,005 tokens; 450 vs 196 GFLOP/s fp32, 950 vs 737 bf16 at 2,021
tokens), and can apply the exact (erf) GELU inside the same call. Results agree with
``F.linear`` to fp32 rounding (≤ 5e-6 here) and are identical in bf16.

The path is taken only inside :func:`packed_linears` (``voxelfm.inference`` enters it around its
forward passes, where the weights are frozen), without gradients, on the CPU, in fp32 or under
bf16 autocast (the bf16 output that autocast would give), and after a one-time check against
``F.linear``; everywhere else, and with ``VOXELFM_CPU_KERNELS=0``, the layer runs as usual. The
packed weights (a copy per layer and dtype: ViT-B +340 MB fp32 / +170 MB bf16; packing all of
them takes ≈ 50 ms) live as long as the outermost ``packed_linears`` block, so a weight that
changes between two blocks is never served stale. It uses ``torch.ops.mkldnn._linear_pointwise``
and ``_reorder_linear_weight`` — the operators ``torch.compile`` uses for CPU linears — and falls
back if a PyTorch build lacks them.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from voxelfm.models.kernels.loader import switched_off

__all__ = ["MLP_ROWS", "inference_linear", "inference_mlp", "onednn_matmul_nt", "packed_linears"]

log = logging.getLogger(__name__)

#: (layer, dtype) → (packed weight, bias in dtype), for the innermost active ``packed_linears`` block
_packed: contextvars.ContextVar[dict[tuple[int, torch.dtype], tuple[nn.Linear, Tensor, Tensor | None]] | None] = (
    contextvars.ContextVar("voxelfm_packed_linears", default=None))
_usable: dict[torch.dtype, bool] = {}
_lock = threading.Lock()


@contextlib.contextmanager
def packed_linears() -> Iterator[None]:
    """Within this block, :func:`inference_linear` may run layers through oneDNN with weights
    packed on first use; the packed copies are dropped when the outermost block exits (nested
    blocks share them). Weights must not change inside the block."""
    if _packed.get() is not None:
        yield
        return
    token = _packed.set({})
    try:
        yield
    finally:
        _packed.reset(token)


def inference_linear(layer: nn.Linear, x: Tensor, *, gelu: bool = False) -> Tensor:
    """``layer(x)``, then the exact GELU if ``gelu`` — through oneDNN with packed weights when the
    fast path applies (see the module docstring), else exactly ``layer(x)`` (and ``F.gelu``).

    Args:
        layer: the linear layer (``weight [out, in]``, optional ``bias [out]``).
        x: ``[..., in]``.
        gelu: apply ``GELU(approximate="none")`` to the output.

    Returns:
        ``[..., out]``; bf16 under CPU bf16 autocast, else ``x``'s dtype.
    """
    cache = _packed.get()
    dtype = None if cache is None else _fast_dtype(x, layer)
    if dtype is None:
        y = layer(x)
        return F.gelu(y) if gelu else y
    weight, bias = _packed_weight(cache, layer, dtype)
    return torch.ops.mkldnn._linear_pointwise(x.to(dtype), weight, bias, "gelu" if gelu else "none", [],
                                              "none" if gelu else "")


#: rows of the MLP's hidden activation at a time in CPU inference (ViT-B fp32: 28 MB, under glibc's
#: 32 MB mmap threshold, instead of ``N × 4C`` at once — 346 MB at 25,000 tokens)
MLP_ROWS = 2048


def inference_mlp(fc1: nn.Linear, fc2: nn.Linear, x: Tensor, *, rows: int = MLP_ROWS) -> Tensor:
    """``fc2(GELU(fc1(x)))`` (exact GELU). Where the packed fast path applies (see
    :func:`inference_linear`), blocks of ``rows`` tokens go through both layers in turn, so the
    hidden activation is ``[rows, hidden]`` instead of ``[N, hidden]``: a lower peak and no fresh
    hundreds of MB per block for the allocator to map; the products are the same row by row.

    Args:
        fc1: ``C → hidden``; fc2: ``hidden → C_out``.
        x: ``[..., C]``.
        rows: tokens per block.

    Returns:
        ``[..., C_out]`` as :func:`inference_linear` returns it.
    """
    tokens = x.numel() // max(x.shape[-1], 1)
    cache = _packed.get()
    if cache is None or tokens <= rows or _fast_dtype(x, fc1) is None or _fast_dtype(x, fc2) is None:
        return inference_linear(fc2, inference_linear(fc1, x, gelu=True))
    flat = x.reshape(tokens, x.shape[-1])
    out = None
    for start in range(0, tokens, rows):
        y = inference_linear(fc2, inference_linear(fc1, flat[start:start + rows], gelu=True))
        out = y.new_empty(tokens, y.shape[-1]) if out is None else out  # dtype as the fast path gives it
        out[start:start + rows] = y
    return out.reshape(*x.shape[:-1], out.shape[-1])


def onednn_matmul_nt() -> Callable[[Tensor, Tensor], Tensor] | None:
    """Inside :func:`packed_linears` (and where oneDNN's linear operator works): a function
    ``(a [M, K], b [N, K]) → a bᵀ [M, N]`` in fp32 through oneDNN (``b`` as an unpacked linear
    weight; ≈ 2.5× PyTorch's fp32 ``mm`` for attention-shaped products alone); else ``None``."""
    if _packed.get() is None or torch.is_grad_enabled() or not _op_usable(torch.float32):
        return None
    return _matmul_nt


def _matmul_nt(a: Tensor, b: Tensor) -> Tensor:
    return torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")


def _fast_dtype(x: Tensor, layer: nn.Linear) -> torch.dtype | None:
    if torch.is_grad_enabled() or x.device.type != "cpu" or layer.weight.device.type != "cpu":
        return None
    if _autocast_cpu():
        dtype = _autocast_cpu_dtype()
        if dtype != torch.bfloat16:
            return None
    else:
        dtype = x.dtype
        if dtype not in (torch.float32, torch.bfloat16) or layer.weight.dtype != dtype:
            return None
    return dtype if _op_usable(dtype) else None


def _autocast_cpu() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled()


def _autocast_cpu_dtype() -> torch.dtype:
    try:
        return torch.get_autocast_dtype("cpu")
    except (AttributeError, TypeError):  # torch < 2.4
        return torch.get_autocast_cpu_dtype()


def _packed_weight(cache: dict[tuple[int, torch.dtype], tuple[nn.Linear, Tensor, Tensor | None]], layer: nn.Linear,
                   dtype: torch.dtype) -> tuple[Tensor, Tensor | None]:
    hit = cache.get((id(layer), dtype))
    if hit is None or hit[0] is not layer:
        bias = None if layer.bias is None else layer.bias.detach().to(dtype)
        packed = torch.ops.mkldnn._reorder_linear_weight(layer.weight.detach().to(dtype), None)
        hit = cache[(id(layer), dtype)] = (layer, packed, bias)
    return hit[1], hit[2]


def _op_usable(dtype: torch.dtype) -> bool:
    """Once per dtype: the operators exist and agree with ``F.linear`` (+ GELU) on a small case."""
    if dtype not in _usable:
        with _lock:
            if dtype not in _usable:
                _usable[dtype] = _check(dtype)
    return _usable[dtype]


def _check(dtype: torch.dtype) -> bool:
    if switched_off():
        return False
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")):
        return False
    try:
        with torch.autocast("cpu", enabled=False):  # the check may first run inside the model's autocast
            return _agrees(dtype)
    except RuntimeError as exc:
        log.info("oneDNN packed linears unavailable (%s); using nn.Linear", exc)
        return False


def _agrees(dtype: torch.dtype) -> bool:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(37, 24, generator=g).to(dtype)
    w, b = torch.randn(40, 24, generator=g).to(dtype), torch.randn(40, generator=g).to(dtype)
    packed = torch.ops.mkldnn._reorder_linear_weight(w, None)
    plain = torch.ops.mkldnn._linear_pointwise(x, packed, b, "none", [], "")
    fused = torch.ops.mkldnn._linear_pointwise(x, packed, b, "gelu", [], "none")
    ref = F.linear(x.float(), w.float(), b.float())
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    ok = (plain.shape == fused.shape == ref.shape and torch.allclose(plain.float(), ref, atol=tol, rtol=tol)
          and torch.allclose(fused.float(), F.gelu(ref), atol=tol, rtol=tol))
    if not ok:
        log.warning("oneDNN packed linears disagree with F.linear on this machine; using nn.Linear")
    return ok
