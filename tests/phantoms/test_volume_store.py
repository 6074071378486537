"""Prepared-volume store: int16 round trip, memory mapping, skipped/failed inputs, resumability, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from voxelfm.data import volume_store as vs
from voxelfm.data.volume_store import VolumeStore, prepare_volumes
from voxelfm.errors import VoxelFMError


def _nifti(path, shape=(30, 60, 58), spacing=(2.0, 1.0, 1.0), seed=0):
    """A small body-like CT (air around a soft-tissue ellipsoid with a dense blob), LPS affine."""
    import nibabel as nib

    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    r = ((zz - shape[0] / 2) / (shape[0] / 2.2)) ** 2 + ((yy - shape[1] / 2) / (shape[1] / 2.5)) ** 2 + \
        ((xx - shape[2] / 2) / (shape[2] / 2.4)) ** 2
    hu = np.where(r < 1, 40.0, -1000.0) + rng.normal(0, 15, shape)
    hu[shape[0] // 2 - 2:shape[0] // 2 + 2, 20:26, 20:26] = 900.0
    data = np.transpose(hu, (2, 1, 0)).astype(np.int16)  # file axes x, y, z
    aff = np.diag([-spacing[2], -spacing[1], spacing[0], 1.0])  # RAS affine of an LPS-stored grid
    nib.save(nib.Nifti1Image(data, aff), str(path))
    return hu


@pytest.fixture()
def inputs(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        _nifti(src / f"ct{i}.nii.gz", seed=i)
    return src


def test_prepare_opens_as_int16_memmap_matching_float_pipeline(inputs, tmp_path):
    out = tmp_path / "store"
    s = prepare_volumes([inputs], out, workers=1, progress=False)
    assert (s.ok, s.failed, s.skipped) == (3, 0, 0)
    store = VolumeStore(out)
    assert len(store) == 3 and sorted(store.ids) == ["ct0", "ct1", "ct2"]
    for vid in store.ids:
        arr = store.open(vid)
        assert isinstance(arr, np.memmap) and arr.dtype == np.int16 and arr.ndim == 3
        assert not arr.flags.writeable          # read-only map, nothing loaded
        assert arr.offset > 0 and str(arr.filename).endswith(f"{vid}.npy")
        # isotropic at the finest spacing (1 mm): 30 slices of 2 mm -> 60
        assert store.shape(vid) == arr.shape == (60, 60, 58)
        np.testing.assert_allclose(store.spacing(vid), (1.0, 1.0, 1.0))
        ref, _, _ = vs._prepare_array(str(inputs / f"{vid}.nii.gz"), None, _default_preset(), False)
        ref = np.asarray(ref)
        assert np.abs(arr.astype(np.float32) - ref).max() <= 0.5 + 1e-4   # int16 within 1 HU
        assert ref.min() >= -1000 and ref.max() <= 1900                   # preset HU window
    rows = [r for r in store.records()]
    assert {r["status"] for r in rows} == {"ok"}
    csv = (out / "index.csv").read_text().splitlines()
    assert csv[0].startswith("id,path,shape_final,spacing") and '"[60, 60, 58]"' in csv[1]
    assert json.loads((out / "store.json").read_text())["preset"]["name"] == "default"


def _default_preset():
    from voxelfm.preprocess import get_preset

    return get_preset("default").to_dict()


def test_too_small_volume_is_skipped_with_reason(tmp_path, inputs):
    _nifti(inputs / "tiny.nii.gz", shape=(10, 20, 20))
    out = tmp_path / "store"
    s = prepare_volumes([inputs], out, workers=1, progress=False)
    assert (s.ok, s.skipped) == (3, 1)
    store = VolumeStore(out)
    assert "tiny" not in store.ids and store.status("tiny") == "skipped"
    rec = {r["id"]: r for r in store.records()}["tiny"]
    assert "min_side=56" in rec["error"] and rec["shape"] == [20, 20, 20]
    assert not (out / "volumes" / "tiny.npy").exists()
    # configurable: a small CPU crop size keeps it
    out2 = tmp_path / "store2"
    prepare_volumes([inputs / "tiny.nii.gz"], out2, workers=1, min_side=16, progress=False)
    assert VolumeStore(out2).ids == ["tiny"]


def test_failure_is_recorded_and_skipped(tmp_path, inputs):
    (inputs / "broken.nii.gz").write_bytes(b"not a nifti file at all")
    out = tmp_path / "store"
    s = prepare_volumes([inputs], out, workers=1, progress=False)
    assert (s.ok, s.failed) == (3, 1)
    store = VolumeStore(out)
    assert store.status("broken") == "failed" and "broken" not in store.ids
    err = {r["id"]: r for r in store.records()}["broken"]["error"]
    assert err and "Error" in err.split(":")[0]
    with pytest.raises(KeyError, match="failed"):
        store.open("broken")
    # not retried by default, retried on request
    assert prepare_volumes([inputs], out, workers=1, progress=False).already == 4
    s3 = prepare_volumes([inputs], out, workers=1, retry_failed=True, progress=False)
    assert (s3.failed, s3.already) == (1, 3)


def test_resume_after_interruption_each_id_once_no_partial_files(tmp_path, inputs, monkeypatch):
    for i in range(3, 6):
        _nifti(inputs / f"ct{i}.nii.gz", seed=i)
    out = tmp_path / "store"
    real = vs._write_npy
    calls = {"n": 0}

    def dying_write(path, arr):  # dies half-way through the third file, like a killed process
        calls["n"] += 1
        if calls["n"] == 3:
            with vs.atomic_write(path) as tmp:
                tmp.write_bytes(b"\x93NUMPY partial")
                raise KeyboardInterrupt
        real(path, arr)

    monkeypatch.setattr(vs, "_write_npy", dying_write)
    with pytest.raises(KeyboardInterrupt):
        prepare_volumes([inputs], out, workers=1, progress=False)
    assert len(VolumeStore(out)) == 2
    assert not list((out / "volumes").glob(".*"))        # no temporary file left
    (out / "volumes" / ".ct9.npy.abc.tmp").write_bytes(b"stale")  # as a SIGKILL would leave
    monkeypatch.setattr(vs, "_write_npy", real)
    s = prepare_volumes([inputs], out, workers=1, progress=False)
    assert (s.ok, s.already) == (4, 2)
    store = VolumeStore(out)
    assert sorted(store.ids) == [f"ct{i}" for i in range(6)]
    log = [json.loads(line) for line in (out / "index" / "prepare.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in log if r["status"] == "ok") == sorted(store.ids)  # each id exactly once
    assert not list((out / "volumes").glob(".*"))
    for vid in store.ids:
        assert np.load(store.path(vid)).shape == store.shape(vid)


def test_parallel_equals_serial_and_settings_are_checked(tmp_path, inputs):
    a, b = tmp_path / "a", tmp_path / "b"
    prepare_volumes([inputs], a, workers=1, progress=False)
    prepare_volumes([inputs], b, workers=2, progress=False)
    sa, sb = VolumeStore(a), VolumeStore(b)
    assert sorted(sa.ids) == sorted(sb.ids)
    for vid in sa.ids:
        np.testing.assert_array_equal(sa.open(vid), sb.open(vid))
    with pytest.raises(VoxelFMError, match="other settings"):
        prepare_volumes([inputs], a, crop_background=True, workers=1, progress=False)
    with pytest.raises(FileNotFoundError):
        VolumeStore(tmp_path / "missing")


def test_crop_background_and_paper_preset(tmp_path, inputs):
    out = tmp_path / "crop"
    prepare_volumes([inputs / "ct0.nii.gz"], out, crop_background=True, workers=1, min_side=16, progress=False)
    store = VolumeStore(out)
    rec = store.records()[0]
    assert rec["crop_box"] is not None
    assert all(n <= m for n, m in zip(store.shape("ct0"), (60, 60, 58)))
    paper = tmp_path / "paper"
    prepare_volumes([inputs / "ct0.nii.gz"], paper, preset="paper", workers=1, progress=False)
    p = VolumeStore(paper)
    assert p.preset["name"] == "paper" and len(p) == 1


def test_cli_prepare(tmp_path, inputs, capsys):
    from voxelfm.cli.main import main

    out = tmp_path / "store"
    assert main(["prepare", "-i", str(inputs), "-o", str(out), "--workers", "1"]) == 0
    assert "3 prepared" in capsys.readouterr().out
    assert len(VolumeStore(out)) == 3
