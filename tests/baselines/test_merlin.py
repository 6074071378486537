"""Merlin: parity with the original I3ResNet + MONAI pipeline (merlin-vlm), checkpoint layouts, errors."""

from __future__ import annotations

import warnings
from collections import OrderedDict

import numpy as np
import pytest
import torch

import voxelfm
from tests.baselines import _volumes, oracles
from tests.io import synth
from voxelfm.errors import CheckpointError

pytest.importorskip("monai")

SIZE_RAS = (40, 36, 24)  # small Merlin input for the network tests (R, A, S)


@pytest.fixture(scope="module")
def oracle_and_file(tmp_path_factory):
    """The original I3ResNet with random weights, saved as Merlin's CLIP checkpoint is laid out."""
    model = oracles.merlin_i3resnet(seed=1)
    sd = OrderedDict((f"encode_image.i3_resnet.{k}", v) for k, v in model.state_dict().items())
    sd["encode_text.linear_layer.weight"] = torch.zeros(512, 768)
    sd["encode_text.text_encoder.embeddings.word_embeddings.weight"] = torch.zeros(10, 768)
    sd["logit_scale"] = torch.ones(())
    path = tmp_path_factory.mktemp("merlin") / "i3_resnet_clinical_longformer_best_clip_04-02-2024_23-21-36_epoch_99.pt"
    torch.save(sd, path)  # MerlinArchitecture.state_dict(): a raw OrderedDict
    return model, path


def test_forward_matches_the_original_i3resnet(oracle_and_file):
    oracle, path = oracle_and_file
    ours = voxelfm.load_backbone("merlin", weights=path.parent, input_size=SIZE_RAS)
    assert ours.source["format"] == "merlin-clip" and ours.source["dropped_keys"] > 0
    g = torch.Generator().manual_seed(0)
    ras = torch.rand(2, 1, *SIZE_RAS, generator=g)  # the original's input (B, 1, R, A, S)
    captured = {}
    oracle.layer4.register_forward_hook(lambda m, i, o: captured.__setitem__("layer4", o))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.utils.checkpoint's use_reentrant warning
        emb = oracle(ras)[0]  # (B, 2048): ImageEmbedding
        spl = ras[:, 0].flip(1, 2).permute(0, 3, 2, 1)  # (R, A, S) -> (S, P, L)
        out = ours(spl)
    assert out["x_norm_clstoken"].shape == (2, 2048)
    assert oracles.rel_diff(out["x_norm_clstoken"], emb) < 1e-4
    ref_tokens = captured["layer4"].permute(0, 1, 2, 4, 3).flip(3, 4)  # (s, r, a) -> (s, p, l)
    grid = ref_tokens.shape[2:]
    assert out["x_norm_patchtokens"].shape == (2, int(np.prod(grid)), 2048)
    assert oracles.rel_diff(out["x_norm_patchtokens"], ref_tokens.flatten(2).transpose(1, 2)) < 1e-4
    assert tuple(grid) == tuple(-(-n // p) for n, p in zip((24, 36, 40), ours.patch_size))


def test_image_only_checkpoint_and_heads_dropped(oracle_and_file, tmp_path):
    oracle, _ = oracle_and_file
    sd = OrderedDict(oracle.state_dict())  # five-year-prediction layout: bare I3ResNet keys, 1692/6-class head
    assert "classifier.weight" in sd and "contrastive_head.weight" in sd
    torch.save(sd, tmp_path / "resnet_clinical_longformer_five_year_disease_prediction.pt")
    m = voxelfm.load_backbone("merlin", weights=tmp_path / "resnet_clinical_longformer_five_year_disease_prediction.pt",
                              input_size=SIZE_RAS)
    assert m.source["format"] == "merlin-i3resnet" and m.source["dropped_keys"] == 4
    assert torch.equal(m.encoder.layer3[7].conv2.weight, oracle.layer3[7].conv2.weight)


def test_wrong_checkpoints_are_one_clear_error(tmp_path):
    # another family's layout (FMCIB's MONAI resnet50, widen 2: 128-wide conv1 on 1 channel)
    fmcib_like = {"conv1.weight": torch.zeros(128, 1, 7, 7, 7), "bn1.weight": torch.zeros(128),
                  "layer1.0.conv1.weight": torch.zeros(128, 128, 1, 1, 1)}
    torch.save({"trunk_state_dict": fmcib_like}, tmp_path / "model_weights.torch")
    with pytest.raises(CheckpointError, match="not a merlin backbone checkpoint.*trunk_state_dict.conv1.weight") as e:
        voxelfm.load_backbone("merlin", weights=tmp_path / "model_weights.torch")
    assert "\n" not in str(e.value)
    torch.save(fmcib_like, tmp_path / "bare.pt")  # same keys, wrong shapes: a wrong config
    with pytest.raises(CheckpointError, match="does not fit the merlin backbone.*missing key.*shape mismatch") as e:
        voxelfm.load_backbone("merlin", weights=tmp_path / "bare.pt")
    assert "\n" not in str(e.value)
    (tmp_path / "cut.pt").write_bytes((tmp_path / "bare.pt").read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="cut.pt"):
        voxelfm.load_backbone("merlin", weights=tmp_path / "cut.pt")
    with pytest.raises(ValueError, match="input_size must be 3 positive"):
        voxelfm.load_backbone("merlin", weights=None, input_size=(0, 4, 4))


def _oracle_preprocess(path, reader=None):
    _, mt = oracles.merlin_modules()
    t = mt.ImageTransforms
    if reader is not None:  # same chain, an explicit MONAI reader for a DICOM folder
        from monai.transforms import Compose, LoadImaged

        t = Compose([LoadImaged(keys=["image"], reader=reader), *t.transforms[1:]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return t({"image": str(path)})["image"]


def _ours(path):
    from voxelfm.baselines.merlin import preprocess_merlin

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return preprocess_merlin(path)


def _as_ras(spl: torch.Tensor) -> torch.Tensor:
    return spl.flip(1, 2).permute(2, 1, 0)


def test_preprocessing_matches_monai_oblique_lps_nifti(tmp_path):
    path = _volumes.oblique_lps_nifti(tmp_path / "o.nii.gz")
    ref = _oracle_preprocess(path)
    pre = _ours(path)
    assert tuple(ref.shape) == (1, 224, 224, 160) and tuple(pre.array.shape) == (160, 224, 224)
    np.testing.assert_allclose(_as_ras(pre.array).numpy(), ref[0].numpy(), atol=2e-6, rtol=0)
    assert float(ref.max()) > 0.5  # the phantom survives the centre crop
    assert pre.record["preset"] == "merlin" and pre.record["patch_size"] == [16, 32, 32]
    assert pre.record["token_grid"] == [10, 7, 7] and pre.record["spacing"] == pytest.approx([3.0, 1.5, 1.5])


def test_preprocessing_matches_monai_dicom_series(tmp_path):
    folder = _volumes.dicom_series(tmp_path / "dcm")
    ref = _oracle_preprocess(folder, reader="PydicomReader")
    pre = _ours(folder)
    np.testing.assert_allclose(_as_ras(pre.array).numpy(), ref[0].numpy(), atol=2e-6, rtol=0)


def test_geometry_maps_model_voxels_to_the_source(tmp_path):
    from scipy.ndimage import map_coordinates

    from voxelfm.io import read_volume
    from voxelfm.preprocess import apply_geometry_to_points, model_points_to_source

    d, h, w = np.meshgrid(*(np.arange(n) for n in (30, 44, 40)), indexing="ij")
    linear = (-900.0 + 20.0 * d + 10.0 * h + 5.0 * w).astype(np.float32)  # inside the HU window
    synth.write_axial_series(tmp_path, linear, spacing=(2.5, 0.9, 0.8))
    vol = read_volume(tmp_path)
    pre = _ours(tmp_path)
    model_pts = np.array([[80.0, 112.0, 112.0], [75.0, 100.0, 120.0]])
    src_pts = model_points_to_source(model_pts, pre.record)
    np.testing.assert_allclose(apply_geometry_to_points(src_pts, pre.record), model_pts, atol=1e-9)
    aff = np.asarray(pre.record["affine"])  # model voxel -> LPS mm agrees with the source affine
    np.testing.assert_allclose(model_pts @ aff[:3, :3].T + aff[:3, 3], vol.index_to_lps(src_pts), atol=1e-6)
    expected = map_coordinates(vol.array.astype(np.float64), src_pts.T, order=1)
    got = np.array([float(pre.array[tuple(p.astype(int))]) for p in model_pts]) * 2000 - 1000
    np.testing.assert_allclose(got, expected, atol=0.05)
