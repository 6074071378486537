"""Recipes of the paper's evaluation datasets on miniature copies of their published layouts:
RSNA-STR PE (DICOM, per-image labels → study labels), iCTCF (clinical table + DICOM folders),
Mycobacterial (windowed NIfTI read back to HU), Merlin (30 findings, official split in .xlsx),
TCIA CT Lymph Nodes (DICOM CT + SEG → label maps) and AirRC (label maps on LUNA16 scans)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tests.datasets._layouts import tiny_scans
from tests.datasets._paper_layouts import (
    AIRRC_ORGANS,
    write_airrc,
    write_ct_lymph_nodes,
    write_ictcf,
    write_merlin,
    write_mycobacterial,
    write_rsna_pe,
)
from voxelfm.datasets import prepare_dataset
from voxelfm.io import collect_inputs, read_volume


def _info(out):
    return json.loads((out / "prepare.json").read_text())


def test_rsna_pe_study_labels_from_per_image_rows(tmp_path):
    root = tmp_path / "rsna"
    truth = write_rsna_pe(root, tiny_scans(5, seed=11), indeterminate=3, incomplete=4)
    out = prepare_dataset("rsna-pe", root, tmp_path / "prepared").out
    lab = pd.read_csv(out / "labels.csv").set_index("id")
    studies = sorted(truth)
    incomplete = studies[4]
    assert incomplete not in lab.index
    assert _info(out)["skipped_counts"] == {"incomplete series (fewer .dcm files than train.csv lists)": 1}
    for study, t in truth.items():
        if study == incomplete:
            continue
        row = lab.loc[study]
        if t["indeterminate"]:
            assert np.isnan(row["pe"]) and row["indeterminate"] == 1
        else:
            assert row["pe"] == float(t["pe"]) and row["negative_exam_for_pe"] == int(not t["pe"])
        assert row["series_uid"] == t["series"] and row["n_images"] == t["scan"].hu.shape[0]
    assert lab["pe_image_fraction"].max() > 0 and (lab.loc[lab["pe"] == 0, "pe_image_fraction"] == 0).all()
    # the manifest points at the series folder; voxelfm reads it as the scan in HU
    item = next(i for i in collect_inputs([out / "manifest.csv"]) if i.id == studies[0])
    vol = read_volume(item.path, series_uid=item.series_uid)
    hu = truth[studies[0]]["scan"].hu
    body = hu > -2000  # the phantom's outside-FOV padding (-3024) reads as air
    np.testing.assert_allclose(vol.array[body], np.rint(hu[body]), atol=0.5)
    import yaml

    suite = yaml.safe_load((out / "suite.yaml").read_text())
    assert suite["tasks"][0]["target"] == "pe" and suite["tasks"][0]["fractions"] == [0.2, 0.4, 0.6, 0.8, 1.0]


def test_ictcf_labels_as_published(tmp_path):
    root = tmp_path / "iCTCF"
    clinical = write_ictcf(root, tiny_scans(6, seed=12), missing_ct=5)
    out = prepare_dataset("ictcf", root, tmp_path / "prepared").out
    lab = pd.read_csv(out / "labels.csv").set_index("id")
    assert sorted(lab.index) == [f"Patient_{k}" for k in range(1, 6)]  # Patient 6 has no CT
    assert _info(out)["skipped_counts"] == {"no CT folder": 1}
    for k in range(5):
        row, src = lab.loc[f"Patient_{k + 1}"], clinical.iloc[k]
        assert row["covid"] == float(src["SARS-CoV-2 nucleic acids"] == "Positive")
        assert row["severity"] == float(src["Morbidity outcome"] in ("Severe", "Critically ill"))
        assert row["hgb"] == src["HGB"]
    assert np.isnan(lab.loc["Patient_2", "crp"]) and np.isnan(lab.loc["Patient_2", "crp_z"])
    hgb = lab["hgb"]
    np.testing.assert_allclose(lab["hgb_z"], (hgb - hgb.mean()) / hgb.std(ddof=0))
    man = pd.read_csv(out / "manifest.csv").set_index("id")
    assert man.loc["Patient_1", "path"].endswith("Patient_1") and man.loc["Patient_2", "path"].endswith("Patient 2")


def test_mycobacterial_windowed_files_read_back_to_hu(tmp_path):
    base = tmp_path / "nifti-dataset" / "versions" / "5"  # kagglehub's layout below the root
    scans = write_mycobacterial(base, tiny_scans(6, seed=13))
    out = prepare_dataset("mycobacterial", tmp_path / "nifti-dataset", tmp_path / "prepared").out
    lab = pd.read_csv(out / "labels.csv").set_index("id")
    assert sorted(lab.index) == sorted(scans) and lab.loc["tb_001", "tb"] == 1 and lab.loc["ntm_000", "tb"] == 0
    items = {i.id: i for i in collect_inputs([out / "manifest.csv"])}
    vol = read_volume(items["tb_001"].path, overrides=items["tb_001"].overrides)
    hu = scans["tb_001"].hu
    inside = (hu > -1340) & (hu < 140)  # representable in the published [0, 1] window
    np.testing.assert_allclose(vol.array[inside], hu[inside], atol=1500 / 2**16 + 0.5)  # HU = v * 1500 - 1350


def test_merlin_findings_and_official_split(tmp_path):
    from voxelfm.datasets.merlin import FINDINGS

    root = tmp_path / "merlinabdominalctdataset"
    scans = write_merlin(root, tiny_scans(7, seed=14), unlabelled=6)
    out = prepare_dataset("merlin", root, tmp_path / "prepared").out
    lab = pd.read_csv(out / "labels.csv").set_index("id")
    assert sorted(lab.index) == sorted(scans)[:6] and _info(out)["skipped_counts"] == {"no label row": 1}
    assert list(lab["split"]) == ["train", "train", "train", "train", "val", "test"]
    raw = pd.read_csv(root / "zero_shot_findings_disease_cls.csv").set_index("study id")
    assert set(FINDINGS) <= set(lab.columns) and len(FINDINGS) == 30
    assert ((raw[list(FINDINGS)] == -1) == ((raw[list(FINDINGS)] != lab[list(FINDINGS)]))).all().all()  # -1 -> 0
    out2 = prepare_dataset("merlin", root, tmp_path / "prepared2", uncertain="missing").out
    lab2 = pd.read_csv(out2 / "labels.csv").set_index("id")
    assert lab2[list(FINDINGS)].isna().sum().sum() == int((raw[list(FINDINGS)] == -1).sum().sum())
    assert len(pd.read_csv(out / "reports.csv")) == 6


def test_ct_lymph_nodes_seg_becomes_an_aligned_label_map(tmp_path):
    root = tmp_path / "manifest-1724359862867"
    scans = write_ct_lymph_nodes(root, tiny_scans(4, seed=15), organ=8)
    out = prepare_dataset("mediastinal-ln", root, tmp_path / "prepared").out
    lab = pd.read_csv(out / "labels.csv").set_index("id")
    assert sorted(lab.index) == ["MED_LYMPH_000", "MED_LYMPH_001", "MED_LYMPH_002"]  # mediastinal only
    assert json.loads((out / "classes.json").read_text()) == {"0": "background", "1": "lymph node"}
    for subject in lab.index:
        ct = read_volume(next(i.path for i in collect_inputs([out / "manifest.csv"]) if i.id == subject))
        lm = read_volume(out / lab.loc[subject, "label_map"], check_hu=False)
        assert lm.array.shape == ct.array.shape
        np.testing.assert_array_equal(lm.array > 0, scans[subject].labels == 8)  # on the CT's canonical grid
    assert (lab["node_voxels"] > 0).all()


def test_airrc_label_maps_on_luna16_scans(tmp_path):
    root, luna = tmp_path / "AirRC", tmp_path / "LUNA16"
    scans = write_airrc(root, tiny_scans(4, seed=16), luna=luna)
    out = prepare_dataset("airrc", root, tmp_path / "prepared", luna16_root=str(luna)).out
    lab = pd.read_csv(out / "labels.csv").set_index("id")
    assert sorted(lab.index) == sorted(scans)
    for uid, s in scans.items():
        ct = read_volume(luna / f"subset{sorted(scans).index(uid) % 2}" / f"{uid}.mhd")
        lm = read_volume(out / lab.loc[uid, "label_map"], check_hu=False).array
        body = s.hu > -2000  # the phantom's outside-FOV padding (-3024) reads as air
        np.testing.assert_allclose(ct.array[body], s.hu[body], atol=0.5)
        for organ, value in AIRRC_ORGANS.items():
            np.testing.assert_array_equal(lm == value, s.labels == organ)
    counts = _info(out)["counts"]["voxels_per_class"]
    assert set(counts) == {"background", "airway lumen", "airway wall", "pulmonary veins", "pulmonary arteries"}


@pytest.mark.parametrize("name", ["rsna-pe", "ictcf", "mycobacterial", "merlin", "mediastinal-ln", "airrc"])
def test_empty_download_lists_what_is_missing_and_writes_nothing(tmp_path, name):
    from voxelfm.errors import VoxelFMError

    (tmp_path / "dl").mkdir()
    with pytest.raises(VoxelFMError, match="nothing to prepare"):
        prepare_dataset(name, tmp_path / "dl", tmp_path / "out")
    assert not (tmp_path / "out").exists()
