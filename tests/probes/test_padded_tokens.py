"""Token heads train from padded tensors built once per dataset: batches equal the item-by-item
collation, stay within the cache budget (else the lazy path), and noise never touches the cache."""

from __future__ import annotations

import torch

from tests.probes._synth import make_store
from voxelfm.probes.data import TokenDataset, TokenSource, pad_collate
from voxelfm.probes.heads import AttentivePoolingHead
from voxelfm.probes.trainer import TrainConfig, Trainer


def _bce(out, y):
    return torch.nn.functional.binary_cross_entropy_with_logits(out, y.float())


def test_padded_batches_equal_item_collation_and_respect_budget(tmp_path):
    store, labels = make_store(tmp_path / "s", 24, dim=8, grid=(2, 2, 3), variable_grid=True, seed=3)
    ids = list(labels["id"])
    y = labels["y"].to_numpy()
    ds = TokenDataset(TokenSource(store, "patch"), ids, y)
    dense = ds.padded("centre")
    assert dense is not None and ds.source.dense_bytes > 0
    assert len({tuple(g) for g in dense.grid.tolist()}) > 1  # variable grids
    for idx in ([0, 5, 7], [3], list(range(24))[::-1]):
        got = dense.batch(idx, ds.y)
        ref = pad_collate([ds[i] for i in idx])  # pads to the longest item of the batch too
        for key in ("x", "mask", "coords", "grid", "y", "index"):
            assert torch.equal(got[key], ref[key]), key
    # the dense copy counts against the budget of the source's LRU cache (one bound for both)
    ds.source._cache.clear()  # (filled by the item-by-item comparison above)
    ds.source._used = 0
    ds.source.cache_bytes = ds.source.dense_bytes + 10
    ds.source.get(ids[0])
    assert len(ds.source._cache) == 0 and ds.source._used == 0
    # a budget too small for the dense copy: None, and training falls back to the lazy path
    small = TokenDataset(TokenSource(store, "patch", cache_mb=1e-4), ids, y)
    assert small.padded("centre") is None
    Trainer(AttentivePoolingHead(8, 1, hidden_dim=8, num_heads=2), _bce, TrainConfig(epochs=1, batch_size=8)) \
        .fit(small, small, lambda out: 0.0)


def test_noise_never_changes_the_padded_cache(tmp_path):
    store, labels = make_store(tmp_path / "s", 16, dim=8, grid=(2, 2, 2), seed=4)
    ds = TokenDataset(TokenSource(store, "patch"), list(labels["id"]), labels["y"].to_numpy())
    before = ds.padded("centre").x.clone()
    seen = []
    model = AttentivePoolingHead(8, 1, hidden_dim=8, num_heads=2)
    orig = model.forward

    def spy(tokens, mask=None, coords=None):
        if model.training:
            seen.append(tokens.detach().clone())
        return orig(tokens, mask, coords)

    model.forward = spy
    cfg = TrainConfig(epochs=2, batch_size=4, noise_p=1.0, noise_sigma=3.0, seed=0)
    Trainer(model, _bce, cfg).fit(ds, ds, lambda out: 0.0)
    assert torch.equal(ds.padded("centre").x, before)
    # training inputs were noisy (σ = 3) on every sample
    assert len(seen) == 8 and all(float(t.std()) > 2.0 for t in seen)
