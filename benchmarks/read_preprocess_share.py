"""Read + preprocess time as a share of model time, for NIfTI and DICOM of a realistic chest CT.

A synthetic 300 × 512 × 512 CT (1.25 × 0.7 × 0.7 mm) is written as a RAS ``.nii.gz`` and as a
300-file axial DICOM series. For each: ``read_volume`` time, ``preprocess_volume`` time (default
preset, background crop, isotropic 0.7 mm, token budget ``--max-patches``), and the forward time
of ``vit_tiny`` and ``vit_base`` (random init, full SDPA pass) on the result. The share
``(read + preprocess) / forward`` says whether background workers can hide the I/O
(share < 1 with ≥ 1 worker: the GPU/CPU model is the bottleneck).

Usage: .venv/bin/python benchmarks/read_preprocess_share.py [--max-patches 8000] [--shape 300 512 512]
Prints JSON and writes benchmarks/results/read_preprocess_share.json.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _extraction_common import synthetic_ct, write_dicom_axial, write_nifti_ras, write_result  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", type=int, nargs=3, default=[300, 512, 512])
    ap.add_argument("--spacing", type=float, nargs=3, default=[1.25, 0.7, 0.7])
    ap.add_argument("--max-patches", type=int, default=8000)
    ap.add_argument("--models", nargs="+", default=["vit_tiny", "vit_base"])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from voxelfm.inference.extract import extract_preprocessed
    from voxelfm.io import read_volume
    from voxelfm.models import build_backbone
    from voxelfm.preprocess import preprocess_volume

    tmp = Path(tempfile.mkdtemp(prefix="voxelfm_bench_"))
    try:
        vol = synthetic_ct(tuple(args.shape))
        write_nifti_ras(tmp / "ct.nii.gz", vol, args.spacing)
        write_dicom_axial(tmp / "dcm", vol, args.spacing)
        del vol
        models = {name: build_backbone(name).eval() for name in args.models}
        out = {}
        for fmt, path in (("nifti_gz", tmp / "ct.nii.gz"), ("dicom", tmp / "dcm")):
            t = time.perf_counter()
            v = read_volume(path)
            read_s = time.perf_counter() - t
            t = time.perf_counter()
            pre = preprocess_volume(v, "default", crop_background=True, max_patches=args.max_patches,
                                    patch_size=14)
            pre_s = time.perf_counter() - t
            row = {"read_seconds": read_s, "preprocess_seconds": pre_s, "final_shape": pre.record["final_shape"],
                   "tokens": pre.num_tokens, "crop_box": pre.record["crop_box"],
                   "resampled_shape": pre.record["resample"]["shape"], "models": {}}
            for name, m in models.items():
                t = time.perf_counter()
                extract_preprocessed(m, pre, mode="full", device="cpu")
                fwd = time.perf_counter() - t
                row["models"][name] = {"forward_seconds": fwd, "share": (read_s + pre_s) / fwd}
            out[fmt] = row
            del v, pre
        write_result("read_preprocess_share", {
            "shape": args.shape, "spacing": args.spacing, "max_patches": args.max_patches, "results": out,
            "note": "shared 2-core machine; forward on CPU. On a GPU the forward is ~50-100x faster, so "
                    "the share grows accordingly and several --workers are needed to keep up."})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
