"""Phantom generator speed: a 200-case demo cohort with 2 workers, and one full-size case.

Run:  .venv/bin/python benchmarks/phantoms_speed.py [--n 200] [--workers 2] [--skip-full]
Prints JSON and writes benchmarks/results/phantoms_speed.json. Targets (issue #3): 200 demo cases
in <= 60 s on 2 cores; one 512x512x300 case in <= 10 s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("VOXELFM_NO_PROGRESS", "1")


def _full_case_512x512x300(tmp: Path) -> dict:
    """Generate one full-size case forced to 512 x 512 x 300 (1.25 mm slices) and write it."""
    import numpy as np

    from voxelfm.data.phantoms import acquisition, cohort
    from voxelfm.data.phantoms.writers import write_nifti

    orig = acquisition.draw_acquisition

    def fixed(rng, size, **kw):
        acq = orig(rng, size, **kw)
        D, sz = 300, 1.25
        top = acq.origin[2] + (acq.shape[0] - 1) * acq.spacing[0]
        acq.shape = (D, 512, 512)
        acq.spacing = (sz, acq.spacing[1], acq.spacing[2])
        acq.origin = (acq.origin[0], acq.origin[1], top - (D - 1) * sz)
        return acq

    cohort.draw_acquisition = fixed
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        case = cohort.generate_case(0, 0, size="full")
        gen_wall, gen_cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        cohort.draw_acquisition = orig
    t1, c1 = time.perf_counter(), time.process_time()
    write_nifti(tmp / "full.nii.gz", case.stored, case.affine, case.acquisition.orientation,
                intercept=case.acquisition.intercept)
    write_nifti(tmp / "full_seg.nii.gz", case.labels, case.affine, case.acquisition.orientation)
    write_wall, write_cpu = time.perf_counter() - t1, time.process_time() - c1
    assert case.hu.shape == (300, 512, 512), case.hu.shape
    return {"shape": list(case.hu.shape), "spacing_mm": [round(v, 4) for v in case.acquisition.spacing],
            "generate_wall_s": round(gen_wall, 2), "generate_cpu_s": round(gen_cpu, 2),
            "write_nifti_wall_s": round(write_wall, 2), "write_nifti_cpu_s": round(write_cpu, 2),
            "total_wall_s": round(gen_wall + write_wall, 2), "total_cpu_s": round(gen_cpu + write_cpu, 2),
            "target_s": 10.0, "voxels": int(np.prod(case.hu.shape))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--skip-full", action="store_true")
    args = ap.parse_args()
    from voxelfm.data.phantoms import generate_cohort

    res: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                             "note": "wall times depend on machine load (other processes share the cores); "
                                     "cpu_s are CPU seconds of this process"}}
    tmp = Path(tempfile.mkdtemp(prefix="voxelfm-phantoms-bench-"))
    try:
        t0 = time.perf_counter()
        table = generate_cohort(tmp / "demo", args.n, seed=0, workers=args.workers, progress=False)
        wall = time.perf_counter() - t0
        # CPU cost per case (generate + write NIfTI volume and label map), measured in this process
        # on a sample: the workers' CPU time is not visible from here
        from voxelfm.data.phantoms import generate_case
        from voxelfm.data.phantoms.cohort import _write_case

        generate_case(0, 0)  # warm-up (imports)
        c0 = time.process_time()
        for i in range(10):
            generate_case(0, i)
        cpu_gen = (time.process_time() - c0) / 10
        c0 = time.process_time()
        for i in range(10):
            _write_case((0, i, "demo", "nifti", str(tmp / "serial")))
        cpu_case = (time.process_time() - c0) / 10
        res["demo_cohort"] = {"n": args.n, "workers": args.workers, "wall_s": round(wall, 2),
                              "generate_cpu_s_per_case": round(cpu_gen, 3),
                              "generate_and_write_cpu_s_per_case": round(cpu_case, 3),
                              "wall_s_if_cores_were_free_estimate": round(cpu_case * args.n / args.workers, 1),
                              "cases_per_s": round(args.n / wall, 2), "target_s": 60.0,
                              "mean_shape": table["shape"].iloc[0],
                              "prevalence": {c: round(float(table[c].mean()), 3) for c in
                                             ("lung_nodule", "pleural_effusion", "emphysema", "cardiomegaly",
                                              "arterial_wall_calcification", "lung_opacity", "consolidation",
                                              "atelectasis", "lymphadenopathy", "hiatal_hernia")},
                              "disk_mb": round(sum(p.stat().st_size for p in (tmp / "demo").rglob("*")
                                                   if p.is_file()) / 1e6, 1)}
        if not args.skip_full:
            res["full_case"] = _full_case_512x512x300(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out = Path(__file__).parent / "results" / "phantoms_speed.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(res, indent=2)
    out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
