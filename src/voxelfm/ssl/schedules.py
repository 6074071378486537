"""Per-optimizer-step schedules (REFERENCE §3.5, ``train/setup.py::build_schedulers``).

Each schedule is a numpy array indexed by the optimizer step ("iteration"): a linear warm-up
``np.linspace(start, peak, W, endpoint=False)``, a half cosine from ``peak`` to ``end`` over the
remaining steps (or ``cosine_epochs``), then ``end``. One epoch = ``train.official_epoch_length``
steps. The last layer of the DINO head gets the lr schedule but 0 for the first
``freeze_last_layer_epochs`` epochs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["linear_warmup_cosine_decay", "Schedules", "build_schedules"]


def linear_warmup_cosine_decay(start: float, peak: float, end: float, warmup_iterations: int,
                               total_iterations: int,
                               cosine_iterations: int | None = None) -> np.ndarray:
    """``[total_iterations]`` float64: linear warm-up (endpoint excluded), half cosine, constant."""
    warmup_iterations = int(warmup_iterations)
    total_iterations = int(total_iterations)
    if warmup_iterations < 0 or total_iterations < 1:
        raise ValueError(f"need warmup >= 0 and total >= 1 iterations, got {warmup_iterations}, "
                         f"{total_iterations}")
    if warmup_iterations > total_iterations:
        raise ValueError(f"warm-up ({warmup_iterations} steps) is longer than the run "
                         f"({total_iterations} steps); shorten warmup_epochs or raise optim.epochs")
    linear = np.linspace(start, peak, warmup_iterations, endpoint=False)
    if cosine_iterations is None:
        cosine_iterations = total_iterations - warmup_iterations
    cosine_iterations = int(cosine_iterations)
    remaining = total_iterations - cosine_iterations - warmup_iterations
    if cosine_iterations < 0 or remaining < 0:
        raise ValueError(f"warm-up ({warmup_iterations}) + cosine ({cosine_iterations}) steps exceed "
                         f"the run ({total_iterations} steps)")
    cosine = (np.cos(np.linspace(0, np.pi, cosine_iterations)) + 1) / 2
    cosine = (peak - end) * cosine + end
    constant = np.full((remaining,), fill_value=end, dtype=np.float64)
    return np.concatenate([linear, cosine, constant]).astype(np.float64)


@dataclass
class Schedules:
    """All schedules of a run, each ``[total_steps]``; :meth:`at` reads one step (clamped)."""

    lr: np.ndarray
    wd: np.ndarray
    momentum: np.ndarray
    teacher_temp: np.ndarray
    last_layer_lr: np.ndarray

    @property
    def total_steps(self) -> int:
        return int(len(self.lr))

    def at(self, step: int) -> dict[str, float]:
        """Values at optimizer step ``step`` (steps past the end keep the last value)."""
        i = min(max(int(step), 0), self.total_steps - 1)
        return {"lr": float(self.lr[i]), "wd": float(self.wd[i]), "momentum": float(self.momentum[i]),
                "teacher_temp": float(self.teacher_temp[i]),
                "last_layer_lr": float(self.last_layer_lr[i])}


def _one(spec: Any, epoch_len: int, total: int, name: str) -> np.ndarray:
    cosine_epochs = spec.get("cosine_epochs") if hasattr(spec, "get") else None
    try:
        return _linear_warmup_cosine_decay_from(spec, epoch_len, total, cosine_epochs)
    except ValueError as exc:
        raise ValueError(f"schedules.{name}: {exc}") from None


def _linear_warmup_cosine_decay_from(spec: Any, epoch_len: int, total: int,
                                     cosine_epochs: Any) -> np.ndarray:
    return linear_warmup_cosine_decay(
        start=float(spec.start), peak=float(spec.peak), end=float(spec.end),
        warmup_iterations=int(round(epoch_len * float(spec.warmup_epochs))),
        total_iterations=total,
        cosine_iterations=None if cosine_epochs is None else int(round(epoch_len * float(cosine_epochs))),
    )


def build_schedules(cfg: Any) -> Schedules:
    """Schedules from ``cfg.schedules.*``, ``cfg.optim.epochs`` and ``cfg.train.official_epoch_length``."""
    epoch_len = int(cfg.train.official_epoch_length)
    total = int(round(epoch_len * float(cfg.optim.epochs)))
    if epoch_len < 1 or total < 1:
        raise ValueError("train.official_epoch_length and optim.epochs must be positive")
    s = cfg.schedules
    lr = _one(s.lr, epoch_len, total, "lr")
    last_layer_lr = lr.copy()
    last_layer_lr[: int(epoch_len * float(s.lr.get("freeze_last_layer_epochs", 0)))] = 0
    return Schedules(lr=lr, wd=_one(s.weight_decay, epoch_len, total, "weight_decay"),
                     momentum=_one(s.momentum, epoch_len, total, "momentum"),
                     teacher_temp=_one(s.teacher_temp, epoch_len, total, "teacher_temp"),
                     last_layer_lr=last_layer_lr)
