"""NSCLC-Radiomics (survival from the clinical CSV) and OSIC (per-patient FVC) over DICOM."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.datasets._layouts import tiny_scans, write_nsclc, write_osic


def test_nsclc_radiomics_survival_and_series(tmp_path):
    from voxelfm.datasets import prepare_dataset
    from voxelfm.io import collect_inputs, read_volume
    from voxelfm.probes.suite import load_suite

    root = tmp_path / "dl"
    scans = write_nsclc(root, tiny_scans(6), clinical_extra=("LUNG1-128",))
    res = prepare_dataset("nsclc-radiomics", root, tmp_path / "out")
    lab = pd.read_csv(res.out / "labels.csv").set_index("id")
    assert sorted(lab.index) == sorted(scans)
    for pid, s in scans.items():
        assert lab.loc[pid, "survival_time"] == int(s.row["survival_time"])
        assert lab.loc[pid, "event"] == int(s.row["event"])
    assert "LUNG1-128/ (in the clinical CSV)" in res.info["missing"]
    items = {i.id: i for i in collect_inputs([res.out / "manifest.csv"])}
    vol = read_volume(items["LUNG1-002"].path, series_uid=items["LUNG1-002"].series_uid)
    assert vol.shape == scans["LUNG1-002"].hu.shape
    hu = scans["LUNG1-002"].hu
    np.testing.assert_allclose(vol.array, np.where(hu < -1500, -1024.0, np.rint(hu)), atol=1e-3)  # padding mapped
    s = load_suite(res.out / "suite.yaml", stores={"x": res.out})
    assert s.tasks[0].task == "survival" and s.tasks[0].target == ["survival_time", "event"]
    assert res.info["counts"]["events"] == int(lab["event"].sum())


def test_osic_one_target_per_patient(tmp_path):
    from voxelfm.datasets import prepare_dataset

    root = tmp_path / "osic"
    truth = write_osic(root, tiny_scans(5))
    (root / "train" / sorted(truth)[0] / "1.dcm").parent.joinpath("README.txt").write_text("not dicom")
    res = prepare_dataset("osic", root, tmp_path / "out")
    lab = pd.read_csv(res.out / "labels.csv").set_index("id")
    assert sorted(lab.index) == sorted(truth)
    for pid, t in truth.items():
        assert lab.loc[pid, "fvc_baseline_ml"] == t["baseline_fvc"]
        assert lab.loc[pid, "percent_baseline"] == t["percent"]
        assert lab.loc[pid, "fvc_predicted_ml"] == pytest.approx(t["predicted"])
        assert lab.loc[pid, "n_visits"] == 3
    assert set(lab["split"]) == {"train", "val", "test"}
    man = pd.read_csv(res.out / "manifest.csv")
    assert man["series_uid"].notna().all()


def test_osic_reference_release_layout(tmp_path):
    """The OSIC release the reference read: baselines.csv + ct/<PATIENT ID>_0.nii.gz."""
    from tests.datasets._layouts import write_nifti
    from voxelfm.datasets import prepare_dataset

    root = tmp_path / "OSIC"
    rows = []
    for k, s in enumerate(tiny_scans(4)):
        write_nifti(root / "ct" / f"P{k}_0.nii.gz", s.hu, s.spacing)
        rows.append({"PATIENT ID": f"P{k}", "FVC PREDICTED": 3000 + k, "AGE": 70})
    write_nifti(root / "ct" / "P0_1.nii.gz", tiny_scans(1)[0].hu, tiny_scans(1)[0].spacing)
    pd.DataFrame(rows).to_csv(root / "baselines.csv", index=False)
    res = prepare_dataset("osic", root, tmp_path / "out")
    lab = pd.read_csv(res.out / "labels.csv").set_index("id")
    assert list(lab.index) == [f"P{k}_0" for k in range(4)]
    assert list(lab["fvc_predicted_ml"]) == [3000.0, 3001.0, 3002.0, 3003.0]
    assert res.info["skipped"] == [{"id": "P0_1", "reason": "not the baseline scan (_0)"}]
