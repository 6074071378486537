"""CT-RATE recipe on a miniature copy of the published layout (blank NIfTI headers, metadata CSV)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest

from tests.datasets._layouts import tiny_scans, write_ct_rate

WRONG = "train_2_a_1"


@pytest.fixture(scope="module")
def ct_rate(tmp_path_factory):
    from voxelfm.datasets import prepare_dataset

    root = tmp_path_factory.mktemp("ctrate") / "CT-RATE"
    scans = write_ct_rate(root, tiny_scans(12), n_valid=4, wrong_header={WRONG})
    result = prepare_dataset("ct-rate", root, root.parent / "prepared")
    return root, scans, result


def test_tables_follow_the_contract(ct_rate):
    from voxelfm.datasets import OUTPUT_FILES
    from voxelfm.datasets.ct_rate import LABEL_COLUMNS

    root, scans, result = ct_rate
    out = result.out
    assert all((out / f).is_file() for f in OUTPUT_FILES)
    man = pd.read_csv(out / "manifest.csv")
    lab = pd.read_csv(out / "labels.csv")
    splits = pd.read_csv(out / "splits.csv")
    assert sorted(man["id"]) == sorted(scans) == sorted(lab["id"])
    assert list(splits.columns) == ["id", "patient_id", "split"]
    assert list(lab.columns[:3]) == ["id", "patient_id", "split"]
    assert set(LABEL_COLUMNS) <= set(lab.columns) and len(LABEL_COLUMNS) == 18
    # official valid -> test; official train -> train/val by patient
    lab = lab.set_index("id")
    assert (lab.loc[[i for i in scans if i.startswith("valid_")], "split"] == "test").all()
    assert set(lab.loc[[i for i in scans if i.startswith("train_")], "split"]) <= {"train", "val"}
    assert lab.groupby("patient_id")["split"].nunique().max() == 1
    for name, s in scans.items():
        assert lab.loc[name, "lung_nodule"] == int(bool(s.row["lung_nodule"]))
        assert lab.loc[name, "pleural_effusion"] == int(bool(s.row["pleural_effusion"]))
    m = man.set_index("id").loc["valid_" + next(i for i in scans if i.startswith("valid_"))[6:]]
    assert m["override_orientation"] == "LPS" and m["override_rescale_intercept"] == -1024
    info = json.loads((out / "prepare.json").read_text())
    assert info["recipe"] == "ct-rate" and info["counts"]["scans"] == 12 and info["complete"]
    assert info["counts"]["positives"]["lung_nodule"] == int(lab["lung_nodule"].sum())
    reports = pd.read_csv(out / "reports.csv")
    assert len(reports) == 12 and reports["report"].str.len().min() > 0
    retr = pd.read_csv(out / "retrieval_labels.csv")
    assert set(retr["id"]) == {i for i in scans if lab.loc[i, list(LABEL_COLUMNS)].sum() > 0}


def test_metadata_geometry_and_rescale_are_applied_at_read_time(ct_rate):
    """Blank headers and a header with wrong 1 mm voxels: the volume read through the manifest has
    the metadata's spacing, orientation and HU — exactly the phantom."""
    from voxelfm.io import VolumeReadWarning, collect_inputs, read_volume

    root, scans, result = ct_rate
    items = {it.id: it for it in collect_inputs([result.out / "manifest.csv"])}
    for name in (WRONG, "train_1_a_1"):
        s = scans[name]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            vol = read_volume(items[name].path, overrides=items[name].overrides)
        msgs = [str(w.message) for w in caught if issubclass(w.category, VolumeReadWarning)]
        np.testing.assert_allclose(vol.spacing, s.spacing, rtol=1e-6)
        assert vol.array.shape == s.hu.shape
        np.testing.assert_allclose(vol.array, np.where(s.hu < -1500, -1024.0, s.hu), atol=1e-3)  # padding mapped
        if name == WRONG:
            assert any("contradicts the metadata spacing" in m for m in msgs), msgs
            assert any("contradicts the metadata orientation" in m for m in msgs), msgs
        else:
            assert not any("contradicts" in m or "no orientation" in m for m in msgs), msgs
        assert vol.source["read_overrides"]["orientation"] == "LPS"
    # without the overrides the blank header gives 1 mm voxels and raw values (the trap)
    with pytest.warns(VolumeReadWarning, match="no orientation"):
        plain = read_volume(items["train_1_a_1"].path, check_hu=False)
    assert plain.spacing == (1.0, 1.0, 1.0)


def test_suite_loads_as_probe_run_would(ct_rate):
    from voxelfm.probes.suite import load_suite

    _, _, result = ct_rate
    s = load_suite(result.out / "suite.yaml", stores={"x": result.out})
    names = [t.name for t in s.tasks]
    assert "lung_nodule" in names and "retrieval" in names and len(names) == 19
    t = next(t for t in s.tasks if t.name == "lung_nodule")
    assert [p.label for p in t.probes] == ["mlp/cls", "attentive/patch"]
    assert s.head_defaults["mlp"]["noise_p"] == 1.0 and s.head_defaults["attentive"]["epochs"] == 10


def test_partial_download_prepares_what_is_complete(tmp_path):
    from voxelfm.datasets import prepare_dataset

    root = tmp_path / "CT-RATE"
    scans = write_ct_rate(root, tiny_scans(6), n_valid=2,
                          skip_files=("metadata/validation_metadata.csv", "radiology_text_reports/train_reports.csv"))
    gone = sorted(n for n in scans if n.startswith("train_"))[0]
    next((root / "dataset" / "train").rglob(f"{gone}.nii.gz")).unlink()
    result = prepare_dataset("ct-rate", root, tmp_path / "out")
    info = result.info
    assert not info["complete"]
    assert "metadata/validation_metadata.csv" in info["missing"]
    assert any(gone in m for m in info["missing"])
    assert info["skipped_counts"] == {"no metadata row (spacing and rescale unknown)": 2}
    lab = pd.read_csv(result.out / "labels.csv")
    assert sorted(lab["id"]) == sorted(n for n in scans if n.startswith("train_") and n != gone)
    # nothing complete: an error that lists what is missing, and no output folder
    with pytest.raises(Exception, match="nothing to prepare"):
        prepare_dataset("ct-rate", tmp_path / "out", tmp_path / "out2")
    assert not (tmp_path / "out2").exists()
    assert not list(tmp_path.glob(".out2*"))
