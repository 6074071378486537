"""Compiled CPU kernels for bf16 inference, built from their C++ source on first use.

PyTorch's eager CPU operators leave speed on the table where voxelfm spends its time in bf16:
the softmax of attention is bound by an fp32-accurate ``exp``, and RoPE runs as four bf16
passes. The kernels here are C++ files shipped with the package and compiled with the system C++
compiler against the installed PyTorch the first time they are needed (about 5 s each, cached
under voxelfm's cache folder per source, torch version and compiler). Without a compiler, on CPUs
without AVX512-BF16, or with ``VOXELFM_CPU_KERNELS=0`` the callers use PyTorch's operators
instead: the same results to bf16 rounding, only slower.
"""

from voxelfm.models.kernels.bf16_rope import bf16_rope_qk
from voxelfm.models.kernels.bf16_softmax import bf16_exp_rows
from voxelfm.models.kernels.build import KernelBuildError, build_torch_library
from voxelfm.models.kernels.loader import ENV_SWITCH, KERNELS, kernel_status, kernels_summary, load_kernel

__all__ = ["ENV_SWITCH", "KERNELS", "KernelBuildError", "bf16_exp_rows", "bf16_rope_qk", "build_torch_library",
           "kernel_status", "kernels_summary", "load_kernel"]
