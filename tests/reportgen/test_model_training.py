"""Report model on a tiny random Llama: LoRA placement, trainable set, loss = CE over the answer,
a training step, generation, save/load, two stages, checkpoint resume, generation files."""

from __future__ import annotations

import json

import pytest
import torch

from voxelfm.reportgen.conversation import IGNORE_INDEX
from voxelfm.reportgen.dataset import ReportDataset, collate_reports
from voxelfm.reportgen.model import LoraSettings, ReportModel, ReportModelConfig
from voxelfm.reportgen.projector import ProjectorConfig
from voxelfm.reportgen.train import TrainConfig, train_report_model, train_two_stages

SMALL = dict(num_queries=3, width=16, num_heads=4, batch_size=4, lora_r=4, checkpoint_every=100)
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _model(lm_dir, lora=True):
    torch.manual_seed(0)
    cfg = ReportModelConfig(lm=str(lm_dir), projector=ProjectorConfig(in_dim=24, out_dim=1, num_queries=3, width=16,
                                                                      num_heads=4),
                            lora=LoraSettings(r=4, alpha=8) if lora else None, stage=2 if lora else 1)
    return ReportModel.create(cfg)


def _batch(store, table, model, n=3, feature="cls"):
    ds = ReportDataset(store, table, model.tokenizer, split="train", feature=feature)
    return collate_reports([ds[i] for i in range(n)], pad_token_id=model.tokenizer.pad_token_id)


def test_lora_on_all_projections_and_only_projector_and_lora_train(lm_dir):
    m = _model(lm_dir)
    assert m.config.projector.out_dim == 64  # set to the LM hidden size
    names = [n for n, _ in m.lm.named_modules()]
    for layer in range(2):
        for t in TARGETS:
            assert any(f"layers.{layer}." in n and n.endswith(f"{t}.lora_A.default") for n in names), (layer, t)
    trainable = [n for n, p in m.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith("projector.") or "lora_" in n for n in trainable)
    assert sum(n.startswith("projector.") for n in trainable) == len(list(m.projector.parameters()))
    assert sum("lora_" in n for n in trainable) == 2 * 2 * len(TARGETS)
    assert not any(p.requires_grad for n, p in m.lm.named_parameters() if "lora_" not in n)
    m1 = _model(lm_dir, lora=False)
    assert all(n.startswith("projector.") for n, p in m1.named_parameters() if p.requires_grad)


def test_loss_is_cross_entropy_over_answer_tokens(lm_dir, store_and_table):
    store, table = store_and_table
    m = _model(lm_dir).eval()
    b = _batch(store, table, m)
    out = m(b["features"], b["input_ids"], b["attention_mask"], b["labels"], feature_mask=b["feature_mask"])
    inj = m._inject(b["features"], b["feature_mask"], b["input_ids"], b["attention_mask"], b["labels"], "right")
    logits = m.lm(inputs_embeds=inj.inputs_embeds, attention_mask=inj.attention_mask).logits
    lab = inj.labels[:, 1:]
    manual = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), lab.reshape(-1),
                                               ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(out.loss, manual, rtol=1e-5, atol=1e-5)
    n_targets = int((b["labels"] != IGNORE_INDEX).sum())
    assert int((inj.labels != IGNORE_INDEX).sum()) == n_targets > 0


def test_one_step_changes_projector_and_lora_only(lm_dir, store_and_table):
    store, table = store_and_table
    m = _model(lm_dir).train()
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    b = _batch(store, table, m)
    m(b["features"], b["input_ids"], b["attention_mask"], b["labels"], feature_mask=b["feature_mask"]).loss.backward()
    opt.step()
    for n, p in m.named_parameters():
        changed = not torch.equal(before[n], p.detach())
        if p.requires_grad:
            assert changed, n
        else:
            assert not changed, n


def test_generation_batched_equals_single_and_strategies(lm_dir):
    m = _model(lm_dir).eval()
    torch.manual_seed(3)
    a, c = torch.randn(5, 24), torch.randn(2, 24)
    feats = torch.zeros(2, 5, 24)
    feats[0], feats[1, :2] = a, c
    mask = torch.tensor([[False] * 5, [False, False, True, True, True]])
    both = m.generate(feats, mask, max_new_tokens=6)
    assert both == [m.generate(a[None], max_new_tokens=6)[0], m.generate(c[None], max_new_tokens=6)[0]]
    assert all(isinstance(t, str) for t in both)
    beam = m.generate(a[None], strategy="beam", max_new_tokens=4)
    torch.manual_seed(0)
    nuc1 = m.generate(a[None], strategy="nucleus", max_new_tokens=4)
    torch.manual_seed(0)
    assert m.generate(a[None], strategy="nucleus", max_new_tokens=4) == nuc1 and len(beam) == 1
    with pytest.raises(ValueError, match="strategy"):
        m.generate(a[None], strategy="topk")


def test_save_load_roundtrip(lm_dir, store_and_table, tmp_path):
    store, table = store_and_table
    m = _model(lm_dir).eval()
    with torch.no_grad():
        for n, p in m.lm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)  # non-trivial adapters
    b = _batch(store, table, m)
    ref = m(b["features"], b["input_ids"], b["attention_mask"], feature_mask=b["feature_mask"]).logits
    m.save(tmp_path / "model")
    files = sorted(p.name for p in (tmp_path / "model").iterdir())
    assert files == ["lora", "projector.safetensors", "report_model.json"]
    assert (tmp_path / "model" / "lora" / "adapter_config.json").is_file()
    cfg = json.loads((tmp_path / "model" / "report_model.json").read_text())
    assert cfg["lm"] == str(lm_dir) and cfg["lora"]["target_modules"] == list(TARGETS)
    for merge in (False, True):
        m2 = ReportModel.load(tmp_path / "model", merge_lora=merge).eval()
        out = m2(b["features"], b["input_ids"], b["attention_mask"], feature_mask=b["feature_mask"]).logits
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    from voxelfm.errors import CheckpointError

    with pytest.raises(CheckpointError, match="not a report model folder"):
        ReportModel.load(tmp_path)


def test_two_stages_stage2_starts_from_stage1_projector(lm_dir, store_and_table, tmp_path):
    from safetensors.torch import load_file

    store, table = store_and_table
    r1, r2 = train_two_stages(store, table, tmp_path / "run", lm=str(lm_dir),
                              stage1=TrainConfig.cpu(1, epochs=1, **SMALL),
                              stage2=TrainConfig.cpu(2, epochs=1, lr=1e-12, min_lr=1e-12, **SMALL))
    assert r1.steps == r2.steps == 2 and r1.n_train == 8 and r1.n_val == 2 and r1.val_loss is not None
    p1 = load_file(str(tmp_path / "run/stage1/projector.safetensors"))
    p2 = load_file(str(tmp_path / "run/stage2/projector.safetensors"))
    for k in p1:
        torch.testing.assert_close(p1[k], p2[k], atol=1e-6, rtol=0)
    # the projector's input statistics are those of the training split's tokens, and stage 2 keeps them
    ds = ReportDataset(store, table, _model(lm_dir, lora=False).tokenizer, split="train")
    train_tokens = torch.cat([ds.tokens(i) for i in range(len(ds))]).double()
    torch.testing.assert_close(p1["input_mean"].double(), train_tokens.mean(0), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(p1["input_std"].double(), train_tokens.std(0, unbiased=False), atol=1e-6, rtol=1e-5)
    c1 = json.loads((tmp_path / "run/stage1/report_model.json").read_text())
    c2 = json.loads((tmp_path / "run/stage2/report_model.json").read_text())
    assert c1["lora"] is None and c1["system_prompt"] == "" and c2["lora"]["r"] == 4
    assert c2["system_prompt"].startswith("You are a radiology assistant")
    hist = [json.loads(x) for x in (tmp_path / "run/stage1/history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in hist if "loss" in h] == [1, 2] and any("val_loss" in h for h in hist)


def test_checkpoint_resume_equals_uninterrupted(lm_dir, store_and_table, tmp_path):
    store, table = store_and_table
    cfg = TrainConfig.cpu(2, epochs=2, select="last", lr=5e-3, **SMALL)
    full = train_report_model(store, table, tmp_path / "full", lm=str(lm_dir), config=cfg)
    part = train_report_model(store, table, tmp_path / "part", lm=str(lm_dir),
                              config=TrainConfig.cpu(2, epochs=2, select="last", lr=5e-3, max_minutes=1e-9, **SMALL))
    assert part.stopped_by_time and part.steps == 1
    state = json.loads((tmp_path / "part/checkpoint/trainer_state.json").read_text())
    assert state["step"] == 1 and state["batch"] == 1 and not state["done"]
    assert (tmp_path / "part/checkpoint/optimizer.pt").is_file()
    done = train_report_model(store, table, tmp_path / "part", lm=str(lm_dir), config=cfg)
    assert done.steps == full.steps == 4 and not done.stopped_by_time
    a = ReportModel.load(tmp_path / "full").trainable_state_dict()
    b = ReportModel.load(tmp_path / "part").trainable_state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    from voxelfm.errors import CheckpointError

    with pytest.raises(CheckpointError, match="different settings"):
        train_report_model(store, table, tmp_path / "part", lm=str(lm_dir),
                           config=TrainConfig.cpu(2, epochs=3, select="last", **SMALL))


def test_generate_reports_writes_and_resumes(lm_dir, store_and_table, tmp_path):
    from voxelfm.reportgen.generate import generate_reports

    store, table = store_and_table
    m = _model(lm_dir)
    m.save(tmp_path / "model")
    df = generate_reports(tmp_path / "model", store, table=table, split="test", max_new_tokens=4,
                          out_dir=tmp_path / "gen")
    assert df["id"].tolist() == ["case010", "case011"] and set(df["split"]) == {"test"}
    assert df["ground_truth"].tolist() == table.set_index("id").loc[["case010", "case011"], "report"].tolist()
    assert (tmp_path / "gen/generated.csv").is_file() and (tmp_path / "gen/reports/case010.txt").is_file()
    meta = json.loads((tmp_path / "gen/generation.json").read_text())
    assert meta["n"] == 2 and meta["decoding"]["do_sample"] is False and meta["decoding"]["max_new_tokens"] == 4
    (tmp_path / "gen/reports/case010.txt").write_text("kept")
    (tmp_path / "gen/reports/case011.txt").unlink()
    df2 = generate_reports(tmp_path / "model", store, table=table, split="test", max_new_tokens=4,
                           out_dir=tmp_path / "gen")
    assert df2.set_index("id").loc["case010", "generated"] == "kept"
    assert json.loads((tmp_path / "gen/generation.json").read_text())["n_generated_now"] == 1


def test_time_clocked_schedule_matches_the_step_schedule_shape_and_follows_the_budget(lm_dir, store_and_table, tmp_path):
    from transformers import get_cosine_with_min_lr_schedule_with_warmup

    from voxelfm.reportgen.train import _cosine_lr

    # the shape: transformers' cosine_with_min_lr schedule evaluated at step / total
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2e-3)
    sch = get_cosine_with_min_lr_schedule_with_warmup(opt, num_warmup_steps=10, num_training_steps=100, min_lr=1e-5)
    for step in range(100):
        assert _cosine_lr(step / 100, 2e-3, 1e-5, 0.1) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9, abs=1e-12)
        opt.step()
        sch.step()
    assert _cosine_lr(1.0, 2e-3, 1e-5, 0.1) == pytest.approx(1e-5)
    # a run whose time budget is already used up trains its only step at the floor learning rate
    store, table = store_and_table
    cfg = TrainConfig.cpu(1, epochs=3, lr=5e-3, min_lr=1e-5, max_minutes=1e-9, lr_clock="time", max_val_examples=1,
                          **SMALL)
    r = train_report_model(store, table, tmp_path / "t", lm=str(lm_dir), config=cfg)
    lrs = [h["lr"] for h in r.history if "lr" in h]
    assert r.stopped_by_time and lrs == [pytest.approx(1e-5)]
    assert r.n_val == 1 and r.val_loss is not None  # validation on the first val case only (2 in the table)
    with pytest.raises(Exception, match="lr_clock"):
        TrainConfig.cpu(1, lr_clock="epochs")
