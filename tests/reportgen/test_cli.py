"""`voxelfm report ...` end to end on tiny data (one-line errors, files written)."""

from __future__ import annotations

import json

import pandas as pd

from voxelfm.cli.main import main


def test_label_and_evaluate(tmp_path, capsys):
    truth = pd.DataFrame({"id": ["a", "b", "c", "d"], "split": ["train", "train", "test", "test"],
                          "report": ["Mild cardiomegaly.", "No acute findings.", "Right pleural effusion.",
                                     "Mild cardiomegaly. Right pleural effusion."]})
    truth.to_csv(tmp_path / "truth.csv", index=False)
    assert main(["report", "label", "--reports", str(tmp_path / "truth.csv"), "-o", str(tmp_path / "labels.csv")]) == 0
    labels = pd.read_csv(tmp_path / "labels.csv")
    assert labels["cardiomegaly"].tolist() == [1, 0, 0, 1] and labels["pleural_effusion"].tolist() == [0, 0, 1, 1]
    gen = pd.DataFrame({"id": ["c", "d"], "generated": ["Pleural effusion.", "Cardiomegaly."]})
    gen.to_csv(tmp_path / "gen.csv", index=False)
    rc = main(["report", "evaluate", "--generated", str(tmp_path / "gen.csv"), "--truth", str(tmp_path / "truth.csv"),
               "-o", str(tmp_path / "eval"), "--baseline", "--n-resamples", "50"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "macro F1 over 2 labels" in out and "baseline most common" in out
    res = json.loads((tmp_path / "eval" / "results.json").read_text())
    # cardiomegaly: tp1 fn0 fp0 → 1 ; pleural effusion: tp1 fp0 fn1 → 2/3
    assert res["generated"]["macro_f1"]["value"] == (1.0 + 2 / 3) / 2
    assert (tmp_path / "eval" / "comparison.png").is_file()
    rc = main(["report", "evaluate", "--generated", str(tmp_path / "gen.csv"), "--truth", str(tmp_path / "truth.csv"),
               "-o", str(tmp_path / "eval2"), "--probe"])
    assert rc == 2 and "--probe needs --store" in capsys.readouterr().err


def test_train_and_generate(tmp_path, lm_dir, store_and_table, capsys):
    store, _ = store_and_table
    reports = tmp_path / "reports.csv"
    rc = main(["report", "train", "--store", str(store.root), "--reports", str(reports), "-o", str(tmp_path / "run"),
               "--lm", str(lm_dir), "--stage", "1", "--epochs", "1", "--batch-size", "4", "--queries", "2",
               "--width", "16"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["stage1"]["steps"] == 2 and (tmp_path / "run" / "projector.safetensors").is_file()
    rc = main(["report", "generate", "--store", str(store.root), "--model", str(tmp_path / "run"), "-o",
               str(tmp_path / "gen"), "--reports", str(reports), "--max-new-tokens", "3"])
    assert rc == 0
    gen = pd.read_csv(tmp_path / "gen" / "generated.csv")
    assert gen["id"].tolist() == ["case010", "case011"]
    rc = main(["report", "generate", "--store", str(store.root), "--model", str(tmp_path), "-o", str(tmp_path / "x")])
    assert rc == 2 and "holds no report model" in capsys.readouterr().err
    rc = main(["report", "train", "--store", str(store.root), "--reports", str(reports), "-o", str(tmp_path / "r2"),
               "--lm", str(tmp_path / "no_such_lm")])
    assert rc == 2 and "not available offline" in capsys.readouterr().err
