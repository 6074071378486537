"""Label maps and points follow the volume through crop, resampling, token budget and patch crop."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from voxelfm.preprocess import (
    apply_geometry_to_labels,
    apply_geometry_to_points,
    labels_to_token_grid,
    model_points_to_source,
    preprocess_volume,
)


def _cube_volume():
    """Anisotropic body with an off-centre bright cube; labels 1 = cube, 2 = body."""
    shape = (30, 70, 64)  # sz = 2.0 mm, in-plane 0.8 mm
    vol = np.full(shape, -1000.0, np.float32)
    lab = np.zeros(shape, np.int16)
    vol[4:27, 12:60, 8:56] = 0.0
    lab[4:27, 12:60, 8:56] = 2
    cube = (slice(10, 18), slice(20, 40), slice(30, 50))  # 16 × 16 × 16 mm
    vol[cube] = 1000.0
    lab[cube] = 1
    return vol, lab, cube


@pytest.mark.parametrize("crop, budget", [(False, None), (True, None), (True, 60), (False, 40)])
def test_labelled_cube_lands_where_the_image_puts_it(crop, budget):
    vol, lab, cube = _cube_volume()
    pre = preprocess_volume(vol, "paper", crop_background=crop, max_patches=budget, patch_size=8,
                            normalise=False, spacing=(2.0, 0.8, 0.8))
    json.dumps(pre.record)  # JSON-able
    mapped = apply_geometry_to_labels(lab, pre.record)
    assert mapped.shape == tuple(pre.array.shape) and mapped.dtype == lab.dtype
    img_cube = pre.array.numpy() > 500.0  # the resampled image's own idea of the cube
    lab_cube = mapped == 1
    dice = 2 * (img_cube & lab_cube).sum() / (img_cube.sum() + lab_cube.sum())
    assert dice > 0.9, dice
    # the cube centre (continuous voxel coords) maps onto the centroid of the resampled cube
    centre = np.array([[(s.start + s.stop - 1) / 2 for s in cube]])
    p = apply_geometry_to_points(centre, pre.record)[0]
    assert np.allclose(p, np.argwhere(img_cube).mean(0), atol=0.75), (p, np.argwhere(img_cube).mean(0))
    assert np.allclose(model_points_to_source(p[None], pre.record), centre)


def test_exact_mapping_of_a_2x_upsampling():
    """sz 2 mm → 1 mm: source voxel d covers model voxels 2d, 2d+1 (centre 2d + 0.5)."""
    lab = np.zeros((14, 16, 16), np.int32)
    lab[3] = 7
    vol = np.zeros((14, 16, 16), np.float32)
    pre = preprocess_volume(vol, "paper", patch_size=4, normalise=False, spacing=(2.0, 1.0, 1.0))
    assert pre.record["resample"]["shape"] == [28, 16, 16]
    mapped = apply_geometry_to_labels(lab, pre.record)
    assert np.flatnonzero(mapped[:, 0, 0] == 7).tolist() == [6, 7]
    assert apply_geometry_to_points(np.array([[3.0, 5.0, 9.0]]), pre.record)[0].tolist() == [6.5, 5.0, 9.0]


def test_patch_crop_offset_and_crop_box_shift_points():
    vol = np.zeros((18, 20, 21), np.float32)
    pre = preprocess_volume(vol, "paper", patch_size=8, normalise=False)
    # offsets (1, 2, 2): source voxel (1, 2, 2) is model voxel (0, 0, 0)
    assert pre.record["patch_crop"]["offsets"] == [1, 2, 2]
    assert apply_geometry_to_points(np.array([[1.0, 2.0, 2.0]]), pre.record)[0].tolist() == [0.0, 0.0, 0.0]


def test_labels_shape_must_match_and_record_needed():
    vol, lab, _ = _cube_volume()
    pre = preprocess_volume(vol, "paper", patch_size=8, normalise=False)
    with pytest.raises(ValueError, match="same grid"):
        apply_geometry_to_labels(lab[:-1], pre.record)
    with pytest.raises(ValueError, match="geometry"):
        apply_geometry_to_points(np.zeros((1, 3)), {})
    assert isinstance(apply_geometry_to_labels(torch.from_numpy(lab), pre.record), np.ndarray)


def test_labels_to_token_grid_majority():
    lab = np.zeros((8, 4, 4), np.int64)
    lab[:4, :3] = 2  # 12 of 16... per 4³ patch: 48 of 64 voxels are 2
    tok = labels_to_token_grid(lab, 4)
    assert tok.shape == (2, 1, 1) and tok[0, 0, 0] == 2 and tok[1, 0, 0] == 0


def test_thinner_than_one_patch_is_a_clear_error_not_padding():
    # decided behaviour: a side shorter than one patch has no token (the reference fails too);
    # the error says which axis, in mm, and what to do
    from voxelfm.io import Volume
    from voxelfm.preprocess import preprocess_volume

    vol = Volume.from_array(np.full((2, 60, 60), 40.0, np.float32), (5.0, 0.7, 0.7))  # 10 mm thick
    with pytest.raises(ValueError, match=r"axis 0 spans 10.0 mm, less than one patch .14 voxels = 10.8 mm"):
        preprocess_volume(vol, patch_size=14)
    with pytest.raises(ValueError, match="raise max_patches"):
        preprocess_volume(np.zeros((20, 200, 200), np.float32), patch_size=14, max_patches=1)
    # 14 voxels after resampling is enough: one token on that axis
    ok = preprocess_volume(Volume.from_array(np.zeros((3, 60, 60), np.float32), (5.0, 0.75, 0.75)), patch_size=14)
    assert ok.grid == (1, 4, 4)
