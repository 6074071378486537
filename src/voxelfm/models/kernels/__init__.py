"""Compiled CPU kernels for inference, built from their C++ source on first use.

PyTorch's eager CPU operators leave speed on the table where voxelfm spends its time: its fused
CPU attention runs bf16 at the fp32 rate and evaluates ``exp`` far more precisely than bf16
needs, its fp32 attention reaches half of what the CPU's FMAs allow, and RoPE runs as four
passes. The kernels here (:func:`cpu_attention`, :func:`cpu_rope_qk`) are C++ files shipped with the package and compiled with the system C++ compiler against the installed PyTorch
the first time they are needed (about 5–8 s each, cached under voxelfm's cache folder per source,
torch version and compiler). Without a compiler, on CPUs without AVX-512 (AVX512-BF16 for the
bf16 attention and RoPE), or with ``VOXELFM_CPU_KERNELS=0`` the callers use PyTorch's operators instead: the
same results to rounding, only slower.
"""

from voxelfm.models.kernels.cpu_attention import cpu_attention
from voxelfm.models.kernels.cpu_rope import cpu_rope_qk
from voxelfm.models.kernels.build import KernelBuildError, build_torch_library
from voxelfm.models.kernels.loader import ENV_SWITCH, KERNELS, kernel_status, kernels_summary, load_kernel

__all__ = ["ENV_SWITCH", "KERNELS", "KernelBuildError", "build_torch_library", "cpu_attention", "cpu_rope_qk",
           "kernel_status", "kernels_summary", "load_kernel"]
