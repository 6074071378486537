"""Label joining, patient-grouped splits, nested fractions, lazy token access and padding."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
import torch

from voxelfm.probes.data import (
    TokenSource,
    join_labels,
    pad_collate,
    read_label_table,
    token_coords,
)
from voxelfm.probes.splits import make_splits, nested_fractions


def _table(n=120, seed=0):
    rng = np.random.default_rng(seed)
    pats = [f"p{i // 3}" for i in range(n)]  # 3 scans per patient
    y = np.repeat(rng.random(n // 3) < 0.3, 3).astype(int)
    return pd.DataFrame({"id": [f"s{i}" for i in range(n)], "patient_id": pats, "y": y})


def test_make_splits_grouped_stratified_seeded():
    df = _table()
    sp = make_splits(df["id"], groups=df["patient_id"], stratify=df["y"], seed=4)
    assert set(sp) == {"train", "val", "test"}
    per_patient = pd.DataFrame({"p": df["patient_id"].to_numpy(), "s": sp.to_numpy()}).groupby("p")["s"].nunique()
    assert (per_patient == 1).all()  # no patient spans splits
    counts = sp.value_counts() / len(sp)
    assert counts["train"] == pytest.approx(0.7, abs=0.05) and counts["test"] == pytest.approx(0.15, abs=0.05)
    prev = df.groupby(sp.to_numpy())["y"].mean()
    assert (prev - df["y"].mean()).abs().max() < 0.1  # stratified
    assert sp.equals(make_splits(df["id"], groups=df["patient_id"], stratify=df["y"], seed=4))
    assert not sp.equals(make_splits(df["id"], groups=df["patient_id"], stratify=df["y"], seed=5))


def test_nested_fractions_are_nested_grouped_and_balanced():
    df = _table(300)
    fr = nested_fractions(df["id"], [0.1, 0.25, 0.5, 1.0], groups=df["patient_id"], stratify=df["y"], seed=4)
    sets = [set(fr[f]) for f in (0.1, 0.25, 0.5, 1.0)]
    assert all(a <= b for a, b in itertools.pairwise(sets))
    assert sets[-1] == set(df["id"])
    pid = dict(zip(df["id"], df["patient_id"]))
    for s in sets:
        pats = {pid[i] for i in s}
        assert sum(1 for i in df["id"] if pid[i] in pats) == len(s)  # whole patients only
    n_pat = df["patient_id"].nunique()
    assert len({pid[i] for i in sets[0]}) == int(np.ceil(0.1 * n_pat))
    y = dict(zip(df["id"], df["y"]))
    for s in sets:
        assert np.mean([y[i] for i in s]) == pytest.approx(df["y"].mean(), abs=0.06)


@pytest.mark.filterwarnings("ignore:1 id")
def test_join_labels_rules():
    store_ids = [f"s{i}" for i in range(120)] + ["extra"]
    df = _table()
    df["split"] = make_splits(df["id"], groups=df["patient_id"], seed=0).to_numpy()
    df.loc[0, "y"] = np.nan
    with pytest.warns(UserWarning, match="no label"):
        j = join_labels(store_ids, df, ["y"])
    assert "s0" not in j.index and "extra" not in j.index and len(j) == 119
    leaky = df.copy()
    leaky.loc[1, "split"] = "test" if leaky.loc[1, "split"] != "test" else "train"
    with pytest.raises(ValueError, match="more than one split"):
        join_labels(store_ids, leaky, ["y"])
    with pytest.raises(ValueError, match="no column 'nope'"):
        join_labels(store_ids, df, ["nope"])
    with pytest.raises(ValueError, match="none of the"):
        join_labels(["zzz"], df, ["y"])
    # without a split column: patient-grouped splits are made
    made = join_labels(store_ids, df.drop(columns="split"), ["y"], stratify_col="y")
    assert set(made["split"]) == {"train", "val", "test"}


def test_numeric_looking_ids_stay_strings(tmp_path):
    p = tmp_path / "l.csv"
    pd.DataFrame({"id": ["001", "1.20", "7"], "y": [0, 1, 0]}).to_csv(p, index=False)
    t = read_label_table(p)
    assert list(t["id"]) == ["001", "1.20", "7"]
    with pytest.raises(ValueError, match="no id column"):
        read_label_table(p, id_col="series_uid")


def test_token_source_is_lazy_with_bounded_cache(strong_store):
    store, _ = strong_store
    ids = store.ids[:6]
    one = store.load_tensor(ids[0], "patch")
    nbytes = one.numel() * 4
    src = TokenSource(store, "patch", cache_mb=2.5 * nbytes / 2**20)  # room for two volumes
    for i in ids[:3]:
        src.get(i)
    assert src.loads == 3 and len(src._cache) == 2
    src.get(ids[2])
    assert src.loads == 3  # cached
    src.get(ids[0])
    assert src.loads == 4  # evicted earlier, read again
    tok, grid = src.get(ids[1])
    assert tok.shape == (grid[0] * grid[1] * grid[2], one.shape[-1])
    regs, rgrid = TokenSource(store, "registers").get(ids[0])
    assert rgrid == (2, 1, 1) and regs.shape == (2, one.shape[-1])


def test_pad_collate_masks_and_coordinates():
    a = {"x": torch.ones(2 * 3 * 1, 4), "grid": (2, 3, 1), "y": torch.tensor(1.0), "index": 0}
    b = {"x": torch.ones(1, 4) * 2, "grid": (1, 1, 1), "y": torch.tensor(0.0), "index": 1}
    batch = pad_collate([a, b])
    assert batch["x"].shape == (2, 6, 4)
    assert batch["mask"].tolist() == [[True] * 6, [True] + [False] * 5]
    assert torch.equal(batch["x"][1, 1:], torch.zeros(5, 4))
    assert torch.allclose(batch["coords"][1, 0], torch.tensor([0.5, 0.5, 0.5]))
    c = token_coords((2, 3, 1))
    assert torch.allclose(c[0], torch.tensor([0.25, 1 / 6, 0.5])) and torch.allclose(c[-1], torch.tensor([0.75, 5 / 6, 0.5]))
    corner = token_coords((2, 3, 1), "corner")
    assert torch.allclose(corner[-1], torch.tensor([1.0, 1.0, 0.0]))
