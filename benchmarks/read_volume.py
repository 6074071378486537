"""Benchmark ``voxelfm.read_volume`` on a 512x512x300 CT: DICOM series folder and NIfTI.

Generates the data in a temporary folder (pydicom / nibabel), times header-only discovery
(``find_dicom_series``), full ``read_volume`` of the DICOM folder and of ``.nii`` / ``.nii.gz``, and a
pixel-decoding-only baseline (``pydicom.dcmread(f).pixel_array`` for every file, the floor any DICOM
reader pays), then prints JSON and writes ``benchmarks/results/read_volume.json``.

    .venv/bin/python benchmarks/read_volume.py [--slices 300] [--size 512] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _extraction_common import write_dicom_axial  # noqa: E402

os.environ.setdefault("VOXELFM_NO_PROGRESS", "1")


def _make_volume(slices: int, size: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    z, y, x = np.ogrid[:slices, :size, :size]
    body = ((y - size / 2) ** 2 + (x - size / 2) ** 2) < (0.4 * size) ** 2
    vol = np.where(body, 40.0, -1000.0) + 0.0 * z
    vol += rng.normal(0, 20, size=(1, size, size))
    return vol.astype(np.float32)


def _time(fn, repeats: int) -> dict[str, float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"best_s": round(min(times), 4), "median_s": round(float(np.median(times)), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "read_volume.json"))
    args = ap.parse_args()

    import nibabel as nib
    import pydicom

    from voxelfm.io import find_dicom_series, read_volume
    from voxelfm.utils import atomic_write_text

    vol = _make_volume(args.slices, args.size)
    with tempfile.TemporaryDirectory(prefix="voxelfm-bench-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        write_dicom_axial(tmp / "dicom", vol, (1.25, 0.7, 0.7), uid_file_names=True)
        affine = np.diag([-0.7, -0.7, 1.25, 1.0])
        nib.save(nib.Nifti1Image(np.transpose(vol, (2, 1, 0)).astype(np.int16), affine), str(tmp / "v.nii.gz"))
        nib.save(nib.Nifti1Image(np.transpose(vol, (2, 1, 0)).astype(np.int16), affine), str(tmp / "v.nii"))
        gen_s = time.perf_counter() - t0
        files = sorted((tmp / "dicom").iterdir())

        def decode_only():
            for f in files:
                pydicom.dcmread(f).pixel_array  # noqa: B018

        results = {
            "find_dicom_series (headers only)": _time(lambda: find_dicom_series(tmp / "dicom"), args.repeats),
            "pixel decoding floor (dcmread + pixel_array per file)": _time(decode_only, args.repeats),
            "read_volume dicom folder": _time(lambda: read_volume(tmp / "dicom"), args.repeats),
            "read_volume nifti .nii.gz": _time(lambda: read_volume(tmp / "v.nii.gz"), args.repeats),
            "read_volume nifti .nii": _time(lambda: read_volume(tmp / "v.nii"), args.repeats),
        }
        v = read_volume(tmp / "dicom")
        assert v.shape == vol.shape, v.shape
    out = {
        "benchmark": "read_volume",
        "volume": {"shape_DHW": list(vol.shape), "dicom_files": args.slices, "dtype_on_disk": "int16"},
        "repeats": args.repeats,
        "generate_s": round(gen_s, 2),
        "results": results,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "note": "timings on a shared machine are noisy; re-run on a quiet one",
    }
    text = json.dumps(out, indent=2)
    print(text)
    atomic_write_text(args.out, text + "\n")


if __name__ == "__main__":
    main()
