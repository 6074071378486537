"""Evaluation: per-label P/R/F1 against sklearn, macro F1 over labels present in the truth,
bootstrap CIs, baselines, probe comparison, written results, restructured reports."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score, precision_score, recall_score

from voxelfm.reportgen.evaluate import (
    baseline_reports,
    compare_with_probes,
    evaluate_reports,
    macro_f1,
    most_common_report,
    write_evaluation,
)
from voxelfm.reportgen.labeler import label_reports
from voxelfm.reportgen.restructure import NORMAL_SENTENCE, restructure_report

SENT = {"cardiomegaly": "Mild cardiomegaly.", "pleural_effusion": "Right pleural effusion.",
        "lung_nodule": "A 6 mm nodule in the right upper lobe.", "emphysema": "Centrilobular emphysema."}


def _report(flags: dict[str, int]) -> str:
    parts = [SENT[k] for k, v in flags.items() if v]
    return " ".join(parts) if parts else "No acute findings. Lungs are clear."


def _cohort(n=40, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        flags = {"cardiomegaly": int(rng.random() < 0.3), "pleural_effusion": int(rng.random() < 0.3),
                 "lung_nodule": int(rng.random() < 0.4), "emphysema": 0}
        rows.append({"id": f"c{i:02d}", "split": ["train", "val", "test"][i % 3], "report": _report(flags), **flags})
    return pd.DataFrame(rows)


def test_per_label_metrics_match_sklearn_and_macro_skips_absent_labels():
    truth = _cohort()
    rng = np.random.default_rng(1)
    gen = []
    for _, r in truth.iterrows():  # noisy copies of the truth
        flags = {k: int(r[k]) if rng.random() < 0.7 else 1 - int(r[k]) for k in ("cardiomegaly", "pleural_effusion",
                                                                                  "lung_nodule")}
        gen.append({"id": r["id"], "generated": _report({**flags, "emphysema": 0})})
    gen = pd.DataFrame(gen)
    ev = evaluate_reports(gen, truth, n_resamples=300)
    assert ev.truth_source == "columns"
    assert ev.labels == ["Cardiomegaly", "Lung nodule", "Pleural effusion"]  # emphysema has no positive
    pred = label_reports(gen.set_index("id")["generated"])
    for name in ev.labels:
        r = ev.per_label.loc[name]
        y, p = truth[r.column].to_numpy(), pred[r.column].to_numpy()
        assert r.f1 == pytest.approx(f1_score(y, p, zero_division=0))
        assert r.precision == pytest.approx(precision_score(y, p, zero_division=0))
        assert r.recall == pytest.approx(recall_score(y, p, zero_division=0))
        assert r.tp + r.fp + r.fn + r.tn == len(truth) and r.support == y.sum()
        assert r.f1_ci_low <= r.f1 <= r.f1_ci_high
    assert not ev.per_label.loc["Emphysema", "evaluated"]
    expected = np.mean([ev.per_label.loc[n, "f1"] for n in ev.labels])
    assert ev.macro_f1.value == pytest.approx(expected)
    assert ev.macro_f1.ci_low < ev.macro_f1.value < ev.macro_f1.ci_high
    again = evaluate_reports(gen, truth, n_resamples=300)
    assert (again.macro_f1.ci_low, again.macro_f1.ci_high) == (ev.macro_f1.ci_low, ev.macro_f1.ci_high)
    # truth from the report text (what the reference did) gives the same here
    ev2 = evaluate_reports(gen, truth[["id", "report"]], n_resamples=100)
    assert ev2.truth_source == "report" and ev2.macro_f1.value == pytest.approx(ev.macro_f1.value)


def test_macro_f1_hand_example_and_batched_form():
    y = np.array([[1, 0], [1, 0], [0, 1], [0, 0]])
    p = np.array([[1, 0], [0, 0], [0, 1], [1, 1]])
    # label 0: tp1 fp1 fn1 → 0.5 ; label 1: tp1 fp1 fn0 → 2/3
    assert macro_f1(y, p) == pytest.approx((0.5 + 2 / 3) / 2)
    idx = np.array([[0, 1, 2, 3], [0, 0, 2, 2]])
    assert macro_f1.batched(y[idx], p[idx]) == pytest.approx([macro_f1(y, p), macro_f1(y[[0, 0, 2, 2]], p[[0, 0, 2, 2]])])


def test_baselines_and_perfect_reports():
    truth = _cohort()
    test_ids = list(truth.loc[truth.split == "test", "id"])
    text = most_common_report(truth)
    assert not any(label_reports([text]).iloc[0])  # the normal report
    trivial = evaluate_reports(baseline_reports(test_ids, truth, kind="most_common"), truth, n_resamples=100)
    assert trivial.macro_f1.value == 0.0
    rnd = evaluate_reports(baseline_reports(test_ids, truth, kind="random_train", seed=4), truth, n_resamples=100)
    assert 0.0 <= rnd.macro_f1.value < 1.0
    perfect = pd.DataFrame({"id": truth["id"], "generated": truth["report"]})
    ev = evaluate_reports(perfect, truth, split="test", n_resamples=100)
    assert len(ev.truth) == len(test_ids) and ev.macro_f1.value == 1.0


def test_restructure_keeps_labels_and_shortens():
    text = ("TECHNIQUE: Chest CT.\nFINDINGS:\nLungs: No pulmonary nodule. Moderate right pleural effusion "
            "(approximately 633 mL). There is no emphysema.\nHeart: Mild cardiomegaly. No pericardial effusion.\n"
            "IMPRESSION:\n1. Pleural effusion.\n2. Cardiomegaly.")
    short = restructure_report(text)
    assert short == "Moderate right pleural effusion (approximately 633 mL). Mild cardiomegaly."
    assert label_reports([short]).iloc[0].equals(label_reports([text]).iloc[0])
    assert restructure_report("No acute findings. No effusion.") == NORMAL_SENTENCE
    assert restructure_report(None) == NORMAL_SENTENCE


def test_write_evaluation_and_probe_comparison(tmp_path):
    """Probes on embeddings that encode two labels linearly beat reports that never mention them."""
    import torch

    from voxelfm.inference.features import Features
    from voxelfm.inference.store import EmbeddingStore

    truth = _cohort(n=90, seed=2)
    store = EmbeddingStore(tmp_path / "store")
    g = torch.Generator().manual_seed(0)
    for _, r in truth.iterrows():
        cls = torch.randn(8, generator=g) * 0.3
        cls[0] += 3.0 * r["cardiomegaly"]
        cls[1] += 3.0 * r["pleural_effusion"]
        store.write(r["id"], Features(cls=cls, patch=cls.reshape(1, 1, 1, 8).clone(), registers=torch.zeros(0, 8)))
    test = truth[truth.split == "test"]
    gen = pd.DataFrame({"id": test["id"], "generated": [_report({"lung_nodule": v}) for v in test["lung_nodule"]]})
    ev = evaluate_reports(gen, truth, n_resamples=200)
    cmp = compare_with_probes(store, truth, ev, head="linear", n_resamples=200)
    t = cmp.table
    for name in ("Cardiomegaly", "Pleural effusion"):
        assert t.loc[name, "probe_auroc"] > 0.85 and t.loc[name, "probe_f1"] > 0.5, t.loc[name]
    assert t.loc["Cardiomegaly", "report_f1"] == 0.0 and t.loc["Lung nodule", "report_f1"] == 1.0
    assert cmp.macro_f1.value == pytest.approx(t["probe_f1"].mean())
    base = {"most_common": evaluate_reports(baseline_reports(list(test["id"]), truth), truth, n_resamples=50)}
    paths = write_evaluation(ev, tmp_path / "eval", comparison=cmp, baselines=base, extra={"note": "x"})
    for p in paths.values():
        assert p.is_file() and p.stat().st_size > 0
    md = paths["markdown"].read_text()
    assert "| generated reports |" in md and "probe (threshold 0.5)" in md and "baseline: most common" in md
    res = json.loads(paths["json"].read_text())
    assert res["note"] == "x" and res["generated"]["macro_f1"]["value"] == pytest.approx(ev.macro_f1.value)
    per = pd.read_csv(paths["per_label"])
    assert {"report_f1", "probe_f1", "baseline_f1"} <= set(per.columns)
    assert paths["figure"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
