"""Tiny prepared dataset folders (the ``voxelfm datasets prepare`` output contract) and tiny
backbones for the benchmark tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml


def make_prepared(folder: Path, n: int = 24, *, seed: int = 0, side: int = 28) -> Path:
    """``n`` HU volumes (``side``³ voxels, 1 mm) with a bright blob in the positives, and
    manifest.csv, labels.csv, splits.csv, suite.yaml (binary task: logistic on CLS with two data
    fractions, attentive pooling on patch tokens; regression: ridge) as a recipe writes them."""
    rng = np.random.default_rng(seed)
    (folder / "volumes").mkdir(parents=True, exist_ok=True)
    rows, labels = [], []
    splits = np.array(["train"] * (n - 8) + ["val"] * 4 + ["test"] * 4)
    y = np.array([i % 2 for i in range(n)])
    for i in range(n):
        vol = rng.normal(-700, 150, size=(side, side, side)).astype(np.float32)
        c = side // 2 + int(rng.integers(-4, 5))
        r = 3 + int(y[i]) + int(rng.integers(0, 3))
        vol[c - r:c + r, c - r:c + r, c - r:c + r] += 300.0 + 200.0 * y[i]
        sid = f"scan_{i:03d}"
        np.savez(folder / "volumes" / f"{sid}.npz", array=vol, spacing=np.array([1.0, 1.0, 1.0]))
        rows.append({"id": sid, "path": f"volumes/{sid}.npz"})
        labels.append({"id": sid, "patient_id": f"p{i:03d}", "split": splits[i], "finding": int(y[i]),
                       "volume_ml": float(8 * r ** 3 / 1000 + rng.normal(0, 0.1))})
    pd.DataFrame(rows).to_csv(folder / "manifest.csv", index=False)
    lab = pd.DataFrame(labels)
    lab.to_csv(folder / "labels.csv", index=False)
    lab[["id", "patient_id", "split"]].to_csv(folder / "splits.csv", index=False)
    suite = {"name": folder.name, "labels": "labels.csv", "seed": 4, "n_resamples": 100,
             "defaults": {"epochs": 3},
             "tasks": [{"name": "finding", "task": "binary", "target": "finding",
                        "probes": ["logistic", {"head": "attentive", "feature": "patch", "epochs": 2}],
                        "fractions": [0.5, 1.0]},
                       {"name": "volume", "task": "regression", "target": "volume_ml", "probes": ["ridge"]}]}
    (folder / "suite.yaml").write_text(yaml.safe_dump(suite, sort_keys=False))
    (folder / "prepare.json").write_text('{"found": %d, "missing": []}' % n)
    return folder


def make_backbone(folder: Path, seed: int) -> Path:
    """A 2-block vit_tiny with seeded random weights saved as a voxelfm folder."""
    from voxelfm.models import build_backbone, save_backbone

    torch.manual_seed(seed)
    save_backbone(build_backbone("vit_tiny", depth=2), folder)
    return folder


def make_roots(tmp: Path, names: tuple[str, ...] = ("alpha", "beta")) -> Path:
    roots = {}
    for i, name in enumerate(names):
        roots[name] = str(make_prepared(tmp / "prepared" / name, seed=i))
    path = tmp / "roots.yaml"
    path.write_text(yaml.safe_dump(roots))
    return path
