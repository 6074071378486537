"""FMCIB: parity with fmcib's LoadModel + get_transforms (SeedBasedPatchCropd), seeds, layouts, errors."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import voxelfm
from tests.baselines import _volumes, oracles
from voxelfm.errors import CheckpointError

pytest.importorskip("monai")


@pytest.fixture(scope="module")
def trunk_file(tmp_path_factory):
    trunk = oracles.fmcib_trunk()
    oracles.randomise_(trunk, seed=5)
    path = tmp_path_factory.mktemp("fmcib") / "model_weights.torch"
    torch.save({"trunk_state_dict": trunk.state_dict()}, path)  # the Zenodo layout (VISSL-style trunk)
    return trunk.eval(), path


def test_forward_matches_fmcib_loadmodel(trunk_file):
    trunk, path = trunk_file
    LoadModel = oracles.fmcib_load_model_cls()
    oracle = LoadModel(trunk=oracles.fmcib_trunk(), weights_path=path, heads=[]).eval()
    ours = voxelfm.load_backbone("fmcib", weights=path.parent)
    assert ours.source["format"] == "fmcib-trunk_state_dict"
    x = torch.rand(2, 50, 50, 50, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = oracle(x[:, None])  # (B, 4096): fmcib.run.get_features
        out = ours(x)
    assert ref.shape == (2, 4096)
    assert oracles.rel_diff(out["x_norm_clstoken"], ref) < 1e-4
    assert out["x_norm_patchtokens"].shape == (2, 8, 4096)


def test_lighter_state_dict_layout_drops_heads(trunk_file, tmp_path):
    trunk, _ = trunk_file
    sd = {f"model.trunk.{k}": v for k, v in trunk.state_dict().items()}
    sd.update({"model.heads.0.0.weight": torch.zeros(256, 4096), "model.heads.0.0.bias": torch.zeros(256)})
    torch.save({"epoch": 10, "state_dict": sd, "optimizer_states": [{"state": {}}]}, tmp_path / "ckpt.torch")
    m = voxelfm.load_backbone("fmcib", weights=tmp_path / "ckpt.torch")
    assert m.source["dropped_keys"] == 2
    assert torch.equal(m.trunk.layer4[2].conv3.weight, trunk.layer4[2].conv3.weight)


def test_bad_weights(tmp_path):
    torch.save({"trunk_state_dict": {"conv_init.weight": torch.zeros(32, 1, 3, 3, 3)}}, tmp_path / "x.torch")
    with pytest.raises(CheckpointError, match="not a fmcib backbone checkpoint"):
        voxelfm.load_backbone("fmcib", weights=tmp_path / "x.torch")
    (tmp_path / "model_weights.torch").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CheckpointError, match="model_weights.torch"):
        voxelfm.load_backbone("fmcib", weights=tmp_path)


def _oracle_crop(path, seed_lps, reader):
    t = oracles.fmcib_transforms(reader)
    x, y, z = seed_lps
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return t({"image_path": str(path), "coordX": x, "coordY": y, "coordZ": z})


@pytest.mark.parametrize("kind", ["nifti", "dicom"])
def test_crops_match_get_transforms(tmp_path, kind):
    from voxelfm.baselines.fmcib import preprocess_fmcib
    from voxelfm.io import read_volume

    if kind == "nifti":
        path, reader = _volumes.oblique_lps_nifti(tmp_path / "o.nii.gz"), "NibabelReader"
    else:
        path, reader = _volumes.dicom_series(tmp_path / "dcm"), "PydicomReader"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vol = read_volume(path)
    # centre, and near a corner (clamped + padded); off-grid points: int() truncation of a seed exactly
    # on a voxel centre is decided by ~1e-6 mm float noise between readers (the original too)
    for vox in ([15.3, 22.4, 20.2], [2.2, 40.1, 3.3]):
        lps = vol.index_to_lps(np.array(vox))[0]
        ref = _oracle_crop(path, lps, reader)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pre = preprocess_fmcib(vol, seed=lps)
            pre_vox = preprocess_fmcib(vol, seed=vox, seed_space="voxel")
        assert tuple(ref.shape) == (1, 50, 50, 50)
        np.testing.assert_allclose(pre.array.numpy(), ref[0].numpy(), atol=1e-6, rtol=0)
        np.testing.assert_allclose(pre_vox.array.numpy(), pre.array.numpy(), atol=1e-6)
        assert pre.record["seed"]["lps_mm"] == pytest.approx(list(lps))


def test_seeds_from_manifest_columns(tmp_path):
    from voxelfm.inference import EmbeddingStore, extract_batch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = voxelfm.load_backbone("fmcib", weights=None, crop_size=18)
    ct = _volumes.phantom()
    np.save(tmp_path / "ct.npy", ct)
    (tmp_path / "lesions.csv").write_text("id,path,coordX,coordY,coordZ,seed_d,seed_h,seed_w\n"
                                          "a,ct.npy,20,21,12,,,\nb,ct.npy,,,,12,21,20\n")
    s = extract_batch(model, [str(tmp_path / "lesions.csv")], tmp_path / "out", show_progress=False,
                      spacing=(1, 1, 1))
    assert s.ok == 2
    store = EmbeddingStore(tmp_path / "out")
    a, b = store.load("a"), store.load("b")
    assert a.record["seed"]["space"] == "lps_mm" and b.record["seed"]["space"] == "voxel"
    torch.testing.assert_close(a.cls, b.cls)  # (x, y, z) = (20, 21, 12) mm is voxel (12, 21, 20) at 1 mm
    direct = voxelfm.extract_features(model, ct, seed=(12, 21, 20), seed_space="voxel")
    torch.testing.assert_close(direct.cls, a.cls)
    with pytest.raises(ValueError, match="need all of coordX"):
        model.options_from_columns({"coordX": "1"})
    with pytest.raises(ValueError, match="outside the image"):
        model.preprocess(ct, seed=(500, 500, 500))
    with pytest.warns(UserWarning, match="no seed point"):
        model.preprocess(ct)
