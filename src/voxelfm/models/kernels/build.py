"""Compile one C++ source against the installed PyTorch into a shared library, cached by content.

A lighter ``torch.utils.cpp_extension.load`` (no ninja, no pybind11): one compiler call with
PyTorch's include and library folders; the library registers its operators with
``TORCH_LIBRARY`` and is loaded with ``torch.ops.load_library``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import subprocess
import time
from pathlib import Path

import torch

from voxelfm.errors import VoxelFMError
from voxelfm.utils.atomic import atomic_write
from voxelfm.utils.cache import cache_dir

__all__ = ["KernelBuildError", "build_torch_library", "find_compiler"]

log = logging.getLogger(__name__)

#: seconds a compilation may take before it is abandoned
_TIMEOUT = 600


class KernelBuildError(VoxelFMError):
    """A kernel could not be compiled; the message says why (the caller falls back to PyTorch)."""


def find_compiler() -> str | None:
    """``$CXX``, else the first of ``c++``, ``g++``, ``clang++`` on ``PATH``, else ``None``."""
    if os.environ.get("CXX"):
        return shutil.which(os.environ["CXX"]) or None
    for name in ("c++", "g++", "clang++"):
        if path := shutil.which(name):
            return path
    return None


def _torch_flags() -> list[str]:
    root = Path(torch.__file__).parent
    lib = root / "lib"
    flags = [f"-I{root / 'include'}", f"-I{root / 'include' / 'torch' / 'csrc' / 'api' / 'include'}",
             f"-D_GLIBCXX_USE_CXX11_ABI={int(torch.compiled_with_cxx11_abi())}",
             f"-L{lib}", f"-Wl,-rpath,{lib}", "-lc10", "-ltorch_cpu"]
    if "OpenMP" in torch.__config__.parallel_info():  # at::parallel_for is inline OpenMP code then
        flags.append("-fopenmp")
    return flags


def build_torch_library(source: Path, *, name: str, folder: Path | None = None) -> Path:
    """The shared library compiled from ``source`` (C++), building it if not cached.

    Args:
        source: a C++ file that registers operators with ``TORCH_LIBRARY``.
        name: file-name stem of the library.
        folder: cache folder (default ``<voxelfm cache>/kernels``).

    Returns:
        Path of ``<name>-<hash>.so``; the hash covers the source, the torch version and build,
        the compiler and the flags, so a changed one builds a new library.

    Raises:
        KernelBuildError: no compiler, not Linux/macOS, or compilation failed (message ends with
            the compiler's last lines).
    """
    if platform.system() not in ("Linux", "Darwin"):
        raise KernelBuildError(f"compiled kernels are built on Linux and macOS only, not {platform.system()}")
    compiler = find_compiler()
    if compiler is None:
        raise KernelBuildError("no C++ compiler found (set CXX, or install g++ / clang++)")
    text = b"".join(p.read_bytes() for p in [source, *sorted(source.parent.glob("*.h"))])  # + local headers
    flags = _torch_flags()
    key = hashlib.sha256(b"\0".join([text, torch.__version__.encode(), str(torch.__file__).encode(),
                                     compiler.encode(), " ".join(flags).encode()])).hexdigest()[:16]
    target = (folder or cache_dir("kernels")) / f"{name}-{key}.so"
    if target.exists():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise KernelBuildError(f"cannot create the kernel cache folder {target.parent} ({exc.strerror}); "
                               "set VOXELFM_CACHE to a writable folder") from exc
    log.info("compiling %s with %s (once per torch version; a few seconds)", source.name, Path(compiler).name)
    start = time.perf_counter()
    failures: list[str] = []
    for standard in ("-std=c++20", "-std=c++17"):  # recent torch headers want C++20; older compilers lack it
        try:
            with atomic_write(target) as tmp:  # a failed or killed build leaves no library behind
                cmd = [compiler, standard, "-O3", "-shared", "-fPIC", str(source), "-o", str(tmp), *flags]
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_TIMEOUT, check=False)
                if proc.returncode != 0:
                    raise _CompilerFailed(" | ".join(proc.stderr.strip().splitlines()[-3:]))
        except _CompilerFailed as exc:
            failures.append(str(exc))
            continue
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise KernelBuildError(f"could not run {compiler}: {exc}") from exc
        log.info("compiled %s in %.1f s", target.name, time.perf_counter() - start)
        return target
    raise KernelBuildError(f"{compiler} failed on {source.name}: {failures[-1]}")


class _CompilerFailed(Exception):
    pass
