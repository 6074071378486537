"""Every class of bad input gives a VolumeReadError naming the file and the reason."""

from __future__ import annotations

import gzip
import shutil

import numpy as np
import pytest

from tests.io import synth
from voxelfm.errors import VolumeReadError
from voxelfm.io import read_volume

C = synth.phantom()


def raises(path, match):
    with pytest.raises(VolumeReadError, match=match) as info:
        read_volume(path)
    assert str(path) in str(info.value), "the message must name the file"
    assert info.value.reason
    return info.value


def test_missing_path(tmp_path):
    raises(tmp_path / "nope.nii.gz", "no such file")


def test_empty_folder(tmp_path):
    raises(tmp_path, "empty")


def test_folder_without_dicom(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    (tmp_path / "b").write_bytes(b"\x00" * 300)
    raises(tmp_path, "no readable DICOM")


def test_folder_with_only_a_nifti_points_to_the_file(tmp_path):
    synth.write_nifti(tmp_path / "scan.nii.gz", C)
    raises(tmp_path, "scan.nii.gz — pass that file")


def test_mr_series_is_not_ct(tmp_path):
    synth.write_axial_series(tmp_path, C, modality="MR")
    raises(tmp_path, r"not a CT.*Modality MR")


def test_single_dicom_slice_file_and_folder(tmp_path):
    synth.write_axial_series(tmp_path, C[:1], suffix=".dcm")
    f = next(tmp_path.glob("*.dcm"))
    raises(f, "single 2-D slice.*pass the folder")
    raises(tmp_path, "single 2-D slice.*pass the folder")


def test_only_scouts(tmp_path):
    synth.write_axial_series(tmp_path, C[:2], image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    raises(tmp_path, "scouts/localizers")


def test_truncated_dicom_slice_is_named(tmp_path):
    synth.write_axial_series(tmp_path, C, suffix=".dcm")
    victim = sorted(tmp_path.glob("*.dcm"))[3]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) - 100])  # cut into the pixel data
    err = raises(tmp_path, "corrupt or truncated")
    assert victim.name in str(err)


def _truncate_header(path):
    path.write_bytes(path.read_bytes()[:300])  # preamble + file meta, then the header stops


def _slice_files_by_z(folder):
    import pydicom

    return sorted(folder.glob("*.dcm"), key=lambda f: float(pydicom.dcmread(f).ImagePositionPatient[2]))


def test_header_truncated_slice_is_named_not_silently_skipped(tmp_path):
    # regression: pydicom returns a partial dataset for such a file, which was skipped as "not
    # DICOM"; the error then blamed a missing slice without naming the file
    synth.write_axial_series(tmp_path, C, suffix=".dcm")
    victim = _slice_files_by_z(tmp_path)[3]
    _truncate_header(victim)
    err = raises(tmp_path, "missing slice")
    assert victim.name in str(err) and "corrupt or truncated" in str(err)


def test_header_truncated_end_slice_is_warned(tmp_path):
    # the last slice unreadable: the series is still regular, so it reads, but not silently
    synth.write_axial_series(tmp_path, C, suffix=".dcm")
    victim = _slice_files_by_z(tmp_path)[-1]
    _truncate_header(victim)
    with pytest.warns(UserWarning, match="corrupt or truncated"):
        v = read_volume(tmp_path)
    assert v.shape[0] == C.shape[0] - 1
    assert any(victim.name in w for w in v.warnings)


def test_folder_of_only_truncated_files(tmp_path):
    synth.write_axial_series(tmp_path, C[:4], suffix="")
    for f in tmp_path.iterdir():
        _truncate_header(f)
    raises(tmp_path, "4 DICOM image file.s. cannot be read, corrupt or truncated")


def test_truncated_nifti(tmp_path):
    synth.write_nifti(tmp_path / "v.nii", C)
    raw = (tmp_path / "v.nii").read_bytes()
    (tmp_path / "t.nii").write_bytes(raw[: len(raw) // 2])
    raises(tmp_path / "t.nii", "corrupt or truncated")
    (tmp_path / "t.nii.gz").write_bytes(gzip.compress(raw)[:400])
    raises(tmp_path / "t.nii.gz", "corrupt|truncated")


def test_garbage_files(tmp_path):
    (tmp_path / "g.nii.gz").write_bytes(b"garbage" * 20)
    raises(tmp_path / "g.nii.gz", "not a readable NIfTI")
    (tmp_path / "g.mha").write_bytes(b"garbage" * 20)
    raises(tmp_path / "g.mha", "cannot read this MHA")
    (tmp_path / "g.npy").write_bytes(b"garbage" * 20)
    raises(tmp_path / "g.npy", "not a readable numpy")
    (tmp_path / "g.zip").write_bytes(b"PK\x03\x04garbage")
    raises(tmp_path / "g.zip", "cannot extract the zip archive.*corrupt or truncated")
    (tmp_path / "notes.txt").write_text("hello")
    raises(tmp_path / "notes.txt", "unsupported file type")


def test_mhd_without_raw(tmp_path):
    synth.write_sitk(tmp_path / "v.mhd", C)
    (tmp_path / "v.raw").unlink()
    raises(tmp_path / "v.mhd", "data file")


def test_non_finite_voxels(tmp_path):
    c = C.copy()
    c[2, 3, 4] = np.nan
    synth.write_nifti(tmp_path / "v.nii.gz", c, dtype=np.float32)
    raises(tmp_path / "v.nii.gz", "1 voxel.*NaN or infinite")


def test_non_positive_spacing(tmp_path):
    np.save(tmp_path / "v.npy", C)
    with pytest.raises(VolumeReadError, match="spacing"):
        read_volume(tmp_path / "v.npy", spacing=(0.0, 1.0, 1.0))
    with pytest.raises(VolumeReadError, match="spacing"):
        read_volume(tmp_path / "v.npy", spacing=(-1.0, 1.0, 1.0))
    aff = synth.canonical_affine_lps()
    aff[:3, 0] = 0.0
    import nibabel as nib

    img = nib.Nifti1Image(C, None)
    img.header.set_sform(np.diag([-1.0, -1, 1, 1]) @ aff, code=1)
    nib.save(img, str(tmp_path / "z.nii.gz"))
    raises(tmp_path / "z.nii.gz", "spacing")


def _write_positions(folder, zs):
    stack = synth.phantom((len(zs), 10, 12))
    ipps = [np.array([0.0, 0.0, z]) for z in zs]
    synth.write_series(folder, stack, ipps=ipps, iop=[1, 0, 0, 0, 1, 0], pixel_spacing=(0.8, 0.7))


def test_missing_slice(tmp_path):
    _write_positions(tmp_path, [0, 2.5, 5, 7.5, 12.5, 15, 17.5, 20])  # 10.0 missing
    raises(tmp_path, "missing slice")


def test_mixed_thickness(tmp_path):
    _write_positions(tmp_path, [0, 1, 2, 3, 4, 5, 6.25, 7.5, 8.75, 10, 11.25])
    raises(tmp_path, "mixed slice")


def test_duplicate_positions(tmp_path):
    _write_positions(tmp_path, [0, 2.5, 2.5, 5, 7.5])
    raises(tmp_path, "share one position")


def test_inconsistent_pixel_spacing(tmp_path):
    synth.write_axial_series(tmp_path, C[:4], name_prefix="A")
    ipps = [synth.ORIGIN_LPS + [0, 0, (4 + k) * 2.5] for k in range(4)]
    uid = None
    import pydicom

    uid = pydicom.dcmread(next(tmp_path.iterdir())).SeriesInstanceUID
    synth.write_series(tmp_path, C[4:], ipps=ipps, iop=[1, 0, 0, 0, 1, 0], pixel_spacing=(0.9, 0.7),
                       series_uid=uid, name_prefix="B")
    raises(tmp_path, "different PixelSpacing")


def test_normalised_values_not_hu(tmp_path):
    np.save(tmp_path / "n.npy", (C - C.min()) / (C.max() - C.min()))
    raises(tmp_path / "n.npy", "normalised")
    np.save(tmp_path / "z.npy", (C - C.mean()) / C.std())
    raises(tmp_path / "z.npy", "normalised")


def test_raw_unsigned_dicom_without_rescale(tmp_path):
    synth.write_axial_series(tmp_path, C + 1024, intercept=0.0, signed=False)
    raises(tmp_path, "raw unsigned stored values")


def test_uint8_is_not_hu(tmp_path):
    np.save(tmp_path / "u.npy", np.clip((C + 1000) / 5, 0, 255).astype(np.uint8))
    raises(tmp_path / "u.npy", "8-bit")


def test_all_dense_is_not_hu(tmp_path):
    np.save(tmp_path / "b.npy", C + 3000)
    raises(tmp_path / "b.npy", "not Hounsfield")


def test_hu_check_can_be_disabled(tmp_path):
    np.save(tmp_path / "n.npy", (C - C.min()) / (C.max() - C.min()))
    v = read_volume(tmp_path / "n.npy", spacing=(1, 1, 1), check_hu=False)
    assert v.array.max() == 1.0


def test_4d_nifti(tmp_path):
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.stack([C, C], -1), np.eye(4)), str(tmp_path / "t.nii.gz"))
    raises(tmp_path / "t.nii.gz", "4-D")
    nib.save(nib.Nifti1Image(C[..., None], np.eye(4)), str(tmp_path / "s.nii.gz"))
    assert read_volume(tmp_path / "s.nii.gz").shape[0] > 1  # trailing singleton is fine


def test_2d_images(tmp_path):
    import nibabel as nib

    nib.save(nib.Nifti1Image(C[0], np.eye(4)), str(tmp_path / "s.nii.gz"))
    raises(tmp_path / "s.nii.gz", "single 2-D slice")
    np.save(tmp_path / "s.npy", C[0])
    raises(tmp_path / "s.npy", "single 2-D slice")


def test_unknown_series_uid(tmp_path):
    synth.write_axial_series(tmp_path, C)
    with pytest.raises(VolumeReadError, match="no series with SeriesInstanceUID 1.2.3.*found"):
        read_volume(tmp_path, series_uid="1.2.3")
    np.save(tmp_path.parent / "x.npy", C)
    with pytest.raises(VolumeReadError, match="DICOM input only"):
        read_volume(tmp_path.parent / "x.npy", series_uid="1.2.3")


def test_zip_error_names_zip(tmp_path):
    synth.write_axial_series(tmp_path / "s", C, modality="MR")
    shutil.make_archive(str(tmp_path / "a"), "zip", tmp_path / "s")
    raises(tmp_path / "a.zip", "not a CT")


def test_zip_with_corrupt_member(tmp_path):
    import zipfile

    synth.write_axial_series(tmp_path / "s", C)
    z = tmp_path / "a.zip"
    with zipfile.ZipFile(z, "w", zipfile.ZIP_STORED) as zf:
        for f in sorted((tmp_path / "s").iterdir()):
            zf.write(f, f.name)
    data = bytearray(z.read_bytes())
    data[2000] ^= 0xFF  # inside the first member's pixel data
    z.write_bytes(bytes(data))
    raises(z, "corrupt or truncated")
