"""voxelfm's compiled CPU kernels against float64 (bf16 row softmax, bf16 RoPE), their build cache and fallbacks."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
import torch

import voxelfm.models.kernels.loader as loader
from voxelfm.models.kernels import (KERNELS, KernelBuildError, bf16_exp_rows, bf16_rope_qk, build_torch_library,
                                    fp32_exp_rows, kernel_status, kernels_summary)
from voxelfm.models.kernels.build import find_compiler

CAPABLE = loader._unsupported_reason() is None and find_compiler() is not None


def _kernel(getter, name):
    op = getter()
    if CAPABLE:  # a CPU with AVX512-BF16 and a compiler must get the kernel (a broken build fails here)
        assert op is not None, kernel_status(name)
    if op is None:
        pytest.skip(kernel_status(name))
    return op


def _exp_rows():
    return _kernel(bf16_exp_rows, "bf16_softmax")


@pytest.mark.parametrize("n", [1, 15, 16, 17, 31, 32, 33, 1000, 4099])
def test_exp_rows_is_a_softmax_to_bf16_precision(n):
    op = _exp_rows()
    g = torch.Generator().manual_seed(n)
    scores = (torch.randn(6, n, generator=g) * torch.tensor([0.1, 1, 3, 10, 30, 100])[:, None]).bfloat16()
    scores[1, 0] = 80.0  # exp(80) would overflow an unshifted float16; here it is the row maximum
    work = scores.clone()
    sums = op(work)
    assert sums.dtype == torch.float32 and sums.shape == (6,)
    exact = torch.exp(scores.double() - scores.double().amax(-1, keepdim=True))
    # every stored value is exp(s − max) rounded to bf16 (≤ 2⁻⁹ relative, plus the 7.5e-5 polynomial)
    torch.testing.assert_close(work.double(), exact, rtol=2.0 ** -8, atol=3e-38)  # exp(x < −86.6) → ~2e-38, not 0
    torch.testing.assert_close(sums.double(), exact.sum(-1), rtol=2e-4, atol=0.0)
    softmax = torch.softmax(scores.double(), -1)
    torch.testing.assert_close(work.double() / sums.double()[:, None], softmax, rtol=5e-3, atol=1e-12)
    assert torch.all(work.double().amax(-1) == 1.0)  # the row maximum maps to exactly 1


def test_exp_rows_respects_the_row_stride_and_leaves_other_columns():
    op = _exp_rows()
    buffer = torch.randn(5, 40).bfloat16()
    before = buffer.clone()
    view = buffer[1:4, 3:30]  # rows of 27 scores, 40 apart
    op(view)
    torch.testing.assert_close(view.double(), torch.exp(before[1:4, 3:30].double()
                                                       - before[1:4, 3:30].double().amax(-1, keepdim=True)),
                               rtol=2.0 ** -8, atol=0.0)
    outside = torch.ones_like(buffer, dtype=torch.bool)
    outside[1:4, 3:30] = False
    assert torch.equal(buffer[outside], before[outside])
    assert op(torch.empty(0, 7, dtype=torch.bfloat16)).shape == (0,)
    assert torch.equal(op(torch.empty(3, 0, dtype=torch.bfloat16)), torch.zeros(3))


def test_exp_rows_rejects_other_dtypes_and_layouts():
    op = _exp_rows()
    with pytest.raises(RuntimeError, match="2-D bf16"):
        op(torch.randn(3, 8))
    with pytest.raises(RuntimeError, match="2-D bf16"):
        op(torch.randn(8).bfloat16())
    with pytest.raises(RuntimeError, match="contiguous rows"):
        op(torch.randn(8, 3).bfloat16().t())


def test_blocked_attention_with_and_without_the_kernel_agree(monkeypatch):
    """The model-level check (features at cosine ≥ 0.999 to fp32) is in test_vit.py; here the two
    softmax paths of one attention call agree with each other and with float64."""
    _exp_rows()
    import voxelfm.models.layers.attention as attention

    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 3, 700, 24, generator=g).bfloat16() for _ in range(3))
    exact = torch.softmax(q.double() @ k.double().transpose(-1, -2) * 0.4, -1) @ v.double()
    with torch.inference_mode():
        fast = attention._blocked_attention(q, k, v, 0.4)
        monkeypatch.setattr(attention, "bf16_exp_rows", lambda: None)
        plain = attention._blocked_attention(q, k, v, 0.4)
    err_fast, err_plain = ((out.double() - exact).norm() / exact.norm() for out in (fast, plain))
    assert err_plain < 0.012  # bf16 q, k, v, scores and outputs (logits std ≈ 2)
    assert err_fast <= 1.05 * err_plain  # the kernel's exp and late normalisation cost nothing visible
    assert ((fast.double() - plain.double()).norm() / exact.norm()) < 5e-3


@pytest.mark.parametrize("n", [1, 15, 17, 33, 1000, 4099])
def test_fp32_exp_rows_is_a_softmax_to_fp32_precision(n):
    op = _kernel(fp32_exp_rows, "fp32_softmax")
    g = torch.Generator().manual_seed(n)
    scores = torch.randn(5, n, generator=g) * torch.tensor([0.1, 1, 5, 20, 100])[:, None]
    work = scores.clone()
    sums = op(work)
    exact = torch.exp(scores.double() - scores.double().amax(-1, keepdim=True))
    near = exact > math.exp(-5)  # the terms that carry the softmax: ~3e-7; the far tail: ≤ 5e-6
    rel = (work.double() - exact).abs() / exact.clamp_min(1e-300)
    assert rel[near].max() < 5e-7 and rel[exact > 1e-30].max() < 1e-5
    torch.testing.assert_close(sums.double(), exact.sum(-1), rtol=1e-6, atol=0.0)
    softmax = torch.softmax(scores.double(), -1)
    torch.testing.assert_close(work.double() / sums.double()[:, None], softmax, rtol=1e-5, atol=1e-12)
    with pytest.raises(RuntimeError, match="2-D fp32"):
        op(torch.randn(3, 8).bfloat16())


# ----------------------------------------------------------------------------- RoPE
@pytest.mark.parametrize("head_dim, num_special", [(72, 5), (24, 0), (12, 1)])
def test_rope_kernel_matches_the_rotation_in_float64(head_dim, num_special):
    op = _kernel(bf16_rope_qk, "bf16_rope")
    from voxelfm.models.layers.rope import _pair_tables, _rotate

    g = torch.Generator().manual_seed(head_dim)
    B, N, H = 2, 70, 3
    qkv = torch.randn(B, N, 3, H, head_dim, generator=g).bfloat16()
    angles = torch.rand(N - num_special, 3, head_dim // 6, generator=g) * 6.3
    cos2, sin2 = _pair_tables(torch.sin(angles), torch.cos(angles), torch.float32)
    out = op(qkv, cos2, sin2, num_special)
    assert out.shape == (B, N, 2, H, head_dim) and out.dtype == torch.bfloat16
    assert torch.equal(out[:, :num_special], qkv[:, :num_special, :2])  # CLS and registers copied
    c64, s64 = _pair_tables(torch.sin(angles.double()), torch.cos(angles.double()), torch.float64)
    exact = _rotate(qkv[:, num_special:, :2].double(), c64[:, None, None], s64[:, None, None])
    # one rounding to bf16 of an fp32 result: ≤ 2⁻⁹ of the pair's norm
    pair_norm = exact.unflatten(-1, (-1, 2)).norm(dim=-1).repeat_interleave(2, dim=-1)
    assert ((out[:, num_special:].double() - exact).abs() <= pair_norm * 2.0 ** -8 + 1e-30).all()
    with pytest.raises(RuntimeError, match="tables must be contiguous fp32"):
        op(qkv, cos2.bfloat16(), sin2, num_special)
    with pytest.raises(RuntimeError, match="contiguous bf16"):
        op(qkv[:, ::2], cos2, sin2, num_special)


def test_rope_qk_uses_the_kernel_for_bf16_inference_only(monkeypatch):
    """Model-level: ``rope_qk`` in bf16 inference goes through the kernel (and agrees with the
    PyTorch path); with gradients, or in fp32, PyTorch's path runs."""
    _kernel(bf16_rope_qk, "bf16_rope")
    import voxelfm.models.layers.rope as rope

    calls = []
    real = rope.bf16_rope_qk()
    monkeypatch.setattr(rope, "bf16_rope_qk", lambda: lambda *a: calls.append(1) or real(*a))
    qkv = torch.randn(1, 30, 3, 2, 12)
    angles = torch.rand(27, 3, 2) * 6.3
    sin, cos = torch.sin(angles), torch.cos(angles)
    with torch.inference_mode():
        fast = rope.rope_qk(qkv.bfloat16(), sin, cos, 3)
        assert len(calls) == 1
        ref = rope.rope_qk(qkv, sin, cos, 3)  # fp32: PyTorch
    assert len(calls) == 1
    for a, b in zip(fast, ref):
        torch.testing.assert_close(a.float(), b, rtol=2.0 ** -7, atol=2.0 ** -7)
    grad_input = qkv.bfloat16().requires_grad_()
    rope.rope_qk(grad_input, sin, cos, 3)[0].float().sum().backward()
    assert len(calls) == 1 and grad_input.grad is not None


# ----------------------------------------------------------------------------- availability, build
def test_switch_off_and_unsupported_cpu_fall_back_with_a_reason(monkeypatch):
    monkeypatch.setattr(loader, "_state", {})
    monkeypatch.setenv("VOXELFM_CPU_KERNELS", "0")
    assert bf16_exp_rows() is None and bf16_rope_qk() is None
    assert kernels_summary() == {name: "disabled by VOXELFM_CPU_KERNELS" for name in KERNELS}
    monkeypatch.setattr(loader, "_state", {})
    monkeypatch.delenv("VOXELFM_CPU_KERNELS")
    monkeypatch.setattr(loader, "_cpu_has", lambda flag: flag != "avx512_bf16")
    monkeypatch.setattr(loader.platform, "machine", lambda: "x86_64")
    assert bf16_exp_rows() is None and "lacks AVX512-BF16" in kernel_status("bf16_softmax")
    assert (fp32_exp_rows() is not None) == (find_compiler() is not None)  # fp32 needs AVX-512 only
    monkeypatch.setattr(loader, "_state", {})
    monkeypatch.setattr(loader, "_cpu_has", lambda flag: None)
    assert bf16_rope_qk() is None and "flags are unknown" in kernel_status("bf16_rope")
    monkeypatch.setattr(loader, "_state", {})
    monkeypatch.setattr(loader.platform, "machine", lambda: "arm64")
    assert bf16_exp_rows() is None and "arm64" in kernel_status("bf16_softmax")


def test_a_failed_build_warns_once_and_falls_back(monkeypatch, caplog):
    monkeypatch.setattr(loader, "_state", {})
    monkeypatch.setattr(loader, "_unsupported_reason", lambda flag="avx512_bf16": None)

    def fail(source, *, name, folder=None):
        raise KernelBuildError("no C++ compiler found (set CXX, or install g++ / clang++)")

    monkeypatch.setattr(loader, "build_torch_library", fail)
    with caplog.at_level(logging.WARNING, logger="voxelfm.models.kernels"):
        assert bf16_exp_rows() is None
        assert bf16_exp_rows() is None
    warnings = [r for r in caplog.records if "falling back" in r.getMessage()]
    assert len(warnings) == 1 and "no C++ compiler" in warnings[0].getMessage()
    assert "no C++ compiler" in kernel_status("bf16_softmax")


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
        build_torch_library(Path(loader.__file__).with_name("bf16_softmax.cpp"), name="x", folder=tmp_path)


def test_build_into_an_unwritable_cache_says_which_folder(tmp_path):
    if find_compiler() is None:
        pytest.skip("no C++ compiler")
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(KernelBuildError, match="cannot create the kernel cache folder .*VOXELFM_CACHE"):
        build_torch_library(Path(loader.__file__).with_name("bf16_softmax.cpp"), name="x", folder=blocker / "kernels")

