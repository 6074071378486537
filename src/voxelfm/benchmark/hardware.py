"""What a benchmark cell ran on: processor and GPU names, threads, library versions, load."""

from __future__ import annotations

import os
import platform
from typing import Any

__all__ = ["cpu_name", "hardware_info", "load_average"]


def cpu_name() -> str:
    """The processor's model name (``/proc/cpuinfo`` on Linux, else :func:`platform.processor`)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages (``None`` where the platform has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def hardware_info(device: str | None = None) -> dict[str, Any]:
    """JSON-able description of this machine as the benchmark uses it.

    Keys: ``cpu``, ``cpu_count`` (logical), ``torch_threads``, ``memory_gb``, ``gpu`` (names of the
    visible CUDA devices, ``[]`` without), ``device`` (what the cell ran on), ``torch``, ``cuda``
    (torch's CUDA build or ``None``), ``python``, ``platform``, ``voxelfm``.
    """
    import torch

    from voxelfm import __version__

    gpus: list[str] = []
    if torch.cuda.is_available():
        gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    try:
        import psutil

        memory_gb: float | None = round(psutil.virtual_memory().total / 1024 ** 3, 1)
    except ImportError:  # pragma: no cover - psutil is a dependency
        memory_gb = None
    return {
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gb": memory_gb,
        "gpu": gpus,
        "device": device or ("cuda" if gpus else "cpu"),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "voxelfm": __version__,
    }
