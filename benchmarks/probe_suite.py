"""Benchmark: the packaged phantom probe suite (what `voxelfm demo` runs) on N phantom volumes
with two random-init ViT-tiny backbones; prints JSON and writes benchmarks/results/probe_suite.json.

    .venv/bin/python benchmarks/probe_suite.py [--n 200] [--depth 12] [--workdir DIR] [--threads 1]
        [--workers 1] [--suite phantom]

Times: phantom generation, extraction (two stores), the suite (all tasks x 2 backbones; wall
seconds and the CPU seconds of this process and its workers — the CPU time is much less disturbed
by other load than the wall time), and the per-run training seconds summed per task and per head
(from results.csv). Numbers on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished children (suite workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--depth", type=int, default=12)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workers", type=int, default=1, help="run_suite workers (processes)")
    ap.add_argument("--suite", default="phantom", help="packaged suite name or YAML path")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    os.environ.setdefault("VOXELFM_NO_PROGRESS", "1")
    import pandas as pd
    import torch

    from voxelfm.data.phantoms import generate_cohort
    from voxelfm.inference import EmbeddingStore, extract_features
    from voxelfm.models import build_backbone
    from voxelfm.probes import run_suite

    torch.set_num_threads(args.threads)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="probe_bench_"))
    out: dict = {"n": args.n, "depth": args.depth, "threads": args.threads, "workers": args.workers,
                 "suite": args.suite, "workdir": str(work), "load_average": list(os.getloadavg())}
    t = time.perf_counter()
    if not (work / "ph" / "cohort.csv").exists():
        generate_cohort(work / "ph", args.n, seed=0, workers=2, progress=False)
    out["generate_s"] = round(time.perf_counter() - t, 2)
    cohort = pd.read_csv(work / "ph" / "cohort.csv")
    for name, seed in (("pretrained", 0), ("random_init", 1)):
        t = time.perf_counter()
        torch.manual_seed(seed)
        model = build_backbone("vit_tiny", depth=args.depth).eval()
        store = EmbeddingStore(work / name)
        for r in cohort.itertuples():
            if not store.has(r.id):
                store.write(r.id, extract_features(model, str(work / "ph" / r.path)))
        store.write_index()
        out[f"extract_{name}_s"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    cpu = _cpu_seconds()
    extra = {"workers": args.workers} if args.workers != 1 else {}  # (runs against older versions too)
    res = run_suite(args.suite, work / "suite", stores={"pretrained": work / "pretrained",
                                                         "random_init": work / "random_init"},
                    labels=work / "ph" / "cohort.csv", resume=False, show_progress=False, **extra)
    out["suite_s"] = round(time.perf_counter() - t, 2)
    out["suite_cpu_s"] = round(_cpu_seconds() - cpu, 2)
    out["load_average_after"] = list(os.getloadavg())
    out["failures"] = [f"{'/'.join(map(str, k))}: {e}" for k, e in res.failures]
    per = res.results.drop_duplicates(["task_name", "head", "feature", "fraction", "backbone"])
    out["train_seconds_by_task"] = {k: round(float(v), 2) for k, v in per.groupby("task_name")["seconds"].sum().items()}
    out["train_seconds_by_head"] = {k: round(float(v), 2) for k, v in per.groupby("head")["seconds"].sum().items()}
    prim = res.results[res.results["primary"]]
    out["primary"] = {f"{r.task_name}/{r.head}-{r.feature}/{r.backbone}/f{r.fraction:g}": round(float(r.value), 4)
                      for r in prim.itertuples()}
    text = json.dumps(out, indent=2)
    print(text)
    dest = Path(__file__).resolve().parent / "results" / "probe_suite.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(text + "\n")


if __name__ == "__main__":
    main()
