"""Voxel sizes carry no storage noise: the same scan has the same spacing in every format.

NIfTI stores 0.8 mm as float32 (0.800000011920929), DICOM as the string "0.8"; slice gaps from
DICOM positions carry float64 noise. Left alone, 12 slices x 2.5 mm at 0.8 mm in-plane resample to
round(37.5) = 38 slices from DICOM but round(37.49999) = 37 from NIfTI (regression).
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.io.synth import write_axial_series
from voxelfm.io import read_volume
from voxelfm.io._source import snap_spacing


def _ras_nifti(path, canon, spacing, origin_lps):
    import nibabel as nib

    sz, sy, sx = spacing
    D, H, W = canon.shape
    data = np.ascontiguousarray(np.transpose(canon, (2, 1, 0))[::-1, ::-1, :]).astype(np.int16)
    aff = np.diag([sx, sy, sz, 1.0])
    aff[:3, 3] = [-origin_lps[0] - (W - 1) * sx, -origin_lps[1] - (H - 1) * sy, origin_lps[2]]
    nib.save(nib.Nifti1Image(data, aff), str(path))


def test_nifti_float32_and_dicom_decimal_spacing_read_identically(tmp_path):
    rng = np.random.default_rng(0)
    canon = np.round(rng.normal(-200, 300, (12, 10, 11))).astype(np.float32)
    spacing, origin = (2.5, 0.8, 0.7), np.array([-10.3, 20.1, 33.3])
    write_axial_series(tmp_path / "dcm", canon, spacing=spacing, origin=origin)
    _ras_nifti(tmp_path / "ct.nii.gz", canon, spacing, origin)
    a, b = read_volume(tmp_path / "dcm"), read_volume(tmp_path / "ct.nii.gz")
    assert np.array_equal(a.array, b.array)
    assert a.spacing == b.spacing == spacing  # exactly, not approximately
    assert np.allclose(a.affine, b.affine, atol=1e-5)
    # the reference reader's spacing keeps nibabel's float32 values (paper parity)
    assert b.reference_spacing[1] == pytest.approx(0.8, abs=1e-7) and b.reference_spacing[1] != 0.8


def test_snap_spacing_only_removes_noise():
    a = np.eye(4)
    a[:3, :3] = np.diag([float(np.float32(0.8)), 2.5000000000000004, 0.62499997])
    out, sp = snap_spacing(a)
    assert sp == (0.8, 2.5, 0.625)  # an 8th significant digit is below float32 precision: noise
    assert np.array_equal(np.diag(out[:3, :3]), sp)
    b = np.eye(4)
    b[:3, :3] = np.diag([0.6249993, 1.0, 0.123456])  # genuine values are kept
    assert snap_spacing(b)[1] == (0.6249993, 1.0, 0.123456)
    c = np.eye(4)  # oblique column: direction kept, length snapped
    c[:3, 0] = np.array([0.0, np.sin(0.2), np.cos(0.2)]) * float(np.float32(1.25))
    out, sp = snap_spacing(c)
    assert sp[0] == 1.25 and np.isclose(np.linalg.norm(out[:3, 0]), 1.25, rtol=0, atol=1e-15)
    assert np.allclose(out[:3, 0] / 1.25, c[:3, 0] / np.linalg.norm(c[:3, 0]))
