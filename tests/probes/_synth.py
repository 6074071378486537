"""Synthetic embedding stores with planted signal for the probe tests (no extraction needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from voxelfm.inference.features import Features
from voxelfm.inference.store import EmbeddingStore


def make_store(root: Path, n: int = 120, *, dim: int = 16, grid=(2, 3, 3), seed: int = 0,
               signal: float = 3.0, n_registers: int = 2, variable_grid: bool = False,
               record_fn=None, margin: float = 0.3) -> tuple[EmbeddingStore, pd.DataFrame]:
    """A store of ``n`` items and a label table with planted signal.

    * ``y`` (binary): sign of a latent ``z``; CLS = noise + signal·z·u (u a fixed direction); the
      mean of the patch tokens carries the same signal only on one "lesion" token per volume.
    * ``value`` (regression) = 10·z + 50; ``time``/``event`` survival ordered by z (higher z = shorter);
    * ``cls3`` (multiclass) by tertiles of z; ``a``/``b`` (multilabel) = z > 0, w > 0;
    * ``rel_z, rel_y, rel_x``: centre of the lesion token (relative, centre convention).
    """
    rng = np.random.default_rng(seed)
    store = EmbeddingStore(root)
    u = rng.normal(size=dim)
    u /= np.linalg.norm(u)
    v = rng.normal(size=dim)
    v -= u * (u @ v)
    v /= np.linalg.norm(v)
    marker = rng.normal(size=dim)
    marker /= np.linalg.norm(marker)
    rows = []
    for i in range(n):
        z = rng.normal()
        z = float(np.sign(z) * (margin + abs(z)))  # a margin around 0: classes are separable
        w = rng.normal()
        w = float(np.sign(w) * (margin + abs(w)))
        g = tuple(grid)
        if variable_grid:
            g = (grid[0] + int(rng.integers(0, 2)), grid[1], grid[2] + int(rng.integers(0, 2)))
        cls = rng.normal(size=dim) + signal * z * u + signal * w * v
        patch = rng.normal(size=(*g, dim)) * 0.5
        loc = tuple(int(rng.integers(0, s)) for s in g)
        patch[loc] += 4.0 * marker + signal * z * u + signal * w * v
        regs = rng.normal(size=(n_registers, dim)) + signal * z * u
        rec = record_fn(g) if record_fn else {"token_grid": list(g), "patch_size": 14,
                                               "final_shape": [s * 14 for s in g]}
        f = Features(cls=torch.tensor(cls, dtype=torch.float32), patch=torch.tensor(patch, dtype=torch.float32),
                     registers=torch.tensor(regs, dtype=torch.float32), patch_size_mm=(14.0, 14.0, 14.0),
                     record=rec)
        item = f"case{i:03d}"
        store.write(item, f)
        t = float(np.exp(-z) * 100 * rng.uniform(0.9, 1.1))
        rows.append({"id": item, "patient_id": f"p{i // 2:03d}", "y": int(z > 0), "value": 10 * z + 50,
                     "time": t, "event": int(rng.random() < 0.8), "a": int(z > 0), "b": int(w > 0),
                     "cls3": ["low", "mid", "high"][int(np.digitize(z, [-0.6, 0.6]))],
                     "rel_z": (loc[0] + 0.5) / g[0], "rel_y": (loc[1] + 0.5) / g[1],
                     "rel_x": (loc[2] + 0.5) / g[2], "z": z})
    store.write_index()
    df = pd.DataFrame(rows)
    # patient-grouped split: 60 % / 20 % / 20 % of patients
    pats = df["patient_id"].unique()
    order = np.random.default_rng(seed + 1).permutation(len(pats))
    cut1, cut2 = int(0.6 * len(pats)), int(0.8 * len(pats))
    sp = {p: ("train" if r < cut1 else "val" if r < cut2 else "test") for p, r in zip(pats, np.argsort(order))}
    df["split"] = df["patient_id"].map(sp)
    return store, df
