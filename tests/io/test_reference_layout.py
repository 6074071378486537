"""``Volume.reference_layout()`` reproduces the reference readers' axis order and spacing."""

from __future__ import annotations

import numpy as np
import pytest

from tests.io import reference_readers as ref
from tests.io import synth
from voxelfm.io import read_volume

C = synth.phantom()


def check(vol, expected):
    arr, sp = vol.reference_layout()
    exp_arr, exp_sp = expected
    assert arr.dtype == np.float32
    np.testing.assert_array_equal(arr, exp_arr)
    np.testing.assert_allclose(sp, exp_sp, rtol=1e-6)


@pytest.mark.parametrize("code", ["RAS", "LPS", "LIP", "ASL", "IRA"])
def test_nifti(tmp_path, code):
    f = tmp_path / "v.nii.gz"
    synth.write_nifti(f, C, code)
    v = read_volume(f)
    check(v, ref.load_nifti(f))
    assert v.reference_clip == (-1000.0, 1900.0)


@pytest.mark.parametrize("ext", ["mha", "mhd", "nrrd"])
@pytest.mark.parametrize("code", ["LPS", "RAI", "PIL"])
def test_sitk(tmp_path, ext, code):
    f = tmp_path / f"v.{ext}"
    synth.write_sitk(f, C, code)
    v = read_volume(f)
    check(v, ref.load_mhd(f))
    assert v.reference_clip == (-1000.0, 1900.0)


def test_dicom_axial(tmp_path):
    synth.write_axial_series(tmp_path, C)
    v = read_volume(tmp_path)
    check(v, ref.load_dicom(tmp_path))
    assert v.reference_clip == (-1000.0, 1000.0)


def test_dicom_spacing_between_slices_wins(tmp_path):
    synth.write_axial_series(tmp_path, C, spacing_between=3.0)  # header disagrees with positions
    v = read_volume(tmp_path)
    check(v, ref.load_dicom(tmp_path))
    assert v.spacing[0] == pytest.approx(2.5)  # our spacing follows the positions
    assert v.reference_layout()[1][0] == pytest.approx(3.0)


def test_dicom_feet_first_rows_flipped(tmp_path):
    # IOP (1,0,0, 0,-1,0): the slice normal points to -z; the reference sorts by +z, we by the normal.
    n, rows, _ = C.shape
    ipps = [np.array([0.0, (rows - 1) * 0.8, (n - 1 - k) * 2.5]) for k in range(n)]
    stack = np.stack([C[n - 1 - k, ::-1, :] for k in range(n)])
    synth.write_series(tmp_path, stack, ipps=ipps, iop=[1, 0, 0, 0, -1, 0], pixel_spacing=(0.8, 0.7))
    v = read_volume(tmp_path)
    np.testing.assert_array_equal(v.array, C)
    check(v, ref.load_dicom(tmp_path))
    assert not v.reference_map.is_identity


def test_dicom_coronal_stack(tmp_path):
    # coronal slices: stack axis runs posterior; rows run inferior (IOP col = -z), cols run left.
    d, h, w = C.shape
    ipps, stack = [], []
    for k in range(h):  # slice k at y = k*0.8 (canonical h = k)
        ipps.append(np.array([0.0, k * 0.8, (d - 1) * 2.5]))
        stack.append(C[::-1, k, :])  # rows: inferior-going (canonical d reversed), cols: w
    synth.write_series(tmp_path, np.stack(stack), ipps=ipps, iop=[1, 0, 0, 0, 0, -1], pixel_spacing=(2.5, 0.7))
    v = read_volume(tmp_path)
    np.testing.assert_array_equal(v.array, C)
    assert v.spacing == pytest.approx((2.5, 0.8, 0.7))
    assert v.source["orientation"] == "LIP"
    arr, sp = v.reference_layout()  # z ties: slice-normal order is kept
    np.testing.assert_array_equal(arr, np.stack(stack))
    assert any("sagittal/coronal" in w for w in v.source["warnings"])


def test_npy(tmp_path):
    np.save(tmp_path / "v.npy", C)
    with pytest.warns(UserWarning):
        v = read_volume(tmp_path / "v.npy")
    check(v, ref.load_npy(tmp_path / "v.npy"))
    assert v.reference_clip is None


def test_reference_layout_shares_memory_when_identity(tmp_path):
    synth.write_axial_series(tmp_path, C)
    v = read_volume(tmp_path)
    arr, _ = v.reference_layout()
    assert np.shares_memory(arr, v.array)
