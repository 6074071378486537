"""DINO / iBOT / KoLeo losses: hand-computed cases, a literal transcription of the DINOv2/reference
formulas, centre updates (first update momentum 0, accumulation window), Sinkhorn–Knopp."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from voxelfm.ssl.losses import DINOLoss, KoLeoLoss, iBOTPatchLoss, sinkhorn_knopp


# ----------------------------------------------------------------------------- transcriptions
def _ref_dino_forward(student_list, teacher_list, student_temp=0.1):
    """DINOv2 / reference ``DINOLoss.forward`` verbatim."""
    total_loss = 0
    for s in student_list:
        lsm = F.log_softmax(s / student_temp, dim=-1)
        for t in teacher_list:
            loss = torch.sum(t * lsm, dim=-1)
            total_loss -= loss.mean()
    return total_loss


def _ref_sinkhorn(teacher_output, teacher_temp, n_iterations=3):
    """DINOv2 ``sinkhorn_knopp_teacher`` verbatim (single process)."""
    teacher_output = teacher_output.float()
    Q = torch.exp(teacher_output / teacher_temp).t()
    B = Q.shape[1]
    K = Q.shape[0]
    Q /= torch.sum(Q)
    for _ in range(n_iterations):
        Q /= torch.sum(Q, dim=1, keepdim=True)
        Q /= K
        Q /= torch.sum(Q, dim=0, keepdim=True)
        Q /= B
    Q *= B
    return Q.t()


# ----------------------------------------------------------------------------- DINO
def test_dino_loss_hand_computed():
    loss = DINOLoss(3, student_temp=0.5)
    s = torch.tensor([[1.0, 0.0, -1.0]])
    t = torch.tensor([[0.2, 0.3, 0.5]])
    z = np.array([2.0, 0.0, -2.0])
    lsm = z - np.log(np.exp(z).sum())
    expected = -(np.array([0.2, 0.3, 0.5]) * lsm).sum()
    assert float(loss([s], [t])) == pytest.approx(expected, rel=1e-6)
    # two students × two teachers: the sum of the four cross-entropies
    assert float(loss([s, s], [t, t])) == pytest.approx(4 * expected, rel=1e-6)


def test_dino_loss_matches_reference_transcription():
    g = torch.Generator().manual_seed(0)
    students = [torch.randn(4, 16, generator=g) for _ in range(3)]
    teachers = [torch.softmax(torch.randn(4, 16, generator=g) / 0.04, -1) for _ in range(2)]
    ours = DINOLoss(16)(students, teachers)
    assert torch.allclose(ours, _ref_dino_forward(students, teachers), atol=0, rtol=1e-6)


def test_dino_softmax_center_teacher_and_first_update_momentum_zero():
    loss = DINOLoss(4, center_momentum=0.9)
    t1 = torch.tensor([[1.0, 2.0, 3.0, 4.0], [3.0, 2.0, 1.0, 0.0]])
    # centre starts at 0: plain sharpened softmax
    assert torch.allclose(loss.softmax_center_teacher(t1, 0.5), torch.softmax(t1 / 0.5, -1))
    loss.update_center(t1)
    assert torch.count_nonzero(loss.center) == 0  # nothing applied before flush
    loss.flush_center_update()
    out = loss.softmax_center_teacher(t1, 0.5)  # applies the update lazily
    assert torch.allclose(loss.center, t1.mean(0, keepdim=True))  # first update: momentum 0
    assert torch.allclose(out, torch.softmax((t1 - t1.mean(0)) / 0.5, -1))
    # second update: EMA with momentum 0.9
    t2 = torch.tensor([[0.0, 0.0, 0.0, 8.0]])
    loss.update_center(t2)
    loss.flush_center_update()
    loss.apply_center_update()
    expected = 0.9 * t1.mean(0, keepdim=True) + 0.1 * t2
    assert torch.allclose(loss.center, expected)
    assert loss.center.shape == (1, 4)


def test_dino_center_accumulates_over_micro_steps():
    loss = DINOLoss(3)
    a, b = torch.randn(2, 3), torch.randn(5, 3)
    loss.update_center(a)
    loss.softmax_center_teacher(a, 0.1)  # a micro-step in the window: centre unchanged
    assert torch.count_nonzero(loss.center) == 0
    loss.update_center(b)
    loss.flush_center_update()
    loss.apply_center_update()
    assert torch.allclose(loss.center, torch.cat([a, b]).mean(0, keepdim=True), atol=1e-6)
    # the centre is a persistent buffer (saved in checkpoints), the accumulator is not
    assert "center" in loss.state_dict() and "async_batch_center" not in loss.state_dict()


def test_flush_without_updates_is_a_noop():
    loss = DINOLoss(3)
    loss.flush_center_update()
    loss.apply_center_update()
    assert torch.count_nonzero(loss.center) == 0 and loss.updated


# ----------------------------------------------------------------------------- iBOT
def test_ibot_forward_masked_hand_computed():
    loss = iBOTPatchLoss(2, student_temp=1.0)
    # 2 crops × 3 tokens; crop 0 masks tokens 0 and 2, crop 1 masks token 1
    masks = torch.tensor([[True, False, True], [False, True, False]])
    s = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])  # the 3 masked tokens in flat order
    t = torch.tensor([[0.5, 0.5], [1.0, 0.0], [0.25, 0.75]])
    ce = [-(t[i] * torch.log_softmax(s[i], -1)).sum().item() for i in range(3)]
    expected = (0.5 * ce[0] + 0.5 * ce[1] + 1.0 * ce[2]) / 2  # masks_weight 1/2, 1/2, 1; / B_g
    got = loss.forward_masked(s, t, masks)
    assert float(got) == pytest.approx(expected, rel=1e-6)
    w = torch.tensor([0.5, 0.5, 1.0])
    assert float(loss.forward_masked(s, t, masks, n_masked_patches=3, masks_weight=w)) == pytest.approx(expected)


def test_ibot_dense_and_masked_forms_agree():
    g = torch.Generator().manual_seed(1)
    B, N, K = 3, 5, 7
    masks = torch.rand(B, N, generator=g) > 0.5
    masks[0, 0] = True
    s = torch.randn(B, N, K, generator=g)
    t = torch.softmax(torch.randn(B, N, K, generator=g), -1)
    loss = iBOTPatchLoss(K)
    dense = loss(s, t, masks)
    masked = loss.forward_masked(s[masks], t[masks], masks)
    assert torch.allclose(dense, masked, atol=1e-6)


def test_ibot_center_is_mean_of_micro_batch_means():
    loss = iBOTPatchLoss(4)
    a = torch.randn(1, 6, 4)
    b = torch.randn(1, 2, 4)
    loss.update_center(a)
    loss.update_center(b)
    loss.flush_center_update()
    out = loss.softmax_center_teacher(torch.zeros(1, 3, 4), 0.1)
    expected = (a.mean(1) + b.mean(1)) / 2  # mean over micro-steps of the per-micro-batch means
    assert loss.center.shape == (1, 1, 4)
    assert torch.allclose(loss.center[0], expected, atol=1e-6)
    assert torch.allclose(out, torch.softmax((0 - loss.center) / 0.1, -1).expand(1, 3, 4))


# ----------------------------------------------------------------------------- KoLeo
def test_koleo_hand_computed():
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    u = x / x.norm(dim=1, keepdim=True)
    d = torch.cdist(u, u) + torch.diag(torch.full((3,), float("inf")))
    nn_dist = d.min(1).values  # pdist adds eps=1e-8 inside the norm; negligible here
    expected = -torch.log(nn_dist + 1e-8).mean()
    assert float(KoLeoLoss()(x)) == pytest.approx(float(expected), rel=1e-5)


def test_koleo_spread_points_have_lower_loss_and_needs_two():
    k = KoLeoLoss()
    spread = torch.eye(4)
    clumped = torch.eye(4) * 0.01 + torch.tensor([1.0, 0, 0, 0])
    assert k(spread) < k(clumped)
    with pytest.raises(ValueError):
        k(torch.randn(1, 4))


# ----------------------------------------------------------------------------- Sinkhorn-Knopp
def test_sinkhorn_normalisation_and_reference_transcription():
    g = torch.Generator().manual_seed(3)
    t = torch.randn(12, 6, generator=g)
    q = sinkhorn_knopp(t, 0.5, n_iterations=3)
    assert torch.allclose(q, _ref_sinkhorn(t, 0.5), rtol=1e-5, atol=1e-7)
    # rows are assignments (sum 1); after the last column step the rows are exact
    assert torch.allclose(q.sum(1), torch.ones(12), atol=1e-5)
    # with enough iterations every prototype gets B/K of the mass
    q50 = sinkhorn_knopp(t, 0.5, n_iterations=50)
    assert torch.allclose(q50.sum(0), torch.full((6,), 12 / 6), atol=1e-3)
    # DINOLoss / iBOTPatchLoss expose it with the DINOv2 names
    assert torch.allclose(DINOLoss(6).sinkhorn_knopp_teacher(t, 0.5), q)
    assert torch.allclose(iBOTPatchLoss(6).sinkhorn_knopp_teacher(t, 0.5, torch.tensor(12)), q)


def test_sinkhorn_is_stable_for_sharp_temperatures():
    t = torch.tensor([[30.0, -30.0, 0.0], [0.0, 30.0, -30.0]])
    q = sinkhorn_knopp(t, 0.04)
    assert torch.isfinite(q).all()
    assert math.isclose(float(q.sum()), 2.0, rel_tol=1e-5)
