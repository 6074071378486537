"""Reading overrides (spacing / orientation / rescale from a dataset's metadata) and header-only geometry."""

from __future__ import annotations

import warnings

import numpy as np
import pytest


def _vol(shape=(6, 7, 8), seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(-1000, 1500, size=shape).astype(np.float32)


def test_manifest_columns_parse_and_validate(tmp_path):
    from voxelfm.errors import VoxelFMError
    from voxelfm.io import collect_inputs
    from voxelfm.io.overrides import ReadOverrides

    assert ReadOverrides.from_mapping({"spacing_z": "2.5", "orientation": "LPS"}) is None  # unprefixed: ignored
    ov = ReadOverrides.from_mapping({"override_spacing_z": "2.5", "override_spacing_y": "0.7",
                                     "override_spacing_x": 0.7, "override_rescale_intercept": "-1024",
                                     "override_orientation": "lps"})
    assert ov == ReadOverrides((2.5, 0.7, 0.7), None, -1024.0, "LPS")
    assert ReadOverrides.from_mapping(ov.to_columns()) == ov
    with pytest.raises(ValueError, match="all three"):
        ReadOverrides.from_mapping({"override_spacing_z": 1})
    with pytest.raises(ValueError, match="names one patient axis twice"):
        ReadOverrides(orientation="LRS")
    with pytest.raises(ValueError, match="positive"):
        ReadOverrides(spacing=(1, 0, 1))
    (tmp_path / "a.npy").write_bytes(b"")
    (tmp_path / "m.csv").write_text("id,path,override_rescale_slope\na,a.npy,zero\n")
    with pytest.raises(VoxelFMError, match="line 2: override_rescale_slope must be a number"):
        collect_inputs([tmp_path / "m.csv"])


def test_mha_orientation_and_spacing_override(tmp_path):
    """An .mha written with an identity header but really laid out i → R, j → A, k → I."""
    import SimpleITK as sitk

    from voxelfm.io import read_volume
    from voxelfm.io.overrides import ReadOverrides

    canon = _vol()                               # SPL truth [d, h, w]
    f = np.flip(canon, axis=(0, 1, 2))           # [k→I, j→A, i→R] in GetArrayFromImage order
    img = sitk.GetImageFromArray(np.ascontiguousarray(f).astype(np.int16))
    path = tmp_path / "x.mha"
    sitk.WriteImage(img, str(path))
    ov = ReadOverrides(spacing=(3.0, 0.8, 0.6), orientation="RAI")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        vol = read_volume(path, overrides=ov, check_hu=False)
    np.testing.assert_array_equal(vol.array, canon)
    assert vol.spacing == (3.0, 0.8, 0.6)
    msgs = " ".join(str(w.message) for w in caught)
    assert "orientation LPS contradicts the metadata orientation RAI" in msgs
    assert "contradicts the metadata spacing" in msgs


def test_rescale_override_undoes_the_header_scaling(tmp_path):
    import nibabel as nib

    from voxelfm.io import read_volume
    from voxelfm.io.overrides import ReadOverrides

    stored = np.random.default_rng(1).integers(0, 2500, size=(8, 7, 6)).astype(np.int16)
    img = nib.Nifti1Image(stored, np.diag([-1.0, -1.0, 1.0, 1.0]))
    img.header.set_slope_inter(2.0, -1000.0)
    img.header.set_sform(img.affine, code=1)
    path = tmp_path / "s.nii.gz"
    nib.save(img, str(path))
    with pytest.warns(UserWarning, match="header rescale .slope 2, intercept -1000. contradicts"):
        vol = read_volume(path, overrides=ReadOverrides(rescale_slope=1.0, rescale_intercept=-1024.0),
                          check_hu=False)
    want = np.transpose(stored, (2, 1, 0)).astype(np.float32) - 1024.0   # LPS file -> SPL
    np.testing.assert_allclose(vol.array, np.where(want < -1500, -1024, want), atol=1e-3)
    # agreeing metadata: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_volume(path, overrides=ReadOverrides(rescale_slope=2.0, rescale_intercept=-1000.0), check_hu=False)


def test_overrides_refuse_dicom(tmp_path):
    from tests.datasets._layouts import tiny_scans, write_dicom
    from voxelfm.errors import VolumeReadError
    from voxelfm.io import read_volume
    from voxelfm.io.overrides import ReadOverrides

    write_dicom(tmp_path / "d", tiny_scans(1)[0], "P", "u")
    with pytest.raises(VolumeReadError, match="DICOM series carries its own geometry"):
        read_volume(tmp_path / "d", overrides=ReadOverrides(spacing=(1, 1, 1)))


@pytest.mark.parametrize("fmt", ["nii.gz", "mhd", "nrrd"])
def test_header_geometry_matches_read_volume(tmp_path, fmt):
    from tests.datasets._layouts import write_mhd, write_nifti
    from voxelfm.io import read_volume
    from voxelfm.io.header import read_header_geometry

    canon = _vol((9, 10, 11))
    path = tmp_path / f"x.{fmt}"
    if fmt == "nii.gz":
        write_nifti(path, canon, (2.5, 0.7, 0.8))
    else:
        write_mhd(path, canon, (2.5, 0.7, 0.8), "PLI")
    g = read_header_geometry(path)
    v = read_volume(path, check_hu=False)
    assert g.shape == v.shape and g.spacing == v.spacing
    np.testing.assert_allclose(g.affine, v.affine)
    pts = np.array([[1.0, 2.0, 3.0], [8.0, 0.0, 10.0]])
    np.testing.assert_allclose(g.lps_to_index(g.index_to_lps(pts)), pts, atol=1e-9)


def test_rescale_not_applied_twice_to_a_file_already_in_hu(tmp_path):
    """A re-released file (stated geometry, int16 HU, no header scaling) with the metadata's
    -1024 intercept: the values are kept, with a warning."""
    import nibabel as nib

    from voxelfm.io import read_volume
    from voxelfm.io.overrides import ReadOverrides

    hu = np.full((40, 36, 32), -1000, dtype=np.int16)                    # air ...
    hu[8:32, 6:30, 6:26] = np.random.default_rng(2).integers(-100, 300, size=(24, 24, 20))  # ... around a body
    img = nib.Nifti1Image(hu, np.diag([-1.0, -1.0, 1.0, 1.0]))
    img.header.set_sform(img.affine, code=1)
    path = tmp_path / "fixed.nii.gz"
    nib.save(img, str(path))
    with pytest.warns(UserWarning, match="already Hounsfield units"):
        vol = read_volume(path, overrides=ReadOverrides(rescale_slope=1.0, rescale_intercept=-1024.0))
    assert vol.array.min() == hu.min() and vol.array.max() == hu.max()
