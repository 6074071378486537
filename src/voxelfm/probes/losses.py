"""Probe losses that torch does not ship: the Cox partial likelihood (Breslow / Efron ties) and a
binary cross-entropy that ignores missing labels (multi-label tables with gaps)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["cox_ph_loss", "masked_bce_with_logits"]


def _tie_groups(time_sorted: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For times sorted **descending**: group id per element and the last index of each group."""
    _, inverse, counts = torch.unique_consecutive(time_sorted, return_inverse=True, return_counts=True)
    last = torch.cumsum(counts, 0) - 1
    return inverse, last


def cox_ph_loss(risk: torch.Tensor, time: torch.Tensor, event: torch.Tensor, *,
                ties: str = "breslow") -> torch.Tensor:
    """Negative Cox log partial likelihood per event, ``−ℓ(β) / #events``.

    With distinct event times ``t_j``, ``D_j`` the events at ``t_j`` (``d_j = |D_j|``) and
    ``R_j = {k : T_k ≥ t_j}`` the risk set (**all** subjects tied at ``t_j`` included):

    * Breslow: ``ℓ = Σ_j [ Σ_{i∈D_j} η_i − d_j · log Σ_{k∈R_j} e^{η_k} ]``
    * Efron:   ``ℓ = Σ_j [ Σ_{i∈D_j} η_i − Σ_{l=0}^{d_j−1} log( Σ_{k∈R_j} e^{η_k} − (l/d_j) Σ_{i∈D_j} e^{η_i} ) ]``

    Both equal the plain partial likelihood when there are no ties. (The reference sorts by time
    and uses a running ``logcumsumexp``, which gives tied subjects different, order-dependent risk
    sets.) Computed in O(N log N) with log-sum-exp for stability.

    Args:
        risk: log-risk ``η [N]`` (higher = shorter survival).
        time: follow-up times ``[N]``.
        event: 1 = event, 0 = censored ``[N]``.
        ties: ``"breslow"`` or ``"efron"``.

    Returns:
        Scalar loss; 0 (with a gradient path) when the batch has no event.
    """
    if ties not in ("breslow", "efron"):
        raise ValueError(f"ties must be 'breslow' or 'efron', got {ties!r}")
    risk = risk.reshape(-1)
    time = time.reshape(-1).to(risk.dtype)
    event = event.reshape(-1).to(risk.dtype)
    n_events = event.sum()
    if n_events <= 0:
        return risk.sum() * 0.0
    order = torch.argsort(time, descending=True, stable=True)
    eta, t, e = risk[order], time[order], event[order]
    group, last = _tie_groups(t)
    log_risk_set = torch.logcumsumexp(eta, dim=0)[last]                   # [G]: log Σ_{R_j} e^η
    if ties == "breslow":
        denom = log_risk_set[group]                                       # [N]
        return -((eta - denom) * e).sum() / n_events
    # Efron: events of group j get l = 0..d_j-1 (their order inside the group is irrelevant).
    g = int(last.numel())
    d = torch.zeros(g, dtype=risk.dtype, device=risk.device).index_add(0, group, e)
    ev_exp = torch.where(e > 0, eta, torch.full_like(eta, float("-inf")))
    # log Σ_{D_j} e^η per group, stably: group max + log Σ exp(η − max) over the events
    # (mx is only a stabiliser: detached; masked entries go through exp(-inf) = 0 so no NaN gradients)
    mx = torch.full((g,), float("-inf"), dtype=risk.dtype, device=risk.device).scatter_reduce(
        0, group, ev_exp.detach(), reduce="amax", include_self=True).clamp_min(-1e30)
    shifted = torch.where(e > 0, eta - mx[group], torch.full_like(eta, float("-inf")))
    sum_exp = torch.zeros(g, dtype=risk.dtype, device=risk.device).index_add(0, group, torch.exp(shifted))
    log_tied = mx + torch.log(sum_exp.clamp_min(1e-300))
    # rank l of each event inside its group (0-based, in sorted order)
    csum = torch.cumsum(e, 0)
    first_idx = torch.cat([last.new_zeros(1), last[:-1] + 1])
    before = (csum - e) - (csum[first_idx] - e[first_idx])[group]
    frac = torch.where(e > 0, before / d[group].clamp_min(1.0), torch.zeros_like(eta))
    # log( R - frac·D ) = logR + log(1 - frac·exp(logD - logR)), frac·exp(...) < 1
    ratio = torch.exp(log_tied[group] - log_risk_set[group]).clamp_max(1.0)
    denom = log_risk_set[group] + torch.log1p(-(frac * ratio).clamp_max(1 - 1e-12))
    return -((eta - denom) * e).sum() / n_events


def masked_bce_with_logits(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy over the entries of ``target`` that are not NaN (mean over them)."""
    valid = torch.isfinite(target)
    if not valid.any():
        return logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(logits[valid], target[valid].to(logits.dtype))
