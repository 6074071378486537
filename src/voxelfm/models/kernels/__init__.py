"""Compiled CPU kernels for inference, built from their C++ source on first use.

PyTorch's eager CPU operators leave speed on the table where voxelfm spends its time (the
softmax of bf16 attention is bound by an fp32-accurate ``exp``). The few kernels here are C++
files shipped with the package and compiled with the system C++ compiler against the installed
PyTorch the first time they are needed (a few seconds, cached under ``voxelfm``'s cache folder per
source, torch version and compiler). Without a compiler, on other CPUs, or with
``VOXELFM_CPU_KERNELS=0`` the callers use PyTorch's operators instead: same results to rounding,
only slower.
"""

from voxelfm.models.kernels.bf16_softmax import bf16_exp_rows, kernel_status
from voxelfm.models.kernels.build import KernelBuildError, build_torch_library

__all__ = ["KernelBuildError", "bf16_exp_rows", "build_torch_library", "kernel_status"]
