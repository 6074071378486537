"""oneDNN packed linears for CPU inference: same numbers as nn.Linear, taken only where safe."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import voxelfm.models.layers.onednn_linear as il
from voxelfm.models.layers import inference_linear, packed_linears

FAST = il._op_usable(torch.float32) and il._op_usable(torch.bfloat16)


def _fast_calls(fn) -> int:
    """How many oneDNN linear calls ``fn()`` makes."""
    with torch.profiler.profile() as prof:
        fn()
    return sum(e.count for e in prof.key_averages() if e.key == "mkldnn::_linear_pointwise")


@pytest.fixture
def layer():
    torch.manual_seed(0)
    return torch.nn.Linear(48, 80)


@pytest.mark.skipif(not FAST, reason="this PyTorch build has no usable oneDNN packed linears")
@pytest.mark.parametrize("gelu", [False, True])
def test_fp32_equals_nn_linear(layer, gelu):
    x = torch.randn(2, 33, 48)
    ref = layer(x)
    ref = F.gelu(ref) if gelu else ref
    with torch.inference_mode(), packed_linears():
        assert _fast_calls(lambda: inference_linear(layer, x, gelu=gelu)) == 1
        out = inference_linear(layer, x, gelu=gelu)
    assert out.shape == (2, 33, 80) and out.dtype == torch.float32
    torch.testing.assert_close(out, ref.detach(), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not FAST, reason="this PyTorch build has no usable oneDNN packed linears")
def test_bf16_autocast_gives_what_autocast_gives(layer):
    x = torch.randn(50, 48)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        ref = F.gelu(layer(x))
        with packed_linears():
            assert _fast_calls(lambda: inference_linear(layer, x, gelu=True)) == 1
            out = inference_linear(layer, x, gelu=True)
    assert out.dtype == ref.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref.float(), rtol=2 ** -7, atol=2 ** -7)


def test_plain_path_outside_the_block_with_grad_and_in_fp16(layer):
    x = torch.randn(7, 48)
    with torch.inference_mode():
        assert _fast_calls(lambda: inference_linear(layer, x)) == 0  # no packed_linears block
    with packed_linears():
        y = inference_linear(layer, x.requires_grad_())  # gradients recorded: nn.Linear
        y.sum().backward()
        assert layer.weight.grad is not None
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.float16):
            assert _fast_calls(lambda: inference_linear(layer, x.detach())) == 0


@pytest.mark.skipif(not FAST, reason="this PyTorch build has no usable oneDNN packed linears")
def test_weights_changed_between_blocks_are_not_served_stale(layer):
    x = torch.randn(5, 48)
    with torch.inference_mode(), packed_linears():
        before = inference_linear(layer, x)
        with packed_linears():  # nested blocks share the packed weights
            assert torch.equal(inference_linear(layer, x), before)
    with torch.no_grad():
        layer.weight.data.mul_(2.0)  # a change that does not bump the parameter's version
    with torch.inference_mode(), packed_linears():
        after = inference_linear(layer, x)
    torch.testing.assert_close(after, layer(x).detach(), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(after, before)


def test_switched_off_by_the_environment(layer, monkeypatch):
    monkeypatch.setenv("VOXELFM_CPU_KERNELS", "0")
    monkeypatch.setattr(il, "_usable", {})
    with torch.inference_mode(), packed_linears():
        assert _fast_calls(lambda: inference_linear(layer, torch.randn(3, 48))) == 0


@pytest.mark.skipif(not FAST, reason="this PyTorch build has no usable oneDNN packed linears")
def test_extraction_takes_the_packed_path_and_matches_the_plain_one():
    from voxelfm import extract_features
    from voxelfm.models import build_backbone

    torch.manual_seed(0)
    model = build_backbone(dict(embed_dim=48, depth=2, num_heads=2, patch_size=4, num_register_tokens=2))
    vol = torch.randn(16, 16, 20) * 300
    with torch.profiler.profile() as prof:
        fast = extract_features(model, vol)
    # 2 blocks × 4 linears, + 2 heads × 2 attention products of one row block each where the compiled
    # attention kernel does not run (it takes the attention where the CPU and a compiler allow)
    from voxelfm.models.kernels import cpu_attention

    products = 0 if cpu_attention(torch.float32) is not None else 2 * 2
    assert sum(e.count for e in prof.key_averages() if e.key == "mkldnn::_linear_pointwise") == 2 * (4 + products)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(il, "_fast_dtype", lambda x, layer: None)
        import voxelfm.models.layers.attention as attention

        mp.setattr(attention, "onednn_matmul_nt", lambda: None)
        mp.setattr(attention, "cpu_attention", lambda dtype: None)  # SDPA
        plain = extract_features(model, vol)
    torch.testing.assert_close(fast.patch, plain.patch, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fast.cls, plain.cls, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not FAST, reason="this PyTorch build has no usable oneDNN packed linears")
def test_extract_features_calls_inside_one_block_pack_the_weights_once():
    from voxelfm import extract_features
    from voxelfm.models import build_backbone

    torch.manual_seed(0)
    model = build_backbone(dict(embed_dim=48, depth=2, num_heads=2, patch_size=4, num_register_tokens=2))
    vols = [torch.randn(16, 16, 20) * 300 for _ in range(3)]

    def reorders(fn) -> int:
        with torch.profiler.profile() as prof:
            fn()
        return sum(e.count for e in prof.key_averages() if e.key == "mkldnn::_reorder_linear_weight")

    alone = reorders(lambda: [extract_features(model, v) for v in vols])
    assert alone == 3 * 2 * 4  # each call packs its own copies (2 blocks × 4 linears)

    def in_one_block():
        with packed_linears():
            return [extract_features(model, v) for v in vols]

    assert reorders(in_one_block) == 2 * 4
    with packed_linears():
        shared = [extract_features(model, v) for v in vols]
    for v, f in zip(vols, shared):
        torch.testing.assert_close(f.patch, extract_features(model, v).patch, rtol=0, atol=0)


@pytest.mark.skipif(not FAST, reason="this PyTorch build has no usable oneDNN packed linears")
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_mlp_in_blocks_of_rows_equals_the_whole_mlp(dtype):
    from voxelfm.models.layers import Mlp
    from voxelfm.models.layers.onednn_linear import inference_mlp

    torch.manual_seed(0)
    mlp = Mlp(48, 192).eval()
    x = torch.randn(2, 37, 48)  # 74 tokens: blocks of 16 leave a tail of 10
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16")
    with torch.inference_mode(), autocast:
        plain = mlp(x)  # outside packed_linears: nn.Linear and F.gelu
        with packed_linears():
            whole = inference_mlp(mlp.fc1, mlp.fc2, x, rows=1000)
            blocks = inference_mlp(mlp.fc1, mlp.fc2, x, rows=16)
            calls = _fast_calls(lambda: inference_mlp(mlp.fc1, mlp.fc2, x, rows=16))
    assert blocks.shape == plain.shape == (2, 37, 48) and blocks.dtype == plain.dtype
    assert calls == 2 * 5  # fc1 and fc2 for each of the 5 blocks
    torch.testing.assert_close(blocks, whole, rtol=0, atol=0)  # row blocks: the same products
    tol = 1e-5 if dtype == "fp32" else 2e-2
    torch.testing.assert_close(blocks.float(), plain.float(), rtol=tol, atol=tol)
