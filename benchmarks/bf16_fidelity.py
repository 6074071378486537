"""bf16 against fp32, token by token, on CT files you have: is ``--dtype bf16`` safe for this model?

For every ``--weights`` × ``--input`` pair, ``extract_features(..., dtype=...)`` runs in fp32 and
in bf16 (same preset, crop and token budget) and the per-token cosine similarity of the two is
summarised for the CLS token, the registers and the patch tokens: minimum, 0.1th percentile and
median, with the seconds of each forward. voxelfm's bound is cosine ≥ 0.999 for every token.

Usage (any readable CT: NIfTI, NRRD, a DICOM series folder ...; weights: a checkpoint, a folder or
a config name for random init)::

    PYTHONPATH=src python benchmarks/bf16_fidelity.py --input lung1.nrrd lung2.nrrd \\
        --weights vit_base tests/data/models/teacher_checkpoint.pth --preset paper --crop-background \\
        --max-patches 25000

Writes benchmarks/results/bf16_fidelity[_<tag>].json and prints it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

#: voxelfm's fidelity bound for a reduced-precision forward, per token
BOUND = 0.999


def token_cosines(a: Any, b: Any) -> Any:
    """Cosine of matching rows of ``a, b [..., C]`` (float64), flattened to ``[tokens]``."""
    import torch

    a, b = a.reshape(-1, a.shape[-1]).double(), b.reshape(-1, b.shape[-1]).double()
    return torch.nn.functional.cosine_similarity(a, b, dim=-1)


def summarise(cos: Any) -> dict[str, float] | None:
    import torch

    if cos.numel() == 0:
        return None  # a model without registers
    return {"tokens": int(cos.numel()), "min": round(float(cos.min()), 6),
            "p0.1": round(float(torch.quantile(cos, 0.001)), 6), "median": round(float(cos.median()), 6),
            "below_bound": int((cos < BOUND).sum())}


def compare(model: Any, path: str, *, preset: str, crop: bool, max_patches: int | None) -> dict[str, Any]:
    from voxelfm import extract_features

    features, seconds = {}, {}
    for dtype in ("fp32", "bf16"):
        t = time.perf_counter()
        features[dtype] = extract_features(model, path, preset=preset, crop_background=crop,
                                           max_patches=max_patches, mode="full", dtype=dtype)
        seconds[dtype] = round(time.perf_counter() - t, 2)
    ref, low = features["fp32"], features["bf16"]
    grid = list(ref.patch.shape[:3])
    return {"grid": grid, "tokens": grid[0] * grid[1] * grid[2], "seconds": seconds,
            "cls": summarise(token_cosines(low.cls, ref.cls)),
            "registers": summarise(token_cosines(low.registers, ref.registers)),
            "patch": summarise(token_cosines(low.patch, ref.patch)), "load_1min": round(os.getloadavg()[0], 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--input", nargs="+", required=True, help="CT files or DICOM series folders")
    ap.add_argument("--weights", nargs="+", default=["vit_base"], help="checkpoints or config names")
    ap.add_argument("--preset", default="paper", choices=["paper", "default"])
    ap.add_argument("--crop-background", action="store_true")
    ap.add_argument("--max-patches", type=int, default=25000)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--tag", default="")
    args = ap.parse_args()

    import torch

    from _extraction_common import write_result
    from voxelfm import load_backbone
    from voxelfm.models.kernels import kernels_summary
    from voxelfm.utils.threads import configure_threads

    threads = configure_threads(args.threads).to_dict()
    rows = []
    for weights in args.weights:
        torch.manual_seed(0)
        model = load_backbone(weights).eval()
        for path in args.input:
            r = compare(model, path, preset=args.preset, crop=args.crop_background, max_patches=args.max_patches)
            r.update(weights=str(weights), input=str(path))
            rows.append(r)
            print(f"{Path(weights).name} × {Path(path).name}: {r['tokens']} tokens, min cosine "
                  f"CLS {r['cls']['min']} registers {(r['registers'] or {}).get('min')} patch {r['patch']['min']} "
                  f"(p0.1 {r['patch']['p0.1']}); fp32 {r['seconds']['fp32']} s, bf16 {r['seconds']['bf16']} s",
                  flush=True)
    write_result("bf16_fidelity" + (f"_{args.tag}" if args.tag else ""), {
        "bound": BOUND, "preset": args.preset, "crop_background": args.crop_background,
        "max_patches": args.max_patches, "threads": threads, "cpu_kernels": kernels_summary(), "results": rows})


if __name__ == "__main__":
    main()
