"""iBOT block masks and the collate: exact counts, block bounds, identity with the reference's
triple-loop fill, upperbound, masks_weight, crop-major order, ratio distribution."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from voxelfm.ssl.collate import SSLCollator, collate_data_and_cast
from voxelfm.ssl.masking import MaskingGenerator3D


def _reference_mask(gen: MaskingGenerator3D, n: int, rng: np.random.Generator) -> np.ndarray:
    """The reference ``MaskingGenerator3D`` (Python triple loop), with the same random draws."""
    D, H, W = gen.get_shape()
    mask = np.zeros((D, H, W), dtype=bool)

    def _mask(max_mask_patches):
        delta = 0
        for _ in range(10):
            target_volume = gen.min_num_patches + (max_mask_patches - gen.min_num_patches) * rng.random()
            ar_hw = math.exp(rng.uniform(*gen.log_aspect_ratio))
            ar_dw = math.exp(rng.uniform(*gen.log_aspect_ratio))
            w = int(round((target_volume / (ar_hw * ar_dw)) ** (1 / 3)))
            h = int(round(w * ar_hw))
            d = int(round(w * ar_dw))
            if w > 0 and h > 0 and d > 0 and w < W and h < H and d < D:
                top = int(rng.integers(0, H - h, endpoint=True))
                left = int(rng.integers(0, W - w, endpoint=True))
                front = int(rng.integers(0, D - d, endpoint=True))
                num_masked = mask[front:front + d, top:top + h, left:left + w].sum()
                if 0 < d * h * w - num_masked <= max_mask_patches:
                    for i in range(front, front + d):
                        for j in range(top, top + h):
                            for k in range(left, left + w):
                                if mask[i, j, k] == 0:
                                    mask[i, j, k] = 1
                                    delta += 1
            if delta > 0:
                break
        return delta

    count = 0
    while count < n:
        delta = _mask(min(n - count, gen.max_num_patches))
        if delta == 0:
            break
        count += delta
    if mask.sum() < n:
        flat = mask.flatten()
        todo = min(n - int(flat.sum()), int((~flat).sum()))
        flat[rng.choice(np.where(~flat)[0], size=todo, replace=False)] = True
        mask = flat.reshape(mask.shape)
    return mask


@pytest.mark.parametrize("grid", [(8, 8, 8), (4, 6, 5)])
def test_exact_counts_and_identity_with_reference_loop(grid):
    N = int(np.prod(grid))
    gen = MaskingGenerator3D(grid, max_num_patches=0.5 * N)
    for seed in range(40):
        n = int(np.random.default_rng(seed).integers(0, N // 2 + 1))
        ours = gen(n, np.random.default_rng(seed))
        ref = _reference_mask(gen, n, np.random.default_rng(seed))
        assert ours.shape == grid and ours.dtype == bool
        assert int(ours.sum()) == n  # exact
        np.testing.assert_array_equal(ours, ref)


def test_blocks_respect_bounds_and_upper_limit():
    gen = MaskingGenerator3D((8, 8, 8), max_num_patches=256)
    rng = np.random.default_rng(0)
    mask = np.zeros((8, 8, 8), dtype=bool)
    for _ in range(200):
        mask[:] = False
        delta = gen._mask(mask, 30, rng)
        assert 0 <= delta <= 30 and int(mask.sum()) == delta
        if delta:  # one axis-aligned box, strictly smaller than the grid on every axis
            idx = np.argwhere(mask)
            ext = idx.max(0) - idx.min(0) + 1
            assert (ext < 8).all() and int(np.prod(ext)) == delta
    assert gen(0, rng).sum() == 0
    assert gen(512, rng).sum() == 512  # everything (random completion)


def _fake_samples(B, n_local=2, g=16, loc=8):
    return [{"global_crops": [torch.full((g, g, g), 10.0 * b + c) for c in range(2)],
             "local_crops": [torch.full((loc, loc, loc), 100.0 * b + c) for c in range(n_local)],
             "position": 7 + b, "volume_index": b} for b in range(B)]


def test_collate_layout_weights_and_upperbound():
    B, N = 4, 64
    gen = MaskingGenerator3D((4, 4, 4), max_num_patches=0.5 * N)
    out = collate_data_and_cast(_fake_samples(B), (0.1, 0.5), 0.5, n_tokens=N, mask_generator=gen,
                                rng=np.random.default_rng(0))
    g, loc = out["collated_global_crops"], out["collated_local_crops"]
    assert g.shape == (2 * B, 16, 16, 16) and loc.shape == (2 * B, 8, 8, 8)
    # crop-major: index = crop * B + sample
    assert [float(g[i, 0, 0, 0]) for i in range(2 * B)] == [0, 10, 20, 30, 1, 11, 21, 31]
    assert [float(loc[i, 0, 0, 0]) for i in range(2 * B)] == [0, 100, 200, 300, 1, 101, 201, 301]
    masks = out["collated_masks"]
    assert masks.shape == (2 * B, N) and masks.dtype == torch.bool
    counts = masks.sum(1)
    assert int((counts > 0).sum()) == int(2 * B * 0.5)  # exactly n_masked crops get a mask
    probs = torch.linspace(0.1, 0.5, int(2 * B * 0.5) + 1)
    assert out["upperbound"] == sum(int(N * p) for p in probs[1:])
    assert int(counts.sum()) <= out["upperbound"]
    assert torch.equal(out["mask_indices_list"], masks.flatten().nonzero().flatten())
    assert int(out["n_masked_patches"]) == int(counts.sum())
    # masks_weight: 1/#masked of the token's crop → sums to 1 per masked crop
    crop_of = out["mask_indices_list"] // N
    sums = torch.zeros(2 * B).index_add_(0, crop_of, out["masks_weight"])
    assert torch.allclose(sums[counts > 0], torch.ones(int((counts > 0).sum())))
    assert torch.equal(out["positions"], torch.tensor([7, 8, 9, 10]))
    assert torch.equal(out["volume_indices"], torch.arange(4))


def test_collate_mask_ratio_distribution():
    """Masked crop i gets int(N·U(p_i, p_{i+1})) tokens: sorted counts fall in their strata."""
    B, N = 8, 512
    gen = MaskingGenerator3D((8, 8, 8), max_num_patches=0.5 * N)
    n_masked = int(2 * B * 0.5)
    probs = np.linspace(0.1, 0.5, n_masked + 1)
    rng = np.random.default_rng(0)
    all_ratios = []
    for _ in range(20):
        out = collate_data_and_cast(_fake_samples(B, n_local=0, g=4, loc=4), (0.1, 0.5), 0.5, n_tokens=N,
                                    mask_generator=gen, rng=rng)
        c = np.sort(out["collated_masks"].sum(1).numpy())[-n_masked:]
        assert ((c >= np.floor(N * probs[:-1]) - 1) & (c <= N * probs[1:])).all()
        all_ratios += list(c / N)
    # overall the ratios are ~uniform on [0.1, 0.5]
    assert np.mean(all_ratios) == pytest.approx(0.3, abs=0.02)
    assert min(all_ratios) >= 0.09 and max(all_ratios) <= 0.5


def test_collator_is_deterministic_per_batch_positions():
    gen = MaskingGenerator3D((4, 4, 4), max_num_patches=32)
    col = SSLCollator(gen, (0.1, 0.5), 0.5, seed=3)
    a, b = col(_fake_samples(3)), col(_fake_samples(3))
    assert torch.equal(a["collated_masks"], b["collated_masks"])
    c = SSLCollator(gen, (0.1, 0.5), 0.5, seed=4)(_fake_samples(3))
    assert not torch.equal(a["collated_masks"], c["collated_masks"])
