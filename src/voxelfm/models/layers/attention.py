"""Multi-head self-attention with 3D RoPE on patch tokens; SDPA or the reference's explicit form."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from voxelfm.models.kernels import cpu_attention
from voxelfm.models.layers.onednn_linear import inference_linear, onednn_matmul_nt
from voxelfm.models.layers.rope import rope_qk

__all__ = ["Attention", "ATTENTION_MODES", "attention_core"]

ATTENTION_MODES: tuple[str, ...] = ("sdpa", "naive")

#: bf16 scores per block of the fallback bf16 CPU path (query rows × keys of one head: 8 MiB) ...
_BLOCK_SCORES = 4 << 20
#: ... but at least this many query rows: the two GEMMs of a block lose speed below it (one ViT-B
#: layer at 25k tokens: 6.7 s with 167-row blocks, 5.3 s with 512)
_MIN_BLOCK_ROWS = 512
#: fp32 scores per block of the fallback fp32 CPU path (24 MiB: below glibc's 32 MiB mmap ceiling,
#: so the block's memory is reused rather than mapped afresh) and its least rows
_BLOCK_SCORES_FP32 = 6 << 20
_MIN_BLOCK_ROWS_FP32 = 128
#: largest head_dim of the compiled attention kernels
_KERNEL_MAX_HEAD_DIM = 128


def attention_core(q: Tensor, k: Tensor, v: Tensor, scale: float, dropout_p: float = 0.0) -> Tensor:
    """``softmax(q kᵀ · scale) v`` for ``q, k, v [B, heads, N, head_dim]`` → ``[B, heads, N, head_dim]``.

    ``torch.nn.functional.scaled_dot_product_attention`` except in CPU inference (no gradient
    recorded, no dropout) in fp32 or bf16, where voxelfm's compiled attention kernel runs
    (:func:`voxelfm.models.kernels.cpu_attention`: flash-attention style, one pass over the keys in
    tiles, memory linear in ``N``). PyTorch's fused CPU kernel runs bf16 at the fp32 rate and fp32
    at about half of what the FMAs allow; one ViT-B layer (12 heads of 72, 2 threads, AVX512-BF16):

    ============ ============== ===============
    tokens       SDPA fp32/bf16 kernel fp32/bf16
    ============ ============== ===============
    517          5.8 / 6.1 ms   3.2 / 1.7 ms
    2,016        78 / 83 ms     37 / 20 ms
    ============ ============== ===============

    Where the kernel is unavailable (no compiler, no AVX-512, ``VOXELFM_CPU_KERNELS=0``, head_dim
    over 128), bf16 runs head by head in blocks of query rows with two bf16 GEMMs and PyTorch's
    softmax (3× SDPA), fp32 inside ``packed_linears`` blocks likewise with oneDNN products.
    """
    if (q.device.type == "cpu" and dropout_p == 0.0
            and not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad))):
        if (kernel := _kernel_for(q, k, v)) is not None:
            return kernel(q, k, v, scale)
        if q.dtype == torch.bfloat16:
            return _blocked_attention(q, k, v, scale)
        if q.dtype == torch.float32 and (matmul_nt := onednn_matmul_nt()) is not None:
            return _blocked_attention_fp32(q, k, v, scale, matmul_nt)
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=scale)


def _kernel_for(q: Tensor, k: Tensor, v: Tensor) -> Callable[[Tensor, Tensor, Tensor, float], Tensor] | None:
    """The compiled attention kernel if it takes these tensors (same shape and dtype, unit stride
    along head_dim, head_dim ≤ 128 and even), else ``None``."""
    hd = q.shape[-1]
    if (q.dtype not in (torch.float32, torch.bfloat16) or not q.dtype == k.dtype == v.dtype
            or not q.shape == k.shape == v.shape or q.dim() != 4 or hd > _KERNEL_MAX_HEAD_DIM or hd % 2
            or any(t.stride(-1) != 1 for t in (q, k, v))):
        return None
    return cpu_attention(q.dtype)


def _blocked_attention_fp32(q: Tensor, k: Tensor, v: Tensor, scale: float,
                            matmul_nt: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """Fallback fp32 CPU inference inside ``packed_linears`` blocks: head by head, blocks of query
    rows, ``softmax((scale · q_blk) kᵀ) v`` with both products through oneDNN (``matmul_nt``: ≈ 370
    GFLOP/s alone against PyTorch's fp32 ``mm`` at 110–150) and PyTorch's exact softmax in place.
    One ViT-B layer: 1.1–1.2× PyTorch's fused fp32 kernel. Memory: one ``rows × N`` fp32 block
    (≤ 24 MiB, so that the allocator reuses it instead of mapping fresh pages per block) and one
    head's q, k, vᵀ."""
    B, H, N, hd = q.shape
    rows = min(N, max(_MIN_BLOCK_ROWS_FP32, _BLOCK_SCORES_FP32 // N))
    out = q.new_empty(B, N, H, hd).transpose(1, 2)  # [B, H, N, hd] view of [B, N, H, hd]
    qh, kh, vt = q.new_empty(N, hd), q.new_empty(N, hd), q.new_empty(hd, N)
    for b in range(B):
        for h in range(H):
            torch.mul(q[b, h], scale, out=qh), kh.copy_(k[b, h]), vt.copy_(v[b, h].transpose(0, 1))
            for start in range(0, N, rows):
                s = matmul_nt(qh[start:start + rows], kh)  # scale · q kᵀ, [rows, N]
                torch.ops.aten._softmax.out(s, -1, False, out=s)
                out[b, h, start:start + rows].copy_(matmul_nt(s, vt))  # P v = P (vᵀ)ᵀ
    return out


def _blocked_attention(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    """Fallback bf16 CPU inference: head by head, blocks of query rows: ``scores = scale · q_blk kᵀ``
    (one bf16 GEMM, the scale as its alpha, into one reused buffer), softmax in place,
    ``out_blk = scores v`` (bf16 GEMM); 3× PyTorch's fused kernel at 8k–25k tokens. Memory: one
    ``rows × N`` bf16 buffer (≥ 512 rows; 8 MiB up to 8k tokens, 25 MiB at 25k) and one head's q,
    k, v (``3 × N × hd``), copied contiguous: in the model they are strided views of the qkv
    projection (a row of 72 values every 2,592), which cost the GEMMs 10–30 %."""
    B, H, N, hd = q.shape
    rows = min(N, max(_MIN_BLOCK_ROWS, _BLOCK_SCORES // N))
    out = q.new_empty(B, N, H, hd).transpose(1, 2)  # [B, H, N, hd] view of [B, N, H, hd]
    scores = q.new_empty(rows, N)
    qh, kh, vh = (q.new_empty(N, hd) for _ in range(3))
    for b in range(B):
        for h in range(H):
            qh.copy_(q[b, h]), kh.copy_(k[b, h]), vh.copy_(v[b, h])
            kt = kh.transpose(0, 1)
            for start in range(0, N, rows):
                s = scores[: min(rows, N - start)]
                torch.addmm(s, qh[start:start + rows], kt, beta=0, alpha=scale, out=s)  # beta 0: s unread
                torch.ops.aten._softmax.out(s, -1, False, out=s)  # in place: row max, exp, normalise
                torch.matmul(s, vh, out=out[b, h, start:start + rows])
    return out  # out.transpose(1, 2).reshape(B, N, C) is a view


class Attention(nn.Module):
    """Self-attention; keys ``qkv`` (rows q | k | v, head-major) and ``proj`` (REFERENCE.md §1.5).

    RoPE is applied to q and k of the patch tokens, then q is scaled by ``head_dim ** -0.5``.

    Modes (``mode`` attribute, or :meth:`set_mode`):

    * ``"sdpa"`` (default): ``torch.nn.functional.scaled_dot_product_attention`` — fused kernels,
      memory linear in the number of tokens (no N×N matrix on the flash / memory-efficient paths);
      CPU inference in fp32 and bf16 uses voxelfm's compiled kernel instead (see :func:`attention_core`).
    * ``"naive"``: ``softmax(q kᵀ) v`` with the N×N matrix materialised, exactly as the reference;
      for parity tests.

    Args:
        dim: model width ``C``.
        num_heads: heads; ``head_dim = C / num_heads``.
        qkv_bias, proj_bias: biases of the two linears.
        attn_drop, proj_drop: dropout probabilities (0 in VoxelFM).
        mode: ``"sdpa"`` or ``"naive"``.
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, proj_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0, mode: str = "sdpa") -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop)
        self.mode = "sdpa"
        self.set_mode(mode)

    def set_mode(self, mode: str) -> None:
        """Select ``"sdpa"`` or ``"naive"`` attention."""
        if mode not in ATTENTION_MODES:
            raise ValueError(f"attention mode must be one of {list(ATTENTION_MODES)}, got {mode!r}")
        self.mode = mode

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None = None,
                num_special: int = 0) -> Tensor:
        """``x [B, N, C]`` → ``[B, N, C]``.

        Args:
            rope: ``(sin, cos)`` each ``[N - num_special, 3, head_dim // 6]``, or ``None`` for no
                position encoding.
            num_special: leading tokens (CLS + registers) left unrotated.
        """
        B, N, C = x.shape
        qkv = inference_linear(self.qkv, x).reshape(B, N, 3, self.num_heads, self.head_dim)
        sin, cos = rope if rope is not None else (None, None)
        q, k = rope_qk(qkv, sin, cos, num_special)  # B, heads, N, head_dim (rotated patch tokens)
        v = qkv[:, :, 2].transpose(1, 2)
        if self.mode == "naive":
            attn = (q * self.scale) @ k.transpose(-2, -1)  # B, heads, N, N
            attn = self.attn_drop(attn.softmax(dim=-1))
            out = attn @ v
        else:
            out = attention_core(q, k, v, self.scale, dropout_p=self.attn_drop.p if self.training else 0.0)
        out = out.transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(inference_linear(self.proj, out))

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, head_dim={self.head_dim}, mode={self.mode!r}"
