"""Grounded report generation on a tiny random Llama: the probe's findings and the similar training
reports reach the prompt, training prompts never hold a case's own report or in-fold probability,
targets stay the assistant's answer only, and a planted case (the probe is certain of a pleural
effusion) gives a report the labeler marks effusion-positive after training on a toy set."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from voxelfm.reportgen.consistency import report_disagreements
from voxelfm.reportgen.conversation import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from voxelfm.reportgen.dataset import ReportDataset
from voxelfm.reportgen.evaluate import baseline_reports, evaluate_findings, evaluate_reports, permutation_test
from voxelfm.reportgen.grounding import FINDINGS_PREFIX, Grounding, GroundingConfig, grounded_prompt
from voxelfm.errors import ConfigError
from voxelfm.reportgen.labeler import label_report, label_reports

EFFUSION = "Pleural effusion."
NORMAL = "No abnormal findings."


def _planted(root, n=24, dim=8, n_train=16, n_val=4):
    """Store + table: scans with ``cls[:6] += 3`` (effusion) or ``-= 3`` (normal), plus noise."""
    from voxelfm.inference.features import Features
    from voxelfm.inference.store import EmbeddingStore

    g = torch.Generator().manual_seed(1)
    store = EmbeddingStore(root / "store")
    rows = []
    for i in range(n):
        pos = i % 2 == 0
        cls = torch.randn(dim, generator=g) * 0.3
        cls[:6] += 3.0 if pos else -3.0
        store.write(f"c{i:02d}", Features(cls=cls, patch=torch.randn(1, 1, 2, dim, generator=g), registers=torch.zeros(0, dim)))
        split = "train" if i < n_train else ("val" if i < n_train + n_val else "test")
        rows.append({"id": f"c{i:02d}", "split": split, "report": EFFUSION if pos else NORMAL,
                     "pleural_effusion": int(pos), "cardiomegaly": int(i % 4 == 1)})
    store.write_index()
    return store, pd.DataFrame(rows)


@pytest.fixture()
def planted(tmp_path):
    return _planted(tmp_path)


@pytest.fixture(scope="module")
def learner_dir(tmp_path_factory):
    """The tiny random Llama with token embeddings of std 0.1 instead of 0.02: with the final norm
    frozen, logits of 0.02-std tied embeddings stay below ~1.3, so no adapter can make a report likely."""
    from _tiny import tiny_llama, tiny_tokenizer

    path = tmp_path_factory.mktemp("tiny_learner")
    tok = tiny_tokenizer()
    model = tiny_llama(len(tok))
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(5.0)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path


def test_grounded_prompt_text():
    p = grounded_prompt("<image>\nGenerate a report.", [("Pleural effusion", 0.934)], ["A.", "B."])
    assert p == ("<image>\n" + FINDINGS_PREFIX + " pleural effusion 0.93.\n"
                 "Similar training reports: (1) A. (2) B.\nGenerate a report.")
    assert grounded_prompt("<image>\nX", [], None) == f"<image>\n{FINDINGS_PREFIX} none.\nX"
    assert grounded_prompt("<image>\nX", None, None) == "<image>\nX"


def test_probe_findings_and_similar_reports_reach_the_prompt(planted):
    store, table = planted
    g = Grounding.fit(store, table, GroundingConfig(mode="both", top_k=1, folds=4))
    assert g.labels == ["cardiomegaly", "pleural_effusion"]
    test_ids = ["c20", "c21"]  # c20 effusion, c21 normal
    prompts, probs, dec = g.prompts(test_ids, store.matrix(test_ids), "<image>\nWrite.")
    k = g.labels.index("pleural_effusion")
    assert probs[0, k] > 0.8 and probs[1, k] < 0.2
    assert dec[:, k].tolist() == [1, 0]
    assert "pleural effusion 0." in prompts[0] and "pleural effusion" not in prompts[1].split("report:")[0]
    assert prompts[0].startswith("<image>\n" + FINDINGS_PREFIX)
    assert f"Most similar training report: {EFFUSION}" in prompts[0]
    assert "Most similar training report: No abnormal findings." in prompts[1]  # restructured (abnormal style)


def test_training_prompts_use_out_of_fold_probabilities_and_never_the_case_itself(planted):
    store, table = planted
    g = Grounding.fit(store, table, GroundingConfig(mode="both", top_k=3, folds=4))
    train = [i for i, s in zip(table["id"], table["split"]) if s == "train"]
    x = store.matrix(train)
    _, probs_train, _ = g.prompts(train, x, "<image>\nW", training=True)
    _, probs_fit, _ = g.prompts(train, x, "<image>\nW")
    np.testing.assert_allclose(probs_train, np.stack([g.oof[i] for i in train]))
    assert not np.allclose(probs_train, probs_fit)  # out of fold, not the fitted probe's own
    for row, item in zip(g.neighbours(x, exclude=train), train):
        assert g.train_ids.index(item) not in row and len(row) == 3
    # truth listing: a training case whose OOF decision is wrong still lists its true findings
    g.oof[train[0]] = np.array([0.0, 0.0])
    prompt = g.prompts(train[:1], x[:1], "<image>\nW", training=True)[0][0]
    assert "pleural effusion 0.00" in prompt  # c00 has an effusion


def test_grounded_targets_cover_only_the_answer(planted, tok):
    store, table = planted
    g = Grounding.fit(store, table, GroundingConfig(mode="both", folds=4))
    train = [i for i, s in zip(table["id"], table["split"]) if s == "train"]
    texts, _, _ = g.prompts(train, store.matrix(train), "<image>\nGenerate a radiology report for this CT scan.",
                            training=True)
    ds = ReportDataset(store, table, tok, split="train", prompts=dict(zip(train, texts)), report_style="abnormal")
    for j in range(4):
        item = ds[j]
        ids, labels = item["input_ids"].tolist(), item["labels"].tolist()
        targets = [t for t, lab in zip(ids, labels) if lab != IGNORE_INDEX]
        assert tok.decode(targets) == ds.reports[j] + "<|im_end|>"
        # everything before the answer (system, grounding text, image) is ignored
        first = labels.index(next(lab for lab in labels if lab != IGNORE_INDEX))
        prompt_text = tok.decode([t for t in ids[:first] if t != IMAGE_TOKEN_INDEX])
        assert FINDINGS_PREFIX in prompt_text and "Most similar training report:" in prompt_text
        assert all(lab == IGNORE_INDEX for lab in labels[:first])


def test_consistency_check_lists_missing_and_extra_findings():
    dec = np.array([[1, 0], [0, 0], [0, 1]])
    out = report_disagreements([EFFUSION, "Mild cardiomegaly.", "Mild cardiomegaly."], dec,
                               ["pleural_effusion", "cardiomegaly"])
    assert [(d.missing, d.extra) for d in out] == [((), ()), ((), ("cardiomegaly",)), ((), ())]
    out = report_disagreements([NORMAL], np.array([[1, 1]]), ["pleural_effusion", "cardiomegaly"])
    assert out[0].missing == ("pleural_effusion", "cardiomegaly") and out[0].count == 2


def test_repair_makes_reports_state_exactly_the_probe_findings():
    from voxelfm.reportgen.consistency import ADDED_PREFIX, repair_reports

    report = ("FINDINGS:\nLungs: Consolidative opacity in the right upper lobe. Plate-like atelectasis in the left "
              "lower lobe. No pulmonary nodule.\nHeart: No cardiomegaly. Pericardial effusion of 18 mm.\n"
              "IMPRESSION:\n1. Consolidation in the right upper lobe.\n2. Atelectasis in the left lower lobe.")
    labels = ["consolidation", "atelectasis", "pericardial_effusion", "cardiomegaly", "lung_nodule",
              "arterial_wall_calcification"]
    dec = np.array([[1, 0, 0, 1, 0, 1], [0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 1]])
    before = report_disagreements([report], dec[:1], labels)[0]
    assert set(before.extra) == {"atelectasis", "pericardial_effusion"}
    assert set(before.missing) == {"cardiomegaly", "arterial_wall_calcification"}
    out = repair_reports([report, report, ""], dec, labels)
    assert all(d.count == 0 for d in report_disagreements(out, dec, labels))
    fixed = out[0]
    # the stated findings are the probe's; agreeing negations and the layout stay, denials of a decided
    # finding and dangling list numbers go, the added line says where its findings came from
    assert "atelectasis" not in fixed.lower() and "pericardial" not in fixed.lower() and "\n2." not in fixed
    assert "No pulmonary nodule." in fixed and "No cardiomegaly" not in fixed
    assert fixed.startswith("FINDINGS:\nLungs: Consolidative opacity") and "1. Consolidation" in fixed
    assert fixed.endswith(f"{ADDED_PREFIX} cardiomegaly; arterial wall calcification.")
    assert label_report(out[1]) == label_report(_strip(out[1])) and not any(label_report(out[1]).values())
    assert out[2] == f"{ADDED_PREFIX} arterial wall calcification."
    assert repair_reports([NORMAL], np.zeros((1, 2)), ["pleural_effusion", "cardiomegaly"]) == [NORMAL.strip()]
    with pytest.raises(ValueError, match="decisions"):
        repair_reports([report], dec, labels)


def _strip(text: str) -> str:
    return " ".join(text.split())


def test_retrieval_baseline_permutation_test_and_probe_decisions(planted):
    store, table = planted
    test_ids = [i for i, s in zip(table["id"], table["split"]) if s == "test"]
    near = baseline_reports(test_ids, table, kind="nearest_train", store=store)
    assert near["generated"].tolist() == [EFFUSION, NORMAL, EFFUSION, NORMAL]  # planted: neighbour = same class
    ev = evaluate_reports(near, table, n_resamples=50)
    assert ev.per_label.loc["Pleural effusion", "f1"] == 1.0
    with pytest.raises(Exception, match="store"):
        baseline_reports(test_ids, table, kind="nearest_train")
    # eight cases, perfectly matched: p small; the same reports for everyone: p = 1
    ids = [f"c{i:02d}" for i in range(16)]
    perfect = pd.DataFrame({"id": ids, "generated": [EFFUSION if i % 2 == 0 else NORMAL for i in range(16)]})
    pt = permutation_test(evaluate_reports(perfect, table, n_resamples=20), n_permutations=500, seed=0)
    assert pt["observed_macro_f1"] == pytest.approx(0.5) and pt["p_value"] < 0.01  # cardiomegaly: F1 0
    same = pd.DataFrame({"id": ids, "generated": [EFFUSION] * 16})
    assert permutation_test(evaluate_reports(same, table, n_resamples=20), n_permutations=200)["p_value"] == 1.0
    dec = pd.DataFrame({"id": ids, "pleural_effusion": [int(i % 2 == 0) for i in range(16)]})
    fe = evaluate_findings(dec, table, n_resamples=20)
    assert fe.per_label.loc["Pleural effusion", "f1"] == 1.0 and fe.per_label.loc["Cardiomegaly", "predicted"] == 0


def test_planted_effusion_is_written_after_training_and_checked(learner_dir, tmp_path):
    from voxelfm.reportgen.generate import generate_reports
    from voxelfm.reportgen.model import ReportModel
    from voxelfm.reportgen.train import TrainConfig, train_report_model

    store, table = _planted(tmp_path, n=56, n_train=48, n_val=4)  # test scans c52 (effusion) ... c55
    cfg = TrainConfig.cpu(2, num_queries=2, width=16, num_heads=4, batch_size=8, lora_r=8, lr=1e-2, epochs=6,
                          checkpoint_every=1000, grounding="probe", report_style="original", warmup_ratio=0.0,
                          dropout=0.0, lora_dropout=0.0, log_every=1000)
    torch.manual_seed(0)
    res = train_report_model(store, table, tmp_path / "m", lm=str(learner_dir), config=cfg)
    assert res.train_loss < 1.0, res.train_loss
    model = ReportModel.load(tmp_path / "m", merge_lora=True)
    assert model.grounding is not None and model.config.grounding["mode"] == "probe"
    gen = generate_reports(model, store, table=table, split="test", out_dir=tmp_path / "gen", max_new_tokens=16)
    by_id = dict(zip(gen["id"], gen["generated"]))
    assert label_report(by_id["c52"])["Pleural effusion"], by_id["c52"]  # probe certain of effusion
    assert not label_report(by_id["c53"])["Pleural effusion"], by_id["c53"]
    cons = pd.read_csv(tmp_path / "gen" / "consistency.csv", dtype={"id": str}, keep_default_na=False)
    assert cons.set_index("id").loc["c52", "probe_findings"] == "Pleural effusion"
    assert (cons["n_disagreements"] == gen["n_disagreements"]).all()
    dec = pd.read_csv(tmp_path / "gen" / "probe_decisions.csv", dtype={"id": str}).set_index("id")
    assert dec.loc["c52", "pleural_effusion"] == 1 and dec.loc["c52", "pleural_effusion_prob"] > 0.8
    # repair: the final reports state exactly the probe decisions; the decodings are kept (resumed, not re-run)
    rep = generate_reports(model, store, table=table, split="test", out_dir=tmp_path / "gen", max_new_tokens=16,
                           repair=True)
    assert rep["generated_raw"].tolist() == gen["generated"].tolist()
    cols = [c for c in dec.columns if not c.endswith("_prob")]
    said = label_reports(rep.set_index("id")["generated"])[cols]
    assert (said.to_numpy() == dec.loc[said.index, cols].to_numpy()).all()
    assert (tmp_path / "gen" / "repaired" / "c52.txt").read_text() == rep.set_index("id").loc["c52", "generated"]
    assert json.loads((tmp_path / "gen" / "generation.json").read_text())["repair"] is True
    model.grounding = None  # a pure LLaVA model has no probe findings to repair against
    with pytest.raises(ConfigError, match="grounding probe or both"):
        generate_reports(model, store, table=table, split="test", max_new_tokens=4, repair=True)
