"""Evidence that pre-training learns: pre-trained vs random-init frozen CLS features on phantom findings.

Pipeline: phantom cohort (``generate_cohort``) → ``prepare_volumes`` (isotropic int16 store) →
``voxelfm.ssl.pretrain`` with ``configs/pretrain/tiny.yaml`` for M minutes (or N steps) → teacher CLS
for every volume with ``extract_features`` (pre-trained teacher and the same architecture with random
weights) → per finding, kNN (cosine) and logistic-regression AUROC on the cohort's held-out split
(fit on train + val, scored on test; also train → val + test) and by 2 × 5-fold cross-validation over
the whole cohort (folds grouped by patient; far less variance than one 75-scan split) → JSON.

Usage::

    .venv/bin/python benchmarks/pretrain_evidence.py --cases 200 --minutes 8
    .venv/bin/python benchmarks/pretrain_evidence.py --workdir /tmp/ev --steps 600   # reuse cohort/store
    .venv/bin/python benchmarks/pretrain_evidence.py summarise results/a.json results/b.json   # across seeds

Prints JSON and writes ``benchmarks/results/pretrain_evidence.json``. Timing-dependent: on a shared
machine fewer steps fit in M minutes (the JSON records steps and throughput).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

FINDINGS_DEFAULT = ("lung_nodule", "pleural_effusion", "emphysema", "cardiomegaly",
                    "arterial_wall_calcification", "coronary_artery_wall_calcification", "lung_opacity",
                    "consolidation", "atelectasis")
# Pre-declared (before any run of the small-data recipe) primary subset: the findings that are
# visible at the evaluation's resolution. The whole volume is embedded at the token count of one
# global crop (64 tokens of 8 voxels for ``tiny``: one token ≈ 2.5-3 cm on a phantom), so only
# large or diffuse findings (fluid volume, lung density, heart size) can be seen; nodules (mm),
# wall calcifications (sub-voxel) and patchy opacities are below that scale. All findings of
# FINDINGS_DEFAULT are always reported too.
FINDINGS_PRIMARY = ("pleural_effusion", "emphysema", "cardiomegaly")


def _embed(model, store, ids, max_patches: int) -> np.ndarray:
    """``[n, C]`` CLS of the prepared (isotropic HU) volumes with the official extraction path."""
    from voxelfm.inference import extract_features

    feats = []
    for vid in ids:
        vol = np.asarray(store.open(vid), dtype=np.float32)
        f = extract_features(model, vol, preset="default", max_patches=max_patches, mode="full", device="cpu")
        feats.append(f.cls.numpy())
    return np.stack(feats)


def _eval_max_patches(cfg) -> int:
    """Tokens of one global crop of pre-training config ``cfg``: the evaluation's token budget."""
    g = cfg.crops.global_crops_size
    g = [g] * 3 if isinstance(g, int) else list(g)
    return int(np.prod([s // int(cfg.student.patch_size) for s in g]))


def _random_twin(model, seed: int, **config_changes):
    """The architecture of ``model`` with random weights (``torch.manual_seed(seed)``), same preset."""
    import dataclasses

    import torch

    from voxelfm.models import build_backbone

    torch.manual_seed(seed)
    twin = build_backbone(dataclasses.replace(model.config, **config_changes))
    twin.preset = model.preset
    return twin.eval()


def _pool_store(work: Path, n: int, seed: int, crop_background: bool, workers: int) -> Path:
    """Folder of a store holding the cohort's volumes plus ``n`` unlabelled pool phantoms (ids ``pool_*``).

    The pool is another cohort seed, so its patients are not the evaluation cohort's; its labels are
    never read. The cohort's prepared arrays are prepared again into the combined store (same rule).
    """
    import pandas as pd

    from voxelfm.data.phantoms import generate_cohort
    from voxelfm.data.volume_store import prepare_volumes

    pool_dir = work / "pool"
    if not (pool_dir / "cohort.csv").is_file():
        generate_cohort(pool_dir, n, seed=seed, progress=False)
    manifest = work / "pool_manifest.csv"
    pool = pd.read_csv(pool_dir / "cohort.csv", dtype={"id": str})
    pd.DataFrame({"id": "pool_" + pool["id"], "path": [str(pool_dir / q) for q in pool["path"]]}).to_csv(
        manifest, index=False)
    out = work / f"store_pool{n}"
    if not out.exists():
        prepare_volumes([str(work / "cohort" / "cohort.csv"), str(manifest)], out, preset="default",
                        crop_background=crop_background, workers=workers)
    return out


def _stored_rows(df, store):
    """``(ids, df)``: the cohort rows whose volume is in the prepared store, in cohort order."""
    stored = set(map(str, store.ids))
    ids = [i for i in df["id"] if i in stored]
    return ids, df.set_index("id").loc[ids].reset_index()


def _logreg_cv(**kwargs):
    """``LogisticRegressionCV(**kwargs)`` with plain L2 stated explicitly where scikit-learn asks for it.

    scikit-learn 1.8+ warns on every fit that the ``l1_ratios`` default and the fitted attributes will
    change in 1.10; ``l1_ratios=(0.0,)`` is the same L2 model (identical predictions) and
    ``use_legacy_attributes=False`` only changes attributes these benchmarks never read.
    """
    import inspect

    from sklearn.linear_model import LogisticRegressionCV

    params = inspect.signature(LogisticRegressionCV).parameters
    if "use_legacy_attributes" in params:
        kwargs.setdefault("l1_ratios", (0.0,))
        kwargs.setdefault("use_legacy_attributes", False)
    return LogisticRegressionCV(**kwargs)


def _fit_score(X: np.ndarray, y: np.ndarray, tr: np.ndarray, te: np.ndarray, k: int, seed: int) -> dict:
    """kNN (cosine) and logistic-regression AUROC, fit on rows ``tr``, scored on rows ``te``."""
    from sklearn.metrics import roc_auc_score
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    knn = KNeighborsClassifier(n_neighbors=min(k, len(tr)), metric="cosine").fit(X[tr], y[tr])
    lr = make_pipeline(StandardScaler(), _logreg_cv(Cs=np.logspace(-4, 1, 8), cv=4, scoring="roc_auc",
                                                    max_iter=5000, random_state=seed))
    lr.fit(X[tr], y[tr])
    return {"knn": float(roc_auc_score(y[te], knn.predict_proba(X[te])[:, 1])),
            "logreg": float(roc_auc_score(y[te], lr.predict_proba(X[te])[:, 1]))}


def _probe_aurocs(X: np.ndarray, df, findings, train_splits, test_splits, k: int, seed: int = 0) -> dict:
    """Per finding: AUROCs fit on the cohort's ``train_splits``, scored on its ``test_splits``."""
    tr = np.flatnonzero(df["split"].isin(train_splits).to_numpy())
    te = np.flatnonzero(df["split"].isin(test_splits).to_numpy())
    out = {}
    for f in findings:
        y = df[f].to_numpy().astype(int)
        if len(np.unique(y[te])) < 2 or y[tr].sum() < 3 or (1 - y[tr]).sum() < 3:
            continue
        out[f] = {**_fit_score(X, y, tr, te, k, seed), "n_test": int(len(te)), "n_test_pos": int(y[te].sum())}
    return out


def _cv_aurocs(X: np.ndarray, df, findings, k: int, folds: int = 5, repeats: int = 2) -> dict:
    """Per finding: AUROCs averaged over ``repeats`` × ``folds``-fold cross-validation on the whole cohort.

    Folds are stratified by the finding and grouped by ``patient_id`` (a patient's scans never sit on
    both sides). Every scan is scored ``repeats`` times, so the estimate has far less variance than one
    75-scan test split; the fold assignment is the same for every backbone (paired comparison).
    """
    from sklearn.model_selection import StratifiedGroupKFold

    groups = df["patient_id"].to_numpy() if "patient_id" in df.columns else np.arange(len(df))
    out = {}
    for f in findings:
        y = df[f].to_numpy().astype(int)
        if min(y.sum(), (1 - y).sum()) < 2 * folds:
            continue
        scores = [_fit_score(X, y, tr, te, k, seed=r)
                  for r in range(repeats)
                  for tr, te in StratifiedGroupKFold(folds, shuffle=True, random_state=r).split(X, y, groups)]
        out[f] = {m: float(np.mean([s[m] for s in scores])) for m in ("knn", "logreg")}
        out[f].update(n=int(len(y)), n_pos=int(y.sum()), n_fits=len(scores))
    return out


def _mean_scores(per_seed: list[dict]) -> dict:
    """Per finding and metric, the mean AUROC over random-init seeds (findings scored for every seed)."""
    common = [f for f in per_seed[0] if all(f in r for r in per_seed)]
    return {f: {**per_seed[0][f], **{m: float(np.mean([r[f][m] for r in per_seed])) for m in ("knn", "logreg")},
                "n_seeds": len(per_seed)} for f in common}


def _mean_of(records: list[dict], key: str) -> float | None:
    """Mean of ``key`` over the metric records that hold a finite value of it (None if none do)."""
    vals = [float(r[key]) for r in records if r.get(key) is not None and np.isfinite(r[key])]
    return float(np.mean(vals)) if vals else None


def _probe_means(scores: dict, primary: list[str]) -> dict:
    """Mean kNN and LR AUROC of per-finding ``scores`` over all findings and over the ``primary`` ones."""
    def mean(metric: str, findings) -> float:
        return float(np.mean([scores[f][metric] for f in findings if f in scores] or [np.nan]))

    return {"knn_mean": mean("knn", scores), "logreg_mean": mean("logreg", scores),
            "primary_knn_mean": mean("knn", primary), "primary_logreg_mean": mean("logreg", primary)}


def _summary(pre: dict, rnd: dict) -> dict:
    common = [f for f in pre if f in rnd]
    d_knn = [pre[f]["knn"] - rnd[f]["knn"] for f in common]
    d_lr = [pre[f]["logreg"] - rnd[f]["logreg"] for f in common]
    return {"findings": common, "n_findings": len(common),
            "pretrained_knn_mean": float(np.mean([pre[f]["knn"] for f in common])),
            "random_knn_mean": float(np.mean([rnd[f]["knn"] for f in common])),
            "pretrained_logreg_mean": float(np.mean([pre[f]["logreg"] for f in common])),
            "random_logreg_mean": float(np.mean([rnd[f]["logreg"] for f in common])),
            "delta_knn_mean": float(np.mean(d_knn)), "delta_logreg_mean": float(np.mean(d_lr)),
            "delta_mean": float(np.mean(d_knn + d_lr)),
            "per_finding": {f: {"pretrained": pre[f], "random": rnd[f]} for f in common}}


def _across_runs(d: list[float]) -> dict:
    """Per-run deltas, their mean and sample sd, and how many runs reach +0.10."""
    return {"deltas": [round(x, 4) for x in d], "mean": float(np.mean(d)),
            "sd": float(np.std(d, ddof=1)) if len(d) > 1 else None,
            "n_runs_at_least_0.10": int(sum(x >= 0.10 for x in d))}


def summarise(paths: list[str]) -> dict:
    """Pre-trained minus random AUROC per run and across runs (e.g. seeds).

    For each protocol (``test``, ``val+test``, ``cv``) and finding set (primary, all), and for each
    of ``both`` (the mean of kNN and LR), ``knn`` and ``logreg``: the delta of every result JSON,
    their mean and sample standard deviation, and the number of runs ≥ +0.10.
    """
    runs = [json.loads(Path(q).read_text()) for q in paths]
    table: dict = {"runs": [{"file": str(q), "overrides": r["overrides"], "steps": r["steps"],
                             "minutes_pretrain": r["minutes_pretrain"], "cases": r["cases"]}
                            for q, r in zip(paths, runs)]}
    for subset, key in (("primary", "results_primary"), ("all", "results")):
        for proto in ("test", "val+test", "cv"):
            scored = [r[key][proto] for r in runs if proto in r.get(key, {})]
            if scored:
                table[f"{subset}/{proto}"] = {
                    probe: _across_runs([x[field] for x in scored])
                    for probe, field in (("both", "delta_mean"), ("knn", "delta_knn_mean"),
                                         ("logreg", "delta_logreg_mean"))}
    return table


def main(argv: list[str] | None = None) -> dict:
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == "summarise":
        out = summarise(argv[1:])
        print(json.dumps(out, indent=2))
        return out
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--minutes", type=float, default=8.0, help="pre-training wall-time budget")
    p.add_argument("--steps", type=int, default=None, help="stop after this many steps instead")
    p.add_argument("--config", default="tiny")
    p.add_argument("--workdir", default=None, help="keeps cohort, store and run (default: a temp folder)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=None, help="data-loader workers (default: config)")
    p.add_argument("--max-patches", type=int, default=None,
                   help="token budget of the evaluation forward (default: tokens of one global crop)")
    p.add_argument("--knn-k", type=int, default=10)
    p.add_argument("--random-seeds", type=int, default=1,
                   help="random-init baselines (seeds --seed, --seed + 1, ...); AUROCs averaged per finding")
    p.add_argument("--findings", default=",".join(FINDINGS_DEFAULT))
    p.add_argument("--primary", default=",".join(FINDINGS_PRIMARY),
                   help="pre-declared subset summarised separately (all findings are always reported)")
    p.add_argument("--crop-background", action="store_true", help="prepare with the body crop")
    p.add_argument("--pool-cases", type=int, default=0,
                   help="extra unlabelled phantoms (cohort seed 1000 + --seed, other patients) added to the "
                        "pre-training store only; evaluation stays on the --cases cohort")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "pretrain_evidence.json"))
    p.add_argument("overrides", nargs="*", help="pre-training config overrides key=value")
    args = p.parse_args(argv)
    if args.random_seeds < 1 or args.pool_cases < 0:
        p.error("--random-seeds must be >= 1 and --pool-cases >= 0")

    os.environ.setdefault("VOXELFM_NO_PROGRESS", "1")
    import pandas as pd
    import torch

    torch.set_num_threads(args.threads)
    from voxelfm.data.phantoms import generate_cohort
    from voxelfm.data.volume_store import VolumeStore, prepare_volumes
    from voxelfm.models import load_backbone
    from voxelfm.ssl import load_config, pretrain

    work = Path(args.workdir) if args.workdir else Path(__import__("tempfile").mkdtemp(prefix="voxelfm-evidence-"))
    work.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    t = time.perf_counter()
    cohort_dir = work / "cohort"
    if not (cohort_dir / "cohort.csv").is_file():
        generate_cohort(cohort_dir, args.cases, seed=args.seed, progress=False)
    df = pd.read_csv(cohort_dir / "cohort.csv")
    df["id"] = df["id"].astype(str)
    timings["phantoms_s"] = time.perf_counter() - t

    t = time.perf_counter()
    store_dir = work / "store"
    if not store_dir.exists():
        prepare_volumes([str(cohort_dir / "cohort.csv")], store_dir, preset="default",
                        crop_background=args.crop_background, workers=args.threads)
    store = VolumeStore(store_dir)
    train_store = store
    if args.pool_cases:
        train_store = VolumeStore(_pool_store(work, args.pool_cases, 1000 + args.seed,
                                              args.crop_background, args.threads))
    timings["prepare_s"] = time.perf_counter() - t

    t = time.perf_counter()
    load_before = os.getloadavg()[0]
    run_dir = work / "run"
    backbone_dir = pretrain(args.config, train_store, run_dir, max_steps=args.steps,
                            max_minutes=None if args.steps else args.minutes, overrides=args.overrides,
                            num_workers=args.workers, show_progress=False)
    timings["pretrain_s"] = time.perf_counter() - t
    load_after = os.getloadavg()[0]
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    run = json.loads((run_dir / "run.json").read_text())

    max_patches = args.max_patches or _eval_max_patches(load_config(args.config, args.overrides))
    pre_model = load_backbone(backbone_dir)
    ids, df = _stored_rows(df, store)
    t = time.perf_counter()
    X_pre = _embed(pre_model, store, ids, max_patches)
    X_rnds = [_embed(_random_twin(pre_model, args.seed + i), store, ids, max_patches)
              for i in range(args.random_seeds)]
    X_rnd_ref = None
    if pre_model.config.layerscale != 1e-5:  # also the random init of the reference (LayerScale 1e-5)
        X_rnd_ref = _embed(_random_twin(pre_model, args.seed, layerscale=1e-5), store, ids, max_patches)
    timings["extract_s"] = time.perf_counter() - t

    findings = [f for f in args.findings.split(",") if f in df.columns]
    primary = [f for f in args.primary.split(",") if f in findings]
    results, results_primary = {}, {}
    protocols = {  # name -> per-finding AUROCs of one feature matrix
        "test": lambda X: _probe_aurocs(X, df, findings, ("train", "val"), ("test",), args.knn_k),
        "val+test": lambda X: _probe_aurocs(X, df, findings, ("train",), ("val", "test"), args.knn_k),
        "cv": lambda X: _cv_aurocs(X, df, findings, args.knn_k),
    }
    for name, score in protocols.items():
        pre, rnd_each = score(X_pre), [score(X) for X in X_rnds]
        rnd = _mean_scores(rnd_each)
        results[name] = _summary(pre, rnd)
        if len(rnd_each) > 1:
            results[name]["random_per_seed"] = [{"seed": args.seed + i, **_probe_means(r, primary)}
                                                for i, r in enumerate(rnd_each)]
        if X_rnd_ref is not None:
            rnd_ref = score(X_rnd_ref)
            results[name]["random_layerscale_1e-5"] = {**_probe_means(rnd_ref, primary), "per_finding": rnd_ref}
        if primary:
            results_primary[name] = _summary({f: pre[f] for f in primary if f in pre},
                                             {f: rnd[f] for f in primary if f in rnd})
    first, last = metrics[0], metrics[-1]
    out = {
        "benchmark": "pretrain_evidence", "config": args.config, "overrides": args.overrides,
        "cases": int(len(df)), "pool_cases": args.pool_cases, "pretrain_volumes": len(train_store.ids),
        "steps": int(run["steps_done"]), "minutes_pretrain": timings["pretrain_s"] / 60,
        "volumes_per_s": run.get("volumes_per_s"), "effective_batch": run["effective_batch_size"],
        "eval_max_patches": max_patches, "random_seeds": args.random_seeds, "threads": args.threads,
        "timings_s": timings,
        "loss_first": {k: first.get(k) for k in ("total", "dino_local", "dino_global", "koleo", "ibot")},
        "loss_last": {k: last.get(k) for k in ("total", "dino_local", "dino_global", "koleo", "ibot",
                                                "teacher_entropy", "ibot_teacher_entropy", "teacher_cls_std")},
        "entropy_last50": {k: _mean_of(metrics[-50:], k) for k in ("teacher_entropy", "ibot_teacher_entropy")},
        "load_average_1min": {"before_pretrain": load_before, "after_pretrain": load_after},
        "results": results,
        "primary_findings": primary,
        "results_primary": results_primary,
        "pass_all_findings": bool(results["test"]["delta_mean"] >= 0.10 and results["test"]["n_findings"] >= 3),
        "pass_primary": bool(bool(results_primary) and results_primary["test"]["delta_mean"] >= 0.10
                             and results_primary["test"]["n_findings"] >= 3),
        "workdir": str(work),
        "note": "CPU timings on a possibly shared machine; AUROCs on small held-out phantom splits are noisy",
    }
    out["pass"] = out["pass_all_findings"] or out["pass_primary"]
    print(json.dumps(out, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
