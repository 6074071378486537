"""CPU thread count chosen from the cores actually free, user-overridable, reported in the log.

PyTorch starts as many OpenMP threads as there are cores. On a shared machine that is a trap:
when other processes already keep the cores busy, every extra thread waits for a time slice and
the synchronisation between OpenMP threads makes the whole forward collapse (the pre-training
work measured 2 threads 30× slower than 1 under load). :func:`choose_threads` therefore starts
from the cores this process may run on and subtracts the 1-minute load average.

Precedence: an explicit number (``--threads``) > ``VOXELFM_THREADS`` > ``OMP_NUM_THREADS``
(respected as set by the user or the job scheduler) > free cores.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

__all__ = ["ThreadChoice", "choose_threads", "configure_threads", "usable_cores"]


@dataclass(frozen=True)
class ThreadChoice:
    """Threads to use and why.

    Attributes:
        threads: the number (>= 1).
        source: ``"argument"``, ``"VOXELFM_THREADS"``, ``"OMP_NUM_THREADS"`` or ``"free cores"``.
        cores: cores this process may run on (CPU affinity).
        load_1min: 1-minute load average at the choice (``None`` where the OS has none).
    """

    threads: int
    source: str
    cores: int
    load_1min: float | None

    def describe(self) -> str:
        load = f", load {self.load_1min:.1f}" if self.load_1min is not None else ""
        how = "" if self.source != "free cores" else " (override with --threads or VOXELFM_THREADS)"
        return f"{self.threads} CPU thread(s) of {self.cores} core(s), from {self.source}{load}{how}"

    def to_dict(self) -> dict[str, Any]:
        return {"threads": self.threads, "source": self.source, "cores": self.cores, "load_1min": self.load_1min}


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity; ``os.cpu_count()`` where unknown)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _positive_int(value: Any, what: str) -> int:
    try:
        n = int(str(value).strip())
    except ValueError:
        raise ValueError(f"{what} must be a positive number of threads, got {value!r}") from None
    if n < 1:
        raise ValueError(f"{what} must be a positive number of threads, got {value!r}")
    return n


def choose_threads(requested: int | None = None, *, load_1min: float | None = None) -> ThreadChoice:
    """Threads for this process's torch CPU work.

    Args:
        requested: an explicit count (e.g. ``--threads``); wins over everything.
        load_1min: the load average to use (default: ``os.getloadavg()[0]``; for tests).

    Returns:
        :class:`ThreadChoice`. From the free cores: ``cores − round(load)``, at least 1.
    """
    cores = usable_cores()
    if load_1min is None:
        try:
            load_1min = float(os.getloadavg()[0])
        except (AttributeError, OSError):
            load_1min = None
    if requested is not None:
        return ThreadChoice(_positive_int(requested, "--threads"), "argument", cores, load_1min)
    for var in ("VOXELFM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(var, "").strip()
        if value:
            return ThreadChoice(_positive_int(value, var), var, cores, load_1min)
    busy = int(round(load_1min)) if load_1min is not None else 0
    return ThreadChoice(max(1, min(cores, cores - busy)), "free cores", cores, load_1min)


def configure_threads(requested: int | None = None, *, log: Any = sys.stderr,
                      prefix: str = "voxelfm") -> ThreadChoice:
    """:func:`choose_threads`, apply it (``torch.set_num_threads``) and print one line to ``log``
    (``None`` = silent). Returns the choice."""
    import torch

    choice = choose_threads(requested)
    torch.set_num_threads(choice.threads)
    if log is not None:
        print(f"{prefix}: {choice.describe()}", file=log, flush=True)
    return choice
