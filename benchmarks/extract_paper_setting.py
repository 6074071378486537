"""The paper's setting end to end: a 300-slice chest CT file → ViT-B embedding at ~25,000 tokens.

Writes a synthetic 300×512×512 chest CT (0.7 × 0.7 mm in plane, 1.25 mm slices; body, lungs,
spine) as NIfTI, then runs ``extract_features(model, path, preset="paper", crop_background=True,
max_patches=25000, mode="auto", dtype=...)`` in a fresh subprocess per dtype and reports the wall
time (read + preprocess + forward), the forward alone, the token grid, the mode ``auto`` chose and
the process's peak RSS (``ru_maxrss``, the whole process: Python, torch, weights, volume and
activations). The 1-minute load average is recorded with each figure.

``--input FILE`` runs a CT file of your own instead of the synthetic one (any format
``voxelfm.io.read_volume`` reads; e.g. a real chest CT).

Usage::

    PYTHONPATH=src python benchmarks/extract_paper_setting.py --dtypes bf16 fp32
    PYTHONPATH=src python benchmarks/extract_paper_setting.py --input lung2_image.nrrd --tag lung2

Writes benchmarks/results/extract_paper_setting.json and prints it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def _child(path: str, dtype: str, model_name: str, threads: int | None) -> None:
    import torch

    from _extraction_common import peak_rss_mb
    from voxelfm import extract_features
    from voxelfm.models import build_backbone
    from voxelfm.models.kernels import kernels_summary
    from voxelfm.utils.threads import configure_threads

    choice = configure_threads(threads)
    torch.manual_seed(0)
    model = build_backbone(model_name).eval()
    load = round(os.getloadavg()[0], 2)
    t = time.perf_counter()
    f = extract_features(model, path, preset="paper", crop_background=True, max_patches=25000, mode="auto",
                         dtype=dtype)
    seconds = time.perf_counter() - t
    grid = list(f.patch.shape[:3])
    out = {"dtype": dtype, "model": model_name, "seconds_end_to_end": round(seconds, 2),
           "forward_seconds": f.record["forward_seconds"], "grid": grid, "tokens": grid[0] * grid[1] * grid[2],
           "mode": f.record["mode"], "memory_record": f.record["memory"], "peak_rss_mb": round(peak_rss_mb(), 1),
           "threads": choice.to_dict(), "load_1min": [load, round(os.getloadavg()[0], 2)],
           "cpu_kernels": kernels_summary()}
    print("RESULT " + json.dumps(out), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dtypes", nargs="+", default=["bf16", "fp32"], choices=["bf16", "fp32"])
    ap.add_argument("--model", default="vit_base")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--input", default=None, help="a CT file to run instead of the synthetic chest CT")
    ap.add_argument("--tag", default="", help="suffix of the result file name")
    ap.add_argument("--child", nargs=2, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args.child[0], args.child[1], args.model, args.threads)
        return
    from _extraction_common import synthetic_ct, write_nifti_ras, write_result

    results = []
    with tempfile.TemporaryDirectory(prefix="voxelfm_paper_") as tmp:
        if args.input:
            path, volume = Path(args.input), f"{Path(args.input).name} (given)"
        else:
            path, volume = Path(tmp) / "chest.nii.gz", "synthetic 300x512x512, 0.7x0.7x1.25 mm, NIfTI"
            write_nifti_ras(path, synthetic_ct((300, 512, 512), seed=0), (1.25, 0.7, 0.7))
        for dtype in args.dtypes:
            cmd = [sys.executable, __file__, "--child", str(path), dtype, "--model", args.model]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode or not line:
                results.append({"dtype": dtype, "error": proc.stderr.strip().splitlines()[-3:]})
            else:
                results.append(json.loads(line[0][len("RESULT "):]))
            print(json.dumps(results[-1]), flush=True)
    write_result("extract_paper_setting" + (f"_{args.tag}" if args.tag else ""), {
        "volume": volume, "settings": "preset paper, crop_background, max_patches 25000, auto", "results": results})


if __name__ == "__main__":
    main()
