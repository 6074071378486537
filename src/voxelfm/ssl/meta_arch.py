"""Teacher/student self-distillation (REFERENCE §3.4, ``train/ssl_meta_arch.py::SSLMetaArch``).

* Student = {backbone (drop path), dino_head}, teacher = the same modules without drop path,
  initialised from the student, never trained by gradients (EMA only), always in eval mode.
* Teacher: backbone on the 2 global crops; CLS tokens swapped per crop (crop B's target for the
  student's crop A and vice versa); teacher patch tokens at the masked positions and the CLS tokens
  go through the **shared** DINO head in one buffer of length ``n_cls + upperbound``; targets are
  centred + sharpened (``train.centering: centering``) or Sinkhorn–Knopp.
* Student: backbone on the masked global crops and, separately, on the local crops; local CLS,
  global CLS and the masked patch tokens (buffer of length ``upperbound``) through the head once.
* Losses (student temperature 0.1): DINO local (nL × 2 terms) / (2 + 2·nL); DINO global × 2 /
  (2 + 2·nL); KoLeo (weight 0.1) on the pre-head global CLS of each global-crop chunk, summed;
  iBOT × 2 × 1/2; total = w_dino · (local + global) + KoLeo + w_ibot · iBOT.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import nn

from voxelfm.ssl.losses import DINOLoss, KoLeoLoss, iBOTPatchLoss
from voxelfm.ssl.param_groups import fuse_params_groups, get_params_groups_with_decay

__all__ = ["SSLMetaArch", "build_student_teacher_backbones", "unwrap"]

logger = logging.getLogger("voxelfm.ssl")


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside a DDP / FSDP / ``torch.compile`` wrapper."""
    module = getattr(module, "module", module)
    return getattr(module, "_orig_mod", module)


def build_student_teacher_backbones(cfg: Any) -> tuple[nn.Module, nn.Module]:
    """``(student, teacher)`` backbones from ``cfg.student.*`` (teacher without drop path).

    ``student.pretrained_weights`` (a voxelfm backbone folder, a reference checkpoint, ...) initialises
    both (continued pre-training).
    """
    from voxelfm.models import build_backbone, load_backbone, read_reference_config

    vit_cfg, mean, std = read_reference_config(cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg))
    ds = cfg.datasets[0]
    student = build_backbone(vit_cfg)
    teacher = build_backbone(vit_cfg.replace(drop_path_rate=0.0))
    weights = cfg.student.get("pretrained_weights") or ""
    if weights:
        loaded = load_backbone(weights, config=vit_cfg)
        missing, unexpected = student.load_state_dict(loaded.state_dict(), strict=False)
        logger.info("student initialised from %s (missing %d, unexpected %d keys)", weights,
                    len(missing), len(unexpected))
    preset = student.preset
    import dataclasses

    preset = dataclasses.replace(preset, hu_window=(float(ds.pixel_range.lower), float(ds.pixel_range.upper)),
                                 mean=float(mean), std=float(std))
    student.preset = teacher.preset = preset
    return student, teacher


def _normalised_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Mean entropy of the rows of ``probs`` ``[N, K]`` divided by ``log K``: 1 = uniform, 0 = one-hot."""
    p = probs.detach().float()
    return -(p * torch.log(p.clamp_min(1e-12))).sum(-1).mean() / math.log(p.shape[-1])


class SSLMetaArch(nn.Module):
    """DINO + iBOT + KoLeo teacher/student model.

    Args:
        cfg: the pre-training config (:func:`voxelfm.ssl.config.load_config`).

    Attributes:
        student, teacher: ``nn.ModuleDict`` with ``backbone``, ``dino_head`` (and ``ibot_head`` if
            ``ibot.separate_head``).
        dino_loss, ibot_patch_loss, koleo_loss: the losses (their ``center`` buffers are part of the
            state dict).
    """

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        from voxelfm.models.layers import DINOHead

        self.cfg = cfg
        student_backbone, teacher_backbone = build_student_teacher_backbones(cfg)
        self.embed_dim = int(cfg.student.embed_dim)
        self.n_local_crops = int(cfg.crops.local_crops_number)
        self.do_dino = float(cfg.dino.loss_weight) > 0
        self.do_koleo = float(cfg.dino.koleo_loss_weight) > 0
        self.do_ibot = float(cfg.ibot.loss_weight) > 0
        self.ibot_separate_head = bool(cfg.ibot.separate_head)
        self.dino_loss_weight = float(cfg.dino.loss_weight)
        self.koleo_loss_weight = float(cfg.dino.koleo_loss_weight)
        self.ibot_loss_weight = float(cfg.ibot.loss_weight)
        self.centering = str(cfg.train.get("centering", "centering"))
        self.dino_out_dim = int(cfg.dino.head_n_prototypes)

        def dino_head() -> nn.Module:
            return DINOHead(in_dim=self.embed_dim, out_dim=self.dino_out_dim,
                            hidden_dim=int(cfg.dino.head_hidden_dim),
                            bottleneck_dim=int(cfg.dino.head_bottleneck_dim),
                            nlayers=int(cfg.dino.head_nlayers))

        student: dict[str, nn.Module] = {"backbone": student_backbone, "dino_head": dino_head()}
        teacher: dict[str, nn.Module] = {"backbone": teacher_backbone, "dino_head": dino_head()}
        self.dino_loss = DINOLoss(self.dino_out_dim)
        self.koleo_loss = KoLeoLoss()
        self.ibot_out_dim = int(cfg.ibot.head_n_prototypes) if self.ibot_separate_head else self.dino_out_dim
        self.ibot_patch_loss = iBOTPatchLoss(self.ibot_out_dim)
        if self.do_ibot and self.ibot_separate_head:
            def ibot_head() -> nn.Module:
                return DINOHead(in_dim=self.embed_dim, out_dim=self.ibot_out_dim,
                                hidden_dim=int(cfg.ibot.head_hidden_dim),
                                bottleneck_dim=int(cfg.ibot.head_bottleneck_dim),
                                nlayers=int(cfg.ibot.head_nlayers))
            student["ibot_head"], teacher["ibot_head"] = ibot_head(), ibot_head()
        if not self.do_ibot:  # the mask token would get no gradient (DDP needs every parameter used)
            student_backbone.mask_token.requires_grad_(False)
        self.student = nn.ModuleDict(student)
        self.teacher = nn.ModuleDict(teacher)
        for k in self.student.keys():
            self.teacher[k].load_state_dict(self.student[k].state_dict())
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    # ------------------------------------------------------------------ teacher
    @torch.no_grad()
    def get_teacher_output(self, global_crops: torch.Tensor, mask_indices_list: torch.Tensor,
                           teacher_temp: float, upperbound: int, n_global_crops: int,
                           n_masked_patches: int) -> tuple[torch.Tensor, torch.Tensor | None,
                                                           dict[str, torch.Tensor]]:
        """Teacher targets: DINO ``[2, B, K]`` (swapped crops) and iBOT ``[M, K]`` (or None), plus
        the raw teacher CLS logits for monitoring."""
        out = self.teacher.backbone(global_crops)
        cls = out["x_norm_clstoken"].chunk(n_global_crops)
        cls = torch.cat((cls[1], cls[0]))  # crop B's target for student crop A, and vice versa
        patch = out["x_norm_patchtokens"]
        dim = patch.shape[-1]
        n_cls = cls.shape[0]
        masked_after_head = None
        if self.do_ibot and not self.ibot_separate_head:
            buffer = patch.new_zeros(upperbound + n_cls, dim)
            buffer[:n_cls].copy_(cls)
            torch.index_select(patch.flatten(0, 1), dim=0, index=mask_indices_list,
                               out=buffer[n_cls:n_cls + n_masked_patches])
            after = self.teacher.dino_head(buffer)
            cls_after = after[:n_cls]
            masked_after_head = after[n_cls:n_cls + n_masked_patches]
        elif self.do_ibot:
            buffer = patch.new_zeros(upperbound, dim)
            torch.index_select(patch.flatten(0, 1), dim=0, index=mask_indices_list,
                               out=buffer[:n_masked_patches])
            cls_after = self.teacher.dino_head(cls)
            masked_after_head = self.teacher.ibot_head(buffer)[:n_masked_patches]
        else:
            cls_after = self.teacher.dino_head(cls)

        if self.centering == "sinkhorn_knopp":
            dino_targets = self.dino_loss.sinkhorn_knopp_teacher(cls_after, teacher_temp)
            ibot_targets = None
            if masked_after_head is not None:
                ibot_targets = self.ibot_patch_loss.sinkhorn_knopp_teacher(
                    masked_after_head, teacher_temp, n_masked_patches_tensor=n_masked_patches)
        else:
            dino_targets = self.dino_loss.softmax_center_teacher(cls_after, teacher_temp)
            self.dino_loss.update_center(cls_after)
            ibot_targets = None
            if masked_after_head is not None:
                m = masked_after_head.unsqueeze(0)
                ibot_targets = self.ibot_patch_loss.softmax_center_teacher(m, teacher_temp).squeeze(0)
                self.ibot_patch_loss.update_center(m)
        dino_targets = dino_targets.view(n_global_crops, -1, *dino_targets.shape[1:])
        return dino_targets, ibot_targets, {"teacher_cls_after_head": cls_after,
                                            "teacher_cls_probs": dino_targets.flatten(0, 1)}

    # ------------------------------------------------------------------ student
    def get_student_output(self, global_crops: torch.Tensor, local_crops: torch.Tensor,
                           masks: torch.Tensor, mask_indices_list: torch.Tensor,
                           upperbound: int) -> dict[str, torch.Tensor | None]:
        n_masked = mask_indices_list.shape[0]
        global_out = self.student.backbone(global_crops, masks=masks if self.do_ibot else None)
        inputs = []
        local_cls = None
        if self.n_local_crops > 0:
            local_out = self.student.backbone(local_crops, masks=None)
            local_cls = local_out["x_norm_clstoken"]
            inputs.append(local_cls)
        global_cls = global_out["x_norm_clstoken"]
        inputs.append(global_cls)
        masked_after = None
        if self.do_ibot:
            patch = global_out["x_norm_patchtokens"]
            buffer = patch.new_zeros(upperbound, patch.shape[-1])
            buffer[:n_masked].copy_(torch.index_select(patch.flatten(0, 1), dim=0, index=mask_indices_list))
            if self.ibot_separate_head:
                masked_after = self.student.ibot_head(buffer)[:n_masked]
            else:
                inputs.append(buffer)
        sizes = [x.shape[0] for x in inputs]
        outputs = list(torch.split_with_sizes(self.student.dino_head(torch.cat(inputs)), sizes))
        local_after = outputs.pop(0) if self.n_local_crops > 0 else None
        global_after = outputs.pop(0)
        if self.do_ibot and not self.ibot_separate_head:
            masked_after = outputs.pop(0)[:n_masked]
        return {"local_cls_before": local_cls, "global_cls_before": global_cls,
                "local_cls_after": local_after, "global_cls_after": global_after,
                "masked_patch_after": masked_after}

    # ------------------------------------------------------------------ losses
    def forward(self, images: dict[str, Any], teacher_temp: float
                ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """One micro-batch: ``(loss_dict, total_loss)``.

        ``images`` is a collated batch (:func:`voxelfm.ssl.collate.collate_data_and_cast`), already
        on the model's device. ``loss_dict`` holds ``dino_local_crops_loss``,
        ``dino_global_crops_loss``, ``koleo_loss`` (logged value = sum / 2), ``ibot_loss`` and
        detached monitors ``teacher_entropy`` (of the CLS targets, normalised by log K),
        ``ibot_teacher_entropy`` (of the masked-patch targets; with iBOT on), ``teacher_cls_std``
        and ``student_cls_std``.
        """
        n_global = 2
        global_crops = images["collated_global_crops"]
        local_crops = images["collated_local_crops"]
        masks = images["collated_masks"]
        mask_indices_list = images["mask_indices_list"]
        masks_weight = images["masks_weight"]
        upperbound = int(images["upperbound"])
        n_masked = int(mask_indices_list.shape[0])

        teacher_dino, teacher_ibot, monitors = self.get_teacher_output(
            global_crops, mask_indices_list, teacher_temp, upperbound, n_global, n_masked)
        student = self.get_student_output(global_crops, local_crops, masks, mask_indices_list, upperbound)

        loss_dict: dict[str, torch.Tensor] = {}
        total = global_crops.new_zeros(())
        n_local_terms = max(self.n_local_crops * n_global, 1)
        n_global_terms = (n_global - 1) * n_global
        loss_scales = 2
        ibot_loss_scale = 1.0 / n_global

        if self.n_local_crops > 0 and self.do_dino:
            dino_local = self.dino_loss(student["local_cls_after"].chunk(self.n_local_crops),
                                        list(teacher_dino)) / (n_global_terms + n_local_terms)
            loss_dict["dino_local_crops_loss"] = dino_local
            total = total + self.dino_loss_weight * dino_local
        if self.do_dino:
            dino_global = self.dino_loss([student["global_cls_after"]], [teacher_dino.flatten(0, 1)]) \
                * loss_scales / (n_global_terms + n_local_terms)
            loss_dict["dino_global_crops_loss"] = dino_global
            total = total + self.dino_loss_weight * dino_global
        if self.do_koleo:
            koleo = self.koleo_loss_weight * sum(self.koleo_loss(p) for p in
                                                 student["global_cls_before"].chunk(n_global))
            total = total + koleo
            loss_dict["koleo_loss"] = koleo / loss_scales
        if self.do_ibot:
            if n_masked > 0:
                ibot = self.ibot_patch_loss.forward_masked(
                    student["masked_patch_after"], teacher_ibot, student_masks_flat=masks,
                    n_masked_patches=n_masked, masks_weight=masks_weight) * loss_scales * ibot_loss_scale
            else:  # keep the graph connected (DDP) with a zero loss
                ibot = 0.0 * student["masked_patch_after"].sum() if student["masked_patch_after"] is not None \
                    else total.new_zeros(())
            loss_dict["ibot_loss"] = ibot
            total = total + self.ibot_loss_weight * ibot

        with torch.no_grad():
            loss_dict["teacher_entropy"] = _normalised_entropy(monitors["teacher_cls_probs"])
            loss_dict["teacher_cls_std"] = monitors["teacher_cls_after_head"].float().std(0).mean()
            cls_before = student["global_cls_before"].detach().float()
            loss_dict["student_cls_std"] = torch.nn.functional.normalize(cls_before, dim=-1).std(0).mean()
            if self.do_ibot:  # same for the masked-patch targets (NaN when no patch was masked)
                loss_dict["ibot_teacher_entropy"] = _normalised_entropy(teacher_ibot) \
                    if teacher_ibot is not None and n_masked > 0 else total.new_full((), float("nan"))
        return loss_dict, total

    # ------------------------------------------------------------------ EMA, groups, modes
    @torch.no_grad()
    def update_teacher(self, m: float) -> None:
        """θ_t ← m·θ_t + (1 − m)·θ_s over backbone and heads; then flush the centre updates."""
        student_params: list[torch.Tensor] = []
        teacher_params: list[torch.Tensor] = []
        for module in list(self.student.values()) + list(self.teacher.values()):
            if hasattr(module, "reshard"):  # FSDP2 roots may still hold unsharded parameters
                module.reshard()
        for k in self.student.keys():
            student_params += list(unwrap(self.student[k]).parameters())
            teacher_params += list(unwrap(self.teacher[k]).parameters())
        # FSDP2 shards student and teacher identically: update the local shards
        student_params = [p.to_local() if hasattr(p, "to_local") else p for p in student_params]
        teacher_params = [p.to_local() if hasattr(p, "to_local") else p for p in teacher_params]
        torch._foreach_mul_(teacher_params, m)
        torch._foreach_add_(teacher_params, student_params, alpha=1 - m)
        self.dino_loss.flush_center_update()
        self.ibot_patch_loss.flush_center_update()

    def train(self, mode: bool = True) -> "SSLMetaArch":
        super().train(mode)
        self.teacher.eval()
        return self

    def get_params_groups(self) -> list[dict[str, Any]]:
        """Fused AdamW groups of every student sub-module (layer decay, patch-embed mult, no-wd)."""
        groups: list[dict[str, Any]] = []
        for m in self.student.values():
            groups += fuse_params_groups(get_params_groups_with_decay(
                unwrap(m), lr_decay_rate=float(self.cfg.optim.layerwise_decay),
                patch_embed_lr_mult=float(self.cfg.optim.patch_embed_lr_mult)))
        for g in groups:
            g["foreach"] = True
        return groups
