"""Each compiled bf16 CPU kernel on and off, interleaved in one process: what does each one buy?

The ViT-B bf16 forward (``extract_preprocessed``, as ``voxelfm extract`` runs it) at one token
count, ``--repeats`` rounds of four variants in turn — all kernels, none (PyTorch's operators),
softmax kernel only, RoPE kernel only — so that every variant sees the same machine load. Reports
the best and all seconds per variant and the speed-up of each over "none".

Usage::

    PYTHONPATH=src python benchmarks/cpu_kernels_ab.py --size 2k --repeats 4

Writes benchmarks/results/cpu_kernels_ab_<size>.json and prints it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def main() -> None:
    from forward_efficiency import GRIDS, _volume

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="2k", choices=list(GRIDS))
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--model", default="vit_base")
    args = ap.parse_args()

    import voxelfm.models.layers.attention as attention
    import voxelfm.models.layers.rope as rope
    from _extraction_common import write_result
    from voxelfm.inference.extract import extract_preprocessed
    from voxelfm.models import build_backbone
    from voxelfm.models.kernels import kernels_summary
    from voxelfm.utils.threads import configure_threads

    threads = configure_threads(args.threads).to_dict()
    kernels = kernels_summary()
    model = build_backbone(args.model).eval()
    pre = _volume(GRIDS[args.size], model.patch_size)
    softmax, rotate = attention.bf16_exp_rows, rope.bf16_rope_qk
    off = lambda: None  # noqa: E731 - "kernel unavailable"
    variants = {"all kernels": (softmax, rotate), "none": (off, off), "softmax only": (softmax, off),
                "rope only": (off, rotate)}
    extract_preprocessed(model, pre, dtype="bf16", mode="full")  # warm-up
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    loads = [round(os.getloadavg()[0], 2)]
    try:
        for _ in range(args.repeats):
            for name, (exp_rows, rope_qk) in variants.items():
                attention.bf16_exp_rows, rope.bf16_rope_qk = exp_rows, rope_qk
                t = time.perf_counter()
                extract_preprocessed(model, pre, dtype="bf16", mode="full")
                seconds[name].append(round(time.perf_counter() - t, 3))
            loads.append(round(os.getloadavg()[0], 2))
    finally:
        attention.bf16_exp_rows, rope.bf16_rope_qk = softmax, rotate
    best = {name: min(v) for name, v in seconds.items()}
    for name, v in seconds.items():
        print(f"{name:13s} best {best[name]:.3f} s  ({best['none'] / best[name]:.2f}x of none)  all {v}", flush=True)
    write_result(f"cpu_kernels_ab_{args.size}", {
        "model": args.model, "size": args.size, "grid": list(GRIDS[args.size]),
        "threads": threads, "kernels": kernels, "load_1min": loads, "seconds": seconds, "best": best,
        "speedup_vs_none": {name: round(best["none"] / b, 3) for name, b in best.items()}})


if __name__ == "__main__":
    main()
