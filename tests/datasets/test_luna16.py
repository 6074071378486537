"""LUNA16 recipe: world-mm nodule centres through the .mhd geometry onto the canonical grid."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.datasets._layouts import LUNA_CODES, tiny_scans, write_luna16


@pytest.fixture(scope="module")
def luna(tmp_path_factory):
    from voxelfm.datasets import prepare_dataset

    root = tmp_path_factory.mktemp("luna") / "LUNA16"
    truth = write_luna16(root, tiny_scans(12))
    return root, truth, prepare_dataset("luna16", root, root.parent / "prepared")


def test_centres_land_on_the_nodule_voxel_in_every_orientation(luna):
    from voxelfm.io import read_volume

    root, truth, result = luna
    lab = pd.read_csv(result.out / "labels.csv", dtype={"id": str}).set_index("id")
    man = pd.read_csv(result.out / "manifest.csv", dtype={"id": str}).set_index("id")
    codes = set()
    for uid, t in truth.items():
        if not t["nodules"]:
            assert lab.loc[uid, "has_nodule"] == 0 and np.isnan(lab.loc[uid, "nodule_d"])
            continue
        codes.add(t["code"])
        (c, diam), _ = t["nodules"]  # the first is the larger one
        got = lab.loc[uid, ["nodule_d", "nodule_h", "nodule_w"]].to_numpy(dtype=float)
        np.testing.assert_allclose(got, c, atol=1e-6)
        assert lab.loc[uid, "nodule_diameter_mm"] == diam and lab.loc[uid, "nodule_count"] == 2
        vol = read_volume(man.loc[uid, "path"])
        assert vol.array[tuple(np.rint(got).astype(int))] == 3000.0
        assert vol.array[tuple(np.rint(got).astype(int))] == vol.array.max()
    assert len(codes) == 6  # LPS, flipped (RAI, LPI, RPS, LAS) and permuted (PLS) direction matrices
    assert set(codes) <= set(LUNA_CODES)
    nod = pd.read_csv(result.out / "nodules.csv", dtype={"id": str})
    assert len(nod) == 2 * sum(bool(t["nodules"]) for t in truth.values()) and nod["inside"].all()


def test_contract_splits_and_suite(luna):
    from voxelfm.probes.suite import load_suite

    root, truth, result = luna
    lab = pd.read_csv(result.out / "labels.csv", dtype={"id": str})
    assert list(lab.columns[:3]) == ["id", "patient_id", "split"]
    assert set(lab["split"]) == {"train", "val", "test"}
    assert result.info["counts"]["scans_with_nodules"] == 6 and result.info["counts"]["nodules"] == 12
    assert result.info["found"]["candidates (candidates_V2.csv)"] == 12
    cand = pd.read_csv(result.out / "candidates.csv", dtype={"id": str})
    nod = pd.read_csv(result.out / "nodules.csv", dtype={"id": str})
    assert len(cand) == 12 and (cand["class"] == 1).all() and cand["inside"].all()
    np.testing.assert_allclose(cand.sort_values(["id", "coordX"])[["d", "h", "w"]].to_numpy(),
                               nod.sort_values(["id", "coordX"])[["d", "h", "w"]].to_numpy(), atol=1e-9)
    s = load_suite(result.out / "suite.yaml", stores={"x": result.out})
    t = next(t for t in s.tasks if t.task == "localisation")
    assert t.target == ["nodule_d", "nodule_h", "nodule_w"] and t.hparams["coords"] == "voxel"
    # subsets 0-9 present -> nothing missing; subsets option gives the fold split
    assert not result.info["missing"]


def test_missing_subsets_and_annotations(tmp_path):
    from voxelfm.datasets import prepare_dataset
    from voxelfm.errors import VoxelFMError

    root = tmp_path / "L"
    write_luna16(root, tiny_scans(4), subsets=[0, 0, 1, 1])
    res = prepare_dataset("luna16", root, tmp_path / "out", split="subsets")
    assert "subset9/" in res.info["missing"] and res.n_scans == 4
    assert set(pd.read_csv(res.out / "labels.csv")["split"]) == {"train"}
    assert "the test split is empty" in res.info["warnings"]
    (root / "annotations.csv").unlink()
    with pytest.raises(VoxelFMError, match="annotations.csv"):
        prepare_dataset("luna16", root, tmp_path / "out2")


def test_scan_without_its_raw_file_is_skipped(tmp_path):
    from voxelfm.datasets import prepare_dataset

    root = tmp_path / "L"
    truth = write_luna16(root, tiny_scans(4), subsets=[0, 0, 0, 0])
    gone = sorted(truth)[1]
    (root / "subset0" / f"{gone}.raw").unlink()
    res = prepare_dataset("luna16", root, tmp_path / "out")
    assert res.info["skipped"] == [{"id": gone, "reason": f"the .mhd's data file {gone}.raw is missing"}]
    assert f"scan {gone}.mhd (has annotations)" in res.info["missing"] or not truth[gone]["nodules"]
    assert res.n_scans == 3
