"""`voxelfm prepare` throughput: demo-size phantom volumes -> int16 store with 2 workers.

Run:  .venv/bin/python benchmarks/prepare_speed.py [--n 40] [--workers 2]
Prints JSON and writes benchmarks/results/prepare_speed.json (volumes/s, wall and CPU seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("VOXELFM_NO_PROGRESS", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    from voxelfm.data.phantoms import generate_cohort
    from voxelfm.data.volume_store import VolumeStore, prepare_volumes

    tmp = Path(tempfile.mkdtemp(prefix="voxelfm-prepare-bench-"))
    try:
        generate_cohort(tmp / "cohort", args.n, seed=0, workers=args.workers, progress=False)
        res = {"machine": {"cpus": os.cpu_count(), "note": "wall times depend on machine load"}}
        for crop in (False, True):
            out = tmp / f"store-{int(crop)}"
            t0 = time.perf_counter()
            s = prepare_volumes([tmp / "cohort" / "cohort.csv"], out, workers=args.workers,
                                crop_background=crop, progress=False)
            wall = time.perf_counter() - t0
            # CPU per volume in this process on a sample (worker CPU is not visible here)
            sample = tmp / f"sample-{int(crop)}"
            c0 = time.process_time()
            s1 = prepare_volumes([tmp / "cohort" / "volumes"], sample, workers=1, crop_background=crop,
                                 progress=False)
            cpu = (time.process_time() - c0) / max(1, s1.ok + s1.skipped)
            store = VolumeStore(out)
            shapes = [store.shape(i) for i in store.ids]
            # random 56^3 crops from the memory maps (what a data loader does)
            rng_t0 = time.perf_counter()
            n_crops = 0
            for vid in store.ids:
                a = store.open(vid)
                for k in range(4):
                    d, h, w = (k * 7) % max(1, a.shape[0] - 56), (k * 11) % max(1, a.shape[1] - 56), 0
                    _ = a[d:d + 56, h:h + 56, w:w + 56].astype("float32").sum()
                    n_crops += 1
            crop_s = time.perf_counter() - rng_t0
            res[f"crop_background={crop}"] = {
                "volumes": args.n, "workers": args.workers, "prepared": s.ok, "skipped": s.skipped,
                "failed": s.failed, "wall_s": round(wall, 2), "volumes_per_s": round(args.n / wall, 2),
                "cpu_s_per_volume_serial": round(cpu, 3),
                "mean_shape": [round(sum(x[i] for x in shapes) / len(shapes)) for i in range(3)] if shapes else None,
                "store_mb": round(sum(p.stat().st_size for p in out.rglob("*.npy")) / 1e6, 1),
                "memmap_crops_per_s": round(n_crops / crop_s, 1)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    text = json.dumps(res, indent=2)
    out = Path(__file__).parent / "results" / "prepare_speed.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
