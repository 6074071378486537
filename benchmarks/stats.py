"""Timing of voxelfm.stats hot paths (numpy/scipy only).

Run: .venv/bin/python benchmarks/stats.py  → prints JSON and writes benchmarks/results/stats.json.
Each number is the best of `repeats` wall-clock runs in seconds (the machine may be shared).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("VOXELFM_NO_PROGRESS", "1")

from voxelfm.utils import atomic_write_text  # noqa: E402


def _best(fn, repeats=3):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return round(min(times), 4)


def main() -> dict:
    from sklearn.metrics import roc_auc_score
    from sksurv.metrics import concordance_index_censored

    import voxelfm.stats as S

    rng = np.random.default_rng(0)
    out: dict = {"python": sys.version.split()[0], "numpy": np.__version__,
                 "machine": platform.machine(), "cpus": os.cpu_count(), "seconds": {}}
    sec = out["seconds"]

    y = rng.random(1000) < 0.3
    s = rng.normal(size=1000) + y
    sec["bootstrap_auroc_n1000_B10000"] = _best(lambda: S.bootstrap_ci(S.auroc, y, s, n_resamples=10_000))
    sec["bootstrap_auroc_n1000_B10000_stratified"] = _best(
        lambda: S.bootstrap_ci(S.auroc, y, s, n_resamples=10_000, stratify=True))
    sec["bootstrap_sklearn_auroc_loop_n1000_B1000"] = _best(
        lambda: S.bootstrap_ci(lambda a, b: roc_auc_score(a, b), y, s, n_resamples=1000), repeats=1)
    sec["bootstrap_mae_n1000_B10000"] = _best(lambda: S.bootstrap_ci(S.mae, s, s + 1, n_resamples=10_000))
    sec["bootstrap_f1_n1000_B10000"] = _best(lambda: S.bootstrap_ci(S.f1_at, y, s, n_resamples=10_000))

    n = 10_000
    t = rng.exponential(size=n)
    e = rng.random(n) < 0.6
    r = rng.normal(size=n)
    sec["c_index_n10000"] = _best(lambda: S.c_index(t, e, r))
    sec["sksurv_c_index_n10000"] = _best(lambda: concordance_index_censored(e, t, r))
    sec["bootstrap_c_index_n1000_B1000"] = _best(
        lambda: S.bootstrap_ci(S.c_index, t[:1000], e[:1000], r[:1000], n_resamples=1000))

    yb = rng.random(n) < 0.3
    sec["delong_test_n10000"] = _best(lambda: S.delong_test(yb, r, r + rng.normal(size=n)))

    emb = rng.normal(size=(1000, 64))
    lab = rng.random((1000, 4)) < 0.05
    sec["retrieval_protocol_N1000_L4"] = _best(lambda: S.retrieval_recall(emb, lab), repeats=1)
    sec["retrieval_expected_N1000_L4"] = _best(lambda: S.retrieval_recall(emb, lab, method="expected"))
    res = S.retrieval_recall(emb, lab, method="expected")
    out["retrieval_trials_N1000_L4"] = sum(res.n_trials.values())

    pred = rng.integers(0, 10, size=(8, 48, 48, 48))
    target = rng.integers(0, 10, size=(8, 48, 48, 48))
    sec["dice_8x48cubed_10cls"] = _best(lambda: S.dice_scores(pred, target, 10))
    sec["dice_8x48cubed_10cls_bootstrap10000"] = _best(
        lambda: S.dice_scores(pred, target, 10, ci="bootstrap", n_resamples=10_000))
    return out


if __name__ == "__main__":
    result = main()
    text = json.dumps(result, indent=2)
    print(text)
    path = Path(__file__).resolve().parent / "results" / "stats.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text + "\n")
