"""voxelfm's compiled CPU kernels against float64 (fp32 and bf16 attention and RoPE), their build cache and fallbacks."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

import voxelfm.models.kernels.loader as loader
from voxelfm.models.kernels import (KERNELS, KernelBuildError, build_torch_library, cpu_attention, cpu_rope_qk,
                                    kernel_status, kernels_summary)
from voxelfm.models.kernels.build import find_compiler

CAPABLE = loader._unsupported_reason() is None and find_compiler() is not None


def _kernel(getter, name):
    op = getter()
    if CAPABLE:  # a CPU with AVX512-BF16 and a compiler must get the kernel (a broken build fails here)
        assert op is not None, kernel_status(name)
    if op is None:
        pytest.skip(kernel_status(name))
    return op


def _attention(dtype):
    return _kernel(lambda: cpu_attention(dtype), "bf16_attention" if dtype == torch.bfloat16 else "fp32_attention")


def _qkv_views(b, h, n, hd, dtype, seed, spread=1.5):
    """q, k, v ``[b, h, n, hd]`` as the model passes them: strided views of one qkv projection."""
    g = torch.Generator().manual_seed(seed)
    qkv = (torch.randn(b, n, 3, h, hd, generator=g) * spread).to(dtype)
    return tuple(qkv[:, :, i].transpose(1, 2) for i in range(3))


def _exact(q, k, v, scale):
    return torch.softmax(q.double() @ k.double().transpose(-1, -2) * scale, -1) @ v.double()


# shapes around the kernel's tiles: 16-value vectors, 64-key blocks, 256-key tiles, 48-row query blocks,
# 6-row score tiles; head_dim from 2 to the 128 maximum
SHAPES = [(1, 1, 1, 72), (2, 3, 15, 16), (1, 2, 64, 72), (1, 2, 65, 64), (2, 2, 257, 72), (1, 1, 300, 128),
          (1, 3, 50, 8), (1, 2, 97, 2), (1, 1, 600, 40)]


@pytest.mark.parametrize("b, h, n, hd", SHAPES)
def test_fp32_attention_kernel_equals_softmax_attention_in_float64(b, h, n, hd):
    op = _attention(torch.float32)
    q, k, v = _qkv_views(b, h, n, hd, torch.float32, seed=n + hd)
    scale = hd ** -0.5
    out = op(q, k, v, scale)
    assert out.shape == (b, h, n, hd) and out.dtype == torch.float32
    assert out.transpose(1, 2).is_contiguous()  # the model's [B, N, C] reshape is a view
    exact = _exact(q, k, v, scale)
    torch.testing.assert_close(out.double(), exact, rtol=1e-5, atol=1e-5)
    sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scale)  # fp32 rounding, for scale
    assert (out.double() - exact).norm() <= 1.5 * (sdpa.double() - exact).norm() + 1e-9


@pytest.mark.parametrize("b, h, n, hd", SHAPES)
def test_bf16_attention_kernel_is_softmax_attention_to_bf16_precision(b, h, n, hd):
    op = _attention(torch.bfloat16)
    q, k, v = _qkv_views(b, h, n, hd, torch.bfloat16, seed=n + hd)
    scale = hd ** -0.5
    out = op(q, k, v, scale)
    assert out.shape == (b, h, n, hd) and out.dtype == torch.bfloat16 and out.transpose(1, 2).is_contiguous()
    exact = _exact(q, k, v, scale)  # on the same bf16 inputs: what remains is P and the output in bf16
    assert ((out.double() - exact).norm() / exact.norm()) < 4e-3
    assert (out.double() - exact).abs().max() < 0.02 * v.double().abs().max()
    # as accurate as PyTorch's own bf16 attention, to within a few per cent
    sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scale)
    assert (out.double() - exact).norm() <= 1.1 * (sdpa.double() - exact).norm() + 1e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_attention_kernel_rescales_when_a_later_key_tile_holds_the_maximum(dtype):
    """Scores that grow along the keys move the running maximum in every 256-key tile (the online
    softmax rescales the partial output and sum each time); then shrinking scores (never)."""
    op = _attention(dtype)
    n, hd = 900, 24
    q, k, v = _qkv_views(1, 2, n, hd, torch.float32, seed=5, spread=1.0)
    q = torch.ones_like(q)
    ramp = torch.linspace(-3.0, 3.0, n)[:, None]
    for sign in (1.0, -1.0):
        kk = (ramp * sign).expand(n, hd).expand(1, 2, n, hd).contiguous()  # score of key j ∝ ±j, up to ±72 · scale
        qd, kd, vd = (t.to(dtype) for t in (q, kk, v))
        out = op(qd, kd, vd, 0.5)
        exact = _exact(qd, kd, vd, 0.5)
        tol = 1e-5 if dtype == torch.float32 else 1e-2
        torch.testing.assert_close(out.double(), exact, rtol=tol, atol=tol)


def test_attention_kernel_takes_contiguous_and_batched_inputs_and_empty_ones():
    op = _attention(torch.float32)
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(3, 2, 70, 24, generator=g) for _ in range(3))  # contiguous [B, H, N, hd]
    torch.testing.assert_close(op(q, k, v, 0.3).double(), _exact(q, k, v, 0.3), rtol=1e-5, atol=1e-5)
    empty = torch.empty(1, 2, 0, 8)
    assert op(empty, empty, empty, 1.0).shape == (1, 2, 0, 8)


def test_attention_kernel_rejects_what_it_cannot_take():
    op = _attention(torch.float32)
    x = torch.randn(1, 2, 10, 8)
    with pytest.raises(RuntimeError, match="4-D .* CPU tensors of Float"):
        op(x.bfloat16(), x, x, 1.0)
    with pytest.raises(RuntimeError, match="same shape"):
        op(x, x[:, :, :5], x, 1.0)
    with pytest.raises(RuntimeError, match="unit stride along head_dim"):
        op(x, x, torch.randn(1, 2, 8, 10).transpose(-1, -2), 1.0)
    big = torch.randn(1, 1, 4, 130)
    with pytest.raises(RuntimeError, match="head_dim must be in"):
        op(big, big, big, 1.0)
    odd = torch.randn(1, 1, 4, 7).bfloat16()
    with pytest.raises(RuntimeError, match="multiple of 2"):
        _attention(torch.bfloat16)(odd, odd, odd, 1.0)


def test_attention_core_uses_the_kernel_in_inference_only(monkeypatch):
    """``attention_core`` routes CPU inference (fp32 and bf16) through the kernel; with gradients
    SDPA runs; head dims the kernel does not take fall back (odd in bf16: the blocked form)."""
    _attention(torch.float32)
    import voxelfm.models.layers.attention as attention

    calls = []
    real = attention.cpu_attention
    monkeypatch.setattr(attention, "cpu_attention", lambda dt: (lambda *a: calls.append(dt) or real(dt)(*a)))
    q, k, v = _qkv_views(2, 3, 40, 12, torch.float32, seed=3)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=0.3)
    with torch.inference_mode():
        torch.testing.assert_close(attention.attention_core(q, k, v, 0.3), ref, rtol=1e-5, atol=1e-5)
        attention.attention_core(q.bfloat16(), k.bfloat16(), v.bfloat16(), 0.3)
        odd = torch.randn(1, 2, 9, 5).bfloat16()
        attention.attention_core(odd, odd, odd, 0.3)
    assert calls == [torch.float32, torch.bfloat16]
    qg = q.clone().requires_grad_()
    attention.attention_core(qg, k, v, 0.3).sum().backward()
    assert calls == [torch.float32, torch.bfloat16] and qg.grad is not None


# ----------------------------------------------------------------------------- RoPE
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("head_dim, num_special", [(72, 5), (24, 0), (12, 1)])
def test_rope_kernel_matches_the_rotation_in_float64(head_dim, num_special, dtype):
    op = _kernel(lambda: cpu_rope_qk(dtype), "rope")
    from voxelfm.models.layers.rope import _pair_tables, _rotate

    g = torch.Generator().manual_seed(head_dim)
    B, N, H = 2, 70, 3
    qkv = torch.randn(B, N, 3, H, head_dim, generator=g).to(dtype)
    angles = torch.rand(N - num_special, 3, head_dim // 6, generator=g) * 6.3
    cos2, sin2 = _pair_tables(torch.sin(angles), torch.cos(angles), torch.float32)
    out = op(qkv, cos2, sin2, num_special)
    assert out.shape == (B, N, 2, H, head_dim) and out.dtype == dtype
    assert torch.equal(out[:, :num_special], qkv[:, :num_special, :2])  # CLS and registers copied
    c64, s64 = _pair_tables(torch.sin(angles.double()), torch.cos(angles.double()), torch.float64)
    exact = _rotate(qkv[:, num_special:, :2].double(), c64[:, None, None], s64[:, None, None])
    # one rounding of an fp32 result (bf16: ≤ 2⁻⁹ of the pair's norm; fp32: the tables' rounding, ~2⁻²³)
    pair_norm = exact.unflatten(-1, (-1, 2)).norm(dim=-1).repeat_interleave(2, dim=-1)
    bound = 2.0 ** -8 if dtype == torch.bfloat16 else 2.0 ** -21
    assert ((out[:, num_special:].double() - exact).abs() <= pair_norm * bound + 1e-30).all()
    with pytest.raises(RuntimeError, match="tables must be contiguous fp32"):
        op(qkv, cos2.bfloat16(), sin2, num_special)
    with pytest.raises(RuntimeError, match="contiguous bf16 or fp32"):
        op(qkv[:, ::2], cos2, sin2, num_special)
    with pytest.raises(RuntimeError, match="contiguous bf16 or fp32"):
        op(qkv.half(), cos2, sin2, num_special)


def test_rope_qk_uses_the_kernel_for_inference_only(monkeypatch):
    """Model-level: ``rope_qk`` in bf16 and fp32 inference goes through the kernel (and agrees with
    PyTorch's path); with gradients, or in fp16, PyTorch's path runs."""
    _kernel(lambda: cpu_rope_qk(torch.float32), "rope")
    import voxelfm.models.layers.rope as rope

    calls = []
    real = rope.cpu_rope_qk
    monkeypatch.setattr(rope, "cpu_rope_qk", lambda dt: (k := real(dt)) and (lambda *a: calls.append(dt) or k(*a)))
    qkv = torch.randn(1, 30, 3, 2, 12)
    angles = torch.rand(27, 3, 2) * 6.3
    sin, cos = torch.sin(angles), torch.cos(angles)
    with torch.inference_mode():
        fast = rope.rope_qk(qkv.bfloat16(), sin, cos, 3)
        fast32 = rope.rope_qk(qkv, sin, cos, 3)
        assert calls == [torch.bfloat16, torch.float32]
        rope.rope_qk(qkv.half(), sin, cos, 3)  # fp16: PyTorch
    assert calls == [torch.bfloat16, torch.float32]
    monkeypatch.setattr(rope, "cpu_rope_qk", lambda dt: None)
    with torch.inference_mode():
        ref = rope.rope_qk(qkv, sin, cos, 3)  # PyTorch's fp32 path
    for a, b, c in zip(fast, fast32, ref):
        torch.testing.assert_close(a.float(), c, rtol=2.0 ** -7, atol=2.0 ** -7)
        torch.testing.assert_close(b, c, rtol=1e-6, atol=1e-6)
    monkeypatch.setattr(rope, "cpu_rope_qk", lambda dt: (lambda *a: calls.append(dt) or real(dt)(*a)))
    grad_input = qkv.bfloat16().requires_grad_()
    rope.rope_qk(grad_input, sin, cos, 3)[0].float().sum().backward()
    assert calls == [torch.bfloat16, torch.float32] and grad_input.grad is not None


# ----------------------------------------------------------------------------- availability, build
def test_switch_off_and_unsupported_cpu_fall_back_with_a_reason(monkeypatch):
    monkeypatch.setattr(loader, "_state", {})
    monkeypatch.setenv("VOXELFM_CPU_KERNELS", "0")
    assert cpu_attention(torch.bfloat16) is None and cpu_attention(torch.float32) is None
    assert cpu_rope_qk(torch.float32) is None
    assert kernels_summary() == {name: "disabled by VOXELFM_CPU_KERNELS" for name in KERNELS}
    monkeypatch.setattr(loader, "_state", {})
    monkeypatch.delenv("VOXELFM_CPU_KERNELS")
    monkeypatch.setattr(loader, "_cpu_has", lambda flag: flag != "avx512_bf16")
    monkeypatch.setattr(loader.platform, "machine", lambda: "x86_64")
    assert cpu_attention(torch.bfloat16) is None and "lacks AVX512-BF16" in kernel_status("bf16_attention")
    assert (cpu_attention(torch.float32) is not None) == (find_compiler() is not None)  # fp32 needs AVX-512 only
    assert cpu_attention(torch.float16) is None
    monkeypatch.setattr(loader, "_state", {})
    monkeypatch.setattr(loader, "_cpu_has", lambda flag: None)
    assert cpu_rope_qk(torch.bfloat16) is None and "flags are unknown" in kernel_status("rope")
    monkeypatch.setattr(loader, "_state", {})
    monkeypatch.setattr(loader.platform, "machine", lambda: "arm64")
    assert cpu_attention(torch.bfloat16) is None and "arm64" in kernel_status("bf16_attention")


def test_a_failed_build_warns_once_and_falls_back(monkeypatch, caplog):
    monkeypatch.setattr(loader, "_state", {})
    monkeypatch.setattr(loader, "_unsupported_reason", lambda flag="avx512_bf16": None)

    def fail(source, *, name, folder=None):
        raise KernelBuildError("no C++ compiler found (set CXX, or install g++ / clang++)")

    monkeypatch.setattr(loader, "build_torch_library", fail)
    with caplog.at_level(logging.WARNING, logger="voxelfm.models.kernels"):
        assert cpu_attention(torch.bfloat16) is None
        assert cpu_attention(torch.bfloat16) is None
    warnings = [r for r in caplog.records if "falling back" in r.getMessage()]
    assert len(warnings) == 1 and "no C++ compiler" in warnings[0].getMessage()
    assert "no C++ compiler" in kernel_status("bf16_attention")


def test_build_caches_by_content_and_leaves_nothing_on_failure(tmp_path, monkeypatch):
    if find_compiler() is None:
        pytest.skip("no C++ compiler")
    src = tmp_path / "ok.cpp"
    src.write_text("#include <torch/library.h>\nTORCH_LIBRARY_FRAGMENT(voxelfm_test_build, m) {}\n")
    built = build_torch_library(src, name="ok", folder=tmp_path / "cache")
    assert built.is_file() and built.name.startswith("ok-") and built.suffix == ".so"
    import subprocess

    def no_compiler(*args, **kwargs):
        raise AssertionError("a cached library was compiled again")

    monkeypatch.setattr(subprocess, "run", no_compiler)
    assert build_torch_library(src, name="ok", folder=tmp_path / "cache") == built
    monkeypatch.undo()
    src.write_text(src.read_text() + "// changed\n")  # another source: another library
    assert build_torch_library(src, name="ok", folder=tmp_path / "cache") != built

    broken = tmp_path / "broken.cpp"
    broken.write_text("#error deliberately broken\n")
    with pytest.raises(KernelBuildError, match="deliberately broken"):
        build_torch_library(broken, name="broken", folder=tmp_path / "cache")
    assert all(p.name.startswith("ok-") for p in (tmp_path / "cache").iterdir())  # no half-written file


def test_build_without_a_compiler_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    with pytest.raises(KernelBuildError, match="no C\\+\\+ compiler"):
        build_torch_library(Path(loader.__file__).with_name("rope.cpp"), name="x", folder=tmp_path)


def test_build_into_an_unwritable_cache_says_which_folder(tmp_path):
    if find_compiler() is None:
        pytest.skip("no C++ compiler")
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(KernelBuildError, match="cannot create the kernel cache folder .*VOXELFM_CACHE"):
        build_torch_library(Path(loader.__file__).with_name("rope.cpp"), name="x", folder=blocker / "kernels")

