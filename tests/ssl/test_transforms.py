"""Augmentation invariants: crop geometry (scale of the shortest side, 6 axis orders), flips,
the HU window (only saturates; histogram quantiles), clip + normalise range, memory-map slicing."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from voxelfm.ssl.augmentations import DataAugmentationDINO
from voxelfm.ssl.transforms import Flip, Norm, RandomCrop3D, Window


def _coord_volume(shape):
    """value = 1·z + 100·y + 10000·x, so the axis order of a crop can be read off its gradients."""
    z, y, x = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    return torch.from_numpy(z + 100 * y + 10000 * x)


def _axis_order(crop: torch.Tensor) -> tuple[int, int, int]:
    steps = [float((crop.narrow(a, 1, 1) - crop.narrow(a, 0, 1)).mean()) for a in range(3)]
    unit = {1.0: 0, 100.0: 1, 10000.0: 2}
    return tuple(unit[round(abs(s), 3)] for s in steps)


def test_all_six_axis_orders_occur_and_are_uniform():
    vol = _coord_volume((12, 12, 12))
    crop = RandomCrop3D(12, scale=(1.0, 1.0))
    rng = np.random.default_rng(0)
    seen = [_axis_order(crop(vol, rng)) for _ in range(600)]
    counts = {p: seen.count(p) for p in itertools.permutations(range(3))}
    assert set(seen) == set(counts) and len(counts) == 6
    assert all(60 < c < 140 for c in counts.values()), counts  # ~100 each


def test_crop_side_is_scale_times_shortest_side():
    crop = RandomCrop3D(16, scale=(0.5, 0.5))
    perm, starts, dims = crop.sample_box((40, 80, 60), np.random.default_rng(1))
    assert dims == [20, 20, 20]  # round(0.5 · 40) on every axis: a cube
    for s, d, n in zip(starts, dims, (40, 80, 60)):
        assert 0 <= s <= n - d
    # clamped to the volume: a non-cubic target keeps its proportions within the volume
    perm, starts, dims = RandomCrop3D((8, 16, 16), scale=(1.0, 1.0)).sample_box((10, 40, 40), np.random.default_rng(2))
    assert all(d <= n for d, n in zip(dims, (10, 40, 40)))
    assert sorted(dims) == sorted([10, 20, 20]) or max(dims) <= 40


def test_crop_output_shape_and_resize():
    vol = np.random.default_rng(0).integers(-1000, 1000, (30, 40, 35)).astype(np.int16)
    out = RandomCrop3D((16, 16, 16), scale=(0.32, 1.0))(vol, np.random.default_rng(0))
    assert out.shape == (16, 16, 16) and out.dtype == torch.float32
    assert float(out.min()) >= -1000 and float(out.max()) <= 1000  # trilinear stays in range


class _SpyVolume:
    """A memmap stand-in that only allows slicing (converting the whole volume fails)."""

    def __init__(self, arr):
        self.arr, self.reads = arr, []
        self.shape, self.ndim, self.dtype = arr.shape, arr.ndim, arr.dtype

    def __getitem__(self, key):
        part = self.arr[key]
        self.reads.append(part.size)
        return part

    def __array__(self, *args, **kwargs):
        raise AssertionError("the whole volume was converted")


def test_crops_are_sliced_from_the_memmap_before_float_conversion(tmp_path):
    arr = np.random.default_rng(0).integers(-1000, 1000, (40, 44, 48)).astype(np.int16)
    np.save(tmp_path / "v.npy", arr)
    mm = np.load(tmp_path / "v.npy", mmap_mode="r")
    spy = _SpyVolume(mm)
    crop = RandomCrop3D(8, scale=(0.1, 0.2))
    out = crop(spy, np.random.default_rng(0))
    assert out.shape == (8, 8, 8)
    assert len(spy.reads) == 1 and spy.reads[0] <= 9 ** 3  # only the crop (side ≤ round(0.2·40))
    # the values are those of the memmap region, cast after slicing
    perm, starts, dims = crop.sample_box(arr.shape, np.random.default_rng(0))
    region = arr[starts[0]:starts[0] + dims[0], starts[1]:starts[1] + dims[1], starts[2]:starts[2] + dims[2]]
    assert np.isclose(float(out.mean()), float(region.mean()), atol=60)


def test_flip():
    x = torch.arange(24.0).reshape(2, 3, 4)
    assert torch.equal(Flip(p=1.0)(x, np.random.default_rng(0)), x.flip(0, 1, 2))
    assert torch.equal(Flip(p=0.0)(x, np.random.default_rng(0)), x)
    rng = np.random.default_rng(0)
    flipped = np.zeros(3)
    for _ in range(400):
        y = Flip(0.5)(x, rng)
        flipped += [not torch.equal(y, y.flip(a)) and torch.equal(y.flip(a).flip(a), y) and
                    bool((y.narrow(a, 0, 1) > y.narrow(a, y.shape[a] - 1, 1)).all()) for a in range(3)]
    assert np.all(np.abs(flipped / 400 - 0.5) < 0.1), flipped


def test_norm_range():
    x = torch.tensor([-3000.0, -1000.0, 0.0, 1900.0, 5000.0])
    y = Norm(mean=-573.8, std=461.3, vmin=-1000, vmax=1900)(x)
    lo, hi = (-1000 + 573.8) / 461.3, (1900 + 573.8) / 461.3
    assert torch.allclose(y, torch.tensor([lo, lo, 573.8 / 461.3, hi, hi]))


def test_window_quantiles_and_only_saturates():
    w = Window(p=1.0)
    img = torch.linspace(-1000, 1900, 29001)  # uniform over the histogram range
    q = w.quantiles_hu(img).numpy()
    expected = -1000 + 2900 * np.array([0.01, 0.25, 0.5, 0.75, 0.99])
    assert np.allclose(q, expected, atol=2 * 2900 / 512)  # left bin edges
    rng = np.random.default_rng(0)
    for _ in range(50):
        x = torch.from_numpy(np.random.default_rng(int(rng.integers(1e6))).normal(0, 300, (10, 10, 10))).float()
        y = w(x, rng)
        lo, hi = float(y.min()), float(y.max())
        assert hi - lo >= 10.0 - 1e-3 or hi - lo >= float(x.max() - x.min()) - 1e-3
        assert torch.equal(y, x.clamp(lo, hi))  # values are saturated, never rescaled
    assert torch.equal(Window(p=0.0)(img, rng), img)


def test_window_level_and_width_distribution():
    w = Window(p=1.0)
    x = torch.from_numpy(np.random.default_rng(0).normal(40, 100, 4000)).float()
    _, q1, med, q3, _ = (float(v) for v in w.quantiles_hu(x))
    iqr = q3 - q1
    rng = np.random.default_rng(1)
    bounds = np.array([w.sample_window(x, rng) for _ in range(300)])
    level, width = bounds.mean(1), bounds[:, 1] - bounds[:, 0]
    assert level.mean() == pytest.approx(med, abs=0.06 * iqr)
    assert level.std() == pytest.approx(0.2 * iqr, rel=0.2)
    assert width.min() >= 0.5 * iqr - 1e-6 and width.max() <= 2.0 * iqr + 1e-6


def test_multicrop_shapes_and_range():
    aug = DataAugmentationDINO(local_crops_number=3, local_crops_size=8, local_crops_scale=(0.05, 0.32),
                               global_crops_size=16, global_crops_scale=(0.32, 1.0), mean=-573.8, std=461.3,
                               range_lower=-1000, range_upper=1900)
    vol = np.random.default_rng(0).integers(-2000, 3000, (40, 40, 40)).astype(np.int16)
    out = aug(vol, np.random.default_rng(0))
    assert [tuple(c.shape) for c in out["global_crops"]] == [(16, 16, 16)] * 2
    assert [tuple(c.shape) for c in out["local_crops"]] == [(8, 8, 8)] * 3
    lo, hi = (-1000 + 573.8) / 461.3, (1900 + 573.8) / 461.3
    for c in out["global_crops"] + out["local_crops"]:
        assert float(c.min()) >= lo - 1e-5 and float(c.max()) <= hi + 1e-5
    # deterministic given the generator
    again = aug(vol, np.random.default_rng(0))
    assert all(torch.equal(a, b) for a, b in zip(out["global_crops"] + out["local_crops"],
                                                 again["global_crops"] + again["local_crops"]))
