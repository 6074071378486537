"""Round-trips with known orientation: every format written with its own library reads back to the
same canonical SPL array, spacing and affine."""

from __future__ import annotations

import shutil
import zipfile

import numpy as np
import pytest

from tests.io import synth
from voxelfm.io import Volume, read_volume

C = synth.phantom()
AFFINE = synth.canonical_affine_lps()


def assert_canonical(v: Volume, *, atol_mm: float = 1e-4, array=C, affine=AFFINE) -> None:
    assert v.array.dtype == np.float32
    assert v.array.shape == array.shape
    np.testing.assert_array_equal(v.array, array)
    np.testing.assert_allclose(v.spacing, np.linalg.norm(affine[:3, :3], axis=0), atol=atol_mm)
    np.testing.assert_allclose(v.affine, affine, atol=atol_mm)


@pytest.mark.parametrize("suffix", [".dcm", ""])
def test_dicom_folder_with_and_without_extension(tmp_path, suffix):
    synth.write_axial_series(tmp_path, C, suffix=suffix, shuffle=True)
    v = read_volume(tmp_path)
    assert_canonical(v)
    assert v.source["format"] == "dicom"
    assert v.source["n_slices"] == 8 and v.source["modality"] == "CT"
    assert v.source["orientation"] == "LPS"
    assert v.source["kernel"] == "B30f" and v.source["manufacturer"] == "SYNTH"
    np.testing.assert_allclose(v.origin, synth.ORIGIN_LPS)
    np.testing.assert_allclose(v.direction, np.eye(3), atol=1e-9)
    assert v.source["warnings"] == []


def test_dicom_junk_files_tolerated(tmp_path):
    synth.write_axial_series(tmp_path, C, suffix="")
    (tmp_path / "DICOMDIR").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00")
    (tmp_path / "readme.txt").write_text("hello")
    (tmp_path / "Thumbs.db").write_bytes(b"\x00\x01garbage")
    (tmp_path / "notes").write_bytes(b"not dicom at all")  # no extension, not DICOM
    (tmp_path / ".hidden").write_bytes(b"x")
    assert_canonical(read_volume(tmp_path))


def test_dicom_slices_ordered_by_normal_not_z_or_names(tmp_path):
    # rows run anterior (IOP col = -y), so the normal points inferior: ascending position along the
    # normal is *descending* z. The reader must still give the canonical SPL array.
    n, rows, cols = C.shape
    ipps, stack = [], []
    for k in range(n):
        # stored slice k is canonical slice n-1-k; its rows are canonical h reversed
        z = synth.ORIGIN_LPS[2] + (n - 1 - k) * synth.SPACING[0]
        y0 = synth.ORIGIN_LPS[1] + (rows - 1) * synth.SPACING[1]
        ipps.append(np.array([synth.ORIGIN_LPS[0], y0, z]))
        stack.append(C[n - 1 - k, ::-1, :])
    synth.write_series(tmp_path, np.stack(stack), ipps=ipps, iop=[1, 0, 0, 0, -1, 0],
                       pixel_spacing=(synth.SPACING[1], synth.SPACING[2]))
    v = read_volume(tmp_path)
    assert_canonical(v)
    assert v.source["orientation"] == "LAI"  # columns -> L, rows -> A, slices (along normal) -> I
    ref, ref_sp = v.reference_layout()
    # reference: slices by ascending z, rows and columns as stored
    np.testing.assert_array_equal(ref, C[:, ::-1, :])
    assert ref_sp == pytest.approx(synth.SPACING)


def test_dicom_per_slice_rescale_and_unsigned(tmp_path):
    synth.write_axial_series(tmp_path, C, per_slice_rescale=True, signed=False)
    v = read_volume(tmp_path)
    assert_canonical(v)
    assert v.source["rescale"]["per_slice"] is True


def test_dicom_two_series_and_scout_pick_largest_and_select_by_uid(tmp_path):
    big = synth.write_axial_series(tmp_path / "a", C, description="thin")
    small_c = C[::2]
    small = synth.write_axial_series(tmp_path / "b", small_c, spacing=(5.0, 0.8, 0.7), description="thick",
                                     name_prefix="TH")
    synth.write_axial_series(tmp_path / "c", C[:1], description="scout", image_type=("ORIGINAL", "PRIMARY",
                                                                                      "LOCALIZER"))
    # everything in one folder
    flat = tmp_path / "flat"
    flat.mkdir()
    for sub in "abc":
        for f in (tmp_path / sub).iterdir():
            shutil.copy(f, flat / f"{sub}_{f.name}")
    with pytest.warns(UserWarning, match="2 CT series found"):
        v = read_volume(flat)
    assert v.source["series_uid"] == big
    assert_canonical(v)
    v2 = read_volume(flat, series_uid=small)
    assert v2.source["series_uid"] == small
    np.testing.assert_array_equal(v2.array, small_c)
    assert v2.spacing == pytest.approx((5.0, 0.8, 0.7))
    # nested folders are searched too
    assert read_volume(tmp_path, series_uid=small).shape == small_c.shape


def test_zip_of_folder(tmp_path):
    synth.write_axial_series(tmp_path / "series" / "sub", C)
    zpath = tmp_path / "scan.zip"
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in (tmp_path / "series").rglob("*"):
            zf.write(f, f.relative_to(tmp_path))
    v = read_volume(zpath)
    assert_canonical(v)
    assert v.source["path"] == str(zpath) and v.source["archive"] == str(zpath)


@pytest.mark.parametrize("per_frame", [True, False])
def test_enhanced_ct_multiframe(tmp_path, per_frame):
    synth.write_enhanced_ct(tmp_path / "mf.dcm", C, per_frame_rescale=per_frame, reverse_frames=True)
    v = read_volume(tmp_path / "mf.dcm")
    assert_canonical(v)
    assert v.source["multiframe"] is True and v.source["n_slices"] == 8
    # also as a folder
    assert_canonical(read_volume(tmp_path))
    ref, sp = v.reference_layout()
    np.testing.assert_array_equal(ref, C)
    assert sp == pytest.approx(synth.SPACING)


def _compressed_syntaxes():
    from pydicom.pixels import get_encoder
    from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

    out = []
    for uid in (RLELossless, JPEG2000Lossless, JPEGLSLossless):
        enc = get_encoder(uid)
        out.append(pytest.param(uid, marks=pytest.mark.skipif(not enc.is_available,
                                                               reason=f"no encoder for {uid.name}")))
    return out


@pytest.mark.parametrize("uid", _compressed_syntaxes())
def test_compressed_transfer_syntaxes(tmp_path, uid):
    c = synth.phantom((4, 32, 36))  # OpenJPEG cannot encode images smaller than 32x32
    synth.write_axial_series(tmp_path, c, transfer_syntax=uid)
    v = read_volume(tmp_path)
    assert v.source["transfer_syntax"] == uid.name
    np.testing.assert_array_equal(v.array, c)


@pytest.mark.parametrize("code", ["RAS", "LPS", "LIP", "ASL", "SPL", "IRA"])
def test_nifti_any_orientation_gives_same_canonical_array(tmp_path, code):
    synth.write_nifti(tmp_path / "v.nii.gz", C, code)
    v = read_volume(tmp_path / "v.nii.gz")
    assert_canonical(v)
    assert v.source["orientation"] == code
    assert v.source["format"] == "nifti"


def test_nifti_ras_and_dicom_lps_read_identically(tmp_path):
    synth.write_nifti(tmp_path / "v.nii", C, "RAS")
    synth.write_axial_series(tmp_path / "dcm", C)
    a, b = read_volume(tmp_path / "v.nii"), read_volume(tmp_path / "dcm")
    np.testing.assert_array_equal(a.array, b.array)
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-4)
    np.testing.assert_allclose(a.spacing, b.spacing, atol=1e-5)


def test_nifti_scl_slope_inter_honoured(tmp_path):
    synth.write_nifti_scaled(tmp_path / "v.nii", C, "LPS", slope=0.5, inter=-1024.0)
    import nibabel as nib

    img = nib.load(tmp_path / "v.nii")
    assert img.dataobj.slope == 0.5 and img.dataobj.inter == -1024.0
    assert np.asarray(img.dataobj.get_unscaled()).max() == (C.max() + 1024) * 2  # stored, unscaled
    v = read_volume(tmp_path / "v.nii")
    assert_canonical(v)
    assert v.source["scl_slope"] == 0.5 and v.source["scl_inter"] == -1024.0


def test_nifti_qform_only(tmp_path):
    synth.write_nifti(tmp_path / "v.nii.gz", C, "LIP", sform=False, qform=True)
    v = read_volume(tmp_path / "v.nii.gz")
    assert v.source["nifti_affine"] == "qform"
    assert_canonical(v)


@pytest.mark.parametrize("ext", ["nrrd", "mha", "mhd"])
@pytest.mark.parametrize("code", ["LPS", "RAI"])
def test_sitk_formats(tmp_path, ext, code):
    synth.write_sitk(tmp_path / f"v.{ext}", C, code, dtype=np.int16)
    v = read_volume(tmp_path / f"v.{ext}")
    assert_canonical(v)
    assert v.source["format"] == ext and v.source["orientation"] == code


def test_nrrd_with_5mm_slices_uint16(tmp_path):
    c = synth.phantom((8, 10, 12))
    aff = synth.canonical_affine_lps(spacing=(5.0, 0.7, 0.7))
    synth.write_sitk(tmp_path / "v.nrrd", c + 1024, "LPS", dtype=np.uint16, affine_lps=aff)
    with pytest.raises(Exception, match="raw unsigned stored values"):
        read_volume(tmp_path / "v.nrrd")  # 0..~1300 with no intercept: not HU
    synth.write_sitk(tmp_path / "w.nrrd", c, "LPS", dtype=np.int16, affine_lps=aff)
    v = read_volume(tmp_path / "w.nrrd")
    assert v.spacing == pytest.approx((5.0, 0.7, 0.7))
    np.testing.assert_array_equal(v.array, c)


def test_npy_and_npz(tmp_path):
    np.save(tmp_path / "v.npy", C.astype(np.int16))
    with pytest.warns(UserWarning, match="assumed 1 mm"):
        v = read_volume(tmp_path / "v.npy")
    np.testing.assert_array_equal(v.array, C)
    assert v.spacing == (1.0, 1.0, 1.0)
    assert any("assumed 1 mm" in w for w in v.source["warnings"])
    v = read_volume(tmp_path / "v.npy", spacing=(2.0, 0.5, 0.5))
    assert v.spacing == (2.0, 0.5, 0.5) and v.source["spacing_from"] == "argument"
    np.savez(tmp_path / "w.npz", image=C, spacing=np.array([3.0, 1.0, 1.0]))
    w = read_volume(tmp_path / "w.npz")
    np.testing.assert_array_equal(w.array, C)
    assert w.spacing == (3.0, 1.0, 1.0) and w.source["spacing_from"] == "file"


def test_padding_mapped_to_air(tmp_path):
    c = C.copy()
    mask = np.zeros(c.shape, dtype=bool)
    mask[:, :2, :2] = True
    # GE-style: PixelPaddingValue -2000 stored (-3024 HU)
    synth.write_axial_series(tmp_path / "a", c, padding=(mask, -2000))
    v = read_volume(tmp_path / "a")
    assert (v.array[mask] == -1024).all()
    np.testing.assert_array_equal(v.array[~mask], c[~mask])
    assert v.source["padding_voxels"] == int(mask.sum())
    # a NIfTI with -3024 outside the FOV
    c2 = np.where(mask, -3024.0, c)
    synth.write_nifti(tmp_path / "b.nii.gz", c2, "RAS")
    w = read_volume(tmp_path / "b.nii.gz")
    assert (w.array[mask] == -1024).all() and w.source["padding_voxels"] == int(mask.sum())
    assert w.source["padding_value_hu"] == -3024.0
    # arrays are taken as they are (like the reference)
    np.save(tmp_path / "c.npy", c2)
    assert (read_volume(tmp_path / "c.npy", spacing=(1, 1, 1)).array[mask] == -3024).all()


def test_slice_gap_differing_from_thickness_is_fine(tmp_path):
    synth.write_axial_series(tmp_path, C, thickness=5.0)  # overlapping reconstruction: 2.5 mm gap
    v = read_volume(tmp_path)
    assert v.spacing[0] == pytest.approx(2.5)
    assert v.source["slice_thickness"] == 5.0 and "SliceThickness" in v.source["note"]


def test_small_position_jitter_tolerated(tmp_path):
    n = C.shape[0]
    rng = np.random.default_rng(0)
    ipps = [synth.ORIGIN_LPS + [0, 0, k * 2.5 + rng.uniform(-0.05, 0.05)] for k in range(n)]
    synth.write_series(tmp_path, C, ipps=ipps, iop=[1, 0, 0, 0, 1, 0], pixel_spacing=(0.8, 0.7))
    v = read_volume(tmp_path)
    np.testing.assert_array_equal(v.array, C)
    assert v.spacing[0] == pytest.approx(2.5, abs=0.02)


def test_oblique_reoriented_without_resampling(tmp_path):
    # rotate the canonical frame by 10 degrees about z: rows/cols oblique in the axial plane
    th = np.radians(10.0)
    rot = np.array([[np.cos(th), -np.sin(th), 0], [np.sin(th), np.cos(th), 0], [0, 0, 1]])
    aff = synth.canonical_affine_lps()
    aff[:3, :3] = rot @ aff[:3, :3]
    synth.write_nifti(tmp_path / "o.nii.gz", C, "LIP", affine_lps=aff)
    with pytest.warns(UserWarning, match="oblique by 10.00 degrees"):
        v = read_volume(tmp_path / "o.nii.gz")
    np.testing.assert_array_equal(v.array, C)
    np.testing.assert_allclose(v.affine, aff, atol=1e-4)
    assert v.source["obliquity_deg"] == pytest.approx(10.0, abs=1e-3)


def test_index_lps_round_trip():
    v = Volume(array=C, spacing=synth.SPACING, affine=AFFINE)
    idx = np.array([[0, 0, 0], [7, 9, 11], [3.5, 2, 1]])
    pts = v.index_to_lps(idx)
    np.testing.assert_allclose(pts[1], synth.ORIGIN_LPS + [11 * 0.7, 9 * 0.8, 7 * 2.5])
    np.testing.assert_allclose(v.lps_to_index(pts), idx)


def test_dicom_without_preamble_or_file_meta(tmp_path):
    import pydicom

    synth.write_axial_series(tmp_path, C, suffix="")
    for f in tmp_path.iterdir():
        ds = pydicom.dcmread(f)
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.preamble = None
        pydicom.dcmwrite(f, ds, implicit_vr=True, little_endian=True, enforce_file_format=False)
    assert (tmp_path / "IM0000").read_bytes()[128:132] != b"DICM"
    v = read_volume(tmp_path)
    assert_canonical(v)
    assert v.source["transfer_syntax"] == "Implicit VR Little Endian"


def test_gantry_tilt_keeps_voxels_and_records_geometry(tmp_path):
    # each slice shifted 0.2 mm posterior per 2.5 mm step: ~4.6 degree tilt of the slice axis
    n = C.shape[0]
    ipps = [synth.ORIGIN_LPS + np.array([0.0, 0.2 * k, 2.5 * k]) for k in range(n)]
    synth.write_series(tmp_path, C, ipps=ipps, iop=[1, 0, 0, 0, 1, 0], pixel_spacing=(0.8, 0.7))
    with pytest.warns(UserWarning, match="oblique"):
        v = read_volume(tmp_path)
    np.testing.assert_array_equal(v.array, C)
    np.testing.assert_allclose(v.affine[:3, 0], [0.0, 0.2, 2.5])
    assert v.source["obliquity_deg"] == pytest.approx(np.degrees(np.arctan2(0.2, 2.5)), abs=1e-3)
    assert v.spacing[0] == pytest.approx(np.hypot(0.2, 2.5))


def test_label_map_with_check_hu_off(tmp_path):
    labels = (np.arange(np.prod(C.shape)).reshape(C.shape) % 7).astype(np.uint8)
    synth.write_nifti(tmp_path / "seg.nii.gz", labels.astype(np.float32), "LIP", dtype=np.uint8)
    with pytest.raises(Exception, match="check_hu=False"):
        read_volume(tmp_path / "seg.nii.gz")
    v = read_volume(tmp_path / "seg.nii.gz", check_hu=False)
    np.testing.assert_array_equal(v.array, labels)


def test_zip_of_a_single_nifti(tmp_path):
    synth.write_nifti(tmp_path / "v.nii.gz", C, "LIP")
    with zipfile.ZipFile(tmp_path / "v.zip", "w") as zf:
        zf.write(tmp_path / "v.nii.gz", "inner/v.nii.gz")
    v = read_volume(tmp_path / "v.zip")
    assert_canonical(v)
    assert v.source["format"] == "nifti" and v.source["archive"] == str(tmp_path / "v.zip")


def test_from_array_and_spacing_argument_ignored_for_files(tmp_path):
    v = Volume.from_array(C, (2.0, 1.0, 0.5), origin=(1.0, 2.0, 3.0))
    np.testing.assert_allclose(v.index_to_lps([[1, 1, 1]])[0], [1.5, 3.0, 5.0])
    arr, sp = v.reference_layout()
    assert arr is v.array or np.shares_memory(arr, v.array)
    assert sp == (2.0, 1.0, 0.5) and v.reference_clip is None
    synth.write_nifti(tmp_path / "v.nii.gz", C)
    with pytest.warns(UserWarning, match="was ignored"):
        w = read_volume(tmp_path / "v.nii.gz", spacing=(9, 9, 9))
    assert w.spacing == pytest.approx(synth.SPACING)
