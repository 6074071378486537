"""Isotropic rule, token budget and patch crop equal the reference transcription."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from tests.preprocess import reference_impl as ref
from voxelfm.preprocess import (
    get_preset,
    isotropic_shape,
    isotropic_target_spacing,
    max_patches_shape,
    patch_crop,
    patch_crop_offsets,
    resample_isotropic,
    resize_max_patches,
)


@pytest.mark.parametrize("spacing, expected", [
    ((1.0, 1.0, 1.0), None),            # already isotropic: skipped
    ((0.5, 0.5, 0.5), None),            # skipped even though finer than the 0.75 mm floor
    ((2.5, 0.7, 0.7), 0.75),            # finest spacing floored at 0.75
    ((5.0, 0.9, 0.8), 0.8),             # finest spacing
    ((1.25, 1.0, 1.0), 1.0),
])
def test_isotropic_target(spacing, expected):
    assert isotropic_target_spacing(spacing, "paper") == expected
    assert isotropic_target_spacing(spacing, "default") == expected


def test_isotropic_uses_bankers_rounding():
    # 5 · 2.5 / 1 = 12.5 → 12 (half-to-even), 3 · 1.5 / 1 = 4.5 → 4, 7 · 1.5 = 10.5 → 10
    assert isotropic_shape((5, 4, 4), (2.5, 1.0, 1.0), 1.0) == (12, 4, 4)
    assert isotropic_shape((3, 7, 4), (1.5, 1.5, 1.0), 1.0) == (4, 10, 4)
    x = torch.randn(5, 4, 4)
    y, sp, shape = resample_isotropic(x, (2.5, 1.0, 1.0), "paper")
    assert shape == (12, 4, 4) and tuple(y.shape) == shape
    assert sp == pytest.approx((5 * 2.5 / 12, 1.0, 1.0))


def test_skip_when_isotropic_returns_input_unchanged():
    x = torch.randn(9, 10, 11)
    y, sp, shape = resample_isotropic(x, (0.6, 0.6, 0.6), "paper")
    assert y is x and sp == (0.6, 0.6, 0.6) and shape == (9, 10, 11)
    # a preset without the quirk resamples to the floor
    no_skip = get_preset("default").__class__(name="x", skip_if_isotropic=False)
    y, sp, shape = resample_isotropic(x, (0.6, 0.6, 0.6), no_skip)
    assert shape == (round(9 * 0.6 / 0.75), round(10 * 0.6 / 0.75), round(11 * 0.6 / 0.75))


@pytest.mark.parametrize("seed", range(4))
def test_resample_equals_reference(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(7 + seed, 12, 10, generator=g) * 500
    spacing = [(2.5, 0.7, 0.7), (1.5, 0.8, 0.9), (0.6, 0.5, 0.5), (3.0, 1.0, 1.0)][seed]
    y, _, _ = resample_isotropic(x, spacing, "paper")
    assert torch.equal(y, ref.resize_isotropic(x, spacing))


def test_max_patches_search_equals_reference_random():
    rnd = random.Random(0)
    for _ in range(3000):
        shape = tuple(rnd.randint(5, 400) for _ in range(3))
        p = rnd.choice([4, 8, 14, 16])
        budget = rnd.randint(1, 3000)
        assert max_patches_shape(shape, p, budget) == ref.max_patches_size(shape, p, budget), (shape, p, budget)


@pytest.mark.parametrize("shape, budget", [((65, 195, 236), 81), ((138, 22, 152), 30), ((61, 187, 32), 11)])
def test_max_patches_fallback_095(shape, budget):
    """No δ candidate fits: the reference uses s·0.95 unchecked (may exceed the budget)."""
    D, H, W = shape
    s = (budget / ((D // 14) * (H // 14) * (W // 14))) ** (1 / 3) * 0.95
    assert max_patches_shape(shape, 14, budget) == (int(D * s), int(H * s), int(W * s))


def test_max_patches_noop_and_resize_equals_reference():
    assert max_patches_shape((28, 28, 28), 14, 8) is None
    assert max_patches_shape((280, 280, 280), 14, None) is None
    x = torch.randn(60, 50, 40)
    assert torch.equal(resize_max_patches(x, 14, 13), ref.resize_max_patches(x, 14, 13))
    assert np.prod([n // 14 for n in resize_max_patches(x, 14, 13).shape]) == 12
    # budget 10: no δ candidate fits, the reference fallback s·0.95 gives 12 > 10 tokens (quirk kept)
    assert np.prod([n // 14 for n in resize_max_patches(x, 14, 10).shape]) == 12


def test_patch_crop_is_centred_floor_half_at_start():
    offsets, shape = patch_crop_offsets((31, 14, 20), 14)
    assert offsets == (1, 0, 3) and shape == (28, 14, 14)  # r=3 → 1 start/2 end; r=6 → 3/3
    x = torch.arange(31 * 14 * 20).reshape(31, 14, 20)
    assert torch.equal(patch_crop(x, 14), ref.patch_crop(x, 14))
