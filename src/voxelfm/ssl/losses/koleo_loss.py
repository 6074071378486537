"""KoLeo entropy regulariser (Sablayrolles et al. 2018), DINOv2 ``loss/koleo_loss.py``.

Applied to the **pre-head** student CLS tokens of each global crop chunk (REFERENCE §3.4):
L2-normalise, nearest neighbour by maximum dot product (self excluded), ``-mean log(‖x − x_nn‖ + ε)``.
Computed in float32 with autocast disabled.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["KoLeoLoss"]


class KoLeoLoss(nn.Module):
    """Kozachenko–Leonenko differential-entropy estimator as a loss (lower = more spread)."""

    def __init__(self) -> None:
        super().__init__()
        self.pdist = nn.PairwiseDistance(2, eps=1e-8)

    @staticmethod
    def pairwise_NNs_inner(x: torch.Tensor) -> torch.Tensor:  # noqa: N802 (DINOv2 name)
        """Index ``[B]`` of each row's nearest neighbour among the other rows (L2-normalised ``x``)."""
        dots = torch.mm(x, x.t())
        n = x.shape[0]
        dots.view(-1)[:: (n + 1)].fill_(-1)  # exclude self (dot products are >= -1)
        return torch.max(dots, dim=1).indices

    def forward(self, student_output: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
        """``student_output`` ``[B, C]`` (B >= 2) → scalar loss."""
        if student_output.ndim != 2 or student_output.shape[0] < 2:
            raise ValueError("KoLeo needs a [B, C] batch with B >= 2 (it compares each sample with "
                             f"its nearest neighbour); got shape {tuple(student_output.shape)}")
        with torch.autocast(device_type=student_output.device.type, enabled=False):
            x = F.normalize(student_output.float(), eps=eps, p=2, dim=-1)
            idx = self.pairwise_NNs_inner(x)
            distances = self.pdist(x, x[idx])
            return -torch.log(distances + eps).mean()
