"""load_backbone / save_backbone / save_reference_teacher over every accepted format."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from tests.models.conftest import min_cosine
from voxelfm.errors import CheckpointError
from voxelfm.models import build_backbone, load_backbone, save_backbone, save_reference_teacher
from voxelfm.models.checkpoint import extract_backbone_state_dict, find_reference_checkpoint, infer_config, read_checkpoint
from voxelfm.models.layers import DINOHead
from voxelfm.preprocess import Preset


@pytest.fixture(scope="module")
def teacher_sd(data_dir):
    sd, _, _ = extract_backbone_state_dict(read_checkpoint(data_dir / "teacher_checkpoint.pth"))
    return sd


@pytest.fixture(scope="module")
def reference(data_dir):
    return load_backbone(data_dir / "teacher_checkpoint.pth", config=data_dir / "config.yaml")


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def _same_outputs(a, b, expected):
    x = torch.from_numpy(expected["input_0"])[None]
    with torch.no_grad():
        assert min_cosine(a(x)["x_norm_patchtokens"], b(x)["x_norm_patchtokens"]) >= 0.99999


def test_bare_state_dict_file_and_prefixes(tmp_path, teacher_sd, reference, data_dir):
    for prefix in ("", "module.", "backbone.", "module.backbone.", "backbone.module.", "_orig_mod."):
        path = tmp_path / f"bare_{prefix or 'none'}.pth"
        torch.save({prefix + k: v for k, v in teacher_sd.items()}, path)
        m = load_backbone(path, config=data_dir / "config.yaml")
        assert m.source["format"] == "state-dict"
        _same_weights(m, reference)
    # DINOv2-style wrapper {"model": {...}} / {"state_dict": {...}}, head keys ignored
    torch.save({"state_dict": {**teacher_sd, "dino_head.mlp.0.weight": torch.zeros(2, 2)}}, tmp_path / "w.pth")
    _same_weights(load_backbone(tmp_path / "w.pth", config=data_dir / "config.yaml"), reference)
    torch.save({"model": dict(teacher_sd)}, tmp_path / "m.pth")
    _same_weights(load_backbone(tmp_path / "m.pth", config=data_dir / "config.yaml"), reference)
    # in-memory dicts too
    _same_weights(load_backbone({"teacher": {f"backbone.{k}": v for k, v in teacher_sd.items()}},
                                config=data_dir / "config.yaml"), reference)


def test_infer_config_without_config(data_dir, reference, expected):
    m = load_backbone(data_dir / "teacher_checkpoint.pth")
    assert m.config == reference.config.replace(drop_path_rate=0.0)
    assert m.source["config_source"] == "inferred from the weights"
    _same_outputs(m, reference, expected)


def test_infer_config_swiglu_and_no_registers():
    model = build_backbone(dict(embed_dim=144, depth=3, num_heads=2, patch_size=6, ffn_layer="swiglu",
                                mlp_ratio=2.5, num_register_tokens=0, rope_base=50.0, qkv_bias=False,
                                layerscale=None))
    cfg = infer_config(model.state_dict())
    assert cfg == model.config.replace(drop_path_rate=0.0)


def test_missing_periods_regenerated(tmp_path, teacher_sd, reference, data_dir, expected):
    sd = {k: v for k, v in teacher_sd.items() if k != "rope_embed.periods"}
    torch.save(sd, tmp_path / "noperiods.pth")
    m = load_backbone(tmp_path / "noperiods.pth", config=data_dir / "config.yaml")
    _same_weights(m, reference)
    _same_outputs(m, reference, expected)
    # Without periods and without config, embed_dim 96 is not a multiple of 72 → clear error.
    with pytest.raises(CheckpointError, match="cannot infer num_heads"):
        load_backbone(tmp_path / "noperiods.pth")


def test_missing_periods_head_dim_72_default(tmp_path):
    model = build_backbone(dict(embed_dim=144, depth=1, num_heads=2, patch_size=4))
    torch.save({k: v for k, v in model.state_dict().items() if k != "rope_embed.periods"}, tmp_path / "a.pth")
    m = load_backbone(tmp_path / "a.pth")
    assert m.num_heads == 2 and m.config.rope_base == 100.0


def test_save_backbone_roundtrip(tmp_path, reference, expected):
    reference.preset = Preset(name="default").with_normalisation(-500.0, 400.0)
    try:
        out = save_backbone(reference, tmp_path / "vfm", provenance={"run": "tiny"})
    finally:
        reference.preset = Preset(name="default")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    doc = json.loads((out / "config.json").read_text())
    assert doc["format"] == "voxelfm-backbone" and doc["config"]["embed_dim"] == 96
    assert doc["preset"]["mean"] == -500.0 and doc["provenance"]["run"] == "tiny"
    assert doc["num_parameters"] == reference.num_parameters()
    card = (out / "README.md").read_text()
    assert "not for clinical use" in card and "[B, D, H, W]" in card and "-500" in card
    for src in (out, out / "model.safetensors", out / "config.json"):
        m = load_backbone(src)
        assert m.source["format"] == "voxelfm"
        assert m.preset.mean == -500.0 and m.preset.std == 400.0
        _same_weights(m, reference)
    # The safetensors file alone is self-describing (config in its metadata).
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(out / "model.safetensors", alone / "weights.safetensors")
    m = load_backbone(alone / "weights.safetensors")
    assert m.config == reference.config.replace(drop_path_rate=0.0) and m.preset.mean == -500.0
    # No temporary files left behind.
    assert not list(out.glob(".*"))


def test_reference_run_directory(tmp_path, data_dir, reference):
    hf = tmp_path / "vitb_3d"
    (hf / "checkpoints").mkdir(parents=True)
    shutil.copy(data_dir / "config.yaml", hf / "config.yaml")
    shutil.copy(data_dir / "teacher_checkpoint.pth", hf / "checkpoints" / "99999.pth")
    m = load_backbone(hf)
    assert m.source["format"] == "reference-teacher" and m.source["path"].endswith("99999.pth")
    assert m.source["config_source"].endswith("config.yaml")
    _same_weights(m, reference)
    # Several numbered checkpoints: the highest iteration wins; un-numbered duplicates are ambiguous.
    shutil.copy(data_dir / "training_checkpoint.pth", hf / "checkpoints" / "9999.pth")
    assert find_reference_checkpoint(hf).name == "99999.pth"
    shutil.copy(data_dir / "teacher_checkpoint.pth", hf / "checkpoints" / "final.pth")
    with pytest.raises(CheckpointError, match="several checkpoint files"):
        load_backbone(hf)
    # A reference output_dir layout: eval/training_<it>/teacher_checkpoint.pth
    run = tmp_path / "run"
    for it in (9999, 19999):
        (run / "eval" / f"training_{it}").mkdir(parents=True)
        shutil.copy(data_dir / "teacher_checkpoint.pth", run / "eval" / f"training_{it}" / "teacher_checkpoint.pth")
    shutil.copy(data_dir / "config.yaml", run / "config.yaml")
    assert "training_19999" in str(find_reference_checkpoint(run))
    _same_weights(load_backbone(run), reference)


def test_config_name_random_init():
    m = load_backbone("vit_tiny")
    assert m.source["format"] == "random-init" and m.embed_dim == 216 and not m.training


def test_config_name_random_init_is_reproducible_and_leaves_the_global_rng_alone():
    # regression: each call drew new random weights, so a resumed `voxelfm extract --weights
    # vit_tiny` mixed embeddings of two different random models in one store
    small = dict(embed_dim=48, depth=1, num_heads=1, patch_size=4)  # a config name + a small architecture
    torch.manual_seed(123)
    a = load_backbone("vit_tiny", config=small)
    after_load = torch.rand(3)
    torch.manual_seed(123)
    expected = torch.rand(3)
    b = load_backbone("vit_tiny", config=small)
    assert torch.equal(after_load, expected)
    assert a.source["seed"] == b.source["seed"]
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_readable_errors(tmp_path, teacher_sd, data_dir):
    sd = dict(teacher_sd)
    sd.pop("blocks.1.ls2.gamma")
    sd["blocks.0.attn.extra"] = torch.zeros(3)
    sd["norm.weight"] = torch.zeros(95)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as info:
        load_backbone(tmp_path / "bad.pth", config=data_dir / "config.yaml")
    msg = str(info.value)
    assert "1 missing key(s): blocks.1.ls2.gamma" in msg
    assert "1 unexpected key(s): blocks.0.attn.extra" in msg
    assert "norm.weight [95] vs model [96]" in msg
    assert "\n" not in msg  # one line for the CLI
    assert info.value.missing_keys == ["blocks.1.ls2.gamma"]

    with pytest.raises(CheckpointError, match="shape mismatch"):  # wrong config for the weights
        load_backbone(data_dir / "teacher_checkpoint.pth", config="vit_tiny")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="could not read"):
        load_backbone(tmp_path / "junk.pth")
    torch.save({"student": {"backbone.module.cls_token": torch.zeros(1)}}, tmp_path / "s.pth")
    with pytest.raises(CheckpointError):
        load_backbone(tmp_path / "s.pth")
    torch.save({"model": {"student.backbone.module.cls_token": torch.zeros(1, 1, 96)}}, tmp_path / "s2.pth")
    with pytest.raises(CheckpointError, match="only student weights"):
        load_backbone(tmp_path / "s2.pth")
    with pytest.raises(FileNotFoundError, match="not a config name"):
        load_backbone(tmp_path / "missing.pth")


def test_weights_only_refuses_pickled_objects(tmp_path):
    torch.save({"teacher": {"backbone.x": torch.zeros(1)}, "obj": Preset()}, tmp_path / "pickled.pth")
    with pytest.raises(CheckpointError, match="weights_only"):
        load_backbone(tmp_path / "pickled.pth")


def test_save_reference_teacher_roundtrip(tmp_path, reference, expected):
    head = DINOHead(96, out_dim=64, hidden_dim=32, bottleneck_dim=16)
    path = save_reference_teacher(tmp_path / "t.pth", reference, dino_head=head)
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert list(raw) == ["teacher"]
    keys = list(raw["teacher"])
    assert keys[0] == "backbone.cls_token" and "backbone.rope_embed.periods" in keys
    assert "dino_head.last_layer.parametrizations.weight.original1" in keys
    m = load_backbone(path)
    _same_weights(m, reference)
    # A DDP-style state dict works too.
    wrapped = {f"module.{k}": v for k, v in reference.state_dict().items()}
    save_reference_teacher(tmp_path / "t2.pth", wrapped)
    _same_weights(load_backbone(tmp_path / "t2.pth"), reference)


def test_device_and_eval(data_dir):
    m = load_backbone(data_dir / "teacher_checkpoint.pth", device=torch.device("cpu"))
    assert not m.training and next(m.parameters()).device.type == "cpu"
    assert all(b.sample_drop_ratio == 0.0 for b in m.blocks)  # the teacher: no drop path


def test_legacy_torch_save_format(tmp_path, reference):
    path = tmp_path / "legacy.pth"
    torch.save({"teacher": {f"backbone.{k}": v for k, v in reference.state_dict().items()}}, path,
               _use_new_zipfile_serialization=False)  # cannot be memory-mapped: falls back
    _same_weights(load_backbone(path), reference)


def test_config_embedded_in_checkpoint(tmp_path, data_dir, reference):
    """voxelfm pre-training checkpoints carry the resolved YAML under "config"."""
    raw = read_checkpoint(data_dir / "training_checkpoint.pth")
    text = (data_dir / "config.yaml").read_text().replace("mean: -573.8", "mean: -600.0")
    text = text.replace("upper: 1900.0", "upper: 2000.0")
    torch.save({"iteration": 5, "model": dict(raw["model"]), "config": text}, tmp_path / "step_0000005.pth")
    m = load_backbone(tmp_path / "step_0000005.pth")
    assert m.source["config_source"] == "stored in the checkpoint" and m.source["iteration"] == 5
    assert m.preset.mean == -600.0 and m.preset.hu_window == (-1000.0, 2000.0)
    _same_weights(m, reference)


def test_assumed_normalisation_is_warned(data_dir):
    # regression: a reference .pth without its config.yaml silently used the default mean/std,
    # which the released config may not share
    with pytest.warns(UserWarning, match="no normalisation stored with the weights.*config.yaml"):
        m = load_backbone(data_dir / "teacher_checkpoint.pth")
    assert m.source["normalisation"].startswith("assumed")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = load_backbone(data_dir / "teacher_checkpoint.pth", config=data_dir / "config.yaml")
    assert "normalisation" not in m.source
