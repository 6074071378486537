"""The lazily applied, accumulate-then-all-reduce EMA centre shared by the DINO and iBOT losses."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["CenteredLoss", "world_size"]


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class CenteredLoss(nn.Module):
    """Base class holding ``center`` (persistent buffer) and the pending accumulation.

    Protocol (REFERENCE §3.4): ``update_center`` adds one micro-batch to a local sum every
    micro-step; ``flush_center_update`` starts an async all-reduce once per optimizer step; the next
    ``softmax_center_teacher`` applies ``center ← m · center + (1 − m) · sum / count`` with
    ``m = 0`` while the centre is still all zeros (first update). Under DDP the count is reduced
    together with the sum, so ranks with different counts stay correct (equal counts give the
    reference's ``sum / (count · world_size)``).
    """

    center: torch.Tensor
    async_batch_center: torch.Tensor

    def _init_center(self, shape: tuple[int, ...], center_momentum: float) -> None:
        self.center_momentum = float(center_momentum)
        self.register_buffer("center", torch.zeros(*shape))
        self.register_buffer("async_batch_center", torch.zeros(*shape), persistent=False)
        self.updated = True
        self.reduce_handle = None
        self.token_count = 0
        self._count_tensor: torch.Tensor | None = None
        self._count_handle = None

    def _accumulate(self, batch_sum: torch.Tensor, count: int) -> None:
        self.async_batch_center += batch_sum.to(self.async_batch_center.dtype)
        self.token_count += int(count)

    @torch.no_grad()
    def flush_center_update(self) -> None:
        """Start the all-reduce of the accumulated sums; the next softmax applies the update."""
        if world_size() > 1:  # every rank must take part, even with nothing accumulated
            self._count_tensor = torch.tensor([float(self.token_count)],
                                              device=self.async_batch_center.device)
            self.reduce_handle = dist.all_reduce(self.async_batch_center, async_op=True)
            self._count_handle = dist.all_reduce(self._count_tensor, async_op=True)
        elif self.token_count == 0:
            return
        self.updated = False

    @torch.no_grad()
    def apply_center_update(self) -> None:
        """Apply a flushed update (no-op if nothing is pending)."""
        if self.updated:
            return
        if self.reduce_handle is not None:
            self.reduce_handle.wait()
            self._count_handle.wait()
            count = float(self._count_tensor.item())
            self.reduce_handle = self._count_handle = self._count_tensor = None
        else:
            count = float(self.token_count)
        if count > 0:
            mom = self.center_momentum if torch.any(self.center) else 0.0
            batch_center = self.async_batch_center / count
            self.center = self.center * mom + batch_center * (1 - mom)
        self.async_batch_center.zero_()
        self.token_count = 0
        self.updated = True
