"""Which compiled CPU kernels this machine can use, building and loading them once per process.

Every kernel is a C++ file next to this module that registers operators under
``torch.ops.voxelfm_kernels``. A kernel is unavailable — and its caller uses PyTorch's operators —
without a C++ compiler, on CPUs without AVX512-BF16, or with ``VOXELFM_CPU_KERNELS=0``; the
reason is logged once per kernel.
"""

from __future__ import annotations

import logging
import os
import platform
import threading
from pathlib import Path

import torch

from voxelfm.models.kernels.build import KernelBuildError, build_torch_library

__all__ = ["ENV_SWITCH", "KERNELS", "kernel_status", "kernels_summary", "load_kernel", "switched_off"]

log = logging.getLogger(__name__)

#: environment variable: ``0`` / ``off`` / ``false`` disables voxelfm's compiled CPU kernels
ENV_SWITCH = "VOXELFM_CPU_KERNELS"
#: the kernels (C++ files next to this module) and the CPU flag each needs (``/proc/cpuinfo`` name)
KERNELS: dict[str, str] = {"bf16_attention": "avx512_bf16", "rope": "avx512_bf16", "fp32_attention": "avx512f"}
_lock = threading.Lock()
_state: dict[str, str | None] = {}  # kernel name → None (loaded) or why it is unavailable


def load_kernel(name: str) -> bool:
    """Build (if not cached) and load ``<name>.cpp``; ``False`` if unavailable (reason logged once)."""
    if name not in _state:
        with _lock:
            if name not in _state:
                _state[name] = _load(name)
    return _state[name] is None


def kernel_status(name: str) -> str:
    """``"compiled"``, or why the kernel ``name`` is not used."""
    return "compiled" if load_kernel(name) else str(_state[name])


def kernels_summary(names: tuple[str, ...] | None = None) -> dict[str, str]:
    """``{kernel: "compiled" or why not}`` for ``names`` (default: every kernel; loads them), for
    logs and benchmarks."""
    return {name: kernel_status(name) for name in (names or tuple(KERNELS))}


def _load(name: str) -> str | None:
    reason = _unsupported_reason(KERNELS.get(name, "avx512_bf16"))
    if reason is not None:
        return reason
    try:
        torch.ops.load_library(str(build_torch_library(Path(__file__).with_name(f"{name}.cpp"), name=name)))
        return None
    except KernelBuildError as exc:
        reason = str(exc)
    except (OSError, RuntimeError) as exc:  # a library that does not load (e.g. a stale ABI)
        reason = f"the compiled kernel did not load: {exc}"
    log.warning("%s: falling back to PyTorch's slower operators: %s (set %s=0 to silence)", name, reason, ENV_SWITCH)
    return reason


def switched_off(name: str = ENV_SWITCH) -> bool:
    """The environment variable ``name`` (default ``VOXELFM_CPU_KERNELS``: all of voxelfm's own CPU
    paths) is ``0`` / ``off`` / ``false`` / ``no``."""
    return os.environ.get(name, "").strip().lower() in ("0", "off", "false", "no")


def _unsupported_reason(flag: str = "avx512_bf16") -> str | None:
    if switched_off():
        return f"disabled by {ENV_SWITCH}"
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"no kernel for {platform.machine()} CPUs"
    has = _cpu_has(flag)
    if has is None:
        return "the CPU's flags are unknown (no /proc/cpuinfo)"
    if not has:
        return f"the CPU lacks {_FLAG_NAMES.get(flag, flag)}"
    return None


_FLAG_NAMES = {"avx512_bf16": "AVX512-BF16", "avx512f": "AVX-512"}


def _cpu_has(flag: str) -> bool | None:
    """Whether ``/proc/cpuinfo`` lists ``flag``; ``None`` where there is none (not Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    return any(line.startswith("flags") and flag in line.split() for line in text.splitlines())
