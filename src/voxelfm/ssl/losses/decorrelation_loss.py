"""Feature decorrelation regulariser (voxelfm; not in the reference or DINOv2).

The redundancy-reduction term of Barlow Twins (Zbontar et al. 2021) / the covariance term of
VICReg (Bardes et al. 2022), applied to one branch: the **pre-head** student CLS tokens of each
global crop chunk. Standardise every channel over the batch, form the ``[C, C]`` correlation
matrix ``R`` and penalise its off-diagonal entries, ``sum_{i != j} R_ij^2 / C``.

Why: on small, homogeneous collections self-distillation concentrates the CLS variance in a few
directions (on the phantom cohort, the first principal component — patient build — held half of
it), so a cosine kNN on the frozen CLS finds patients of the same build rather than the same
finding, although a linear probe reads the finding out. Whitening the features after training
fixes the kNN; this loss asks the backbone for a flat spectrum instead, so every downstream use
(kNN, retrieval, probes) gets it. Unlike KoLeo it does not push individual near-duplicate scans
apart.

A batch of ``B`` samples spans at most ``B - 1`` directions, so with ``B - 1 < C`` the loss cannot
reach 0 (its minimum is ``C / (B - 1) - 1``); its gradient still spreads the variance evenly over
the directions the batch spans. Computed in float32 with autocast disabled.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["DecorrelationLoss"]


class DecorrelationLoss(nn.Module):
    """Mean squared off-diagonal channel correlation over a batch, times ``C`` (0 = decorrelated).

    Args:
        eps: added to each channel's standard deviation (a constant channel contributes 0).
    """

    def __init__(self, eps: float = 1e-4) -> None:
        super().__init__()
        self.eps = float(eps)

    def forward(self, student_output: torch.Tensor) -> torch.Tensor:
        """``student_output`` ``[B, C]`` (B >= 2) → scalar loss ``sum_{i≠j} R_ij² / C``."""
        if student_output.ndim != 2 or student_output.shape[0] < 2:
            raise ValueError("the decorrelation loss needs a [B, C] batch with B >= 2 (it estimates "
                             f"channel correlations over the batch); got shape {tuple(student_output.shape)}")
        with torch.autocast(device_type=student_output.device.type, enabled=False):
            x = student_output.float()
            n, c = x.shape
            x = x - x.mean(0, keepdim=True)
            z = x / (x.std(0, keepdim=True) + self.eps)
            corr = z.t() @ z / (n - 1)
            off = corr - torch.diag(torch.diagonal(corr))
            return off.pow(2).sum() / c
