"""DICOM output: one file per slice with correct geometry, read back by pydicom, SimpleITK and voxelfm."""

from __future__ import annotations

import numpy as np
import pytest

from voxelfm.data.phantoms import generate_case, generate_cohort

SEED = 21


@pytest.fixture(scope="module")
def dicom_case(tmp_path_factory):
    out = tmp_path_factory.mktemp("dicom")
    table = generate_cohort(out, 1, seed=SEED, format="dicom", workers=1, progress=False)
    return out, table.iloc[0], generate_case(SEED, 0)


def test_dicom_tags_and_geometry(dicom_case):
    import pydicom

    out, row, case = dicom_case
    files = sorted((out / row["path"]).glob("*.dcm"))
    D, H, W = case.hu.shape
    sz, sy, sx = case.acquisition.spacing
    assert len(files) == D
    dss = [pydicom.dcmread(f) for f in files]
    assert {ds.Modality for ds in dss} == {"CT"}
    assert len({ds.SeriesInstanceUID for ds in dss}) == 1 and len({ds.SOPInstanceUID for ds in dss}) == D
    assert len({ds.StudyInstanceUID for ds in dss}) == 1
    for ds in dss:
        assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        np.testing.assert_allclose([float(v) for v in ds.PixelSpacing], [sy, sx], rtol=1e-5)
        assert float(ds.SliceThickness) == pytest.approx(sz, rel=1e-4)
        assert float(ds.RescaleSlope) == 1 and float(ds.RescaleIntercept) == case.acquisition.intercept
        assert (ds.Rows, ds.Columns) == (H, W)
    z = sorted(float(ds.ImagePositionPatient[2]) for ds in dss)
    np.testing.assert_allclose(np.diff(z), sz, rtol=1e-4)
    first = min(dss, key=lambda ds: float(ds.ImagePositionPatient[2]))
    np.testing.assert_allclose([float(v) for v in first.ImagePositionPatient], case.affine[:3, 3], atol=1e-3)
    # pixel data: stored values + intercept = the case's HU, slice by slice
    for ds in dss:
        d = int(round((float(ds.ImagePositionPatient[2]) - case.affine[2, 3]) / sz))
        hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_array_equal(hu, case.hu[d])


def test_dicom_reads_with_simpleitk_and_voxelfm(dicom_case):
    import SimpleITK as sitk

    from voxelfm.io import read_volume

    out, row, case = dicom_case
    folder = str(out / row["path"])
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(folder))
    img = reader.Execute()
    sz, sy, sx = case.acquisition.spacing
    np.testing.assert_allclose(img.GetSpacing(), (sx, sy, sz), rtol=1e-4)
    np.testing.assert_allclose(img.GetOrigin(), case.affine[:3, 3], atol=1e-3)
    np.testing.assert_allclose(np.array(img.GetDirection()).reshape(3, 3), np.eye(3), atol=1e-6)
    arr = sitk.GetArrayFromImage(img)  # z, y, x = canonical SPL here
    np.testing.assert_array_equal(arr.astype(np.float32), case.hu)
    vol = read_volume(out / row["path"])
    np.testing.assert_array_equal(vol.array, np.where(case.hu < -1500, -1024.0, case.hu))
    np.testing.assert_allclose(vol.spacing, case.acquisition.spacing, rtol=1e-4)
    assert vol.source.get("modality", "CT") == "CT"


def test_large_nifti_is_written_as_parallel_gzip_members_that_every_reader_accepts(tmp_path, monkeypatch):
    import SimpleITK as sitk

    from voxelfm.data.phantoms import writers
    from voxelfm.data.phantoms.canvas import Grid
    from voxelfm.io import read_volume

    hu = np.random.default_rng(0).integers(-1000, 1500, (20, 40, 36)).astype(np.int16)
    aff = Grid((20, 40, 36), (2.0, 0.8, 0.8), (-10.0, 5.0, 30.0)).affine_lps()
    monkeypatch.setattr(writers, "_GZIP_MEMBER", 1 << 14)
    writers.write_nifti(tmp_path / "a.nii.gz", hu + 1024, aff, "LAS", intercept=-1024)
    raw = (tmp_path / "a.nii.gz").read_bytes()
    assert raw.count(b"\x1f\x8b\x08\x00\x00\x00\x00\x00") > 2  # several members, no timestamps
    vol = read_volume(tmp_path / "a.nii.gz")
    np.testing.assert_array_equal(vol.array, hu.astype(np.float32))
    np.testing.assert_allclose(vol.affine, aff, atol=1e-6)
    img = sitk.ReadImage(str(tmp_path / "a.nii.gz"))
    assert img.GetSize() == (36, 40, 20)
    # same bytes as a single-threaded run
    monkeypatch.setattr(writers.os, "cpu_count", lambda: 1)
    writers.write_nifti(tmp_path / "b.nii.gz", hu + 1024, aff, "LAS", intercept=-1024)
    assert (tmp_path / "b.nii.gz").read_bytes() == raw
