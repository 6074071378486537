"""Small real-orientation test volumes for the preprocessing parity tests (oblique LPS NIfTI, DICOM series)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.io import synth


def phantom(shape=(30, 44, 40)) -> np.ndarray:
    """Asymmetric, non-linear HU pattern spanning air to bone (every flip or permutation changes it)."""
    d, h, w = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    return (-1100.0 + 60.0 * d + 25.0 * h + 9.0 * w + 300 * np.sin(w / 3.0)).astype(np.float32)


def oblique_lps_nifti(path: Path, degrees: float = 8.0, spacing=(3.7, 1.9, 2.3)) -> Path:
    """A NIfTI stored LPS with the in-plane axes rotated by ``degrees`` about z."""
    th = np.radians(degrees)
    rot = np.array([[np.cos(th), -np.sin(th), 0], [np.sin(th), np.cos(th), 0], [0, 0, 1]])
    aff = synth.canonical_affine_lps(spacing=spacing)
    aff[:3, :3] = rot @ aff[:3, :3]
    synth.write_nifti(path, phantom(), "LPS", affine_lps=aff, dtype=np.float32)
    return path


def dicom_series(folder: Path, spacing=(2.5, 0.9, 0.8)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    synth.write_axial_series(folder, phantom(), spacing=spacing)
    return folder
