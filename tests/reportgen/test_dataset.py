"""Report dataset: tokens from the store (pooling, cls+patch), table reading, collation."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from voxelfm.reportgen.conversation import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from voxelfm.reportgen.dataset import ReportDataset, collate_reports, feature_tokens, normalise_split, read_table


def test_feature_tokens(store_and_table):
    store, _ = store_and_table
    cls = feature_tokens(store, "case000", "cls")
    patch = feature_tokens(store, "case000", "patch")
    both = feature_tokens(store, "case000", "cls+patch")
    assert cls.shape == (1, 24) and patch.shape == (12, 24) and both.shape == (13, 24)
    torch.testing.assert_close(both[0], cls[0])
    raw = store.load_tensor("case000", "patch")
    torch.testing.assert_close(patch, raw.reshape(-1, 24))           # (d h w) order
    pooled = feature_tokens(store, "case000", "patch", max_patch_tokens=4)  # grid 2x2x3 → 1x1x2
    assert pooled.shape == (2, 24)
    torch.testing.assert_close(pooled[0], raw[:, :, :2].reshape(-1, 24).mean(0))
    torch.testing.assert_close(pooled[1], raw[:, :, 1:].reshape(-1, 24).mean(0))
    with pytest.raises(ValueError, match="feature"):
        feature_tokens(store, "case000", "registers")


def test_dataset_splits_skips_and_collate(store_and_table, tok):
    store, table = store_and_table
    table = pd.concat([table, pd.DataFrame([{"id": "missing", "split": "train", "report": "x"},
                                            {"id": "case000", "split": "Valid", "report": ""}])])
    train = ReportDataset(store, table, tok, split="train", feature="patch")
    assert len(train) == 8 and "missing" in train.skipped
    val = ReportDataset(store, table, tok, split="val")
    assert normalise_split("Valid") == "val" and len(val) == 2 and "case000" in val.skipped
    item = train[0]
    assert item["tokens"].shape == (12, 24) and item["input_ids"].shape == item["labels"].shape
    assert int((item["input_ids"] == IMAGE_TOKEN_INDEX).sum()) == 1
    a, b = ReportDataset(store, table, tok, split="train", feature="cls")[0], train[1]
    batch = collate_reports([a, b], pad_token_id=tok.pad_token_id)
    assert batch["features"].shape == (2, 12, 24)
    assert batch["feature_mask"][0].tolist() == [False] + [True] * 11 and not batch["feature_mask"][1].any()
    L = max(len(a["input_ids"]), len(b["input_ids"]))
    assert batch["input_ids"].shape == (2, L)
    short = 0 if len(a["input_ids"]) < len(b["input_ids"]) else 1
    n = len([a, b][short]["input_ids"])
    assert batch["attention_mask"][short].tolist() == [1] * n + [0] * (L - n)
    assert torch.all(batch["labels"][short, n:] == IGNORE_INDEX)
    assert torch.all(batch["input_ids"][short, n:] == tok.pad_token_id)


def test_read_table_formats(tmp_path):
    df = pd.DataFrame({"id": ["001", "2"], "report": ["a", "b"], "split": ["train", "test"]})
    df.to_csv(tmp_path / "t.csv", index=False)
    df.to_csv(tmp_path / "t.tsv", index=False, sep="\t")
    df.to_json(tmp_path / "t.jsonl", orient="records", lines=True)
    for name in ("t.csv", "t.tsv", "t.jsonl"):
        out = read_table(tmp_path / name)
        assert out["id"].tolist() == ["001", "2"], name   # ids stay strings (leading zeros kept)
    with pytest.raises(ValueError, match="no 'uid' column"):
        read_table(df, id_col="uid")
    with pytest.raises(FileNotFoundError):
        read_table(tmp_path / "nope.csv")
