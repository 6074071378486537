"""extract_features: reference parity (paper preset), orientation invariance (default), modes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.inference.conftest import body_volume, cosine, randomised_tiny
from tests.inference.synth import write_lps_dicom, write_ras_nifti
from tests.preprocess import reference_impl as ref
from voxelfm.inference import Features, estimate_forward_bytes, extract_features
from voxelfm.preprocess import Preset


def _assert_matches_reference(f: Features, r: dict, min_cos: float = 0.999) -> None:
    assert f.patch.shape == r["patch"].shape
    assert cosine(f.cls, r["cls"]).min() >= min_cos
    assert cosine(f.patch, r["patch"]).min() >= min_cos
    assert cosine(f.registers, r["registers"][0]).min() >= min_cos
    # in fact identical arithmetic: equal to float tolerance
    assert torch.allclose(f.patch, r["patch"].reshape(f.patch.shape), atol=1e-4)


@pytest.mark.parametrize("crop, budget", [(False, None), (True, None), (True, 40), (False, 12)])
def test_paper_preset_equals_reference_on_arrays(tiny_model, crop, budget):
    vol = body_volume((36, 40, 44))
    vol[0, 0, 0] = 2500.0  # arrays are not clipped by the reference
    mean, std = tiny_model.preset.mean, tiny_model.preset.std
    r = ref.extract_features(tiny_model, torch.from_numpy(vol), (1.0, 1.0, 1.0), 4, mean, std,
                             crop_background=crop, max_patches=budget)
    f = extract_features(tiny_model, vol, preset="paper", crop_background=crop, max_patches=budget, mode="full")
    _assert_matches_reference(f, r)
    assert f.record["hu_clip"] is None and f.record["mode"] == "full"
    json.dumps(f.record)


def test_paper_preset_equals_reference_on_nifti(tiny_model, tmp_path):
    vol = body_volume((24, 40, 36), seed=1)
    vol[3, 5, 5] = 3000.0  # NIfTI reader clips to 1900
    path = tmp_path / "ct.nii.gz"
    write_ras_nifti(path, vol, (2.5, 0.7, 0.7))
    img, spacing = ref.load_nifti(path)
    r = ref.extract_features(tiny_model, img, spacing, 4, tiny_model.preset.mean, tiny_model.preset.std,
                             crop_background=True, max_patches=150)
    f = extract_features(tiny_model, str(path), preset="paper", crop_background=True, max_patches=150)
    _assert_matches_reference(f, r)
    assert f.record["orientation"] == "reference_layout" and f.record["hu_clip"] == [-1000.0, 1900.0]
    assert f.record["resample"]["target_spacing"] == pytest.approx(0.75)


def test_paper_preset_equals_reference_on_dicom(tiny_model, tmp_path):
    vol = np.round(body_volume((20, 36, 36), seed=3))
    vol[5, 10, 10] = 1500.0  # the reference DICOM reader clamps to [-1000, 1000]
    write_lps_dicom(tmp_path / "dcm", vol, (1.5, 0.75, 0.75))
    img, spacing = ref.load_dicom(tmp_path / "dcm")
    r = ref.extract_features(tiny_model, img, spacing, 4, tiny_model.preset.mean, tiny_model.preset.std,
                             crop_background=False, max_patches=300)
    f = extract_features(tiny_model, tmp_path / "dcm", preset="paper", max_patches=300)
    _assert_matches_reference(f, r)
    assert f.record["hu_clip"] == [-1000.0, 1000.0]


def test_default_preset_same_features_from_ras_nifti_and_lps_dicom(tiny_model, tmp_path):
    vol = np.round(body_volume((30, 36, 36), seed=2))
    spacing, origin = (2.0, 0.8, 0.8), (-11.0, 7.0, 31.0)
    write_ras_nifti(tmp_path / "ct.nii.gz", vol, spacing, origin)
    write_lps_dicom(tmp_path / "dcm", vol, spacing, origin)
    a = extract_features(tiny_model, tmp_path / "ct.nii.gz", crop_background=True)
    b = extract_features(tiny_model, tmp_path / "dcm", crop_background=True)
    assert a.record["orientation"] == b.record["orientation"] == "SPL"
    assert a.grid == b.grid
    assert cosine(a.patch, b.patch).min() > 0.99999 and cosine(a.cls, b.cls).min() > 0.99999
    assert np.allclose(a.record["affine"], b.record["affine"], atol=1e-4)
    # the paper preset keeps the readers' layouts: the RAS file is flipped in-plane, features differ
    pa = extract_features(tiny_model, tmp_path / "ct.nii.gz", preset="paper")
    pb = extract_features(tiny_model, tmp_path / "dcm", preset="paper")
    assert cosine(pa.patch, pb.patch).mean() < 0.999


def test_default_preset_identical_features_at_a_rounding_edge(tiny_model, tmp_path):
    """12 slices x 2.5 mm at 0.8 mm in-plane resample to 12 * 2.5 / 0.8 = 37.5 slices: banker's
    rounding must see the same 37.5 from the NIfTI (float32 0.8) and the DICOM ("0.8") (regression:
    38 vs 37 slices, different features)."""
    vol = np.round(body_volume((12, 30, 34), seed=3))
    spacing, origin = (2.5, 0.8, 0.8), (-10.0, -20.0, 50.0)
    write_ras_nifti(tmp_path / "ct.nii.gz", vol, spacing, origin)
    write_lps_dicom(tmp_path / "dcm", vol, spacing, origin)
    a = extract_features(tiny_model, tmp_path / "ct.nii.gz")
    b = extract_features(tiny_model, tmp_path / "dcm")
    assert a.record["resample"]["shape"] == b.record["resample"]["shape"] == [38, 30, 34]
    assert torch.equal(a.patch, b.patch) and torch.equal(a.cls, b.cls)


def test_default_preset_windows_arrays_and_paper_does_not(tiny_model):
    vol = body_volume((24, 24, 24))
    vol[10:14, 10:14, 10:14] = 3000.0
    d = extract_features(tiny_model, vol, preset="default")
    clipped = extract_features(tiny_model, np.clip(vol, -1000, 1900), preset="paper")
    p = extract_features(tiny_model, vol, preset="paper")
    assert torch.allclose(d.patch, clipped.patch, atol=1e-5)
    assert not torch.allclose(d.patch, p.patch, atol=1e-3)
    assert d.record["hu_clip"] == [-1000.0, 1900.0]


def test_preset_name_uses_model_normalisation_instance_as_given():
    m = randomised_tiny(1)
    m.preset = m.preset.with_normalisation(-500.0, 400.0)
    vol = body_volume((16, 16, 16))
    f = extract_features(m, vol, preset="paper")
    assert f.record["preset"]["mean"] == -500.0 and f.record["preset"]["std"] == 400.0
    r = ref.extract_features(m, torch.from_numpy(vol), (1, 1, 1), 4, -500.0, 400.0)
    assert torch.allclose(f.patch, r["patch"], atol=1e-5)
    own = Preset(name="mine", hu_window=None, canonical_orientation=False, mean=0.0, std=1000.0)
    g = extract_features(m, vol, preset=own)
    assert g.record["preset"]["mean"] == 0.0 and g.record["preset"]["name"] == "mine"


def test_features_fields_and_patch_size_mm(tiny_model):
    f = extract_features(tiny_model, body_volume((12, 30, 30)), preset="paper")
    assert f.cls.shape == (48,) and f.registers.shape == (4, 48) and f.patch.shape == (3, 7, 7, 48)
    assert f.patch_size_mm == (4.0, 4.0, 4.0)
    assert f.cls.dtype == torch.float32 and f.patch.device.type == "cpu"
    assert f.record["token_grid"] == [3, 7, 7] and f.record["model"]["config"]["embed_dim"] == 48


def test_auto_switches_to_chunked_at_the_budget(tiny_model):
    vol = body_volume((32, 32, 32))  # grid 8³ = 512 tokens
    est = estimate_forward_bytes(512, embed_dim=48, num_heads=2, patch_size=4)
    above = extract_features(tiny_model, vol, mode="auto", memory_budget_gb=1.01 * est / 2**30)
    below = extract_features(tiny_model, vol, mode="auto", memory_budget_gb=0.99 * est / 2**30)
    assert above.record["mode"] == "full" and above.record["windows"] is None
    assert below.record["mode"] == "chunked" and below.record["windows"]["count"] > 1
    win = below.record["windows"]["size"]
    assert estimate_forward_bytes(int(np.prod(win)), embed_dim=48, num_heads=2, patch_size=4) <= 0.99 * est


def test_chunked_with_one_window_equals_full(tiny_model):
    vol = body_volume((24, 28, 32))
    full = extract_features(tiny_model, vol, mode="full")
    one = extract_features(tiny_model, vol, mode="chunked", window=64)
    assert one.record["windows"]["count"] == 1
    assert torch.equal(one.patch, full.patch) and torch.equal(one.cls, full.cls)


def test_chunked_stitching_is_exact_without_token_interaction():
    """With the attention branch off, tokens are independent: stitched == full everywhere."""
    m = randomised_tiny(2, attention=False)
    vol = body_volume((24, 28, 32))
    full = extract_features(m, vol, mode="full")
    for window, overlap in ((4, 0.25), (5, 0.5), ((3, 6, 4), 0.0)):
        ch = extract_features(m, vol, mode="chunked", window=window, overlap=overlap)
        assert ch.record["windows"]["count"] > 1
        assert torch.allclose(ch.patch, full.patch, atol=1e-5)
        assert torch.allclose(ch.registers, full.registers, atol=1e-5)


def test_chunked_agrees_with_full_approximately_when_attention_matters():
    """Peaked random attention: windows lose context (and the global RoPE frame), so the stitched
    tokens agree with the full pass only approximately. Measured: mean cos ≈ 0.96, CLS ≈ 0.99
    (window 6, overlap 0.5, grid 12³); with near-uniform random-init attention both are ≈ 1.0."""
    m = randomised_tiny(0, qkv_std=0.3)
    vol = body_volume((48, 48, 48))  # grid 12³
    full = extract_features(m, vol, mode="full")
    ch = extract_features(m, vol, mode="chunked", window=6, overlap=0.5)
    assert ch.record["windows"]["count"] == 27
    cos = cosine(ch.patch, full.patch)
    assert 0.93 < cos.mean() < 0.995, cos.mean()
    assert cosine(ch.cls, full.cls).item() > 0.97
    # larger windows keep more context
    big = extract_features(m, vol, mode="chunked", window=10, overlap=0.5)
    assert cosine(big.cls, full.cls).item() > cosine(ch.cls, full.cls).item()


def test_bf16_autocast_close_to_fp32(tiny_model):
    vol = body_volume((16, 20, 24))
    a = extract_features(tiny_model, vol)
    b = extract_features(tiny_model, vol, dtype="bf16")
    assert b.record["dtype"] == "bfloat16" and b.patch.dtype == torch.float32
    assert cosine(a.patch, b.patch).mean() > 0.99


def test_training_mode_restored_and_bad_arguments(tiny_model):
    m = randomised_tiny(3)
    m.train()
    extract_features(m, body_volume((16, 16, 16)))
    assert m.training
    with pytest.raises(ValueError, match="mode"):
        extract_features(tiny_model, body_volume((16, 16, 16)), mode="fast")
    with pytest.raises(ValueError, match="preset"):
        extract_features(tiny_model, body_volume((16, 16, 16)), preset="nnunet")
    with pytest.raises(ValueError, match="dtype"):
        extract_features(tiny_model, body_volume((16, 16, 16)), dtype="int8")
    with pytest.raises(ValueError, match="too small"):
        extract_features(tiny_model, np.zeros((2, 30, 30), np.float32))
