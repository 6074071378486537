"""``voxelfm info``: one-line errors (exit 2) for bad input, correct JSON for good input."""

from __future__ import annotations

import json

import numpy as np

from tests.io import synth
from voxelfm.cli.main import main

C = synth.phantom()


def test_info_json_dicom_folder(tmp_path, capsys):
    uid = synth.write_axial_series(tmp_path / "s", C)
    synth.write_axial_series(tmp_path / "s", C[:1], image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"), name_prefix="S")
    assert main(["info", "--json", str(tmp_path / "s")]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["format"] == "dicom" and rec["shape"] == [8, 10, 12]
    assert rec["spacing"] == [2.5, 0.8, 0.7]
    assert rec["source_orientation"] == "LPS" and rec["orientation"] == "SPL"
    assert rec["hu"]["min"] == -1000.0 and rec["hu"]["max"] == float(C.max())
    assert rec["hu"]["p50"] == float(np.percentile(C, 50))
    assert rec["source"]["series_uid"] == uid
    assert [s["read"] for s in rec["series"] if s["uid"] == uid] == [True]
    assert len(rec["series"]) == 2
    assert rec["reference"]["clip"] == [-1000.0, 1000.0]
    np.testing.assert_allclose(rec["affine"], synth.canonical_affine_lps(), atol=1e-6)


def test_info_text_and_errors(tmp_path, capsys):
    synth.write_nifti(tmp_path / "v.nii.gz", C, "LIP")
    (tmp_path / "bad.nii.gz").write_bytes(b"nonsense")
    code = main(["info", str(tmp_path / "v.nii.gz"), str(tmp_path / "bad.nii.gz"), str(tmp_path / "missing")])
    out, err = capsys.readouterr()
    assert code == 2
    assert "source LIP, read as SPL" in out and "8 x 10 x 12" in out
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 2 and all(ln.startswith("voxelfm info: error: ") for ln in lines)
    assert "bad.nii.gz: not a readable NIfTI" in lines[0]
    assert "missing: no such file" in lines[1]


def test_info_json_error_record(tmp_path, capsys):
    np.save(tmp_path / "n.npy", np.zeros((4, 4, 4)))
    assert main(["info", "--json", str(tmp_path / "n.npy")]) == 2
    out, err = capsys.readouterr()
    assert "error" in json.loads(out) and err.count("\n") == 1


def test_info_lists_the_series_of_a_zip(tmp_path, capsys):
    # regression: a zip showed no series (only folders did), and folders were scanned twice
    import zipfile

    uid = synth.write_axial_series(tmp_path / "study" / "ct", C)
    synth.write_axial_series(tmp_path / "study" / "scout", C[:1], image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    with zipfile.ZipFile(tmp_path / "study.zip", "w") as zf:
        for f in (tmp_path / "study").rglob("*"):
            zf.write(f, f.relative_to(tmp_path))
    assert main(["info", "--json", str(tmp_path / "study.zip")]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert sorted((s["folder"], s["read"]) for s in rec["series"]) == [("study/ct", True), ("study/scout", False)]
    assert [s["uid"] for s in rec["series"] if s["read"]] == [uid] and "series" not in rec["source"]
    assert main(["info", str(tmp_path / "study.zip")]) == 0
    out = capsys.readouterr().out
    assert "series found: 2 (* = read)" in out and f"* {uid}" in out and "[study/ct]" in out
