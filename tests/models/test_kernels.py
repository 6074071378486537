"""voxelfm's compiled CPU kernels: the bf16 row softmax against float64, its build cache and fallbacks."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

import voxelfm.models.kernels.bf16_softmax as bf16_softmax
from voxelfm.models.kernels import KernelBuildError, bf16_exp_rows, build_torch_library, kernel_status
from voxelfm.models.kernels.build import find_compiler

CAPABLE = bf16_softmax._unsupported_reason() is None and find_compiler() is not None


def _exp_rows():
    op = bf16_exp_rows()
    if CAPABLE:  # a CPU with AVX512-BF16 and a compiler must get the kernel (a broken build fails here)
        assert op is not None, kernel_status()
    if op is None:
        pytest.skip(kernel_status())
    return op


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


# ----------------------------------------------------------------------------- availability, build
def test_switch_off_and_unsupported_cpu_fall_back_with_a_reason(monkeypatch):
    monkeypatch.setattr(bf16_softmax, "_state", {})
    monkeypatch.setenv("VOXELFM_CPU_KERNELS", "0")
    assert bf16_exp_rows() is None
    assert kernel_status() == "PyTorch softmax (disabled by VOXELFM_CPU_KERNELS)"
    monkeypatch.setattr(bf16_softmax, "_state", {})
    monkeypatch.delenv("VOXELFM_CPU_KERNELS")
    monkeypatch.setattr(bf16_softmax, "_cpu_has_avx512_bf16", lambda: False)
    monkeypatch.setattr(bf16_softmax.platform, "machine", lambda: "x86_64")
    assert bf16_exp_rows() is None and "lacks AVX512-BF16" in kernel_status()
    monkeypatch.setattr(bf16_softmax, "_state", {})
    monkeypatch.setattr(bf16_softmax.platform, "machine", lambda: "arm64")
    assert bf16_exp_rows() is None and "arm64" in kernel_status()


def test_a_failed_build_warns_once_and_falls_back(monkeypatch, caplog):
    monkeypatch.setattr(bf16_softmax, "_state", {})
    monkeypatch.setattr(bf16_softmax, "_unsupported_reason", lambda: None)

    def fail(source, *, name, folder=None):
        raise KernelBuildError("no C++ compiler found (set CXX, or install g++ / clang++)")

    monkeypatch.setattr(bf16_softmax, "build_torch_library", fail)
    with caplog.at_level(logging.WARNING, logger="voxelfm.models.kernels"):
        assert bf16_exp_rows() is None
        assert bf16_exp_rows() is None
    warnings = [r for r in caplog.records if "falls back" in r.getMessage()]
    assert len(warnings) == 1 and "no C++ compiler" in warnings[0].getMessage()
    assert "no C++ compiler" in kernel_status()


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

    broken = tmp_path / "broken.cpp"
    broken.write_text("#error deliberately broken\n")
    with pytest.raises(KernelBuildError, match="deliberately broken"):
        build_torch_library(broken, name="broken", folder=tmp_path / "cache")
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [built.name]  # no half-written file


def test_build_without_a_compiler_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    with pytest.raises(KernelBuildError, match="no C\\+\\+ compiler"):
        build_torch_library(Path(bf16_softmax._SOURCE), name="x", folder=tmp_path)
