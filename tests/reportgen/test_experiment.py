"""Experiment helpers: stale generations are discarded when the model changed; length limit."""

from __future__ import annotations

from voxelfm.reportgen.experiment import _drop_stale_generation, auto_max_new_tokens, budget_configs


def test_reports_of_an_earlier_model_are_discarded(tmp_path):
    model, gen = tmp_path / "model", tmp_path / "gen"
    model.mkdir()
    (model / "projector.safetensors").write_bytes(b"v1")
    _drop_stale_generation(model, gen)
    (gen / "reports").mkdir()
    (gen / "reports" / "a.txt").write_text("old")
    _drop_stale_generation(model, gen)            # same model: kept (resume)
    assert (gen / "reports" / "a.txt").is_file()
    (model / "projector.safetensors").write_bytes(b"v2")
    _drop_stale_generation(model, gen)            # training went on: regenerate
    assert not (gen / "reports").exists() and (gen / "model_fingerprint.txt").is_file()


def test_auto_max_new_tokens_and_budget_configs(tok):
    n = auto_max_new_tokens(tok, ["Mild cardiomegaly.", "A 6 mm nodule in the right upper lobe."])
    longest = len(tok("A 6 mm nodule in the right upper lobe.", add_special_tokens=False)["input_ids"])
    assert n == max(16, round(1.25 * (longest + 1)))
    assert auto_max_new_tokens(tok, ["word " * 2000]) == 512
    s1, s2 = budget_configs()
    assert (s1.stage, s2.stage, s1.num_queries, s2.lora_r, s1.epochs) == (1, 2, 8, 16, 20)
