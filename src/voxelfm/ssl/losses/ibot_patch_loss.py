"""iBOT masked-patch loss (REFERENCE §3.4, ``loss/ibot_patch_loss.py``), DINOv2 class API.

Per masked token: cross-entropy between the teacher target (centred + sharpened, or Sinkhorn–Knopp)
and the student ``log_softmax(s / 0.1)``, weighted by ``masks_weight`` (1 / #masked tokens of the
token's crop), summed and divided by the number of global crops. The centre ``[1, 1, K]`` is the
EMA of the per-micro-batch mean over masked tokens, averaged over the accumulation window and all
ranks; update protocol as :class:`~voxelfm.ssl.losses.DINOLoss` (``update_center`` every
micro-step, ``flush_center_update`` once per optimizer step, applied at the next softmax).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from voxelfm.ssl.losses._center import CenteredLoss
from voxelfm.ssl.losses._center import world_size as _world_size
from voxelfm.ssl.losses.dino_clstoken_loss import sinkhorn_knopp

__all__ = ["iBOTPatchLoss"]


class iBOTPatchLoss(CenteredLoss):  # noqa: N801 (DINOv2 class name)
    """Masked-patch self-distillation loss.

    Args:
        patch_out_dim: number of prototypes K.
        student_temp: student temperature.
        center_momentum: EMA momentum of the centre.

    Buffers: ``center`` ``[1, 1, K]`` (persistent).
    """

    def __init__(self, patch_out_dim: int, student_temp: float = 0.1,
                 center_momentum: float = 0.9) -> None:
        super().__init__()
        if patch_out_dim < 1:
            raise ValueError(f"patch_out_dim must be >= 1, got {patch_out_dim}")
        self.patch_out_dim = int(patch_out_dim)
        self.student_temp = float(student_temp)
        self._init_center((1, 1, self.patch_out_dim), center_momentum)

    @torch.no_grad()
    def softmax_center_teacher(self, teacher_patch_tokens: torch.Tensor,
                               teacher_temp: float) -> torch.Tensor:
        """``[..., K] -> [..., K]``: ``softmax((t - center) / teacher_temp)``."""
        self.apply_center_update()
        return F.softmax((teacher_patch_tokens - self.center) / teacher_temp, dim=-1)

    @torch.no_grad()
    def sinkhorn_knopp_teacher(self, teacher_output: torch.Tensor, teacher_temp: float,
                               n_masked_patches_tensor: torch.Tensor | int | None = None,
                               n_iterations: int = 3) -> torch.Tensor:
        """``[M, K] -> [M, K]`` Sinkhorn–Knopp targets over the masked tokens of all ranks.

        ``n_masked_patches_tensor`` is this rank's number of masked tokens (all-reduced here to the
        global count, as DINOv2 does); default ``M``.
        """
        if n_masked_patches_tensor is None:
            n_masked_patches_tensor = teacher_output.shape[0]
        B = torch.as_tensor(n_masked_patches_tensor, dtype=torch.float32,
                            device=teacher_output.device).clone().reshape(())
        if _world_size() > 1:
            dist.all_reduce(B)
        return sinkhorn_knopp(teacher_output, teacher_temp, n_iterations, n_samples=B)

    def forward(self, student_patch_tokens: torch.Tensor, teacher_patch_tokens: torch.Tensor,
                student_masks_flat: torch.Tensor) -> torch.Tensor:
        """Dense form: tokens ``[B, N, K]``, masks ``[B, N]``; mean over crops of the per-crop mean
        masked-token cross-entropy."""
        t, s = teacher_patch_tokens, student_patch_tokens
        loss = torch.sum(t * F.log_softmax(s / self.student_temp, dim=-1), dim=-1)
        loss = torch.sum(loss * student_masks_flat.float(), dim=-1) / \
            student_masks_flat.sum(dim=-1).clamp(min=1.0)
        return -loss.mean()

    def forward_masked(self, student_patch_tokens_masked: torch.Tensor,
                       teacher_patch_tokens_masked: torch.Tensor,
                       student_masks_flat: torch.Tensor, n_masked_patches: int | None = None,
                       masks_weight: torch.Tensor | None = None) -> torch.Tensor:
        """Gathered form: student/teacher ``[M, K]`` for the M masked tokens (in
        ``student_masks_flat`` ``[B_g, N]`` flat order); ``-Σ w · CE / B_g``."""
        t, s = teacher_patch_tokens_masked, student_patch_tokens_masked
        loss = torch.sum(t * F.log_softmax(s / self.student_temp, dim=-1), dim=-1)
        if masks_weight is None:
            masks_weight = (1 / student_masks_flat.sum(-1).clamp(min=1.0)).unsqueeze(-1) \
                .expand_as(student_masks_flat)[student_masks_flat]
        if n_masked_patches is not None:
            loss = loss[:n_masked_patches]
        loss = loss * masks_weight
        return -loss.sum() / student_masks_flat.shape[0]

    @torch.no_grad()
    def update_center(self, teacher_patch_tokens: torch.Tensor) -> None:
        """Accumulate one micro-batch: ``teacher_patch_tokens`` ``[G, M, K]`` (G groups, usually 1);
        the accumulator receives the sum over groups of the mean over tokens."""
        self.reduce_center_update(teacher_patch_tokens)

    @torch.no_grad()
    def reduce_center_update(self, teacher_patch_tokens: torch.Tensor) -> None:
        if teacher_patch_tokens.ndim == 2:
            teacher_patch_tokens = teacher_patch_tokens.unsqueeze(0)
        if teacher_patch_tokens.shape[1] == 0:  # no masked token in this micro-batch
            return
        self._accumulate(torch.sum(teacher_patch_tokens.float().mean(1), dim=0, keepdim=True),
                         len(teacher_patch_tokens))
