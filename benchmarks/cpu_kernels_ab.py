"""Each of voxelfm's CPU inference paths on and off, interleaved in one process: what does each buy?

The ViT-B forward (``extract_preprocessed``, as ``voxelfm extract`` runs it) at one token count
and dtype, ``--repeats`` rounds of the variants in turn — all paths, none (PyTorch's operators and
``nn.Linear``), all but the heap reuse, and each path alone (the compiled attention kernel, the
compiled RoPE, the oneDNN packed linears, freed activations kept in the C heap; fp32 also the oneDNN
blocked attention, the fallback without the kernel) — so that every variant sees the same machine load. Reports the best and all seconds per variant and the speed-up of each over "none".

Usage::

    PYTHONPATH=src python benchmarks/cpu_kernels_ab.py --size 2k --repeats 4            # bf16
    PYTHONPATH=src python benchmarks/cpu_kernels_ab.py --size 2k --repeats 3 --dtype fp32

Writes benchmarks/results/cpu_kernels_ab_<size>[_fp32].json and prints it.
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
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--variants", nargs="+", default=None,
                    help="only these variants (names as printed, e.g. all 'all but heap reuse'); speed-ups are against "
                         "'none' when it runs, else the first one")
    ap.add_argument("--tag", default="", help="suffix of the result file name")
    args = ap.parse_args()

    import importlib

    import voxelfm.models.layers.attention as attention
    import voxelfm.models.layers.rope as rope
    from _extraction_common import write_result
    from voxelfm.inference.extract import extract_preprocessed
    from voxelfm.models import build_backbone
    from voxelfm.models.kernels import kernels_summary
    from voxelfm.utils.threads import configure_threads

    onednn = importlib.import_module("voxelfm.models.layers.onednn_linear")
    threads = configure_threads(args.threads).to_dict()
    kernels = kernels_summary()
    model = build_backbone(args.model).eval()
    pre = _volume(GRIDS[args.size], model.patch_size)
    heap = importlib.import_module("voxelfm.inference.heap")
    on = (attention.cpu_attention, rope.cpu_rope_qk, onednn._fast_dtype, attention.onednn_matmul_nt, heap._glibc)
    off = (lambda dtype: None, lambda dtype: None, lambda x, layer: None, lambda: None, lambda: None)  # "unavailable"

    def only(*which: int) -> tuple:
        return tuple(on[i] if i in which else off[i] for i in range(len(on)))

    variants = {"all": on, "none": off, "all but heap reuse": only(0, 1, 2, 3),
                "attention kernel only": only(0), "linears only": only(2), "rope only": only(1),
                "heap reuse only": only(4)}
    if args.dtype == "fp32":
        variants["oneDNN attention only"] = only(3)

    if args.variants:
        unknown = sorted(set(args.variants) - set(variants))
        if unknown:
            ap.error(f"unknown variants {unknown}; choose from {list(variants)}")
        variants = {name: variants[name] for name in args.variants}

    def use(paths: tuple) -> None:
        attention.cpu_attention, rope.cpu_rope_qk, onednn._fast_dtype, attention.onednn_matmul_nt, heap._glibc = paths

    extract_preprocessed(model, pre, dtype=args.dtype, mode="full")  # warm-up
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    loads = [round(os.getloadavg()[0], 2)]
    try:
        for _ in range(args.repeats):
            for name, paths in variants.items():
                use(paths)
                t = time.perf_counter()
                extract_preprocessed(model, pre, dtype=args.dtype, mode="full")
                seconds[name].append(round(time.perf_counter() - t, 3))
            loads.append(round(os.getloadavg()[0], 2))
    finally:
        use(on)
    best = {name: min(v) for name, v in seconds.items()}
    ref = "none" if "none" in best else next(iter(best))
    for name, v in seconds.items():
        print(f"{args.dtype} {name:22s} best {best[name]:.3f} s  ({best[ref] / best[name]:.2f}x of {ref})  all {v}", flush=True)
    write_result(f"cpu_kernels_ab_{args.size}" + ("_fp32" if args.dtype == "fp32" else "")
                 + (f"_{args.tag}" if args.tag else ""), {
        "model": args.model, "size": args.size, "dtype": args.dtype, "grid": list(GRIDS[args.size]),
        "threads": threads, "kernels": kernels, "load_1min": loads, "seconds": seconds, "best": best,
        "speedup_vs": ref, "speedup": {name: round(best[ref] / b, 3) for name, b in best.items()}})


if __name__ == "__main__":
    main()
