"""Background crop: O(N) ``foreground_box`` on a 400×512×512 volume vs the reference dense Conv3d.

The reference ``crop_volume`` convolves the foreground mask with a 21³ all-ones kernel
(≈ 9,261 MACs per voxel); it is timed on a smaller volume (checked to give the same box) and
extrapolated by voxel count to 400×512×512.

Usage: .venv/bin/python benchmarks/crop_background.py [--shape 400 512 512] [--ref-shape 64 128 128]
Prints JSON and writes benchmarks/results/crop_background.json.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _extraction_common import synthetic_ct, write_result  # noqa: E402

from voxelfm.preprocess import foreground_box  # noqa: E402


def dense_reference_box(img: torch.Tensor, k: int = 21):
    mask = (F.conv3d((img > -800).float()[None, None], torch.ones(1, 1, k, k, k), padding="same")
            > k * k * k * 0.5)[0, 0]
    c = mask.nonzero()
    mn, mx = c.min(0).values, c.max(0).values
    return tuple((max(int(mn[i]) - k // 2, 0), min(int(mx[i]) + k // 2, mask.shape[i] - 1) + 1) for i in range(3))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", type=int, nargs=3, default=[400, 512, 512])
    ap.add_argument("--ref-shape", type=int, nargs=3, default=[64, 128, 128])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    vol = synthetic_ct(tuple(args.shape))
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        box = foreground_box(vol)
        times.append(time.perf_counter() - t)

    small = synthetic_ct(tuple(args.ref_shape), seed=1)
    t = time.perf_counter()
    ref_box = dense_reference_box(torch.from_numpy(small))
    ref_s = time.perf_counter() - t
    t = time.perf_counter()
    our_small = foreground_box(small)
    ours_small_s = time.perf_counter() - t
    scale = math.prod(args.shape) / math.prod(args.ref_shape)
    write_result("crop_background", {
        "shape": args.shape, "box": box,
        "foreground_box_seconds": {"min": min(times), "all": times},
        "target_seconds": 5.0,
        "reference_dense_conv": {"shape": args.ref_shape, "seconds": ref_s,
                                 "extrapolated_seconds_for_shape": ref_s * scale,
                                 "same_box_as_foreground_box": tuple(ref_box) == tuple(our_small),
                                 "foreground_box_seconds_same_volume": ours_small_s},
        "speedup_extrapolated": ref_s * scale / min(times),
        "note": "timings on a shared 2-core machine; re-run on a quiet one",
    })


if __name__ == "__main__":
    main()
