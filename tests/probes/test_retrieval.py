"""Instance retrieval through train_probe on embeddings with known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from voxelfm.inference.features import Features
from voxelfm.inference.store import EmbeddingStore
from voxelfm.probes import train_probe


def _store(root, emb):
    store = EmbeddingStore(root)
    for i, v in enumerate(emb):
        store.write(f"v{i}", Features(cls=torch.tensor(v, dtype=torch.float32), patch=torch.zeros(1, 1, 1, len(v)),
                                      registers=torch.zeros(0, len(v))))
    return store


def test_identical_positives_give_recall_one(tmp_path):
    rng = np.random.default_rng(0)
    n, dim = 150, 32
    lab = np.zeros((n, 2), dtype=int)
    lab[:20, 0] = 1
    lab[20:45, 1] = 1
    emb = rng.normal(size=(n, dim))
    emb[:20] = rng.normal(size=dim)   # all positives of label a share one embedding
    emb[20:45] = rng.normal(size=dim)
    store = _store(tmp_path / "s", emb)
    labels = pd.DataFrame({"id": [f"v{i}" for i in range(n)], "a": lab[:, 0], "b": lab[:, 1]})
    for method in ("expected", "protocol"):
        run = train_probe(store, labels, ["a", "b"], task="retrieval", retrieval_split="all",
                          retrieval_method=method, progress=False, split_col=None)
        assert run.metrics["recall@1"].value == 1.0
        assert run.metrics["recall@1/a"].n == 20 * 19  # every ordered positive pair is a trial
    assert set(run.predictions["label"]) == {"a", "b"}


def test_random_embeddings_give_chance_recall(tmp_path):
    rng = np.random.default_rng(1)
    n = 400
    emb = rng.normal(size=(n, 16))
    lab = (rng.random((n, 3)) < 0.2).astype(int)
    store = _store(tmp_path / "s", emb)
    labels = pd.DataFrame({"id": [f"v{i}" for i in range(n)], **{f"l{j}": lab[:, j] for j in range(3)}})
    run = train_probe(store, labels, ["l0", "l1", "l2"], task="retrieval", retrieval_split="all",
                      progress=False, split_col=None)
    for k in (1, 5, 10):
        assert run.metrics[f"recall@{k}"].value == pytest.approx(k / 100, abs=0.25 * k / 100 + 0.005)
    assert run.config["retrieval"]["random_baseline"][10] == pytest.approx(0.1)
