"""How close the ViT forward runs to this machine's matmul rate (fp32 and bf16), in one process.

Measured in the same run, so every figure is a ratio to the hardware as it is right now (the
machine may be shared; the 1-minute load average is recorded with every figure):

1. the fp32 and bf16 matmul rate (GFLOP/s, best of ``--gemm-repeats`` square GEMMs of ``--gemm-n``,
   the faster of ``torch.mm`` and oneDNN's pre-packed matmul — both are recorded);
2. the backbone forward (``extract_preprocessed`` inside one ``inference_scope`` block, i.e. what
   ``voxelfm extract`` runs for every volume: linear weights packed once per run, freed activations
   kept in the C heap for reuse; the
   packing itself, which one ``extract_features`` call pays, is recorded as ``packing_seconds``) at
   each token count of ``--sizes`` for each ``--dtypes`` and ``--modes``: seconds (best of
   ``--repeats``, after a warm-up forward on a 4³-token cut), analytic FLOPs, achieved GFLOP/s, **% of the matmul rate of the same dtype**,
   the same against the mean of two short GEMMs timed right before and after the case (the load
   moves), and the peak RSS of the case (VmHWM reset before each case; whole-process peak if the kernel
   does not allow the reset);
3. one attention layer alone (the attention call of the model's inference path vs the matmul
   rate, and PyTorch's fused SDPA on the same inputs, interleaved) at each size of ``--attention-sizes``;
4. a per-operator profiler table for ``--profile`` (e.g. ``bf16:8k``);
5. with ``--legacy``, the same cases once more with the kernels voxelfm used before issue 18
   (``Conv3d`` patch embedding and PyTorch's fused SDPA in bf16; largest-cube chunk windows),
   interleaved with the current ones so that both see the same machine load; with
   ``--torch-ops`` every case once more with PyTorch's operators instead of voxelfm's own CPU
   paths (compiled attention and RoPE kernels, oneDNN packed linears), interleaved likewise.

Analytic FLOPs of one forward over ``n = N + 1 + R`` tokens (multiply-add = 2 FLOPs): patch
embedding ``2 N p³ C``; per block ``24 n C²`` (qkv, proj, two MLP linears at ratio 4) plus
``4 n² C`` (q·kᵀ and attention·v). Chunked mode counts the FLOPs it *needs* for the same volume
(the full forward's), so its % shows the cost of windowing (overlap, repeated special tokens).

Chunked mode uses a memory budget of ``--chunk-budget`` × the full forward's estimate so that the
volume really is windowed (with the default 4 GiB CPU budget a 25k-token ViT-B forward fits).

Usage (quick, ~2 min on 2 cores)::

    PYTHONPATH=src python benchmarks/forward_efficiency.py --sizes 512 2k --modes full
    # the issue's full table (25k tokens is minutes per case on 2 cores):
    PYTHONPATH=src python benchmarks/forward_efficiency.py --sizes 512 2k 8k 25k --profile bf16:8k

Writes benchmarks/results/forward_efficiency[_<tag>].json and prints it.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import math
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

#: GEMM side of the short matmul-rate measurements just before and after every case (on a shared
#: machine the rate moves with the load; the case's % is also given against their mean)
ADJACENT_GEMM_N = 1024
#: token grids (d, h, w) for the named sizes; 25k ≈ the paper's ``max_patches`` 25,000
GRIDS: dict[str, tuple[int, int, int]] = {
    "512": (8, 8, 8), "2k": (12, 12, 14), "8k": (20, 20, 20), "25k": (25, 25, 40),
}


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _reset_peak_rss() -> bool:
    """Reset the process's peak RSS (Linux ``clear_refs`` 5); False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    from _extraction_common import peak_rss_mb

    return peak_rss_mb()


def matmul_rate(dtype: Any, n: int, repeats: int) -> dict[str, float]:
    """GFLOP/s of ``[n, n] @ [n, n]`` in ``dtype`` (best of ``repeats``): the faster of ``torch.mm``
    and oneDNN's matmul with a pre-packed operand (what voxelfm's inference linears use; on AMD
    CPUs PyTorch's fp32 ``mm`` goes to MKL at about half of oneDNN's rate), both recorded."""
    import torch

    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    rates = {"torch_mm": _best_rate(lambda: a @ b, n, repeats)}
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(b.t().contiguous(), None)  # x @ b as a linear
        rates["onednn_packed"] = _best_rate(lambda: torch.ops.mkldnn._linear_pointwise(a, packed, None, "none", [], ""),
                                            n, repeats)
    except (AttributeError, RuntimeError):  # a torch build without these operators
        pass
    best = max(rates.values())
    return {"gflops": best, "seconds": round(2 * n ** 3 / best / 1e9, 4), "n": n, "by_kernel": rates,
            "load_1min": _load()}


def _best_rate(fn: Any, n: int, repeats: int) -> float:
    fn()  # warm-up (thread pool, packing buffers)
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return round(2 * n ** 3 / best / 1e9, 1)


def forward_flops(num_patches: int, model: Any) -> float:
    """Analytic FLOPs of one ViT forward (see the module docstring; ``voxelfm.inference.calibrate``)."""
    try:
        from voxelfm.inference.calibrate import forward_flops as library_flops

        return library_flops(num_patches, model)
    except ImportError:  # older tree (before-measurements): the same formula
        n = num_patches + 1 + model.num_register_tokens
        C, r = model.embed_dim, model.config.mlp_ratio
        return 2 * num_patches * model.patch_size ** 3 * C + model.depth * ((8 + 4 * r) * n * C * C + 4 * n * n * C)


def attention_flops(n: int, embed_dim: int) -> float:
    return 4 * n * n * embed_dim


def _volume(grid: tuple[int, int, int], patch_size: int):
    """A normalised synthetic CT whose token grid is ``grid`` (record as ``preprocess_volume``'s)."""
    import torch

    from _extraction_common import synthetic_ct
    from voxelfm.preprocess import preprocess_volume

    shape = tuple(g * patch_size for g in grid)
    hu = torch.from_numpy(synthetic_ct(shape, seed=0))
    pre = preprocess_volume(hu, "default", patch_size=patch_size, normalise=True)
    if tuple(pre.record["token_grid"]) != grid:
        raise RuntimeError(f"grid {pre.record['token_grid']} != {grid}")
    return pre


@contextlib.contextmanager
def kernel_variant(name: str) -> Iterator[None]:
    """``current``; ``legacy`` (the pre-issue-18 kernels: bf16 ``Conv3d`` patch embedding, fused
    SDPA, cube windows, nn.Linear); ``torch-ops`` (PyTorch's attention, RoPE and nn.Linear)."""
    if name == "legacy":
        with _legacy_kernels():
            yield
    elif name == "torch-ops":
        with _without_voxelfm_cpu_paths():
            yield
    else:
        yield


@contextlib.contextmanager
def _without_voxelfm_cpu_paths() -> Iterator[None]:
    """PyTorch's operators instead of voxelfm's compiled kernels (attention, RoPE), oneDNN packed linears
    and the oneDNN fp32 attention, and glibc's default allocation (no heap reuse)."""
    import voxelfm.models.layers.attention as attention
    import voxelfm.models.layers.rope as rope

    try:
        onednn = importlib.import_module("voxelfm.models.layers.onednn_linear")
    except ImportError:  # older tree
        onednn = None
    # names in this tree (older trees: the bf16 softmax kernel and the bf16-only RoPE kernel)
    kernel = "cpu_attention" if hasattr(attention, "cpu_attention") else "bf16_exp_rows"
    rope_kernel = "cpu_rope_qk" if hasattr(rope, "cpu_rope_qk") else "bf16_rope_qk"
    saved = (getattr(attention, kernel), getattr(rope, rope_kernel), getattr(onednn, "_fast_dtype", None),
             getattr(attention, "onednn_matmul_nt", None))
    setattr(attention, kernel, lambda *dtype: None)
    setattr(rope, rope_kernel, lambda *dtype: None)
    try:
        heap = importlib.import_module("voxelfm.inference.heap")
        saved_glibc = heap._glibc
        heap._glibc = lambda: None  # glibc's own allocation behaviour
    except ImportError:  # older tree
        heap = None
    if onednn is not None:
        onednn._fast_dtype = lambda x, layer: None
        attention.onednn_matmul_nt = lambda: None
    try:
        yield
    finally:
        setattr(attention, kernel, saved[0])
        setattr(rope, rope_kernel, saved[1])
        if onednn is not None:
            onednn._fast_dtype, attention.onednn_matmul_nt = saved[2:]
        if heap is not None:
            heap._glibc = saved_glibc


@contextlib.contextmanager
def _legacy_kernels() -> Iterator[None]:
    import torch.nn.functional as F

    import voxelfm.inference.extract as extract
    import voxelfm.models.layers.attention as attention
    import voxelfm.models.layers.patch_embed as patch_embed

    saved = (patch_embed._reduced_precision, attention.attention_core, extract.choose_window)
    patch_embed._reduced_precision = lambda x: None
    attention.attention_core = lambda q, k, v, scale, dropout_p=0.0: F.scaled_dot_product_attention(
        q, k, v, dropout_p=dropout_p, scale=scale)
    extract.choose_window = _largest_cube
    try:
        with _without_voxelfm_cpu_paths():
            yield
    finally:
        patch_embed._reduced_precision, attention.attention_core, extract.choose_window = saved


def _largest_cube(grid, model, budget_bytes, *, dtype_bytes=4, overlap=0.25):
    """The window rule before issue 18: the largest cube (grown along clamped axes) in the budget."""
    from voxelfm.inference.chunked import max_tokens_for_budget

    n_max = max_tokens_for_budget(model, budget_bytes, dtype_bytes=dtype_bytes)
    side = max(1, int(round(n_max ** (1 / 3))))
    while side > 1 and math.prod(min(side, g) for g in grid) > n_max:
        side -= 1
    win = [min(side, g) for g in grid]
    grown = True
    while grown:
        grown = False
        for ax in range(3):
            if win[ax] < grid[ax]:
                trial = list(win)
                trial[ax] += 1
                if math.prod(trial) <= n_max:
                    win, grown = trial, True
    return tuple(win)


def _small_cut(pre: Any, patch_size: int, side: int = 4) -> Any:
    """The first ``side``³ tokens of ``pre`` (a cheap warm-up forward)."""
    from voxelfm.preprocess import Preprocessed

    grid = [min(side, g) for g in pre.record["token_grid"]]
    arr = pre.array[:grid[0] * patch_size, :grid[1] * patch_size, :grid[2] * patch_size].contiguous()
    return Preprocessed(array=arr, spacing=pre.spacing, record={**pre.record, "token_grid": grid})


def run_forward(model: Any, pre: Any, *, dtype: str, mode: str, repeats: int, chunk_budget: float,
                dims: dict[str, Any], rate: float) -> dict[str, Any]:
    from voxelfm.inference.chunked import GiB, estimate_forward_bytes
    from voxelfm.inference.extract import extract_preprocessed

    grid = tuple(pre.record["token_grid"])
    N = math.prod(grid)
    kw: dict[str, Any] = {"mode": mode, "dtype": dtype, "device": "cpu"}
    if mode == "chunked":
        full = estimate_forward_bytes(N, dtype_bytes=2 if dtype != "fp32" else 4, **dims)
        kw["memory_budget_gb"] = chunk_budget * full / GiB
    else:
        kw["memory_budget_gb"] = 64.0
    flops = forward_flops(N, model)
    import torch

    packing = packing_seconds(model, dtype)
    with _inference_scope():  # packed once, memory reused, for the whole run, as extract_batch / `voxelfm extract` do
        extract_preprocessed(model, _small_cut(pre, model.patch_size), **kw)  # warm-up: threads, allocator, packing
        times, loads = [], []
        exact = _reset_peak_rss()
        gemm = torch.bfloat16 if dtype == "bf16" else torch.float32
        adjacent = [matmul_rate(gemm, ADJACENT_GEMM_N, 2)["gflops"]]
        for _ in range(repeats):
            loads.append(_load())
            t = time.perf_counter()
            feats = extract_preprocessed(model, pre, **kw)
            times.append(time.perf_counter() - t)
        adjacent.append(matmul_rate(gemm, ADJACENT_GEMM_N, 2)["gflops"])
    s = min(times)
    local = sum(adjacent) / len(adjacent)
    out = {"tokens": N, "grid": list(grid), "dtype": dtype, "mode": mode, "seconds": round(s, 3),
           "seconds_all": [round(v, 3) for v in times], "gflop": round(flops / 1e9, 1),
           "gflops": round(flops / s / 1e9, 1), "pct_of_matmul_rate": round(100 * flops / s / 1e9 / rate, 1),
           "matmul_rate_adjacent": adjacent, "pct_of_adjacent_matmul_rate": round(100 * flops / s / 1e9 / local, 1),
           "peak_rss_mb": round(_peak_rss_mb(), 1), "peak_rss_is_per_case": exact,
           "packing_seconds": packing, "load_1min": loads}
    if feats.record.get("windows"):
        w = feats.record["windows"]
        out["windows"] = {"size": w["size"], "count": w["count"], "per_batch": w["windows_per_batch"],
                          "budget_gb": feats.record["memory"]["budget_gb"]}
    return out


def _inference_scope() -> Any:
    """voxelfm's ``inference_scope`` (older trees: ``packed_linears``, else a no-op context)."""
    extract = importlib.import_module("voxelfm.inference.extract")
    if hasattr(extract, "inference_scope"):
        return extract.inference_scope("cpu")
    try:
        return importlib.import_module("voxelfm.models.layers.onednn_linear").packed_linears()
    except ImportError:
        return contextlib.nullcontext()


def packing_seconds(model: Any, dtype: str) -> float | None:
    """Seconds to pack every linear weight of ``model`` for oneDNN in ``dtype`` — what one
    ``extract_features`` call pays on top of the forward (``extract_batch`` pays it once per run);
    ``None`` where the packed path does not run (older tree, ``--torch-ops``, no oneDNN)."""
    import torch

    try:
        onednn = importlib.import_module("voxelfm.models.layers.onednn_linear")
    except ImportError:
        return None
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    if not linears:
        return None
    probe = torch.zeros(1, linears[0].in_features)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bf16" else contextlib.nullcontext()
    with torch.inference_mode(), autocast, onednn.packed_linears():
        if onednn._fast_dtype(probe, linears[0]) is None:
            return None
        t = time.perf_counter()
        for layer in linears:
            onednn.inference_linear(layer, torch.zeros(1, layer.in_features))
        return round(time.perf_counter() - t, 4)


def run_attention(n: int, dtype: str, *, embed_dim: int, num_heads: int, repeats: int,
                  rate: float) -> dict[str, Any]:
    """One attention core (softmax(q kᵀ/√d) v over ``n`` tokens) as the model runs it in inference,
    interleaved with PyTorch's fused SDPA on the same inputs (strided views of one qkv tensor, as
    in the model)."""
    import torch
    import torch.nn.functional as F

    from voxelfm.models.layers.attention import attention_core

    dt = torch.bfloat16 if dtype == "bf16" else torch.float32
    hd = embed_dim // num_heads
    qkv = torch.randn(1, n, 3, num_heads, hd).to(dt)
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    calls = {"voxelfm": lambda: attention_core(q, k, v, hd ** -0.5),
             "sdpa": lambda: F.scaled_dot_product_attention(q, k, v, scale=hd ** -0.5)}
    best = dict.fromkeys(calls, math.inf)
    with torch.inference_mode():
        calls["voxelfm"]()
        load = _load()
        for _ in range(repeats):
            for name, call in calls.items():
                t = time.perf_counter()
                call()
                best[name] = min(best[name], time.perf_counter() - t)
    fl = attention_flops(n, embed_dim)
    return {"tokens": n, "dtype": dtype, "seconds": round(best["voxelfm"], 4),
            "gflops": round(fl / best["voxelfm"] / 1e9, 1),
            "pct_of_matmul_rate": round(100 * fl / best["voxelfm"] / 1e9 / rate, 1),
            "sdpa_seconds": round(best["sdpa"], 4), "speedup_vs_sdpa": round(best["sdpa"] / best["voxelfm"], 2),
            "load_1min": load}


def profile_table(model: Any, pre: Any, dtype: str, rows: int) -> str:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from voxelfm.inference.extract import extract_preprocessed

    extract_preprocessed(model, _small_cut(pre, model.patch_size), mode="full", dtype=dtype, device="cpu")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        extract_preprocessed(model, pre, mode="full", dtype=dtype, device="cpu", memory_budget_gb=64.0)
    del torch
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", nargs="+", default=["512", "2k", "8k", "25k"], choices=list(GRIDS))
    ap.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    ap.add_argument("--modes", nargs="+", default=["full", "chunked"], choices=["full", "chunked"])
    ap.add_argument("--attention-sizes", nargs="*", default=["2k", "8k"], choices=list(GRIDS))
    ap.add_argument("--profile", default="bf16:8k", help="dtype:size for the operator table ('' = none)")
    ap.add_argument("--profile-rows", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=1, help="timed forwards per case (after one warm-up)")
    ap.add_argument("--gemm-n", type=int, default=2048)
    ap.add_argument("--gemm-repeats", type=int, default=5)
    ap.add_argument("--chunk-budget", type=float, default=0.3,
                    help="chunked mode's memory budget as a fraction of the full forward's estimate")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: voxelfm's choice)")
    ap.add_argument("--model", default="vit_base")
    ap.add_argument("--tag", default="", help="suffix of the result file name")
    ap.add_argument("--legacy", action="store_true",
                    help="also run every case with the pre-issue-18 kernels, interleaved (before/after ratio)")
    ap.add_argument("--torch-ops", action="store_true",
                    help="also run every case with PyTorch's operators instead of voxelfm's CPU kernels and packed linears, interleaved")
    args = ap.parse_args()

    import torch

    from _extraction_common import write_result
    from voxelfm.inference.chunked import _model_dims
    from voxelfm.models import build_backbone

    try:
        from voxelfm.utils.threads import configure_threads

        thread_choice = configure_threads(args.threads).to_dict()
    except ImportError:  # older tree (before-measurements)
        if args.threads:
            torch.set_num_threads(args.threads)
        thread_choice = {"threads": torch.get_num_threads()}
    env = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "VOXELFM_THREADS")}
    torch.manual_seed(0)
    model = build_backbone(args.model).eval()
    dims = _model_dims(model)
    rates = {"fp32": matmul_rate(torch.float32, args.gemm_n, args.gemm_repeats),
             "bf16": matmul_rate(torch.bfloat16, args.gemm_n, args.gemm_repeats)}
    print(f"matmul rate: fp32 {rates['fp32']['gflops']} GFLOP/s {rates['fp32']['by_kernel']}, "
          f"bf16 {rates['bf16']['gflops']} GFLOP/s {rates['bf16']['by_kernel']} (load {_load()})", flush=True)

    variants = (["legacy"] if args.legacy else []) + (["torch-ops"] if args.torch_ops else []) + ["current"]
    try:
        from voxelfm.models.kernels import kernels_summary

        cpu_kernels = kernels_summary()
    except ImportError:  # older tree (before-measurements)
        cpu_kernels = {"all": "none (no voxelfm.models.kernels)"}
    print(f"compiled CPU kernels: {cpu_kernels}", flush=True)
    forwards = []
    for size in args.sizes:
        pre = _volume(GRIDS[size], model.patch_size)
        for dtype in args.dtypes:
            for mode in args.modes:
                for variant in variants:
                    with kernel_variant(variant):
                        r = run_forward(model, pre, dtype=dtype, mode=mode, repeats=args.repeats,
                                        chunk_budget=args.chunk_budget, dims=dims, rate=rates[dtype]["gflops"])
                    r["size"] = size
                    r["kernels"] = variant
                    forwards.append(r)
                    print(f"{size:>4} {dtype} {mode:<7} {r['kernels']:<7} {r['seconds']:8.3f} s  "
                          f"{r['gflops']:7.1f} GFLOP/s  {r['pct_of_matmul_rate']:5.1f} % of matmul "
                          f"({r['pct_of_adjacent_matmul_rate']:5.1f} % of adjacent)  "
                          f"peak RSS {r['peak_rss_mb']:.0f} MiB  load {r['load_1min']}"
                          + (f"  (+{r['packing_seconds']:.3f} s packing per call)" if r.get("packing_seconds") else "")
                          + (f"  windows {r['windows']['count']}x{r['windows']['size']}" if "windows" in r else ""),
                          flush=True)
        del pre
    def _find(size: str, dtype: str, mode: str, kernels: str) -> dict[str, Any] | None:
        hits = [f for f in forwards if (f["size"], f["dtype"], f["mode"], f["kernels"]) == (size, dtype, mode, kernels)]
        if not hits and (dtype, mode, kernels) == ("fp32", "full", "legacy"):
            return _find(size, dtype, mode, "current")
        return hits[0] if hits else None

    for r in forwards:
        full = _find(r["size"], r["dtype"], "full", r["kernels"])
        if r["mode"] == "chunked" and full:
            r["time_vs_full"] = round(r["seconds"] / full["seconds"], 2)
        fp32 = _find(r["size"], "fp32", "full", r["kernels"])
        if r["mode"] == "full" and r["dtype"] == "bf16" and fp32:
            r["speedup_vs_fp32"] = round(fp32["seconds"] / r["seconds"], 2)
        old = _find(r["size"], r["dtype"], r["mode"], "legacy")
        if r["kernels"] == "current" and old and old is not r:
            r["speedup_vs_legacy"] = round(old["seconds"] / r["seconds"], 2)
        plain = _find(r["size"], r["dtype"], r["mode"], "torch-ops")
        if r["kernels"] == "current" and plain:
            r["speedup_vs_torch_ops"] = round(plain["seconds"] / r["seconds"], 2)

    attention = []
    for size in args.attention_sizes:
        n = math.prod(GRIDS[size]) + dims["num_special"]
        for dtype in args.dtypes:
            try:
                r = run_attention(n, dtype, embed_dim=model.embed_dim, num_heads=model.num_heads,
                                  repeats=max(2, args.repeats), rate=rates[dtype]["gflops"])
            except ImportError:
                break
            attention.append(r)
            print(f"attention {size:>4} {dtype}: {r['seconds']:.3f} s {r['gflops']} GFLOP/s "
                  f"{r['pct_of_matmul_rate']} % of matmul, SDPA {r['sdpa_seconds']:.3f} s (load {r['load_1min']})", flush=True)

    table = ""
    if args.profile:
        dtype, size = args.profile.split(":")
        table = profile_table(model, _volume(GRIDS[size], model.patch_size), dtype, args.profile_rows)
        print(table)
    name = "forward_efficiency" + (f"_{args.tag}" if args.tag else "")
    write_result(name, {
        "model": args.model, "threads": thread_choice, "thread_env": env,
        "torch_num_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "load_at_end": list(os.getloadavg()), "matmul_rate": rates, "forwards": forwards,
        "attention_layer": attention, "profile": {"case": args.profile, "table": table.splitlines()},
        "chunk_budget_fraction": args.chunk_budget, "cpu_kernels": cpu_kernels,
    })


if __name__ == "__main__":
    main()
