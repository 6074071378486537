"""collect_inputs and find_dicom_series on a folder tree with two series, a scout, a NIfTI and a manifest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.io import synth
from voxelfm.errors import VoxelFMError
from voxelfm.io import collect_inputs, find_dicom_series, read_volume

C = synth.phantom()


@pytest.fixture()
def tree(tmp_path):
    root = tmp_path / "data"
    a = synth.write_axial_series(root / "patient1" / "ct_thin", C, suffix="")
    b = synth.write_axial_series(root / "patient2" / "ct", C[::2], spacing=(5.0, 0.8, 0.7), name_prefix="B")
    scout = synth.write_axial_series(root / "patient2" / "scout", C[:1], image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"),
                                     name_prefix="S")
    (root / "extra").mkdir()
    synth.write_nifti(root / "extra" / "case_7.nii.gz", C, "RAS")
    (root / "patient1" / "ct_thin" / "DICOMDIR").write_bytes(b"junk")
    (root / "notes.txt").write_text("x")
    return root, a, b, scout


def test_find_dicom_series(tree):
    root, a, b, scout = tree
    series = find_dicom_series(root)
    by_uid = {s.uid: s for s in series}
    assert set(by_uid) == {a, b, scout}
    assert by_uid[a].n_slices == 8 and by_uid[a].folder == root / "patient1" / "ct_thin"
    assert len(by_uid[a].files) == 8 and by_uid[a].modality == "CT" and by_uid[a].description == "axial"
    assert by_uid[b].n_slices == 4 and by_uid[b].is_volume_candidate
    assert by_uid[scout].is_localizer and not by_uid[scout].is_volume_candidate
    assert find_dicom_series(root, recursive=False) == []
    assert len(find_dicom_series(root / "patient1" / "ct_thin", recursive=False)) == 1


def test_find_dicom_series_reads_no_pixels(tree, monkeypatch):
    import pydicom

    real = pydicom.dcmread

    def spy(*args, **kwargs):
        assert kwargs.get("stop_before_pixels") is True, "discovery must not read pixel data"
        return real(*args, **kwargs)

    monkeypatch.setattr(pydicom, "dcmread", spy)
    assert len(find_dicom_series(tree[0])) == 3


def test_collect_inputs_folder(tree):
    root, a, b, scout = tree
    with pytest.warns(UserWarning, match="skipped 1 DICOM series"):
        items = collect_inputs([root])
    got = {it.id: it for it in items}
    assert set(got) == {a, b, "case_7"}
    assert got[a].path == root / "patient1" / "ct_thin" and got[a].series_uid == a
    assert got["case_7"].path == root / "extra" / "case_7.nii.gz" and got["case_7"].series_uid is None
    for it in items:  # every item reads
        v = read_volume(it.path, series_uid=it.series_uid)
        assert v.shape[1:] == (10, 12)


def test_collect_inputs_manifest_and_files(tree, tmp_path):
    root, a, b, _ = tree
    manifest = tmp_path / "cohort.csv"
    manifest.write_text("id,path,label\nx1,data/extra/case_7.nii.gz,1\n"
                        f"x2,{root / 'patient2'},0\n")
    items = collect_inputs([manifest])
    assert [it.id for it in items] == ["x1", "x2"]
    assert items[0].path == tmp_path / "data" / "extra" / "case_7.nii.gz"
    assert read_volume(items[1].path).source["series_uid"] == b  # the scout is never picked
    # single files: NIfTI id = name without extensions; DICOM file id = SeriesInstanceUID
    dcm = next((root / "patient1" / "ct_thin").glob("IM*"))
    items = collect_inputs([root / "extra" / "case_7.nii.gz", dcm])
    assert [it.id for it in items] == ["case_7", a]


def test_duplicate_ids_rejected(tree, tmp_path):
    root = tree[0]
    (tmp_path / "other").mkdir()
    synth.write_nifti(tmp_path / "other" / "case_7.nii.gz", C, "LPS")
    with pytest.raises(VoxelFMError, match="duplicate id 'case_7'"):
        collect_inputs([root / "extra", tmp_path / "other"])
    # the same item twice is merged, not an error
    assert len(collect_inputs([root / "extra", root / "extra" / "case_7.nii.gz"])) == 1


def test_manifest_errors(tmp_path):
    bad = tmp_path / "m.csv"
    bad.write_text("name,file\na,b\n")
    with pytest.raises(VoxelFMError, match="columns 'id' and 'path'"):
        collect_inputs([bad])
    bad.write_text("id,path\na,\n")
    with pytest.raises(VoxelFMError, match="line 2: empty id or path"):
        collect_inputs([bad])
    with pytest.raises(VoxelFMError, match="no such file"):
        collect_inputs([tmp_path / "missing.nii.gz"])


def test_ids_from_names():
    from voxelfm.io.inputs import volume_id_from_path

    assert volume_id_from_path("a/b/ct.001.nii.gz") == "ct.001"
    assert volume_id_from_path(Path("x.mha")) == "x"
    assert volume_id_from_path("scan.zip") == "scan"


def test_images_without_series_uid_are_one_series_per_folder(tmp_path):
    # regression: slices without SeriesInstanceUID (stripped by some anonymisers) were ignored
    # ("no readable DICOM"); the reference groups them as one series
    import pydicom

    from voxelfm.io import read_volume

    C = synth.phantom()
    synth.write_axial_series(tmp_path / "a", C)
    for f in (tmp_path / "a").iterdir():
        ds = pydicom.dcmread(f)
        del ds.SeriesInstanceUID
        ds.save_as(f)
    with pytest.warns(UserWarning, match="no SeriesInstanceUID"):
        v = read_volume(tmp_path / "a")
    assert np.array_equal(v.array, C) and v.source["series_uid"].startswith("NOUID.")
    items = collect_inputs([tmp_path])
    assert [i.id for i in items] == [v.source["series_uid"]]  # stable between the two calls
    with pytest.warns(UserWarning):
        assert np.array_equal(read_volume(items[0].path, series_uid=items[0].series_uid).array, C)
