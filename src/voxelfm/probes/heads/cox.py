"""The Cox proportional-hazards head: a linear log-risk score trained with the partial likelihood
(:func:`voxelfm.probes.losses.cox_ph_loss`, Breslow or Efron ties)."""

from __future__ import annotations

from voxelfm.probes.heads.linear import LinearHead

__all__ = ["CoxHead"]


class CoxHead(LinearHead):
    """``[B, C] -> [B]`` log-risk ``η = βᵀ z(x)`` (higher = shorter survival), no bias (a constant
    cancels in the partial likelihood). ``z`` standardises with training statistics, so
    ``β / std`` are the coefficients on the raw features.

    Args:
        in_dim: feature width ``C``.
        standardize: z-score inputs (default True).
    """

    def __init__(self, in_dim: int, *, standardize: bool = True) -> None:
        super().__init__(in_dim, 1, bias=False, standardize=standardize)
