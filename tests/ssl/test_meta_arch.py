"""Teacher/student: crop swapping, loss weighting of REFERENCE §3.4, EMA update, frozen teacher."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.ssl._helpers import MICRO
from voxelfm.ssl.augmentations import DataAugmentationDINO
from voxelfm.ssl.collate import SSLCollator
from voxelfm.ssl.config import load_config
from voxelfm.ssl.masking import MaskingGenerator3D
from voxelfm.ssl.meta_arch import SSLMetaArch, _normalised_entropy


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    cfg = load_config(None, MICRO + ["train.batch_size_per_gpu=3"])
    model = SSLMetaArch(cfg)
    aug = DataAugmentationDINO.from_config(cfg)
    vols = [np.random.default_rng(i).normal(-300, 300, (24, 26, 22)).astype(np.int16) for i in range(3)]
    collate = SSLCollator(MaskingGenerator3D((4, 4, 4), max_num_patches=32), (0.1, 0.5), 0.5, seed=0)
    batch = collate([dict(aug(v, np.random.default_rng(i)), position=i) for i, v in enumerate(vols)])
    return cfg, model, batch


def test_teacher_targets_are_swapped_and_centred(setup):
    cfg, model, batch = setup
    model.train()
    g = batch["collated_global_crops"]
    B = g.shape[0] // 2
    with torch.no_grad():
        cls = model.teacher.backbone(g)["x_norm_clstoken"]
        logits = model.teacher.dino_head(cls)
    targets, ibot, _ = model.get_teacher_output(g, batch["mask_indices_list"], 0.05, batch["upperbound"], 2,
                                               int(batch["n_masked_patches"]))
    assert targets.shape == (2, B, cfg.dino.head_n_prototypes)
    # student crop A (chunk 0) is compared with teacher crop B (chunk 1) and vice versa
    assert torch.allclose(targets[0], torch.softmax(logits[B:] / 0.05, -1), atol=1e-5)
    assert torch.allclose(targets[1], torch.softmax(logits[:B] / 0.05, -1), atol=1e-5)
    assert ibot.shape == (int(batch["n_masked_patches"]), cfg.dino.head_n_prototypes)
    # centres: accumulated, applied only after the flush (first update = the batch mean)
    model.dino_loss.flush_center_update()
    model.dino_loss.apply_center_update()
    assert torch.allclose(model.dino_loss.center[0], logits.mean(0), atol=1e-5)
    model.dino_loss.center.zero_()
    model.ibot_patch_loss.flush_center_update()
    model.ibot_patch_loss.apply_center_update()
    model.ibot_patch_loss.center.zero_()


def test_loss_weighting_matches_reference_formula(setup):
    cfg, model, batch = setup
    torch.manual_seed(1)
    model.train()
    loss_dict, total = model(batch, teacher_temp=0.05)
    nL = cfg.crops.local_crops_number
    for k in ("dino_local_crops_loss", "dino_global_crops_loss", "koleo_loss", "ibot_loss"):
        assert torch.isfinite(loss_dict[k])
    # total = local + global + KoLeo (logged / 2) + iBOT (all weights 1, KoLeo 0.1 inside)
    expected = (loss_dict["dino_local_crops_loss"] + loss_dict["dino_global_crops_loss"]
                + 2 * loss_dict["koleo_loss"] + loss_dict["ibot_loss"])
    assert torch.allclose(total, expected, atol=1e-5)
    assert nL * 2 + 2 == 6  # 2 local × 2 teacher + 2 global terms in the denominator
    assert 0 <= float(loss_dict["teacher_entropy"]) <= 1
    assert 0 <= float(loss_dict["ibot_teacher_entropy"]) <= 1


def test_teacher_entropy_monitors_are_normalised_entropies(setup):
    """``teacher_entropy`` / ``ibot_teacher_entropy`` = mean row entropy of the targets / log K."""
    cfg, model, batch = setup
    model.eval()
    with torch.no_grad():
        loss_dict, _ = model(batch, teacher_temp=0.05)
        idx, K = batch["mask_indices_list"], cfg.dino.head_n_prototypes
        out = model.teacher.backbone(batch["collated_global_crops"])
        cls_p = torch.softmax((model.teacher.dino_head(out["x_norm_clstoken"]) - model.dino_loss.center) / 0.05, -1)
        patch = out["x_norm_patchtokens"].flatten(0, 1)[idx]
        ibot_p = torch.softmax((model.teacher.dino_head(patch) - model.ibot_patch_loss.center[0]) / 0.05, -1)
    for probs, key in ((cls_p, "teacher_entropy"), (ibot_p, "ibot_teacher_entropy")):
        expected = float(-(probs * probs.log()).sum(-1).mean() / math.log(K))
        assert float(loss_dict[key]) == pytest.approx(expected, abs=1e-4), key
    uniform = torch.full((3, K), 1.0 / K)
    one_hot = torch.nn.functional.one_hot(torch.tensor([0, 5]), K).float()
    assert float(_normalised_entropy(uniform)) == pytest.approx(1.0, abs=1e-6)
    assert float(_normalised_entropy(one_hot)) == pytest.approx(0.0, abs=1e-6)


def test_loss_terms_recomputed_by_hand(setup):
    """Recompute every term from the raw outputs with plain torch (no drop path: eval student)."""
    cfg, model, batch = setup
    model.eval()  # deterministic student (no drop path); teacher is always eval
    g, loc = batch["collated_global_crops"], batch["collated_local_crops"]
    masks, idx = batch["collated_masks"], batch["mask_indices_list"]
    B, nL, T = g.shape[0] // 2, cfg.crops.local_crops_number, 0.05
    with torch.no_grad():
        t_cls = model.teacher.backbone(g)["x_norm_clstoken"]
        t_patch = model.teacher.backbone(g)["x_norm_patchtokens"].flatten(0, 1)[idx]
        t_logits = model.teacher.dino_head(t_cls)
        t_targets = torch.softmax(torch.cat([t_logits[B:], t_logits[:B]]) / T, -1)
        t_ibot = torch.softmax(model.teacher.dino_head(t_patch) / T, -1)
        s_glob = model.student.backbone(g, masks=masks)
        s_loc = model.student.backbone(loc)["x_norm_clstoken"]
        s_g = model.student.dino_head(s_glob["x_norm_clstoken"])
        s_l = model.student.dino_head(s_loc)
        s_p = model.student.dino_head(s_glob["x_norm_patchtokens"].flatten(0, 1)[idx])

        def ce(t, s):
            return -(t * torch.log_softmax(s / 0.1, -1)).sum(-1)

        local = sum(ce(t_targets[c * B:(c + 1) * B], s_l[j * B:(j + 1) * B]).mean()
                    for j in range(nL) for c in range(2)) / (2 * nL + 2)
        glob = ce(t_targets, s_g).mean() * 2 / (2 * nL + 2)
        w = (1 / masks.sum(-1).clamp(min=1)).unsqueeze(-1).expand_as(masks)[masks]
        ibot = (ce(t_ibot, s_p) * w).sum() / (2 * B) * 2 * 0.5
        koleo_terms = []
        for chunk in s_glob["x_norm_clstoken"].chunk(2):
            u = torch.nn.functional.normalize(chunk, dim=-1)
            d = torch.cdist(u, u) + torch.diag(torch.full((B,), float("inf")))
            koleo_terms.append(-torch.log(d.min(1).values + 1e-8).mean())
        koleo = 0.1 * sum(koleo_terms)
        loss_dict, total = model(batch, teacher_temp=T)
    assert float(loss_dict["dino_local_crops_loss"]) == pytest.approx(float(local), rel=1e-4)
    assert float(loss_dict["dino_global_crops_loss"]) == pytest.approx(float(glob), rel=1e-4)
    assert float(loss_dict["ibot_loss"]) == pytest.approx(float(ibot), rel=1e-4)
    assert float(loss_dict["koleo_loss"]) == pytest.approx(float(koleo) / 2, rel=1e-3)
    assert float(total) == pytest.approx(float(local + glob + ibot + koleo), rel=1e-4)
    for lo in (model.dino_loss, model.ibot_patch_loss):  # leave clean centres for other tests
        lo.flush_center_update()
        lo.apply_center_update()
        lo.center.zero_()


def test_ema_update_and_frozen_teacher(setup):
    _, model, _ = setup
    assert all(not p.requires_grad for p in model.teacher.parameters())
    s0 = [p.detach().clone() for p in model.student.parameters()]
    t0 = [p.detach().clone() for p in model.teacher.parameters()]
    with torch.no_grad():
        for p in model.student.parameters():
            p.add_(1.0)
    model.update_teacher(0.9)
    for t_new, t_old, s_old in zip(model.teacher.parameters(), t0, s0):
        assert torch.allclose(t_new, 0.9 * t_old + 0.1 * (s_old + 1.0), atol=1e-6)
    model.train()
    assert model.student.training and not model.teacher.training


def test_non_cubic_global_crops_train_on_their_own_token_grid():
    """Global crops of 16 × 12 × 16 voxels (the aspect of a chest CT after background cropping):
    crops, masks and every loss on the 4 × 3 × 4 token grid, with the axis permutation on."""
    torch.manual_seed(0)
    cfg = load_config(None, MICRO + ["train.batch_size_per_gpu=2", "crops.global_crops_size=[16,12,16]"])
    model = SSLMetaArch(cfg).train()
    aug = DataAugmentationDINO.from_config(cfg)
    vols = [np.random.default_rng(i).normal(-300, 300, (30, 22, 26)).astype(np.int16) for i in range(2)]
    collate = SSLCollator(MaskingGenerator3D((4, 3, 4), max_num_patches=24), (0.1, 0.5), 1.0, seed=0)
    batch = collate([dict(aug(v, np.random.default_rng(i)), position=i) for i, v in enumerate(vols)])
    assert batch["collated_global_crops"].shape == (4, 16, 12, 16)
    assert batch["collated_masks"].shape == (4, 48) and bool(batch["collated_masks"].any())
    loss_dict, total = model(batch, teacher_temp=0.05)
    assert torch.isfinite(total) and float(loss_dict["ibot_loss"].detach()) > 0
    total.backward()
    assert model.student.backbone.patch_embed.proj.weight.grad.abs().sum() > 0
