"""Compiled CPU kernels for bf16 inference, built from their C++ source on first use.

PyTorch's eager CPU operators leave speed on the table where voxelfm spends its time: the
softmax of attention is bound by ``exp`` (in bf16 computed far more precisely than bf16 needs),
and bf16 RoPE runs as four bf16 passes. The kernels here are C++ files shipped with the package and compiled with the system C++
compiler against the installed PyTorch the first time they are needed (about 5 s each, cached
under voxelfm's cache folder per source, torch version and compiler). Without a compiler, on CPUs
without AVX-512 (AVX512-BF16 for the bf16 ones), or with ``VOXELFM_CPU_KERNELS=0`` the callers use PyTorch's operators
instead: the same results to bf16 rounding, only slower.
"""

from voxelfm.models.kernels.bf16_rope import bf16_rope_qk
from voxelfm.models.kernels.bf16_softmax import bf16_exp_rows
from voxelfm.models.kernels.build import KernelBuildError, build_torch_library
from voxelfm.models.kernels.fp32_softmax import fp32_exp_rows
from voxelfm.models.kernels.loader import ENV_SWITCH, KERNELS, kernel_status, kernels_summary, load_kernel

__all__ = ["ENV_SWITCH", "KERNELS", "KernelBuildError", "bf16_exp_rows", "bf16_rope_qk", "build_torch_library",
           "fp32_exp_rows", "kernel_status", "kernels_summary", "load_kernel"]
