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


def test_gaussian_noise_level_and_probability():
    from voxelfm.ssl.transforms import GaussianNoise

    x = torch.full((24, 24, 24), -850.0)
    rng = np.random.default_rng(0)
    y = GaussianNoise(p=1.0, std_range=(20.0, 20.0))(x, rng)
    assert y.shape == x.shape and y.dtype == torch.float32
    assert float((y - x).std()) == pytest.approx(20.0, rel=0.03)   # the drawn level, in HU
    assert abs(float((y - x).mean())) < 0.5                          # zero mean: densities unchanged
    # the level is drawn per call from std_range; p = 0 is the identity and draws nothing
    levels = [float((GaussianNoise(1.0, (0.0, 30.0))(x, rng) - x).std()) for _ in range(200)]
    assert 0.0 <= min(levels) < 3.0 and 27.0 < max(levels) <= 30.5
    state = rng.bit_generator.state
    assert GaussianNoise(p=0.0)(x, rng) is x and rng.bit_generator.state == state
    applied = [not torch.equal(GaussianNoise(0.3, (5.0, 5.0))(x, rng), x) for _ in range(1000)]
    assert abs(np.mean(applied) - 0.3) < 0.05
    with pytest.raises(ValueError, match="std_range"):
        GaussianNoise(1.0, (10.0, 5.0))


def test_gaussian_blur_smooths_and_keeps_means():
    from scipy.ndimage import gaussian_filter

    from voxelfm.ssl.transforms import GaussianBlur

    rng = np.random.default_rng(0)
    noise = torch.from_numpy(rng.normal(0, 100, (20, 20, 20)).astype(np.float32))
    y = GaussianBlur(p=1.0, sigma_range=(1.0, 1.0))(noise, rng)
    # the same separable Gaussian as scipy's (truncated at 3 sigma; compare away from the edges)
    ref = gaussian_filter(noise.numpy().astype(np.float64), 1.0, truncate=3.0, mode="nearest")
    assert np.allclose(y.numpy()[4:-4, 4:-4, 4:-4], ref[4:-4, 4:-4, 4:-4], atol=1e-3)
    assert float(y.std()) < 0.3 * float(noise.std())  # white noise of sd 100 → ≈ 18 HU
    flat = torch.full((10, 12, 14), 37.0)
    assert torch.allclose(GaussianBlur(1.0, (0.5, 1.0))(flat, rng), flat)  # replicate edges: no darkening
    state = rng.bit_generator.state
    assert GaussianBlur(p=0.0)(noise, rng) is noise and rng.bit_generator.state == state


def test_acquisition_augmentations_are_drawn_per_view_and_off_by_default():
    kwargs = dict(local_crops_number=1, local_crops_size=8, local_crops_scale=(0.5, 0.5), global_crops_size=16,
                  global_crops_scale=(1.0, 1.0), mean=0.0, std=1.0, range_lower=-1000, range_upper=1900,
                  flip_p=0.0, window_p=0.0)
    vol = np.full((16, 16, 16), -500, dtype=np.int16)
    plain = DataAugmentationDINO(**kwargs)(vol, np.random.default_rng(0))
    assert all(torch.all(c == -500) for c in plain["global_crops"] + plain["local_crops"])  # reference: off
    aug = DataAugmentationDINO(**kwargs, noise_p=1.0, noise_std=(5.0, 40.0), blur_p=0.0)
    out = aug(vol, np.random.default_rng(0))
    sds = [float(c.std()) for c in out["global_crops"] + out["local_crops"]]
    assert all(4.0 < s < 41.0 for s in sds) and abs(sds[0] - sds[1]) > 0.5  # a level of its own per view
    assert "GaussianNoise" in repr(aug) and "GaussianBlur" not in repr(aug)


def test_aspect_jitter_keeps_volume_and_bounds():
    crop = RandomCrop3D(16, scale=(0.5, 0.5), permute_axes=False, aspect=1.3)
    rng = np.random.default_rng(0)
    ratios = []
    for _ in range(300):
        _, starts, dims = crop.sample_box((100, 100, 100), rng)
        assert all(0 <= s <= 100 - d for s, d in zip(starts, dims))
        assert np.prod(dims) == pytest.approx(50 ** 3, rel=0.05)         # volume of the un-jittered cube
        ratios.append(np.array(dims) / 50.0)
    ratios = np.array(ratios)
    assert ratios.min() >= 1 / 1.3 ** 2 - 0.02 and ratios.max() <= 1.3 ** 2 + 0.02
    assert ratios.std(0).min() > 0.05                                     # every axis is stretched
    # clamped to a small volume; the output keeps the requested size
    vol = np.zeros((20, 30, 40), dtype=np.int16)
    assert RandomCrop3D(16, (1.0, 1.0), aspect=1.5)(vol, rng).shape == (16, 16, 16)
    # off (None or 1) draws nothing beyond the reference crop
    a, b = np.random.default_rng(5), np.random.default_rng(5)
    assert RandomCrop3D(16, (0.5, 1.0), aspect=None).sample_box((60, 60, 60), a) == \
        RandomCrop3D(16, (0.5, 1.0), aspect=1.0).sample_box((60, 60, 60), b)
    assert a.bit_generator.state == b.bit_generator.state
    with pytest.raises(ValueError, match="aspect"):
        RandomCrop3D(16, aspect=0.8)


def test_zoom_out_pads_with_air_and_contains_the_volume():
    vol = np.full((20, 16, 24), 40, dtype=np.int16)
    crop = RandomCrop3D(16, scale=(1.5, 1.5), permute_axes=False, pad_value=-1000.0)
    rng = np.random.default_rng(0)
    for _ in range(50):
        _, starts, dims = crop.sample_box(vol.shape, rng)
        assert dims == [24, 24, 24]                       # 1.5 × the shortest side (16), not clamped
        for s, d, n in zip(starts, dims, vol.shape):
            assert (n - d <= s <= 0) if d > n else (0 <= s <= n - d)
    raw = crop._read_box(vol, [-2, -4, 0], [24, 24, 24])
    assert raw.shape == (24, 24, 24)
    assert torch.all(raw[2:22, 4:20, :] == 40)             # the whole volume, at its place
    assert torch.all(raw[:2] == -1000) and torch.all(raw[22:] == -1000) and torch.all(raw[:, :4] == -1000)
    assert int((raw == 40).sum()) == vol.size              # nothing else
    out = crop(vol, rng)
    assert out.shape == (16, 16, 16) and float(out.min()) == -1000.0 and float(out.max()) == 40.0
    # a crop inside the volume reads the memmap region only, exactly as without padding
    a, b = np.random.default_rng(3), np.random.default_rng(3)
    inside = RandomCrop3D(8, scale=(0.5, 0.5), pad_value=-1000.0)(vol, a)
    assert torch.equal(inside, RandomCrop3D(8, scale=(0.5, 0.5))(vol, b))
