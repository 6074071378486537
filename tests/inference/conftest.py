"""Fixtures for the inference tests: a tiny backbone whose attention and RoPE matter."""

from __future__ import annotations

import numpy as np
import pytest
import torch

TINY = dict(depth=2, patch_size=4, embed_dim=48, num_heads=2)


def randomised_tiny(seed: int = 0, *, attention: bool = True, qkv_std: float | None = None):
    """``vit_tiny`` shrunk to 2 blocks / 48 dims / patch 4, with every parameter randomised.

    Random init leaves LayerScale at 1e-5 and CLS/registers at ~1e-6, which makes the blocks
    almost the identity; randomising them makes attention, RoPE and token order visible.
    ``attention=False`` zeroes the attention branch (tokens do not interact); ``qkv_std`` (e.g.
    0.3) makes attention peaked instead of near-uniform, so windows that cut context show.
    """
    from voxelfm.models import build_backbone

    torch.manual_seed(seed)
    m = build_backbone("vit_tiny", **TINY)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("gamma"):
                p.uniform_(0.5, 1.0)
            elif name in ("cls_token", "register_tokens"):
                p.normal_(0.0, 1.0)
            elif name.startswith("norm") or ".norm" in name:
                p.normal_(1.0 if name.endswith("weight") else 0.0, 0.2)
        if qkv_std is not None:
            for blk in m.blocks:
                blk.attn.qkv.weight.normal_(0.0, qkv_std)
        if not attention:
            for blk in m.blocks:
                blk.ls1.gamma.zero_()
    return m.eval()


@pytest.fixture(scope="session")
def tiny_model():
    return randomised_tiny(0)


def body_volume(shape=(36, 40, 44), seed=0) -> np.ndarray:
    """HU volume: air around an ellipsoidal body with soft tissue, lungs and bone, plus noise."""
    rng = np.random.default_rng(seed)
    d, h, w = np.meshgrid(*(np.linspace(-1.25, 1.25, n) for n in shape), indexing="ij")
    vol = np.full(shape, -1000.0, np.float32)
    body = (d / 1.1) ** 2 + (h / 0.85) ** 2 + (w / 0.9) ** 2 < 1
    vol[body] = 40.0
    vol[body & ((h / 0.4) ** 2 + ((w - 0.4) / 0.2) ** 2 < 1)] = -850.0
    vol[body & ((h / 0.4) ** 2 + ((w + 0.4) / 0.2) ** 2 < 1)] = -820.0
    vol[body & ((h - 0.55) ** 2 + w ** 2 < 0.01)] = 1200.0
    vol += rng.normal(0, 20, shape).astype(np.float32)
    return vol


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine of ``[..., C]`` tensors, flattened."""
    return torch.nn.functional.cosine_similarity(a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1]), dim=-1)
