"""m3d_clip, radfm, ct_clip: parity with the ORIGINAL code on golden fixtures, checkpoint layouts,
the original preprocessing voxel for voxel, bad inputs, extraction.

The fixtures in ``tests/baselines/data/native`` were made by ``tests/baselines/golden/make_golden.py``
from the original repositories (commits in ``golden_native.json``): small random-weight
configurations of the original classes saved in the original checkpoint layouts, the original
outputs on a fixed input, and the originals' preprocessing of ``phantom_oblique_lps.nii.gz``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import voxelfm
from voxelfm.errors import CheckpointError

DATA = Path(__file__).parent / "data" / "native"
META = json.loads((DATA / "golden_native.json").read_text())
NIFTI = DATA / "phantom_oblique_lps.nii.gz"

M3D_OPTS = {"img_size": (8, 32, 32), "patch_size": (4, 16, 16), "hidden_size": 48, "mlp_dim": 96, "num_layers": 2,
            "num_heads": 4}
RADFM_OPTS = {k: v for k, v in META["radfm"]["config"].items()}
RADFM_OPTS["max_depth"] = 16
CTCLIP_OPTS = dict(META["ct_clip"]["config"])


def _golden(name: str) -> dict:
    return torch.load(DATA / name, weights_only=True)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _m3d(weights=DATA / "m3d_clip_pytorch_model.bin", **kw):
    return voxelfm.load_backbone("m3d_clip", weights=weights, **{**M3D_OPTS, **kw})


def _radfm(weights=DATA / "radfm_pytorch_model.bin", **kw):
    return voxelfm.load_backbone("radfm", weights=weights, **{**RADFM_OPTS, **kw})


def _ctclip(weights=DATA / "ct_clip_CT-CLIP_v2.pt", **kw):
    return voxelfm.load_backbone("ct_clip", weights=weights, **{**CTCLIP_OPTS, **kw})


# ----------------------------------------------------------------------------- parity with the originals
def test_m3d_clip_matches_the_original_vit():
    model, g = _m3d(), _golden("m3d_clip_golden.pt")
    with torch.no_grad():
        out = model(g["input"][:, 0])  # original (B, 1, D, H, W); ours [B, D, H, W] SPL
    assert _rel(out["x_norm_clstoken"], g["output"][:, 0]) <= 1e-4
    assert _rel(out["x_norm_patchtokens"], g["output"][:, 1:]) <= 1e-4
    src = model.source
    assert src["format"] == "m3d_clip full CLIP" and src["missing_keys"] == []  # MONAI's extra norm: identity
    assert src["dropped_keys"] == 6  # language encoder, two projections, logit scale


def test_radfm_matches_the_original_vit3d():
    model, g = _radfm(), _golden("radfm_golden.pt")
    x = g["input"][:, 0].permute(0, 3, 1, 2)  # original (B, C, H, W, D) → ours [B, D, H, W]
    with torch.no_grad():
        out = model(x)
    tokens = g["tokens"]  # (B, h·w·d, C), depth fastest
    b, n, c = tokens.shape
    h = w = RADFM_OPTS["image_size"] // RADFM_OPTS["image_patch_size"]
    d = x.shape[1] // RADFM_OPTS["frame_patch_size"]
    ref = tokens.reshape(b, h, w, d, c).permute(0, 3, 1, 2, 4).reshape(b, n, c)
    assert _rel(out["x_norm_patchtokens"], ref) <= 1e-4
    assert _rel(out["x_norm_clstoken"], tokens.mean(1)) <= 1e-4
    assert model.source["format"] == "radfm full model" and model.source["dropped_keys"] == 3


def test_ct_clip_matches_the_original_ctclip():
    model, g = _ctclip(), _golden("ct_clip_golden.pt")
    x = g["input"][:, 0].transpose(2, 3)  # original (B, 1, D, H'=R→L, W'=A→P) → ours SPL
    with torch.no_grad():
        out = model(x)
    assert _rel(out["x_norm_clstoken"], g["latent"]) <= 1e-4
    tok = g["tokens"]  # (B, t, h', w', C)
    ref = tok.permute(0, 1, 3, 2, 4).reshape(tok.shape[0], -1, tok.shape[-1])
    assert _rel(out["x_norm_patchtokens"], ref) <= 1e-4
    torch.testing.assert_close(out["x_norm_clstoken"].norm(dim=-1), torch.ones(2))
    enc = _ctclip(tokens="encoder")
    with torch.no_grad():
        pre = enc(x)["x_norm_patchtokens"]
    e = g["encoded"]
    assert _rel(pre, e.permute(0, 1, 3, 2, 4).reshape(e.shape[0], -1, e.shape[-1])) <= 1e-4
    src = model.source
    assert src["missing_keys"] == [] and src["dropped_keys"] > 10  # text tower, temperature, decoder heads


# ----------------------------------------------------------------------------- original preprocessing
def test_m3d_preprocessing_matches_the_original_on_an_oblique_nifti():
    from voxelfm.baselines.m3d_clip import m3d_preprocess

    pre = m3d_preprocess(NIFTI)
    ref = np.load(DATA / "m3d_clip_preprocess.npz")["sub"]
    ours = pre.array.numpy()
    assert ours.shape == (32, 256, 256)
    np.testing.assert_allclose(ours[:, ::4, ::4], ref, atol=2e-6)
    st = META["m3d_clip"]["preprocess"]
    assert abs(float(ours.astype(np.float64).sum()) - st["sum"]) < 1e-3 * abs(st["sum"])
    rec = pre.record
    assert rec["preset"] == "m3d_clip" and rec["token_grid"] == [8, 16, 16] and rec["patch_size"] == [4, 16, 16]
    assert rec["steps"][1]["op"] == "m3d_normalize" and rec["normalised"] is True
    # to_source: model voxel (0, 0, 0) lies inside the foreground box of the source grid
    box = rec["steps"][3]["box"]
    assert all(b[0] - 0.5 <= o <= b[1] for o, b in zip(rec["to_source"]["offset"], box))


def test_radfm_preprocessing_matches_the_original_on_an_oblique_nifti():
    from voxelfm.baselines.radfm import radfm_depth, radfm_preprocess

    pre = radfm_preprocess(NIFTI)
    ref = np.load(DATA / "radfm_preprocess.npz")["sub"]  # (H, W, D) = rows, columns, slices
    ours = pre.array.numpy()  # SPL
    assert ours.shape == (24, 512, 512)  # 24 slices → D' = 24
    np.testing.assert_array_equal(ours.transpose(1, 2, 0)[::8, ::8, :], ref)
    assert pre.record["token_grid"] == [6, 16, 16] and pre.record["patch_size"] == [4, 32, 32]
    assert [radfm_depth(n) for n in (1, 6, 7, 24, 62, 300)] == [4, 4, 8, 24, 60, 64]


def test_ct_clip_preprocessing_matches_the_original_on_an_oblique_nifti():
    from voxelfm.baselines.ct_clip import ctclip_preprocess

    pre = ctclip_preprocess(NIFTI)
    z = np.load(DATA / "ct_clip_preprocess.npz")
    native = pre.array.numpy().transpose(0, 2, 1)  # SPL → (k, i, j) as the original
    assert native.shape == (240, 480, 480)
    lo = z["region_start"]
    hi = lo + np.array(z["region"].shape)
    np.testing.assert_allclose(native[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]], z["region"], atol=2e-6)
    st = META["ct_clip"]["preprocess"]
    assert abs(float(native.astype(np.float64).sum()) - st["sum"]) < 1e-6 * abs(st["sum"])
    rec = pre.record
    assert rec["token_grid"] == [24, 24, 24] and rec["spacing"][0] == pytest.approx(1.6 * 24 / 25)
    # the padded border maps outside the source grid, the first real voxel inside
    for k in range(3):
        s, o = rec["to_source"]["scale"][k], rec["to_source"]["offset"][k]
        first = int(np.argmax((pre.array.numpy() != -1).any(axis=tuple(a for a in range(3) if a != k))))
        assert s * first + o >= -0.5 and s * (first - 1) + o < -0.4


def test_array_input_is_spl_and_hu_window_option():
    from voxelfm.baselines.m3d_clip import m3d_preprocess
    from voxelfm.baselines.radfm import radfm_preprocess

    ct = np.random.default_rng(1).uniform(-1100, 1500, (10, 24, 20)).astype(np.float32)
    ct[:, :, :3] = -2000  # a cold strip on the right: cropped by CropForeground after the window
    a = m3d_preprocess(ct, hu_window=(-1000, 1000), img_size=(8, 32, 32))
    assert a.record["steps"][1] == {"op": "hu_clip", "window": [-1000.0, 1000.0]}
    assert a.record["steps"][3]["box"][2][0] == 3
    r = radfm_preprocess(ct, spacing=(2.0, 1.0, 1.0), image_size=64, max_depth=16)
    # 10 slices: 8 and 12 are equally close, the original's strict "<" keeps 8
    assert tuple(r.array.shape) == (8, 64, 64) and float(r.array.min()) == 0.0 and float(r.array.max()) == 1.0
    assert r.record["to_source"]["scale"] == [10 / 8, 24 / 64, 20 / 64]
    assert r.record["spacing"][0] == pytest.approx(2.0 * 10 / 8)


# ----------------------------------------------------------------------------- checkpoints
def test_checkpoint_round_trips_in_the_original_layouts(tmp_path):
    g = _golden("m3d_clip_golden.pt")
    m = _m3d()
    bare = {k: v.to(torch.bfloat16) for k, v in m.state_dict().items() if "norm_cross_attn" not in k}
    torch.save(bare, tmp_path / "pretrained_ViT.bin")  # the released bare bf16 ViT layout
    m2 = voxelfm.load_backbone("m3d_clip", weights=tmp_path, **M3D_OPTS)  # a folder: known file name
    assert m2.source["format"] == "m3d_clip ViT" and next(m2.parameters()).dtype == torch.float32
    with torch.no_grad():
        assert _rel(m2(g["input"][:, 0])["x_norm_clstoken"], g["output"][:, 0]) < 0.05  # bf16 weights

    r = _radfm()
    torch.save(r.vision_encoder.state_dict(), tmp_path / "vit.pt")
    r2 = _radfm(weights=tmp_path / "vit.pt")
    x = torch.rand(1, 8, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(r2(x)["x_norm_clstoken"], r(x)["x_norm_clstoken"])

    c = _ctclip()
    torch.save(c.state_dict(), tmp_path / "ctclip.pt")
    c2 = _ctclip(weights=tmp_path / "ctclip.pt")
    x = torch.rand(1, 16, 32, 32) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(c2(x)["x_norm_clstoken"], c(x)["x_norm_clstoken"])


@pytest.mark.parametrize("loader,other", [(_m3d, "radfm_pytorch_model.bin"), (_radfm, "ct_clip_CT-CLIP_v2.pt"),
                                          (_ctclip, "m3d_clip_pytorch_model.bin")])
def test_another_familys_checkpoint_is_one_clear_error(loader, other):
    with pytest.raises(CheckpointError, match="not a .* checkpoint|does not fit"):
        loader(weights=DATA / other)


def test_truncated_file_and_wrong_config(tmp_path):
    blob = (DATA / "ct_clip_CT-CLIP_v2.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError, match="could not read"):
        _ctclip(weights=tmp_path / "cut.pt")
    with pytest.raises(CheckpointError, match="shape mismatch"):
        _m3d(hidden_size=64)
    with pytest.raises(CheckpointError, match="missing key"):
        _radfm(depth=3)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="download .*CT-RATE"):
        voxelfm.load_backbone("ct_clip", weights=tmp_path / "empty")
    with pytest.raises(ValueError, match="m3d_clip takes"):
        _m3d()(torch.zeros(1, 8, 32, 16))
    with pytest.raises(ValueError, match="ct_clip takes"):
        _ctclip()(torch.zeros(1, 16, 32, 16))


def test_random_init_warns_and_is_seeded():
    with pytest.warns(UserWarning, match="random-init radfm weights: a pipeline check, not a result"):
        a = voxelfm.load_backbone("radfm", weights=None, **RADFM_OPTS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        b = voxelfm.load_backbone("radfm", weights=None, **RADFM_OPTS)
    for (k, v), w in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(v, w), k


# ----------------------------------------------------------------------------- extraction
@pytest.mark.parametrize("name,opts", [
    ("m3d_clip", "img_size=8x32x32 hidden_size=48 mlp_dim=96 num_layers=2 num_heads=4"),
    ("radfm", "image_size=32 image_patch_size=8 frames=64 dim=48 depth=2 heads=2 mlp_dim=64 dim_head=8 max_depth=16"),
    ("ct_clip", "image_size=32 depth_size=16 dim=32 codebook_size=64 patch_size=8 temporal_patch_size=4 "
                "spatial_depth=2 temporal_depth=2 dim_head=8 heads=4"),
])
def test_voxelfm_extract_on_phantoms(name, opts, tmp_path, phantom_volumes):
    from voxelfm.cli.main import main
    from voxelfm.inference import EmbeddingStore

    weights = {"m3d_clip": "m3d_clip_pytorch_model.bin", "radfm": "radfm_pytorch_model.bin",
               "ct_clip": "ct_clip_CT-CLIP_v2.pt"}[name]
    args = ["extract", "-i", str(phantom_volumes), "-o", str(tmp_path / "emb"), "--backbone", name,
            "--weights", str(DATA / weights), "--workers", "0"]
    for o in opts.split():
        args += ["--backbone-option", o]
    assert main(args) == 0
    store = EmbeddingStore(tmp_path / "emb")
    ids = sorted(store.ids)
    assert len(ids) == 2
    f = store.load(ids[0])
    model = {"m3d_clip": _m3d, "radfm": _radfm, "ct_clip": _ctclip}[name]()
    direct = voxelfm.extract_features(model, next(phantom_volumes.glob(f"{ids[0]}*")))
    torch.testing.assert_close(f.cls, direct.cls)
    assert f.record["preset"] == name and f.record["steps"] and f.patch.shape[-1] == model.embed_dim
    assert list(f.patch.shape[:3]) == f.record["token_grid"]


@pytest.fixture(scope="module")
def phantom_volumes(tmp_path_factory):
    """Two phantom CTs of the synthetic cohort, cropped to a small central block (NIfTI)."""
    import nibabel as nib

    from voxelfm.data.phantoms import generate_cohort

    root = tmp_path_factory.mktemp("native_phantoms")
    table = generate_cohort(root / "cohort", 2, seed=3, size="demo", workers=1, progress=False)
    out = root / "volumes"
    out.mkdir()
    for rel, uid in zip(table["path"], table["id"]):
        img = nib.load(str(root / "cohort" / rel))
        nib.save(img.slicer[36:76, 36:76, 40:64], str(out / f"{uid}.nii.gz"))
    return out


def test_hub_ids_resolve_in_the_local_cache(tmp_path, monkeypatch):
    """CT-CLIP lives in a gated *dataset* repo under models/CT-CLIP-Related/; M3D-CLIP in a model repo."""
    import shutil

    snap = tmp_path / "datasets--ibrahimhamamci--CT-RATE" / "snapshots" / "0123abc" / "models" / "CT-CLIP-Related"
    snap.mkdir(parents=True)
    shutil.copy(DATA / "ct_clip_CT-CLIP_v2.pt", snap / "CT-CLIP_v2.pt")
    m3d = tmp_path / "models--GoodBaiBai88--M3D-CLIP" / "snapshots" / "4567def"
    m3d.mkdir(parents=True)
    shutil.copy(DATA / "m3d_clip_pytorch_model.bin", m3d / "pytorch_model.bin")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    assert _ctclip(weights="ibrahimhamamci/CT-RATE").source["path"].endswith("CT-CLIP-Related/CT-CLIP_v2.pt")
    assert _m3d(weights="GoodBaiBai88/M3D-CLIP").source["format"] == "m3d_clip full CLIP"
    with pytest.raises(CheckpointError, match="chaoyi-wu/RadFM.*pytorch_model.bin"):
        _radfm(weights="chaoyi-wu/RadFM")


def test_a_dicom_series_gets_the_input_its_lps_nifti_gets(tmp_path):
    """The originals read NIfTI (CT-CLIP: nibabel; RadFM: SimpleITK; M3D: MONAI LoadImage); a DICOM
    series converted to the LPS-stored NIfTI they read must preprocess to the same voxels here."""
    from tests.baselines._volumes import dicom_series, phantom
    from tests.io import synth
    from voxelfm.baselines.ct_clip import ctclip_preprocess
    from voxelfm.baselines.m3d_clip import m3d_preprocess
    from voxelfm.baselines.radfm import radfm_preprocess

    spacing = (2.5, 0.9, 0.8)
    folder = dicom_series(tmp_path / "series", spacing=spacing)
    nifti = tmp_path / "same.nii.gz"
    synth.write_nifti(nifti, np.round(phantom()), "LPS",  # DICOM stores integer HU
                      affine_lps=synth.canonical_affine_lps(spacing=spacing), dtype=np.int16)
    for fn, kw in ((m3d_preprocess, {"img_size": (8, 32, 32)}), (radfm_preprocess, {"image_size": 64}),
                   (ctclip_preprocess, {"input_size": (40, 80, 80)})):
        a, b = fn(folder, **kw), fn(nifti, **kw)
        np.testing.assert_allclose(a.array.numpy(), b.array.numpy(), atol=1e-6, err_msg=fn.__name__)
        np.testing.assert_allclose(a.record["affine"], b.record["affine"], atol=1e-4)
