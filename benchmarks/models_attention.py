"""Attention memory and speed: SDPA vs the reference's explicit N×N attention (ViT-B geometry).

Each measurement runs in a fresh subprocess (peak RSS is monotonic), 2 torch threads:

* one attention layer of the ViT-B (12 heads × 72, RoPE on patches) at several token counts,
  sdpa and naive, fp32 — peak extra memory (MiB) and time per call;
* a full ViT-B forward (random weights) on a 112³ volume (512 tokens) and a 224×224×168 volume
  (3,072 tokens) with SDPA.

Run:  .venv/bin/python benchmarks/models_attention.py   (prints JSON, writes benchmarks/results/models_attention.json)
Numbers on a shared machine are noisy; re-run on a quiet one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

LAYER_TOKENS = [1000, 2000, 4000, 8000]
NAIVE_MAX_TOKENS = 4000  # the naive matrix at 8000 tokens is 12·8000²·4 B ≈ 3 GiB (×2 with softmax)

_CHILD = r"""
import json, resource, sys, time, torch
torch.set_num_threads(2)
spec = json.loads(sys.argv[1])
def rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
if spec["kind"] == "layer":
    from voxelfm.models.layers import Attention, RopePositionEmbedding3D
    n = spec["tokens"]
    side = round(n ** (1 / 3))
    grid = (side, side, max(1, n // (side * side)))
    n_patch = grid[0] * grid[1] * grid[2]
    attn = Attention(864, num_heads=12, qkv_bias=True, mode=spec["mode"]).eval()
    rope = RopePositionEmbedding3D(864, num_heads=12)(D=grid[0], H=grid[1], W=grid[2])
    x = torch.randn(1, 5 + n_patch, 864)
    with torch.no_grad():
        base = rss_mib()
        t0 = time.perf_counter()
        attn(x, rope=rope, num_special=5)
        dt = time.perf_counter() - t0
    print(json.dumps({"tokens": 5 + n_patch, "mode": spec["mode"], "seconds": round(dt, 3),
                      "peak_extra_mib": round(rss_mib() - base, 1)}))
else:
    from voxelfm.models import build_backbone
    model = build_backbone("vit_base").eval()
    x = torch.randn(1, *spec["shape"])
    with torch.no_grad():
        model(torch.randn(1, 28, 28, 28))
        base = rss_mib()
        t0 = time.perf_counter()
        out = model(x)
        dt = time.perf_counter() - t0
    print(json.dumps({"shape": spec["shape"], "tokens": int(out["x_prenorm"].shape[1]), "mode": "sdpa",
                      "seconds": round(dt, 2), "peak_extra_mib": round(rss_mib() - base, 1)}))
"""


def _run(spec: dict) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="2")
    res = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(spec)], capture_output=True, text=True,
                         env=env, check=False)
    if res.returncode != 0:
        return {**spec, "error": res.stderr.strip().splitlines()[-1] if res.stderr.strip() else "failed"}
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> dict:
    import torch

    results = {"torch": torch.__version__, "threads": 2, "layer": [], "vit_base_forward": []}
    for n in LAYER_TOKENS:
        for mode in ("sdpa", "naive"):
            if mode == "naive" and n > NAIVE_MAX_TOKENS:
                continue
            results["layer"].append(_run({"kind": "layer", "tokens": n, "mode": mode}))
    for shape in ([112, 112, 112], [168, 224, 224]):
        results["vit_base_forward"].append(_run({"kind": "model", "shape": shape}))
    out = Path(__file__).resolve().parent / "results" / "models_attention.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
