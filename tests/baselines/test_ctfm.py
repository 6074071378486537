"""CT-FM: parity with lighter_zoo.SegResEncoder and the CT-FM repository's MONAI chain, layouts, errors."""

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
def saved(tmp_path_factory):
    """A lighter_zoo SegResEncoder with random weights, saved as lighter-zoo saves it (save_pretrained)."""
    cls = oracles.lighter_zoo_encoder()
    torch.manual_seed(3)
    enc = cls(spatial_dims=3, in_channels=1, init_filters=32, blocks_down=(1, 2, 2, 4, 4))
    oracles.randomise_(enc, seed=3)
    folder = tmp_path_factory.mktemp("ctfm") / "ct_fm_feature_extractor"
    enc.save_pretrained(str(folder))
    return enc.eval(), folder


def test_forward_matches_lighter_zoo(saved):
    enc, folder = saved
    assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()
    ours = voxelfm.load_backbone("ctfm", weights=folder)
    assert ours.source["loaded_keys"] == len(enc.state_dict())
    x = torch.rand(2, 24, 40, 36, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        feats = enc(x[:, None])  # list of 5 levels (head_module=None)
        pooled = torch.nn.functional.adaptive_avg_pool3d(feats[-1], 1).flatten(start_dim=1)  # the authors' head
        out = ours(x)
    assert oracles.rel_diff(out["x_norm_clstoken"], pooled) < 1e-5
    assert oracles.rel_diff(out["x_norm_patchtokens"], feats[-1].flatten(2).transpose(1, 2)) < 1e-5
    assert tuple(feats[-1].shape[2:]) == tuple(-(-n // 16) for n in x.shape[1:])


def test_checkpoint_layouts(saved, tmp_path):
    enc, _ = saved
    sd = enc.state_dict()
    # the full ct_fm_segresnet (encoder.* + decoder) and a Lightning checkpoint (state_dict.backbone.*)
    torch.save({**{f"encoder.{k}": v for k, v in sd.items()}, "up_layers.0.conv.weight": torch.zeros(3)},
               tmp_path / "segresnet.pt")
    torch.save({"epoch": 449, "state_dict": {**{f"backbone.{k}": v for k, v in sd.items()},
                                            "criterion.temperature": torch.ones(())}}, tmp_path / "last.ckpt")
    for name in ("segresnet.pt", "last.ckpt"):
        m = voxelfm.load_backbone("ctfm", weights=tmp_path / name)
        assert torch.equal(m.encoder.layers[4].blocks[3].conv2.weight, enc.layers[4].blocks[3].conv2.weight), name
        assert m.source["dropped_keys"] == 1


def test_bad_weights(saved, tmp_path):
    _, folder = saved
    torch.save({"encode_image.i3_resnet.conv1.weight": torch.zeros(64, 3, 3, 7, 7)}, tmp_path / "merlin.pt")
    with pytest.raises(CheckpointError, match="not a ctfm backbone checkpoint"):
        voxelfm.load_backbone("ctfm", weights=tmp_path / "merlin.pt")
    data = (folder / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        voxelfm.load_backbone("ctfm", weights=tmp_path)
    with pytest.raises(ValueError, match="pipeline must be one of"):
        voxelfm.load_backbone("ctfm", weights=None, pipeline="nope")


def _oracle(path, pipeline: str, reader: str | None = None):
    """scripts/feature_extractor.py's TRANSFORMS (repo) / the model card's chain (hf), from the file."""
    import monai

    t = monai.transforms
    load = t.LoadImaged(keys=["image"], ensure_channel_first=True, **({"reader": reader} if reader else {}))
    if pipeline == "repo":
        chain = [load, t.EnsureTyped(keys=["image"]), t.Orientationd(keys=["image"], axcodes="SPL"),
                 t.Spacingd(keys=["image"], pixdim=[3, 1, 1], mode="bilinear"),
                 t.CropForegroundd(keys=["image"], source_key="image"),
                 t.ScaleIntensityRanged(keys="image", a_min=-1024, a_max=2048, b_min=0, b_max=1, clip=True)]
    else:
        chain = [load, t.EnsureTyped(keys=["image"]), t.Orientationd(keys=["image"], axcodes="SPL"),
                 t.ScaleIntensityRanged(keys="image", a_min=-1024, a_max=2048, b_min=0, b_max=1, clip=True),
                 t.CropForegroundd(keys=["image"], source_key="image")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return t.Compose(chain)({"image": str(path)})["image"].as_tensor()[0]


@pytest.mark.parametrize("pipeline", ["repo", "hf"])
def test_preprocessing_matches_the_original_chain(tmp_path, pipeline):
    from voxelfm.baselines.ctfm import preprocess_ctfm

    cases = [(_volumes.oblique_lps_nifti(tmp_path / "o.nii.gz"), None),
             (_volumes.dicom_series(tmp_path / "dcm"), "PydicomReader")]
    for path, reader in cases:
        ref = _oracle(path, pipeline, reader)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pre = preprocess_ctfm(path, pipeline=pipeline)
        assert tuple(pre.array.shape) == tuple(ref.shape), path
        np.testing.assert_allclose(pre.array.numpy(), ref.numpy(), atol=2e-6, rtol=0)
        assert pre.record["pipeline"] == pipeline and pre.record["patch_size"] == [16, 16, 16]
    assert pre.record["spacing"] == pytest.approx([3.0, 1.0, 1.0] if pipeline == "repo" else [2.5, 0.9, 0.8])
