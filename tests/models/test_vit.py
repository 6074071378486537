"""VisionTransformer3D: state-dict layout, configs, attention modes, masks, shapes, training paths."""

from __future__ import annotations

import re

import pytest
import torch

from tests.models.conftest import min_cosine
from voxelfm.errors import ConfigError
from voxelfm.models import CONFIGS, VisionTransformer3D, ViTConfig, build_backbone
from voxelfm.models.layers import DropPath

TINY = dict(embed_dim=48, depth=2, num_heads=2, patch_size=4, num_register_tokens=2)


def _randomised(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights everywhere (LayerScale, LayerNorm included) so that every path matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 0.5 if ("gamma" in name or "norm" in name) else 0.2
            p.copy_(torch.randn(p.shape, generator=g) * scale + (1.0 if name.endswith("norm1.weight") else 0.0))
    return model.eval()


# ----------------------------------------------------------------------------- layout
def _reference_vit_b_keys() -> list[tuple[str, tuple[int, ...]]]:
    """REFERENCE.md §1.8, transcribed."""
    C, H = 864, 3456
    keys = [("cls_token", (1, 1, C)), ("register_tokens", (1, 4, C)), ("mask_token", (1, C)),
            ("patch_embed.proj.weight", (C, 1, 14, 14, 14)), ("patch_embed.proj.bias", (C,)),
            ("rope_embed.periods", (12,))]
    for i in range(12):
        b = f"blocks.{i}."
        keys += [(b + "norm1.weight", (C,)), (b + "norm1.bias", (C,)), (b + "attn.qkv.weight", (3 * C, C)),
                 (b + "attn.qkv.bias", (3 * C,)), (b + "attn.proj.weight", (C, C)), (b + "attn.proj.bias", (C,)),
                 (b + "ls1.gamma", (C,)), (b + "norm2.weight", (C,)), (b + "norm2.bias", (C,)),
                 (b + "mlp.fc1.weight", (H, C)), (b + "mlp.fc1.bias", (H,)), (b + "mlp.fc2.weight", (C, H)),
                 (b + "mlp.fc2.bias", (C,)), (b + "ls2.gamma", (C,))]
    keys += [("norm.weight", (C,)), ("norm.bias", (C,))]
    return keys


def test_vit_base_state_dict_matches_reference():
    with torch.device("meta"):
        model = build_backbone("vit_base")
    sd = model.state_dict()
    ref = _reference_vit_b_keys()
    assert len(sd) == 176
    assert list(sd) == [k for k, _ in ref]  # same order as the reference state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == dict(ref)
    assert model.num_parameters() == 110_029_536
    assert sum(p.numel() for n, p in model.named_parameters() if n.startswith("blocks.0.")) == 8_970_912
    assert sum(p.numel() for n, p in model.named_parameters() if n.startswith("patch_embed.")) == 2_371_680
    assert (model.embed_dim, model.depth, model.num_heads, model.patch_size, model.num_register_tokens) == \
        (864, 12, 12, 14, 4)
    assert model.preset.mean == pytest.approx(-573.8) and model.preset.std == pytest.approx(461.3)


@pytest.mark.parametrize("name,dims", [("vit_tiny", (216, 12, 3)), ("vit_small", (432, 12, 6)),
                                       ("vit_base", (864, 12, 12))])
def test_named_configs(name, dims):
    cfg = CONFIGS[name]
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads) == dims
    assert cfg.head_dim == 72 and cfg.patch_size == 14 and cfg.num_register_tokens == 4
    assert cfg.layerscale == 1e-5 and cfg.rope_base == 100.0 and cfg.mlp_ratio == 4.0
    assert ViTConfig.from_dict(cfg.to_dict()) == cfg


def test_build_backbone_overrides_and_validation():
    with torch.device("meta"):
        m = build_backbone("vit_small", drop_path_rate=0.2, depth=3, patch_size=8, drop_path_uniform=False)
    assert m.depth == 3 and m.patch_size == 8 and len(m.blocks) == 3
    assert [b.sample_drop_ratio for b in m.blocks] == pytest.approx([0.0, 0.1, 0.2])
    with pytest.raises(ConfigError, match="divisible by 6"):
        build_backbone("vit_tiny", embed_dim=192)  # head_dim 64
    with pytest.raises(ConfigError, match="unknown ViTConfig fields"):
        build_backbone("vit_tiny", dropout=0.1)
    with pytest.raises(ConfigError, match="unknown model config"):
        build_backbone("vit_huge")
    with pytest.raises(ConfigError, match="ffn_layer"):
        build_backbone(dict(TINY, ffn_layer="moe"))
    m = build_backbone(dict(TINY))  # dict of fields
    assert m.embed_dim == 48


def test_init_follows_reference():
    torch.manual_seed(0)
    m = build_backbone("vit_tiny", depth=2)
    assert m.cls_token.std().item() < 1e-5 and m.register_tokens.abs().max().item() < 1e-4
    assert torch.count_nonzero(m.mask_token) == 0
    assert torch.all(m.blocks[0].ls1.gamma == 1e-5)
    w = m.blocks[1].mlp.fc1.weight
    assert abs(w.std().item() - 0.02) < 0.002 and torch.count_nonzero(m.blocks[1].mlp.fc1.bias) == 0


@pytest.mark.parametrize("ffn,keys", [("swiglu", {"mlp.w12.weight": (2 * 192, 48), "mlp.w3.weight": (48, 192)}),
                                      ("identity", {})])
def test_ffn_variants_key_names(ffn, keys):
    m = build_backbone(dict(TINY, ffn_layer=ffn))
    block0 = {k[len("blocks.0."):]: tuple(v.shape) for k, v in m.state_dict().items() if k.startswith("blocks.0.")}
    mlp_keys = {k: v for k, v in block0.items() if k.startswith("mlp.") and k.endswith("weight")}
    assert mlp_keys == keys
    out = m(torch.randn(1, 8, 8, 8))
    assert out["x_norm_patchtokens"].shape == (1, 8, 48)


def test_layerscale_off_has_no_gamma():
    m = build_backbone(dict(TINY, layerscale=None))
    assert not any("gamma" in k for k in m.state_dict())


# ----------------------------------------------------------------------------- attention modes
@pytest.mark.parametrize("shape", [(8, 12, 16), (32, 32, 32)])  # 2×3×4 and 8×8×8 patches of 4
def test_sdpa_equals_naive(shape):
    m = _randomised(build_backbone(dict(TINY)), seed=1)
    x = torch.randn(2, *shape)
    with torch.no_grad():
        a = m.set_attention_mode("sdpa")(x)
        b = m.set_attention_mode("naive")(x)
    assert m.attention_mode == "naive"
    assert min_cosine(a["x_norm_clstoken"], b["x_norm_clstoken"]) >= 0.9999
    assert min_cosine(a["x_norm_patchtokens"], b["x_norm_patchtokens"]) >= 0.9999
    torch.testing.assert_close(a["x_prenorm"], b["x_prenorm"], rtol=1e-4, atol=1e-4)


def test_attention_mode_validation_and_constructor_arg():
    m = build_backbone(dict(TINY), attention_mode="naive")
    assert all(b.attn.mode == "naive" for b in m.blocks)
    with pytest.raises(ValueError, match="attention mode"):
        m.set_attention_mode("flash")


def test_bf16_autocast_matches_fp32():
    m = _randomised(build_backbone(dict(TINY)), seed=2)
    x = torch.randn(1, 16, 16, 16)
    with torch.no_grad():
        ref = m(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = m(x)
    assert low["x_norm_patchtokens"].shape == ref["x_norm_patchtokens"].shape
    assert min_cosine(low["x_norm_patchtokens"], ref["x_norm_patchtokens"]) > 0.98
    with torch.no_grad():  # a model cast to bf16 also runs
        out = m.to(torch.bfloat16)(x.to(torch.bfloat16))
    assert out["x_norm_clstoken"].dtype == torch.bfloat16



def test_bf16_features_within_cosine_bound_of_fp32():
    """The bf16 inference path (GEMM patch embedding, blocked CPU attention) keeps every token at
    cosine >= 0.999 to fp32, also with LayerScale 1 and sharpened attention (logits ×9)."""
    cfg = dict(embed_dim=96, depth=3, num_heads=2, patch_size=4, num_register_tokens=4, layerscale=1.0)
    m = build_backbone(cfg).eval()
    with torch.no_grad():
        for blk in m.blocks:
            blk.attn.qkv.weight[:192] *= 3.0
    x = torch.randn(1, 28, 24, 32)  # 7×6×8 = 336 patch tokens
    with torch.inference_mode():
        ref = m(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = m(x)
    for key in ("x_norm_clstoken", "x_norm_regtokens", "x_norm_patchtokens"):
        assert min_cosine(low[key], ref[key]) >= 0.999, key


def test_patch_embedding_gemm_path_equals_conv():
    m = _randomised(build_backbone(dict(TINY)), seed=5)
    x = torch.randn(2, 9, 13, 18)  # trailing voxels dropped on every axis
    with torch.no_grad():
        conv, grid = m.patch_embed(x)
        gemm, grid_b = m.patch_embed(x.to(torch.bfloat16))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            auto, _ = m.patch_embed(x)
    assert grid == grid_b == (2, 3, 4)
    assert gemm.dtype == auto.dtype == torch.bfloat16
    assert min_cosine(gemm, conv) >= 0.999 and min_cosine(auto, conv) >= 0.999
    with torch.no_grad():  # in fp32 the GEMM form is the same projection as the Conv3d
        exact, _ = m.patch_embed._forward_gemm(x, torch.float32)
    torch.testing.assert_close(exact, conv, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("path", ["kernel", "blocked"])
@pytest.mark.parametrize("b, n", [(1, 37), (1, 300), (2, 45)])
def test_bf16_cpu_attention_matches_sdpa(monkeypatch, b, n, path):
    """Both bf16 inference paths: voxelfm's compiled attention kernel (where the CPU has
    AVX512-BF16 and a compiler exists; else this case runs the fallback too) and the blocked
    fallback with PyTorch's softmax."""
    import voxelfm.models.layers.attention as attention

    if path == "blocked":
        monkeypatch.setattr(attention, "cpu_attention", lambda dtype: None)

    monkeypatch.setattr(attention, "_BLOCK_SCORES", 16 * n)  # 16 query rows per block (a short last one)
    monkeypatch.setattr(attention, "_MIN_BLOCK_ROWS", 16)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(b, 3, n, 12, generator=g) * 1.5 for _ in range(3))  # logits std ≈ 2.3
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=0.3)
    with torch.inference_mode():
        out = attention.attention_core(q.bfloat16(), k.bfloat16(), v.bfloat16(), 0.3)
    assert out.dtype == torch.bfloat16 and out.shape == ref.shape
    # one layer alone, sharp attention; bf16 scores cost some precision (the fused kernel: 0.9998)
    assert min_cosine(out, ref) >= 0.9985
    # with gradients required PyTorch's fused kernel runs (voxelfm's paths are inference-only)
    qg = q.bfloat16().requires_grad_()
    out_g = attention.attention_core(qg, k.bfloat16(), v.bfloat16(), 0.3)
    out_g.float().sum().backward()
    assert qg.grad is not None and min_cosine(out_g.detach(), ref) >= 0.9995


@pytest.mark.parametrize("b, n", [(1, 37), (2, 300)])
def test_fp32_blocked_attention_in_packed_linears_blocks_matches_sdpa(monkeypatch, b, n):
    """Without the compiled kernel, fp32 CPU inference inside ``packed_linears`` (what
    voxelfm.inference enters) runs the blocked form with oneDNN products: equal to SDPA to fp32
    rounding; outside, SDPA itself."""
    import voxelfm.models.layers.attention as attention
    from voxelfm.models.layers import packed_linears
    from voxelfm.models.layers.onednn_linear import onednn_matmul_nt

    monkeypatch.setattr(attention, "cpu_attention", lambda dtype: None)

    monkeypatch.setattr(attention, "_BLOCK_SCORES_FP32", 16 * n)  # 16 query rows per block (a short last one)
    monkeypatch.setattr(attention, "_MIN_BLOCK_ROWS_FP32", 16)
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(b, 3, n, 12, generator=g) * 1.5 for _ in range(3))
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=0.3)
    with torch.inference_mode():
        assert torch.equal(attention.attention_core(q, k, v, 0.3), ref)  # no block: SDPA
        with packed_linears():
            if onednn_matmul_nt() is None:
                pytest.skip("this PyTorch build has no usable oneDNN linear operator")
            out = attention.attention_core(q, k, v, 0.3)
    assert out.shape == ref.shape and out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- outputs and inputs
def test_output_dict_and_token_order():
    m = _randomised(build_backbone(dict(TINY)), seed=3)
    x = torch.randn(2, 8, 12, 20)
    with torch.no_grad():
        out = m(x)
    assert set(out) == {"x_norm_clstoken", "x_norm_regtokens", "x_norm_patchtokens", "x_prenorm", "masks"}
    assert out["x_norm_clstoken"].shape == (2, 48)
    assert out["x_norm_regtokens"].shape == (2, 2, 48)
    assert out["x_norm_patchtokens"].shape == (2, 2 * 3 * 5, 48)
    assert out["x_prenorm"].shape == (2, 1 + 2 + 30, 48)
    assert out["masks"] is None
    torch.testing.assert_close(m.norm(out["x_prenorm"])[:, 0], out["x_norm_clstoken"])
    # Patch embedding order (d h w): token n=(d*h_n + h)*w_n + w is the conv output at (d, h, w).
    tokens, grid = m.patch_embed(x)
    conv = m.patch_embed.proj(x.unsqueeze(1))
    assert grid == (2, 3, 5)
    torch.testing.assert_close(tokens[:, (1 * 3 + 2) * 5 + 4], conv[:, :, 1, 2, 4])


def test_variable_sizes_drop_trailing_voxels():
    m = _randomised(build_backbone(dict(TINY)), seed=4)
    x = torch.randn(1, 13, 18, 23)  # not multiples of 4 → grid (3, 4, 5)
    with torch.no_grad():
        a = m(x)
        b = m(x[:, :12, :16, :20].contiguous())
    assert a["x_norm_patchtokens"].shape == (1, 60, 48)
    torch.testing.assert_close(a["x_norm_patchtokens"], b["x_norm_patchtokens"])
    assert m.grid_size(x.shape) == (3, 4, 5)
    with torch.no_grad():  # [B, 1, D, H, W] accepted
        c = m(x[:, None])
    torch.testing.assert_close(c["x_norm_clstoken"], a["x_norm_clstoken"])


def test_input_validation():
    m = build_backbone(dict(TINY))
    with pytest.raises(ValueError, match=r"\[B, D, H, W\]"):
        m(torch.randn(8, 8, 8))
    with pytest.raises(ValueError, match="at least one patch"):
        m(torch.randn(1, 3, 8, 8))
    with pytest.raises(TypeError, match="floating"):
        m(torch.zeros(1, 8, 8, 8, dtype=torch.int16))


def test_masks_replace_patch_tokens_with_mask_token():
    m = _randomised(build_backbone(dict(TINY)), seed=5)
    x = torch.randn(2, 8, 8, 12)  # 2×2×3 = 12 patches
    masks = torch.zeros(2, 12, dtype=torch.bool)
    masks[0, [0, 5, 11]] = True
    masks[1, 3] = True
    tokens, _ = m.prepare_tokens_with_masks(x, masks)
    plain, _ = m.prepare_tokens_with_masks(x)
    patch, plain_patch = tokens[:, 3:], plain[:, 3:]
    torch.testing.assert_close(patch[masks], m.mask_token.expand(int(masks.sum()), -1))
    torch.testing.assert_close(patch[~masks], plain_patch[~masks])
    torch.testing.assert_close(tokens[:, :3], plain[:, :3])
    with torch.no_grad():
        out = m(x, masks=masks)
        out0 = m(x, masks=torch.zeros_like(masks))
        ref = m(x)
    assert out["masks"] is masks
    torch.testing.assert_close(out0["x_prenorm"], ref["x_prenorm"])
    assert not torch.allclose(out["x_norm_clstoken"], ref["x_norm_clstoken"])
    with pytest.raises(ValueError, match="masks must be"):
        m(x, masks=torch.zeros(2, 11, dtype=torch.bool))


# ----------------------------------------------------------------------------- intermediate layers
def test_get_intermediate_layers():
    m = _randomised(build_backbone(dict(TINY, depth=3)), seed=6)
    x = torch.randn(2, 8, 12, 16)  # grid 2×3×4
    with torch.no_grad():
        full = m(x)
        (last,) = m.get_intermediate_layers(x)
        outs = m.get_intermediate_layers(x, n=2, reshape=True, return_class_token=True)
        raw = m.get_intermediate_layers(x, n=[0, -1], norm=False)
    torch.testing.assert_close(last, full["x_norm_patchtokens"])
    assert len(outs) == 2
    (p1, c1), (p2, c2) = outs
    assert p1.shape == (2, 48, 2, 3, 4) and c1.shape == (2, 48)
    torch.testing.assert_close(c2, full["x_norm_clstoken"])
    # reshape=True is the (d h w) token sequence laid out on the grid, channels first.
    torch.testing.assert_close(p2.flatten(2).transpose(1, 2), full["x_norm_patchtokens"])
    torch.testing.assert_close(raw[1], full["x_prenorm"][:, 3:])
    assert not torch.allclose(raw[0], raw[1])
    with pytest.raises(ValueError):
        m.get_intermediate_layers(x, n=4)


def test_forward_intermediates():
    m = _randomised(build_backbone(dict(TINY, depth=3)), seed=7)
    x = torch.randn(1, 8, 8, 8)
    with torch.no_grad():
        final, inter = m.forward_intermediates(x)
        only = m.forward_intermediates(x, indices=1, output_fmt="NLC", intermediates_only=True, norm=True)
        ref = m(x)
    assert len(inter) == 3 and inter[0].shape == (1, 48, 2, 2, 2)
    torch.testing.assert_close(final[:, 0], ref["x_norm_clstoken"])
    torch.testing.assert_close(only[0], ref["x_norm_patchtokens"])


# ----------------------------------------------------------------------------- training paths
def test_drop_path_variants():
    torch.manual_seed(0)
    dp = DropPath(0.5).train()
    y = dp(torch.ones(2000, 3, 4))
    per_sample = y[:, 0, 0]
    assert set(torch.unique(per_sample).tolist()) == {0.0, 2.0}  # whole samples dropped, survivors ×2
    assert torch.all(y == per_sample[:, None, None])
    assert abs(per_sample.mean().item() - 1.0) < 0.1

    m = _randomised(build_backbone(dict(TINY, drop_path_rate=0.5)), seed=8).train()
    x = torch.randn(4, 8, 8, 8)
    with torch.no_grad():
        a, b = m(x)["x_prenorm"], m(x)["x_prenorm"]
    assert not torch.allclose(a, b)  # stochastic in training (batch-subset variant, rate > 0.1)
    m.eval()
    with torch.no_grad():
        torch.testing.assert_close(m(x)["x_prenorm"], m(x)["x_prenorm"])

    m = build_backbone(dict(TINY, drop_path_rate=0.5, drop_path_mode="per_sample")).train()
    out = m(x)
    out["x_norm_clstoken"].sum().backward()
    assert m.blocks[0].attn.qkv.weight.grad is not None


def test_grad_checkpointing_same_gradients():
    m = _randomised(build_backbone(dict(TINY)), seed=9).train()
    x = torch.randn(2, 8, 8, 8)
    m(x)["x_norm_clstoken"].pow(2).sum().backward()
    g1 = m.blocks[0].attn.qkv.weight.grad.clone()
    m.zero_grad()
    m.set_grad_checkpointing(True)
    m(x)["x_norm_clstoken"].pow(2).sum().backward()
    torch.testing.assert_close(m.blocks[0].attn.qkv.weight.grad, g1)


def test_parameter_names_for_layerwise_lr_decay():
    m = build_backbone(dict(TINY))
    names = [n for n, _ in m.named_parameters()]
    assert names[:4] == ["cls_token", "register_tokens", "mask_token", "patch_embed.proj.weight"]
    assert all(re.match(r"^(cls_token|register_tokens|mask_token|patch_embed\.|blocks\.\d+\.|norm\.)", n)
               for n in names)


def test_model_is_a_plain_module():
    m = build_backbone(dict(TINY))
    assert isinstance(m, VisionTransformer3D) and isinstance(m, torch.nn.Module)
    assert "embed_dim=48" in repr(m)
