"""Window planning, blending weights, window parsing and the memory model."""

from __future__ import annotations

import math

import pytest
import torch

from tests.inference.conftest import randomised_tiny
from voxelfm.inference.chunked import (
    choose_window,
    default_memory_budget,
    estimate_forward_bytes,
    max_tokens_for_budget,
    parse_window,
    plan_windows,
)


@pytest.mark.parametrize("grid, size, overlap", [((12, 12, 12), (6, 6, 6), 0.5), ((7, 10, 3), (4, 4, 4), 0.25),
                                                  ((5, 9, 16), (5, 3, 7), 0.0), ((30, 4, 4), (8, 8, 8), 0.9)])
def test_windows_cover_the_grid_flush_and_equal_size(grid, size, overlap):
    plan = plan_windows(grid, size, overlap)
    cover = torch.zeros(grid)
    wsum = torch.zeros(grid)
    for o in plan.origins:
        sl = tuple(slice(o[i], o[i] + plan.size[i]) for i in range(3))
        assert all(o[i] + plan.size[i] <= grid[i] for i in range(3))
        cover[sl] += 1
        wsum[sl] += plan.weights(o)
    assert cover.min() >= 1 and wsum.min() > 0
    for ax in range(3):
        assert plan.starts[ax][0] == 0 and plan.starts[ax][-1] == grid[ax] - plan.size[ax]
    assert plan.count == len(plan.origins) == math.prod(len(s) for s in plan.starts)


def test_stride_and_ramp():
    plan = plan_windows((12, 12, 12), (6, 6, 6), 0.5)
    assert plan.starts[0] == (0, 3, 6)
    # first window along an axis: full weight at the volume edge, ramp towards the interior border
    w = plan.axis_weights(0, 0)
    assert w[0] == 1.0 and w[-1] < w[-2] < w[-3] <= 1.0 and w[-1] == pytest.approx(1 / 4)
    mid = plan.axis_weights(0, 3)
    assert mid[0] == mid[-1] == pytest.approx(1 / 4) and mid.max() <= 1.0
    assert torch.equal(plan_windows((5, 5, 5), (9, 9, 9)).weights((0, 0, 0)), torch.ones(5, 5, 5))


@pytest.mark.parametrize("text, expected", [(16, (16, 16, 16)), ("16", (16, 16, 16)), ("224vox", (16, 16, 16)),
                                            ("16x16x8", (16, 16, 8)), ((4, 5, 6), (4, 5, 6)), (None, None),
                                            ("100v", (7, 7, 7))])
def test_parse_window(text, expected):
    assert parse_window(text, 14) == expected


@pytest.mark.parametrize("bad", ["abc", 0, "10vox", (1, 2)])
def test_parse_window_rejects(bad):
    with pytest.raises(ValueError):
        parse_window(bad, 14)


def test_memory_model_linear_for_sdpa_quadratic_for_naive():
    kw = dict(embed_dim=864, num_heads=12, patch_size=14)
    a, b = estimate_forward_bytes(10_000, **kw), estimate_forward_bytes(20_000, **kw)
    assert 1.9 < b / a < 2.1
    n1, n2 = (estimate_forward_bytes(n, naive_attention=True, **kw) for n in (10_000, 20_000))
    assert n2 / n1 > 3.5
    # the reference's 25,000 tokens: ≈ 30 GB attention matrix alone (REFERENCE §6)
    assert estimate_forward_bytes(25_000, naive_attention=True, **kw) > 55e9
    assert estimate_forward_bytes(1000, dtype_bytes=2, **kw) < estimate_forward_bytes(1000, **kw)


def test_window_choice_fits_budget():
    m = randomised_tiny(0)
    budget = estimate_forward_bytes(100, embed_dim=48, num_heads=2, patch_size=4)
    n = max_tokens_for_budget(m, budget)
    assert estimate_forward_bytes(n, embed_dim=48, num_heads=2, patch_size=4) <= budget
    assert estimate_forward_bytes(n + 1, embed_dim=48, num_heads=2, patch_size=4) > budget
    win = choose_window((20, 20, 3), m, budget)
    assert math.prod(win) <= n and win[2] == 3 and win[0] >= 4


def test_budget_from_environment(monkeypatch):
    monkeypatch.setenv("VOXELFM_MEMORY_BUDGET_GB", "0.5")
    assert default_memory_budget("cpu") == 2 ** 29
    monkeypatch.setenv("VOXELFM_MEMORY_BUDGET_GB", "lots")
    with pytest.raises(ValueError, match="VOXELFM_MEMORY_BUDGET_GB"):
        default_memory_budget("cpu")
    monkeypatch.delenv("VOXELFM_MEMORY_BUDGET_GB")
    assert default_memory_budget("cpu") == 4 * 2 ** 30


def test_window_choice_prefers_slabs_that_repeat_few_tokens():
    """ViT-B dims, 20³ tokens, a budget of ~4,000 tokens: 3 slabs of 8×20×20 (1.2× the grid's
    tokens) instead of 15³ cubes (8 windows, 3.4×); the whole grid when it fits."""
    from types import SimpleNamespace

    vit_b = SimpleNamespace(embed_dim=864, num_heads=12, patch_size=14, num_register_tokens=4,
                            config=SimpleNamespace(mlp_ratio=4.0), attention_mode="sdpa")
    dims = dict(embed_dim=864, num_heads=12, patch_size=14)
    budget = estimate_forward_bytes(4000, **dims)
    n_max = max_tokens_for_budget(vit_b, budget)
    win = choose_window((20, 20, 20), vit_b, budget)
    plan = plan_windows((20, 20, 20), win, 0.25)
    assert n_max / 2 <= plan.window_tokens <= n_max
    assert sorted(win) == [8, 20, 20] and plan.count == 3
    assert plan.count * plan.window_tokens <= 1.3 * 8000
    assert choose_window((20, 20, 20), vit_b, estimate_forward_bytes(8000, **dims)) == (20, 20, 20)
