"""3D RoPE against a direct transcription of the reference formulas (REFERENCE.md §1.4)."""

from __future__ import annotations

import math

import pytest
import torch

from voxelfm.models.layers import Attention, RopePositionEmbedding3D, apply_rope_3d, rope_coords
from voxelfm.models.layers.rope import rope_qk

# REFERENCE.md §1.4: base 100, head_dim 72 → 12 periods 100^(i/12).
REFERENCE_PERIODS = [1.0, 1.4678, 2.1544, 3.1623, 4.6416, 6.8129, 10.0, 14.678, 21.544, 31.623, 46.416, 68.129]


def test_periods_vit_base_values():
    rope = RopePositionEmbedding3D(864, num_heads=12, base=100.0)
    assert rope.periods.dtype == torch.float32 and rope.periods.shape == (12,)
    torch.testing.assert_close(rope.periods, torch.tensor(REFERENCE_PERIODS), rtol=1e-4, atol=0)
    assert "periods" in rope.state_dict()


def test_rope_rejects_head_dim_not_divisible_by_6():
    with pytest.raises(ValueError, match="divisible by 6"):
        RopePositionEmbedding3D(64, num_heads=2)


def test_coordinates_per_axis_own_count():
    c = rope_coords(2, 3, 4)
    assert c.shape == (24, 3)
    # (d h w) order: the first token is (0,0,0), the second (0,0,1), the fifth (0,1,0).
    torch.testing.assert_close(c[0], torch.tensor([-0.5, -2 / 3, -0.75]))
    torch.testing.assert_close(c[1], torch.tensor([-0.5, -2 / 3, -0.25]))
    torch.testing.assert_close(c[4], torch.tensor([-0.5, 0.0, -0.75]))
    torch.testing.assert_close(c[-1], torch.tensor([0.5, 2 / 3, 0.75]))


def _reference_angles(D, H, W, head_dim, base):
    """θ[n, a, i] = 2π c[n, a] / period_i, c = 2(n+0.5)/N − 1 per axis, hand-written loops."""
    pairs = head_dim // 6
    periods = [base ** (2 * i / (head_dim // 3)) for i in range(pairs)]
    out = torch.zeros(D * H * W, 3, pairs, dtype=torch.float64)
    n = 0
    for z in range(D):
        for y in range(H):
            for x in range(W):
                coords = [2 * (z + 0.5) / D - 1, 2 * (y + 0.5) / H - 1, 2 * (x + 0.5) / W - 1]
                for a in range(3):
                    for i in range(pairs):
                        out[n, a, i] = (2 * math.pi * coords[a] / periods[i]) % (2 * math.pi)
                n += 1
    return out


def _reference_rotate(t, angles, num_special):
    """Rotate pairs (2i, 2i+1) of each axis block of the patch tokens; explicit channel loops."""
    out = t.clone().double()
    B, nh, N, hd = t.shape
    block = hd // 3
    for a in range(3):
        for i in range(block // 2):
            c0 = a * block + 2 * i
            th = angles[:, a, i]
            x0 = t[:, :, num_special:, c0].double()
            x1 = t[:, :, num_special:, c0 + 1].double()
            out[:, :, num_special:, c0] = x0 * th.cos() - x1 * th.sin()
            out[:, :, num_special:, c0 + 1] = x0 * th.sin() + x1 * th.cos()
    return out


def test_sin_cos_match_reference_formula():
    rope = RopePositionEmbedding3D(96, num_heads=2, base=100.0)  # head_dim 48, 8 pairs/axis
    sin, cos = rope(D=2, H=3, W=4)
    assert sin.shape == (24, 3, 8) and sin.dtype == torch.float32
    ref = _reference_angles(2, 3, 4, 48, 100.0)
    torch.testing.assert_close(sin.double(), ref.sin(), rtol=0, atol=1e-5)
    torch.testing.assert_close(cos.double(), ref.cos(), rtol=0, atol=1e-5)


def test_rotation_matches_reference_and_leaves_special_tokens():
    torch.manual_seed(0)
    D, H, W, special = 2, 3, 4, 5
    rope = RopePositionEmbedding3D(96, num_heads=2, base=100.0)
    sin, cos = rope(D=D, H=H, W=W)
    q = torch.randn(2, 2, special + D * H * W, 48)
    k = torch.randn_like(q)
    q_rot, k_rot = apply_rope_3d(q, k, sin, cos, special)
    ref_angles = _reference_angles(D, H, W, 48, 100.0)
    torch.testing.assert_close(q_rot.double(), _reference_rotate(q, ref_angles, special), rtol=0, atol=1e-5)
    torch.testing.assert_close(k_rot.double(), _reference_rotate(k, ref_angles, special), rtol=0, atol=1e-5)
    assert torch.equal(q_rot[:, :, :special], q[:, :, :special])
    assert torch.equal(k_rot[:, :, :special], k[:, :, :special])
    # A rotation keeps the norm of every pair.
    torch.testing.assert_close(q_rot.norm(dim=-1), q.norm(dim=-1))


@pytest.mark.parametrize("grad", [False, True])
def test_rope_on_the_token_major_projection_matches_the_reference(grad):
    """rope_qk (the attention's path: qkv [B, N, 3, heads, hd]) rotates like the reference, with
    and without autograd (which takes the concatenating branch) and without tables."""
    torch.manual_seed(2)
    D, H, W, special = 2, 3, 2, 4
    rope = RopePositionEmbedding3D(96, num_heads=2, base=100.0)
    sin, cos = rope(D=D, H=H, W=W)
    qkv = torch.randn(2, special + D * H * W, 3, 2, 48, requires_grad=grad)
    with torch.set_grad_enabled(grad):
        q, k = rope_qk(qkv, sin, cos, special)
    assert q.shape == k.shape == (2, 2, special + D * H * W, 48)
    heads = qkv.detach().permute(2, 0, 3, 1, 4)
    angles = _reference_angles(D, H, W, 48, 100.0)
    torch.testing.assert_close(q.detach().double(), _reference_rotate(heads[0], angles, special), rtol=0, atol=1e-5)
    torch.testing.assert_close(k.detach().double(), _reference_rotate(heads[1], angles, special), rtol=0, atol=1e-5)
    if grad:  # a rotation is orthogonal: d(Σ|Rq|²)/dq = 2q
        (q.pow(2).sum() + k.pow(2).sum()).backward()
        torch.testing.assert_close(qkv.grad[:, :, :2], 2 * qkv.detach()[:, :, :2], rtol=1e-5, atol=1e-5)
        assert torch.count_nonzero(qkv.grad[:, :, 2]) == 0
    q0, k0 = rope_qk(qkv.detach(), None, None, special)
    assert torch.equal(q0, heads[0]) and torch.equal(k0, heads[1])


def test_attention_rotates_q_k_only_and_scales_after_rope():
    """Attention output equals softmax((R q)·(R k)ᵀ / √hd) v with v unrotated (transcribed by hand)."""
    torch.manual_seed(1)
    D, H, W, special = 2, 2, 3, 3
    attn = Attention(96, num_heads=2, qkv_bias=True, mode="naive")
    rope = RopePositionEmbedding3D(96, num_heads=2)
    sin, cos = rope(D=D, H=H, W=W)
    x = torch.randn(1, special + D * H * W, 96)
    with torch.no_grad():
        out = attn(x, rope=(sin, cos), num_special=special)
        qkv = attn.qkv(x).reshape(1, -1, 3, 2, 48).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        angles = _reference_angles(D, H, W, 48, 100.0)
        qr, kr = _reference_rotate(q, angles, special), _reference_rotate(k, angles, special)
        a = ((qr * 48 ** -0.5) @ kr.transpose(-2, -1)).softmax(-1)
        ref = (a @ v.double()).transpose(1, 2).reshape(1, -1, 96)
        ref = attn.proj(ref.float())
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_sin_cos_cast_to_low_precision():
    rope = RopePositionEmbedding3D(96, num_heads=2)
    sin, cos = rope(D=2, H=2, W=2)
    q = torch.randn(1, 2, 9, 48, dtype=torch.bfloat16)
    q_rot, k_rot = apply_rope_3d(q, q.clone(), sin, cos, 1)
    assert q_rot.dtype == torch.bfloat16 and k_rot.dtype == torch.bfloat16


def test_rescale_coords_only_in_training():
    rope = RopePositionEmbedding3D(96, num_heads=2, rescale_coords=2.0)
    rope.eval()
    s1, _ = rope(D=3, H=3, W=3)
    s2, _ = rope(D=3, H=3, W=3)
    assert torch.equal(s1, s2)
    rope.train()
    torch.manual_seed(0)
    s3, _ = rope(D=3, H=3, W=3)
    assert not torch.allclose(s1, s3)


def test_apply_rope_checks_table_size():
    rope = RopePositionEmbedding3D(96, num_heads=2)
    sin, cos = rope(D=2, H=2, W=2)
    q = torch.randn(1, 2, 10, 48)
    with pytest.raises(ValueError, match="do not match"):
        apply_rope_3d(q, q, sin, cos, 1)  # 9 patches vs 8 in the tables
