"""Why is the pre-training gain small? Diagnostics on a ``pretrain_evidence.py`` work folder.

For the primary findings (pleural effusion, emphysema, cardiomegaly), 5-fold cross-validation grouped
by patient (the folds of the first repeat of ``pretrain_evidence.py``'s ``cv`` protocol):

* ``knn``: cosine kNN (k = 10) AUROC of the pre-trained and random-init CLS, raw and after whitening
  (PCA to unit variance per component) — is the information there but hidden by the geometry?
* ``pca``: share of variance of the first principal components of the standardised CLS and their
  correlation with cohort covariates (noise level, lung volume, sex, ...) — what dominates?
* ``input_baselines``: logistic regression on the 64-token model input itself: its HU histogram
  (29 bins) and the mean HU of 4 × 4 × 4 blocks — what a CLS could read out at this resolution.
* ``pc1_input_correlation``: correlation of the first principal component of the CLS with simple
  statistics of the model input (fraction of air ≤ −980 HU, of voxels below the normalisation mean,
  of lung-range voxels, of fat, of bone) — which input property dominates the kNN geometry?
* ``density_sensitivity``: median cosine distance between the CLS of a scan and of the same scan
  with every lung-range voxel (−930 to −700 HU) made 100 HU darker (a massive emphysema), against
  the median distance between two patients' CLS — can the backbone see parenchymal density?
* ``patch_embedding``: cosine similarity, after the first block's LayerNorm, of homogeneous patches
  of −1000, −950, −850, −100 and +40 HU, with the norms of the patch-embedding bias and of the
  summed kernel: ``LN(v·a + b)`` of a uniform patch of normalised intensity ``v`` keeps only the sign
  of ``v`` when ``|b| ≪ |a|``.

Usage::

    .venv/bin/python benchmarks/pretrain_diagnostics.py --workdir /tmp/ev --seed 1

Prints JSON and writes ``benchmarks/results/pretrain_diagnostics.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pretrain_evidence import (  # noqa: E402
    FINDINGS_PRIMARY,
    _embed,
    _eval_max_patches,
    _logreg_cv,
    _random_twin,
    _stored_rows,
)


def _cv_auroc(X: np.ndarray, y: np.ndarray, groups: np.ndarray, model: str) -> float:
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedGroupKFold
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    scores = []
    for tr, te in StratifiedGroupKFold(5, shuffle=True, random_state=0).split(X, y, groups):
        if model == "knn":
            clf = KNeighborsClassifier(10, metric="cosine")
        else:
            clf = make_pipeline(StandardScaler(), _logreg_cv(Cs=np.logspace(-4, 1, 6), cv=3, scoring="roc_auc",
                                                             max_iter=3000))
        clf.fit(X[tr], y[tr])
        scores.append(roc_auc_score(y[te], clf.predict_proba(X[te])[:, 1]))
    return float(np.mean(scores))


def _whiten(X: np.ndarray) -> np.ndarray:
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    W = PCA().fit_transform(StandardScaler().fit_transform(X))
    return W / np.maximum(W.std(0), 1e-8)


def _input_features(store, ids, max_patches: int, patch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``[n, 29]`` HU histograms and ``[n, 64]`` 4×4×4 block means of the model input (HU)."""
    import torch

    from voxelfm.preprocess import preprocess_volume

    hist, blocks = [], []
    for vid in ids:
        x = preprocess_volume(np.asarray(store.open(vid), dtype=np.float32), "default", max_patches=max_patches,
                              patch_size=patch_size, normalise=False).array
        t = torch.as_tensor(x).float().reshape(1, 1, *np.shape(x)[-3:])
        hist.append(np.histogram(t.numpy(), bins=np.linspace(-1024, 400, 30))[0] / t.numel())
        blocks.append(torch.nn.functional.adaptive_avg_pool3d(t, 4).flatten().numpy())
    return np.array(hist), np.array(blocks)


def _input_statistics(store, ids, max_patches: int, patch_size: int, mean_hu: float) -> dict[str, np.ndarray]:
    """Per scan: fractions of the model input (HU) in simple intensity classes."""
    from voxelfm.preprocess import preprocess_volume

    out: dict[str, list[float]] = {k: [] for k in ("air", "below_norm_mean", "lung_range", "fat", "bone")}
    for vid in ids:
        x = np.asarray(preprocess_volume(np.asarray(store.open(vid), dtype=np.float32), "default",
                                         max_patches=max_patches, patch_size=patch_size, normalise=False).array)
        out["air"].append(float((x <= -980).mean()))
        out["below_norm_mean"].append(float((x < mean_hu).mean()))
        out["lung_range"].append(float(((x > -980) & (x < -500)).mean()))
        out["fat"].append(float(((x > -200) & (x < -50)).mean()))
        out["bone"].append(float((x > 300).mean()))
    return {k: np.array(v) for k, v in out.items()}


def _density_sensitivity(model, store, ids, max_patches: int) -> dict[str, float]:
    """CLS cosine distance for lung-range voxels −100 HU vs between two patients (medians)."""
    from voxelfm.inference import extract_features

    def cls(x):
        return extract_features(model, x, preset="default", max_patches=max_patches, mode="full", device="cpu").cls.numpy()

    base, darker = [], []
    for vid in ids:
        v = np.asarray(store.open(vid), dtype=np.float32)
        shifted = v.copy()
        shifted[(v > -930) & (v < -700)] -= 100.0
        base.append(cls(v))
        darker.append(cls(shifted))
    b = np.array(base) / np.linalg.norm(base, axis=1, keepdims=True)
    d = np.array(darker) / np.linalg.norm(darker, axis=1, keepdims=True)
    pair = 1.0 - b @ b.T
    between = float(np.median(pair[np.triu_indices(len(b), 1)]))
    shift = float(np.median(1.0 - (b * d).sum(1)))
    return {"lung_minus_100hu": shift, "between_patients": between, "ratio": shift / between}


def _patch_embedding_similarity(model, hu=(-1000, -950, -850, -100, 40)) -> dict:
    """Cosine similarities of homogeneous patches after the first block's LayerNorm."""
    import torch

    p = int(model.patch_size)
    mean, std = float(model.preset.mean), float(model.preset.std)
    x = torch.stack([torch.full((p, p, p), (v - mean) / std) for v in hu])[:, None]
    with torch.no_grad():
        e = model.patch_embed.proj(x).flatten(1)
        z = torch.nn.functional.normalize(model.blocks[0].norm1(e), dim=-1)
    proj = model.patch_embed.proj
    return {"hu": list(hu), "cosine": np.round((z @ z.T).numpy(), 4).tolist(),
            "bias_norm": float(proj.bias.norm()), "summed_kernel_norm": float(proj.weight.sum((1, 2, 3, 4)).norm())}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", required=True, help="a pretrain_evidence.py work folder (cohort/, store/, run/)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random-init backbone (as pretrain_evidence)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "pretrain_diagnostics.json"))
    args = p.parse_args(argv)

    os.environ.setdefault("VOXELFM_NO_PROGRESS", "1")
    import pandas as pd
    import torch
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    torch.set_num_threads(args.threads)
    from voxelfm.data.volume_store import VolumeStore
    from voxelfm.models import load_backbone
    from voxelfm.ssl import load_config

    work = Path(args.workdir)
    df = pd.read_csv(work / "cohort" / "cohort.csv", dtype={"id": str})
    store = VolumeStore(work / "store")
    ids, df = _stored_rows(df, store)
    groups = df["patient_id"].to_numpy()
    pre = load_backbone(work / "run" / "backbone")
    rnd = _random_twin(pre, args.seed)
    max_patches = _eval_max_patches(load_config(work / "run" / "config.yaml"))  # the run's global crop
    feats = {"pretrained": _embed(pre, store, ids, max_patches), "random": _embed(rnd, store, ids, max_patches)}

    out: dict = {"benchmark": "pretrain_diagnostics", "workdir": str(work), "max_patches": max_patches,
                 "knn": {}, "pca": {}, "input_baselines": {}, "pc1_input_correlation": {},
                 "density_sensitivity": {}, "patch_embedding": {}}
    stats = _input_statistics(store, ids, max_patches, int(pre.patch_size), float(pre.preset.mean))
    models = {"pretrained": pre, "random": rnd}
    for name, X in feats.items():
        out["knn"][name] = {f: {"raw": _cv_auroc(X, df[f].to_numpy().astype(int), groups, "knn"),
                                "whitened": _cv_auroc(_whiten(X), df[f].to_numpy().astype(int), groups, "knn")}
                            for f in FINDINGS_PRIMARY}
        Z = StandardScaler().fit_transform(X)
        pca = PCA(3).fit(Z)
        P = pca.transform(Z)
        cov = {"noise_sd": df["noise_sd"], "lung_volume_ml": df["lung_volume_ml"],
               "male": (df["sex"] == "M").astype(float), "age": df["age"],
               **{f: df[f].astype(float) for f in FINDINGS_PRIMARY}}
        out["pca"][name] = {"explained_variance_ratio": [float(v) for v in pca.explained_variance_ratio_],
                            "pc1_correlation": {k: float(np.corrcoef(P[:, 0], v.fillna(0).to_numpy(float))[0, 1])
                                                for k, v in cov.items()}}
        out["pc1_input_correlation"][name] = {k: float(np.corrcoef(P[:, 0], v)[0, 1]) for k, v in stats.items()}
        out["density_sensitivity"][name] = _density_sensitivity(models[name], store, ids[:40], max_patches)
        out["patch_embedding"][name] = _patch_embedding_similarity(models[name])
    hist, blocks = _input_features(store, ids, max_patches, int(pre.patch_size))
    for name, X in {"hu_histogram": hist, "block_means_4x4x4": blocks}.items():
        out["input_baselines"][name] = {f: _cv_auroc(X, df[f].to_numpy().astype(int), groups, "logreg")
                                        for f in FINDINGS_PRIMARY}
    print(json.dumps(out, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
