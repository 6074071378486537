"""Optional kNN check of the teacher during pre-training: are the CLS features getting useful?

The labelled volumes (ids of a CSV found in the prepared-volume store) are embedded with the
current teacher (whole volume, run normalisation, token budget ``max_patches``); a cosine kNN
(k neighbours, score = fraction of positive neighbours) is scored by AUROC per target column:
train → val/test when the CSV has a ``split`` column with both, else leave-one-out over all
labelled volumes. A rising AUROC is a cheap sign of learning; a flat 0.5 with falling loss hints
at collapse.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["KnnMonitor", "knn_scores"]

logger = logging.getLogger("voxelfm.ssl")


def knn_scores(train_x: np.ndarray, train_y: np.ndarray, query_x: np.ndarray, k: int,
               *, leave_one_out: bool = False) -> np.ndarray:
    """Fraction of positive labels among the ``k`` cosine-nearest training rows of each query.

    ``leave_one_out``: ``query_x`` is ``train_x`` and each row's own entry is excluded.
    """
    def unit(a: np.ndarray) -> np.ndarray:
        return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)

    sims = unit(query_x) @ unit(train_x).T
    if leave_one_out:
        np.fill_diagonal(sims, -np.inf)
    k = max(1, min(int(k), train_x.shape[0] - (1 if leave_one_out else 0)))
    idx = np.argpartition(-sims, kth=k - 1, axis=1)[:, :k]
    return train_y[idx].mean(axis=1)


class KnnMonitor:
    """Embeds the labelled volumes of a store and scores a kNN classifier by AUROC.

    Args:
        store: the prepared-volume store (``ids``, ``open(id)``, optional ``spacing(id)``).
        labels_csv: CSV with an ``id`` column (store ids) and the target column(s).
        target: one or several 0/1 columns.
        k: neighbours.
        patch_size: the model's patch side (for the token budget).
        max_patches: token budget per volume (keeps the check fast).
        max_volumes: use at most this many labelled volumes (first rows).
    """

    def __init__(self, store: Any, labels_csv: str | os.PathLike[str], target: str | Sequence[str], *,
                 k: int = 20, patch_size: int = 14, max_patches: int = 512, max_volumes: int = 400) -> None:
        import pandas as pd

        self.store, self.k, self.patch_size, self.max_patches = store, int(k), int(patch_size), int(max_patches)
        targets = [target] if isinstance(target, str) else list(target)
        targets = [t.strip() for t in targets for t in t.split(",") if t.strip()]
        df = pd.read_csv(labels_csv)
        if "id" not in df.columns:
            raise ValueError(f"{labels_csv}: needs an 'id' column matching the store ids")
        missing = [t for t in targets if t not in df.columns]
        if missing:
            raise ValueError(f"{labels_csv}: no column(s) {missing}; columns: {list(df.columns)[:20]}")
        df["id"] = df["id"].astype(str)
        store_ids = set(map(str, store.ids))
        df = df[df["id"].isin(store_ids)].head(int(max_volumes)).reset_index(drop=True)
        if len(df) < 4:
            raise ValueError(f"{labels_csv}: fewer than 4 of its ids are in the volume store")
        self.df, self.targets = df, targets

    @torch.no_grad()
    def embed(self, backbone: torch.nn.Module) -> np.ndarray:
        """``[n, C]`` teacher CLS of the labelled volumes."""
        from voxelfm.preprocess import preprocess_volume

        device = next(backbone.parameters()).device
        feats = []
        spacing_fn = getattr(self.store, "spacing", None)
        for vid in self.df["id"]:
            vol = np.asarray(self.store.open(vid), dtype=np.float32)
            spacing = tuple(spacing_fn(vid)) if spacing_fn is not None else None
            pre = preprocess_volume(vol, backbone.preset, max_patches=self.max_patches,
                                    patch_size=self.patch_size, spacing=spacing)
            x = torch.as_tensor(pre.array, dtype=torch.float32, device=device)[None]
            feats.append(backbone(x)["x_norm_clstoken"][0].float().cpu().numpy())
        return np.stack(feats)

    def evaluate(self, backbone: torch.nn.Module) -> dict[str, Any]:
        """``{"knn_auroc/<target>": float, "knn_auroc_mean": float, "n": int, "protocol": str}``."""
        from sklearn.metrics import roc_auc_score

        was_training = backbone.training
        backbone.eval()
        x = self.embed(backbone)
        backbone.train(was_training)
        split = self.df["split"].astype(str).str.lower() if "split" in self.df.columns else None
        out: dict[str, Any] = {"n": int(len(x))}
        aurocs = []
        for t in self.targets:
            y = self.df[t].to_numpy(dtype=float)
            ok = np.isfinite(y)
            if split is not None and (split == "train").any() and split.isin(["val", "test"]).any():
                tr = ok & (split == "train").to_numpy()
                te = ok & split.isin(["val", "test"]).to_numpy()
                scores, y_eval = knn_scores(x[tr], y[tr], x[te], self.k), y[te]
                out["protocol"] = "train→val/test"
            else:
                scores, y_eval = knn_scores(x[ok], y[ok], x[ok], self.k, leave_one_out=True), y[ok]
                out["protocol"] = "leave-one-out"
            if len(np.unique(y_eval)) < 2:
                out[f"knn_auroc/{t}"] = float("nan")
                continue
            auc = float(roc_auc_score(y_eval, scores))
            out[f"knn_auroc/{t}"] = auc
            aurocs.append(auc)
        out["knn_auroc_mean"] = float(np.mean(aurocs)) if aurocs else float("nan")
        return out
