"""The demo end to end: wall and CPU time per stage, and pre-trained vs random init per task.

Run:  .venv/bin/python benchmarks/demo.py            # the default demo (≈ 12–15 min on 2 cores)
      .venv/bin/python benchmarks/demo.py --quick    # the quick demo (≈ 2–3 min)
      .venv/bin/python benchmarks/demo.py --seed 1 --out benchmarks/results/demo_seed1.json
      .venv/bin/python benchmarks/demo.py --workdir /tmp/demo-bench   # keep the folder (re-runs reuse it)

Prints JSON and writes benchmarks/results/demo.json (or demo_quick.json): per stage the wall time,
the CPU time of the demo and its worker processes, the machine's load average before, during (sampled
every 15 s) and after, per task the primary metric of both backbones with CIs, the difference and
the Holm p-value, and the table summary the demo's goal is stated on: of all rows of the report's
table, how many the pre-trained backbone is better on, significantly better (Holm) and
significantly worse. Wall times depend on other load on the machine; CPU times hardly do.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the quick demo")
    ap.add_argument("--workdir", default=None, help="demo folder to use and keep (default: a temporary one)")
    ap.add_argument("--pretrain-minutes", type=float, default=None)
    ap.add_argument("--cases", type=int, default=None)
    ap.add_argument("--with-reports", action="store_true")
    ap.add_argument("--seed", type=int, default=0, help="demo seed (cohort, random init, probes)")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/demo[_quick].json)")
    args = ap.parse_args()

    from voxelfm.demo import run_demo

    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="voxelfm-demo-bench-"))
    log = io.StringIO()
    load_before = os.getloadavg()
    samples: list[float] = []
    stop = threading.Event()

    def sample_load() -> None:
        while not stop.wait(15.0):
            samples.append(os.getloadavg()[0])

    sampler = threading.Thread(target=sample_load, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    try:
        try:
            run_demo(work, quick=args.quick, cases=args.cases, pretrain_minutes=args.pretrain_minutes,
                     with_reports=args.with_reports or None, seed=args.seed, stream=log)
        finally:
            stop.set()
        wall = time.perf_counter() - t0
        state = json.loads((work / "demo.json").read_text())
        import pandas as pd

        cmp = pd.read_csv(work / "probes" / "pretrained_vs_random.csv")
        main_rows = cmp[cmp["fraction"] == cmp.groupby("task_name")["fraction"].transform("max")]
        main_rows = main_rows.drop_duplicates("task_name")
        tasks = {r.task_name: {"category": r.category, "metric": r.metric, "probe": f"{r.head}/{r.feature}",
                               "pretrained": [r.pre, r.pre_lo, r.pre_hi], "random_init": [r.rnd, r.rnd_lo, r.rnd_hi],
                               "diff": r.diff, "p_holm": r.p_holm, "verdict": r.verdict}
                 for r in main_rows.itertuples()}
        verdicts = main_rows["verdict"].value_counts().to_dict()
        rows = cmp[cmp["verdict"] != "undefined"]
        n_rows = int(len(rows))
        better = int(rows["verdict"].isin(["improved", "better"]).sum())
        improved = int((rows["verdict"] == "improved").sum())
        worse = int((rows["verdict"] == "worse").sum())
        out = {
            "benchmark": "demo_quick" if args.quick else "demo",
            "seed": args.seed,
            "machine": {"cpus": os.cpu_count(), "load_before": [round(x, 2) for x in load_before],
                        "load_during_1min": {"mean": round(sum(samples) / len(samples), 2) if samples else None,
                                             "min": min(samples, default=None), "max": max(samples, default=None),
                                             "samples": len(samples)},
                        "load_after": [round(x, 2) for x in os.getloadavg()],
                        "note": "wall times depend on machine load; cpu_s = CPU of the demo and its workers"},
            "wall_s": round(wall, 1),
            "cpu_s": round(sum(v.get("cpu_seconds", 0.0) for v in state["stages"].values()), 1),
            "table": {"rows": n_rows, "pretrained_better": better, "significantly_better": improved,
                      "significantly_worse": worse, "share_better": round(better / n_rows, 3) if n_rows else None,
                      "goal_met": bool(n_rows and better >= 0.75 * n_rows and improved >= 3 and worse == 0),
                      "goal": ">= 75 % of rows better, >= 3 significantly better (Holm), none significantly worse"},
            "rows": [{k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()}
                     for r in cmp[["task_name", "head", "feature", "fraction", "metric", "pre", "rnd", "rnd_lo",
                                   "rnd_hi", "diff", "p", "p_holm", "verdict"]].to_dict("records")],
            "stages": {k: {"wall_s": round(v["seconds"], 1), "cpu_s": round(v.get("cpu_seconds", 0.0), 1),
                           "summary": {kk: vv for kk, vv in v.get("summary", {}).items()
                                       if kk not in ("_line", "prevalence", "failures", "base_signature")}}
                       for k, v in state["stages"].items()},
            "tasks": tasks,
            "pretrained_better": int(main_rows["verdict"].isin(["improved", "better"]).sum()),
            "significant": int((main_rows["verdict"] == "improved").sum()),
            "n_tasks": int(len(main_rows)),
            "verdicts": verdicts,
            "workdir": str(work) if args.workdir else None,
        }
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(out, indent=2, default=float)
    print(text)
    name = "demo_quick.json" if args.quick else "demo.json"
    path = Path(args.out) if args.out else Path(__file__).resolve().parent / "results" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
