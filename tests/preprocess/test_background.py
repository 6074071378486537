"""The O(N) background box equals the reference dense Conv3d crop, voxel for voxel."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.preprocess import reference_impl as ref
from voxelfm.preprocess import crop_to_box, foreground_box, preprocess_volume


def _random_body(rng, shape, noise=250.0):
    a = np.full(shape, -1000.0, np.float32)
    s = [int(rng.integers(12, 40)) for _ in shape]
    c = [int(rng.integers(-6, max(n - si // 2, 1))) for n, si in zip(shape, s)]
    sl = tuple(slice(max(ci, 0), max(ci + si, 0)) for ci, si in zip(c, s))
    a[sl] = 40.0
    a += rng.normal(0, noise, shape).astype(np.float32)
    return a


@pytest.mark.parametrize("seed", range(12))
def test_box_equals_dense_conv_reference(seed):
    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in rng.integers(16, 36, 3))
    a = _random_body(rng, shape)
    try:
        expected = ref.crop_box(torch.from_numpy(a))
    except ValueError:
        with pytest.raises(ValueError, match="no body"):
            foreground_box(a)
        return
    got = foreground_box(a)
    assert got == expected


def test_crop_equals_reference_crop_volume():
    rng = np.random.default_rng(5)
    a = torch.from_numpy(_random_body(rng, (30, 26, 33)))
    assert torch.equal(crop_to_box(a, foreground_box(a)), ref.crop_volume(a))


def test_box_touching_every_border_and_torch_input():
    a = torch.full((30, 26, 34), 0.0)  # all body: kept everywhere the window is >50 % inside
    assert foreground_box(a) == ((0, 30), (0, 26), (0, 34)) == ref.crop_box(a)


def test_box_small_kernel_and_thin_structures():
    rng = np.random.default_rng(3)
    for _ in range(5):
        a = np.where(rng.random((25, 31, 19)) > 0.45, 100.0, -1000.0).astype(np.float32)
        k = 5
        exp = ref.crop_box(torch.from_numpy(a), k=k)
        assert foreground_box(a, kernel=k, margin=k // 2) == exp


def test_threshold_is_strict_and_fraction_strict():
    # exactly half of a 3³ window cannot exceed 13.5 → a 1-voxel slab of 13 fg per window is not kept
    a = np.full((9, 9, 9), -800.0, np.float32)  # -800 is *not* foreground (strict >)
    with pytest.raises(ValueError, match="no body"):
        foreground_box(a, kernel=3, margin=1)
    a[:] = -799.0
    assert foreground_box(a, kernel=3, margin=1) == ((0, 9), (0, 9), (0, 9))


def test_nothing_kept_is_a_clear_error_and_pipeline_propagates():
    air = np.full((24, 24, 24), -1000.0, np.float32)
    with pytest.raises(ValueError, match="extract without crop_background"):
        foreground_box(air)
    with pytest.raises(ValueError, match="no body"):
        preprocess_volume(air, "paper", crop_background=True, patch_size=4)


def test_bad_arguments():
    with pytest.raises(ValueError, match="3-D"):
        foreground_box(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="odd"):
        foreground_box(np.zeros((4, 4, 4)), kernel=4)
