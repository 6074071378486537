"""Extraction time and peak memory of ViT-B (random init) at ≈ 8,000 tokens: full vs chunked.

Each configuration runs in its own subprocess so its peak RSS (``ru_maxrss``) is its own. The
input is a normalised 280×280×280 volume (grid 20×20×20 = 8,000 tokens). Reported per config:
wall time of the forward, peak RSS of the process, peak RSS before the forward (model + input)
and their difference (≈ activation peak), and the memory model's estimate.

Configs: ``full`` (SDPA), ``chunked-10`` / ``chunked-14`` (windows of 10³ / 14³ tokens, overlap
0.25, one window per forward), optional ``chunked-10-batched`` (16 windows per forward), ``full-naive`` (the reference's explicit N×N attention; ~6 GB at 8,000 tokens)
and ``full-bf16``.

Usage: .venv/bin/python benchmarks/extract_memory.py [--configs full chunked-10 ...] [--side 280]
Prints JSON and writes benchmarks/results/extract_memory.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

CONFIGS = {
    "full": dict(mode="full"),
    # a 0.25 GiB budget → one window per forward (a larger budget batches windows: faster, more memory)
    "chunked-10": dict(mode="chunked", window=10, overlap=0.25, memory_budget_gb=0.25),
    "chunked-14": dict(mode="chunked", window=14, overlap=0.25, memory_budget_gb=0.25),
    "chunked-10-batched": dict(mode="chunked", window=10, overlap=0.25, memory_budget_gb=64.0),
    "full-naive": dict(mode="full", naive=True),
    "full-bf16": dict(mode="full", dtype="bf16"),
}


def _child(name: str, side: int, threads: int, model_name: str) -> None:
    import torch

    from _extraction_common import peak_rss_mb
    from voxelfm.inference import estimate_forward_bytes
    from voxelfm.inference.extract import extract_preprocessed
    from voxelfm.models import build_backbone
    from voxelfm.preprocess import preprocess_volume

    torch.set_num_threads(threads)
    cfg = dict(CONFIGS[name])
    torch.manual_seed(0)
    model = build_backbone(model_name, attention_mode="naive" if cfg.pop("naive", False) else "sdpa").eval()
    x = torch.randn(side, side, side)  # already "normalised" HU-like values
    pre = preprocess_volume(x, "paper", patch_size=model.patch_size, normalise=False)
    pre.record["normalised"] = True
    base = peak_rss_mb()
    t = time.perf_counter()
    budget = cfg.pop("memory_budget_gb", 64.0)
    f = extract_preprocessed(model, pre, device="cpu", memory_budget_gb=budget, **cfg)
    seconds = time.perf_counter() - t
    n = int(f.patch.shape[0] * f.patch.shape[1] * f.patch.shape[2])
    est = estimate_forward_bytes(n, embed_dim=model.embed_dim, num_heads=model.num_heads, patch_size=model.patch_size,
                                 naive_attention=model.attention_mode == "naive",
                                 dtype_bytes=2 if cfg.get("dtype") else 4)
    out = {"config": name, "model": model_name, "tokens": n, "grid": list(f.grid), "seconds": seconds,
           "peak_rss_mb": peak_rss_mb(), "rss_before_forward_mb": base,
           "forward_peak_delta_mb": peak_rss_mb() - base, "estimate_full_forward_mb": est / 2 ** 20,
           "windows": f.record["windows"], "memory_record": f.record["memory"]}
    if f.record["windows"]:
        out["window_estimate_mb"] = f.record["memory"]["window_estimate_gb"] * 1024
    torch.save({"cls": f.cls, "patch": f.patch}, Path(f"/tmp/voxelfm_bench_{name}.pt"))
    print("RESULT " + json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", nargs="+", default=["full", "chunked-10", "chunked-14"], choices=list(CONFIGS))
    ap.add_argument("--side", type=int, default=280, help="cube side in voxels (280 → 20³ = 8,000 tokens)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default="vit_base")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args.child, args.side, args.threads, args.model)
        return
    from _extraction_common import write_result

    results = []
    for name in args.configs:
        proc = subprocess.run([sys.executable, __file__, "--child", name, "--side", str(args.side),
                               "--threads", str(args.threads), "--model", args.model],
                              capture_output=True, text=True)
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not line:
            results.append({"config": name, "error": proc.stderr.strip().splitlines()[-1:]})
            continue
        results.append(json.loads(line[0][len("RESULT "):]))
    # agreement of chunked with full (random-init ViT-B: near-uniform attention, LayerScale 1e-5)
    import torch

    agree = {}
    full_path = Path("/tmp/voxelfm_bench_full.pt")
    if full_path.exists():
        full = torch.load(full_path, weights_only=True)
        for r in results:
            p = Path(f"/tmp/voxelfm_bench_{r['config']}.pt")
            if r["config"] != "full" and p.exists():
                o = torch.load(p, weights_only=True)
                cos = torch.nn.functional.cosine_similarity(o["patch"].flatten(0, 2), full["patch"].flatten(0, 2), dim=-1)
                agree[r["config"]] = {"patch_cos_mean": float(cos.mean()), "patch_cos_min": float(cos.min()),
                                      "cls_cos": float(torch.nn.functional.cosine_similarity(o["cls"], full["cls"], dim=0))}
    for p in Path("/tmp").glob("voxelfm_bench_*.pt"):
        p.unlink()
    write_result("extract_memory", {"side": args.side, "results": results, "agreement_with_full": agree,
                                    "note": "peak RSS per subprocess; shared 2-core machine, re-run on a quiet one"})


if __name__ == "__main__":
    main()
