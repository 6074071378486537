"""DINO loss on the CLS token (REFERENCE §3.4, ``loss/dino_clstoken_loss.py``), DINOv2 class API.

Teacher targets are centred and sharpened, ``softmax((t - center) / τ_t)`` (the reference default),
or optionally Sinkhorn–Knopp normalised (DINOv2's ``sinkhorn_knopp_teacher``). The centre is an EMA
(momentum 0.9; the first update takes the batch mean, i.e. momentum 0) of the mean teacher output
over an accumulation window and all ranks:

* :meth:`update_center` adds a micro-batch's sum to a local accumulator (every micro-step);
* :meth:`flush_center_update` starts the (async) all-reduce of the accumulated sums — called once
  per optimizer step (:meth:`voxelfm.ssl.meta_arch.SSLMetaArch.update_teacher` does it);
* the new centre is applied lazily by the next :meth:`softmax_center_teacher`.

(With one micro-step per optimizer step this is exactly DINOv2's per-step update.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F

from voxelfm.ssl.losses._center import CenteredLoss
from voxelfm.ssl.losses._center import world_size as _world_size

__all__ = ["DINOLoss", "sinkhorn_knopp"]


@torch.no_grad()
def sinkhorn_knopp(teacher_output: torch.Tensor, teacher_temp: float, n_iterations: int = 3,
                   n_samples: torch.Tensor | int | None = None) -> torch.Tensor:
    """Sinkhorn–Knopp teacher targets (DINOv2 / SwAV), ``[B, K] -> [B, K]``, rows sum to 1.

    Q = exp(t / τ) (``K × B``) is normalised so each prototype row carries 1/K of the mass and each
    sample column 1/B, ``n_iterations`` times, then columns are rescaled to sum to 1. Row sums are
    reduced across ranks (columns are per sample, local). ``n_samples`` is the global number of
    samples B (default: local rows × world size). Same result as DINOv2's
    ``sinkhorn_knopp_teacher`` but computed in the log domain, so sharp temperatures cannot
    underflow a prototype row to 0 (DINOv2 then returns NaN). DINOv2's initial division by the
    total mass is omitted: the first row normalisation cancels it exactly.
    """
    distributed = _world_size() > 1
    log_q = (teacher_output.float() / teacher_temp).t()  # K x B
    K = log_q.shape[0]
    B = log_q.shape[1] * _world_size() if n_samples is None else n_samples
    log_b = torch.log(torch.as_tensor(B, dtype=torch.float32, device=log_q.device))
    log_k = math.log(K)
    for _ in range(n_iterations):
        row_max = log_q.max(dim=1, keepdim=True).values
        if distributed:
            dist.all_reduce(row_max, op=dist.ReduceOp.MAX)
        row_sum = torch.exp(log_q - row_max).sum(dim=1, keepdim=True)
        if distributed:
            dist.all_reduce(row_sum)
        log_q = log_q - (row_max + torch.log(row_sum)) - log_k  # each prototype: 1/K
        log_q = log_q - torch.logsumexp(log_q, dim=0, keepdim=True) - log_b  # each sample: 1/B
    return torch.exp(log_q + log_b).t()


class DINOLoss(CenteredLoss):
    """Cross-entropy between sharpened teacher targets and student log-softmax (τ_s = 0.1).

    Args:
        out_dim: number of prototypes K (head output size).
        student_temp: student temperature.
        center_momentum: EMA momentum of the centre.

    Buffers: ``center`` ``[1, K]`` (persistent, part of checkpoints).
    """

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9) -> None:
        super().__init__()
        if out_dim < 1:
            raise ValueError(f"out_dim must be >= 1, got {out_dim}")
        self.out_dim = int(out_dim)
        self.student_temp = float(student_temp)
        self._init_center((1, self.out_dim), center_momentum)

    @torch.no_grad()
    def softmax_center_teacher(self, teacher_output: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        """``[B, K] -> [B, K]``: ``softmax((t - center) / teacher_temp)`` (applies a pending update)."""
        self.apply_center_update()
        return F.softmax((teacher_output - self.center) / teacher_temp, dim=-1)

    @torch.no_grad()
    def sinkhorn_knopp_teacher(self, teacher_output: torch.Tensor, teacher_temp: float,
                               n_iterations: int = 3) -> torch.Tensor:
        """``[B, K] -> [B, K]`` Sinkhorn–Knopp targets (no centre involved)."""
        return sinkhorn_knopp(teacher_output, teacher_temp, n_iterations)

    def forward(self, student_output_list: Sequence[torch.Tensor],
                teacher_out_softmaxed_centered_list: Sequence[torch.Tensor]) -> torch.Tensor:
        """``-Σ_s Σ_t mean_b Σ_k t · log_softmax(s / τ_s)`` over all (student, teacher) chunk pairs.

        Each student chunk ``[B, K]`` is compared with each teacher chunk ``[B, K]``.
        """
        total_loss = 0
        for s in student_output_list:
            lsm = F.log_softmax(s / self.student_temp, dim=-1)
            for t in teacher_out_softmaxed_centered_list:
                loss = torch.sum(t * lsm, dim=-1)
                total_loss = total_loss - loss.mean()
        return total_loss  # type: ignore[return-value]

    @torch.no_grad()
    def update_center(self, teacher_output: torch.Tensor) -> None:
        """Accumulate the ``[B, K]`` teacher outputs of one micro-batch into the pending centre."""
        self.reduce_center_update(teacher_output)

    @torch.no_grad()
    def reduce_center_update(self, teacher_output: torch.Tensor) -> None:
        self._accumulate(torch.sum(teacher_output.float(), dim=0, keepdim=True), len(teacher_output))
