"""The backbone contract: registry, weights resolution, loading, extract/batch/CLI dispatch."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

import voxelfm
from voxelfm.baselines import family_names, get_family
from voxelfm.baselines._weights import load_matching, read_state_dict, resolve_weights
from voxelfm.baselines.registry import FAMILY_MODULES
from voxelfm.errors import CheckpointError, ConfigError


@pytest.fixture()
def fake(monkeypatch):
    monkeypatch.setitem(FAMILY_MODULES, "fake", "tests.baselines.fake_family:FAMILY")
    return get_family("fake")


def _load_fake(**kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return voxelfm.load_backbone("fake", weights=None, **kw)


def _ct(shape=(12, 20, 18), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1100, 1500, shape).astype(np.float32)


def test_registry_names_and_lazy_import():
    assert family_names() == ["voxelfm", "merlin", "ctfm", "fmcib", "m3d_clip", "radfm", "ct_clip", "clip2d"]
    code = ("import sys, voxelfm.baselines as b; b.family_names(); "
            "print(any(m.split('.')[0] in ('monai', 'torch', 'open_clip') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
    with pytest.raises(ConfigError, match="unknown backbone 'nope'.*merlin"):
        get_family("nope")


def test_missing_family_module_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(FAMILY_MODULES, "ghost", "voxelfm.baselines.ghost_family:FAMILY")
    with pytest.raises(ConfigError, match="'ghost' is not available"):
        voxelfm.load_backbone("ghost", weights=None)


def test_missing_dependency_names_the_extra(fake, monkeypatch):
    import dataclasses

    from voxelfm.baselines import registry

    patched = dataclasses.replace(fake, requires=("no_such_module_xyz",), extra="baselines")
    monkeypatch.setattr(registry, "get_family", lambda name: patched)
    monkeypatch.setattr("voxelfm.baselines.get_family", lambda name: patched)
    with pytest.raises(ImportError, match=r'pip install "voxelfm\[baselines\]"'):
        voxelfm.load_backbone("fake", weights=None)


def test_random_init_is_seeded_warns_and_keeps_rng(fake):
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    with pytest.warns(UserWarning, match="random-init fake weights: a pipeline check, not a result"):
        a = voxelfm.load_backbone("fake", weights=None)
    after = torch.rand(1)
    assert torch.equal(before, after)  # the caller's RNG is untouched
    b = _load_fake()
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    assert not a.training and a.family == "fake"


def test_unknown_option_and_config_are_errors(fake):
    with pytest.raises(ConfigError, match="no option.*colour.*width"):
        voxelfm.load_backbone("fake", weights=None, colour=1)
    with pytest.raises(ConfigError, match="config= is for the VoxelFM ViT"):
        voxelfm.load_backbone("fake", weights=None, config="vit_tiny")
    with pytest.raises(ConfigError, match="need a backbone name"):
        voxelfm.load_backbone("vit_tiny", weights="x.pt")


def test_voxelfm_name_goes_to_the_vit_loader(tmp_path):
    from voxelfm.models import VisionTransformer3D, save_backbone

    with pytest.warns(UserWarning, match="random-init voxelfm"):
        vit = voxelfm.load_backbone("voxelfm", weights=None, config="vit_tiny")
    assert isinstance(vit, VisionTransformer3D) and vit.config.embed_dim == voxelfm.load_backbone("vit_tiny").config.embed_dim
    save_backbone(vit, tmp_path / "m")
    again = voxelfm.load_backbone("voxelfm", weights=tmp_path / "m")
    assert torch.equal(again.state_dict()["cls_token"], vit.state_dict()["cls_token"])
    old_style = voxelfm.load_backbone(tmp_path / "m")  # today's signature
    assert torch.equal(old_style.state_dict()["cls_token"], vit.state_dict()["cls_token"])


def test_checkpoint_round_trip_strip_and_drop(fake, tmp_path):
    model = _load_fake()
    sd = {f"backbone.{k}": v for k, v in model.state_dict().items()}
    sd["backbone.head.weight"] = torch.zeros(3, 8)
    path = tmp_path / "fake_weights.pt"
    torch.save({"epoch": 3, **sd}, path)
    loaded = voxelfm.load_backbone("fake", weights=tmp_path)  # folder: known file name
    assert loaded.source["path"] == str(path)
    assert loaded.source["dropped_keys"] == 1 and loaded.source["loaded_keys"] == len(model.state_dict())
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)


def test_read_state_dict_flattens_and_rejects_garbage(tmp_path):
    t = torch.arange(4.0)
    torch.save({"trunk_state_dict": {"conv1.weight": t}, "epoch": 1}, tmp_path / "a.torch")
    assert list(read_state_dict(tmp_path / "a.torch")) == ["trunk_state_dict.conv1.weight"]
    torch.save({"w": torch.zeros(1000)}, tmp_path / "b.pt")
    data = (tmp_path / "b.pt").read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="trunc.pt"):
        read_state_dict(tmp_path / "trunc.pt")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="junk.safetensors"):
        read_state_dict(tmp_path / "junk.safetensors")
    torch.save({"epoch": 1}, tmp_path / "empty.pt")
    with pytest.raises(CheckpointError, match="no tensors"):
        read_state_dict(tmp_path / "empty.pt")


def test_load_matching_errors(fake):
    model = _load_fake()
    other = {"encoder.layer.0.weight": torch.zeros(2), "logit_scale": torch.zeros(())}
    with pytest.raises(CheckpointError, match="not a fake backbone checkpoint.*encoder.layer.0.weight"):
        load_matching(model, other, strip=("backbone.",), source="x.pt", family="fake")
    sd = dict(model.state_dict())
    sd["net.0.weight"] = torch.zeros(4, 1, 4, 4, 4)
    with pytest.raises(CheckpointError, match="1 shape mismatch.*net.0.weight \\[4, 1, 4, 4, 4\\]") as e:
        load_matching(model, sd, family="fake")
    assert e.value.mismatched_keys
    sd = {k: v for k, v in model.state_dict().items() if not k.startswith("net.1.")}
    with pytest.raises(CheckpointError, match="missing key.*net.1.weight"):
        load_matching(model, sd, family="fake")
    rep = load_matching(model, sd, family="fake", allow_missing=("net.1.",))
    assert rep.loaded == 2 and "net.1.weight" in rep.missing
    bf16 = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    load_matching(model, {**bf16, "extra.x": torch.zeros(1)}, drop=("extra.",), family="fake")
    assert model.net[0].weight.dtype == torch.float32


def test_resolve_weights_file_folder_hub_cache(fake, tmp_path, monkeypatch):
    f = tmp_path / "w" / "fake_weights.pt"
    f.parent.mkdir()
    torch.save({}, f)
    assert resolve_weights(f, fake) == f
    assert resolve_weights(f.parent, fake) == f
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="no fake weights.*download https://huggingface.co/org/fake"):
        resolve_weights(empty, fake)
    cache = tmp_path / "hub"
    snap = cache / "models--org--fake" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    torch.save({}, snap / "fake_weights.pt")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    assert resolve_weights("org/fake", fake) == snap / "fake_weights.pt"
    with pytest.raises(CheckpointError) as e:
        resolve_weights("org/other", fake)
    msg = str(e.value)
    assert "\n" not in msg and "not in the local Hugging Face cache" in msg and "fake_weights.pt" in msg
    assert str(cache) in msg


def test_extract_features_dispatches_to_the_backbone(fake):
    model = _load_fake()
    ct = _ct()
    f = voxelfm.extract_features(model, ct, spacing=(2.0, 1.0, 1.0))
    pre = model.preprocess(ct, spacing=(2.0, 1.0, 1.0))
    ref = model(pre.array[None])
    assert f.cls.shape == (8,) and f.patch.shape == (4, 4, 4, 8) and f.registers.shape == (0, 8)
    assert torch.allclose(f.cls, ref["x_norm_clstoken"][0], atol=1e-6)
    assert torch.allclose(f.patch.reshape(-1, 8), ref["x_norm_patchtokens"][0], atol=1e-6)
    assert f.record["preset"] == "fake" and f.record["mode"] == "full" and f.record["steps"][0]["op"] == "clip_scale"
    assert f.record["patch_size"] == [4, 4, 4] and f.record["spacing"] == [2.0, 1.0, 1.0]
    assert f.patch_size_mm == (8.0, 4.0, 4.0)
    assert f.record["model"]["backbone"]["family"] == "fake"
    shifted = voxelfm.extract_features(model, ct, shift=0.5)
    assert shifted.record["shift"] == 0.5 and not torch.allclose(shifted.cls, f.cls)
    bf = voxelfm.extract_features(model, ct, spacing=(2.0, 1.0, 1.0), dtype="bf16")
    assert bf.record["dtype"] == "bfloat16" and torch.allclose(bf.cls, f.cls, rtol=0.05, atol=0.05)
    for bad in ({"mode": "chunked"}, {"window": 4}, {"preset": "paper"}, {"crop_background": True},
                {"max_patches": 10}):
        with pytest.raises(ValueError, match="fake"):
            voxelfm.extract_features(model, ct, **bad)
    with pytest.raises(TypeError, match="shift"):
        voxelfm.extract_features(voxelfm.load_backbone("vit_tiny"), ct, shift=1.0)


def test_extract_batch_uses_manifest_columns(fake, tmp_path):
    from voxelfm.inference import EmbeddingStore, extract_batch

    model = _load_fake()
    for i in range(2):
        np.save(tmp_path / f"v{i}.npy", _ct(seed=i))
    (tmp_path / "m.csv").write_text("id,path,shift\na,v0.npy,0.25\nb,v1.npy,\n")
    summary = extract_batch(model, [str(tmp_path / "m.csv")], tmp_path / "out", show_progress=False,
                            spacing=(1, 1, 1))
    assert summary.ok == 2 and summary.all_ok
    store = EmbeddingStore(tmp_path / "out")
    a, b = store.load("a"), store.load("b")
    assert a.record["shift"] == 0.25 and b.record["shift"] == 0.0
    direct = voxelfm.extract_features(model, _ct(seed=0), shift=0.25)
    assert torch.allclose(a.cls, direct.cls, atol=1e-6)
    with pytest.raises(ValueError, match="fake"):
        extract_batch(model, [str(tmp_path / "m.csv")], tmp_path / "out2", mode="chunked")


def test_cli_extract_backbone(fake, tmp_path, capsys):
    from voxelfm.cli.main import main

    np.save(tmp_path / "v.npy", _ct())
    rc = main(["extract", "-i", str(tmp_path / "v.npy"), "-o", str(tmp_path / "emb"), "--backbone", "fake",
               "--workers", "0", "--spacing", "1", "1", "1", "--backbone-option", "width=8"])
    assert rc == 0
    assert (tmp_path / "emb" / "index.csv").read_text().count("ok") == 1
    rc = main(["extract", "-i", str(tmp_path / "v.npy"), "-o", str(tmp_path / "e2"), "--backbone", "fake",
               "--workers", "0", "--backbone-option", "width=4"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if "error" in ln]
    assert rc == 2 and len(err) == 1 and "width must be 8" in err[0]
    rc = main(["extract", "-i", str(tmp_path / "v.npy"), "-o", str(tmp_path / "e3"), "--backbone", "nope"])
    assert rc == 2 and "unknown --backbone 'nope'" in capsys.readouterr().err
    rc = main(["extract", "-i", str(tmp_path / "v.npy"), "-o", str(tmp_path / "e4")])
    assert rc == 2 and "--weights is required" in capsys.readouterr().err


def test_parse_options():
    from voxelfm.cli.extract import parse_options

    assert parse_options(["input_size=96x96x64", "a=3", "b=0.5", "c=true", "d=lung"]) == {
        "input_size": (96, 96, 64), "a": 3, "b": 0.5, "c": True, "d": "lung"}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_options(["nokey"])
