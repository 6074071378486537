"""Perceiver resampler (padding-mask invariance, shapes) and the batched token injector."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from voxelfm.reportgen.conversation import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from voxelfm.reportgen.injector import inject_image_tokens
from voxelfm.reportgen.projector import PerceiverResampler, ProjectorConfig


def _proj(**kw):
    torch.manual_seed(0)
    cfg = dict(in_dim=12, out_dim=10, num_queries=5, width=16, num_heads=4, dropout=0.1)
    cfg.update(kw)
    return PerceiverResampler(ProjectorConfig(**cfg)).eval()


def test_projector_shapes_and_reference_structure():
    p = _proj()
    out = p(torch.randn(3, 7, 12))
    assert out.shape == (3, 5, 10)
    assert p.queries.shape == (5, 16) and p.key_proj.out_features == 16 and p.value_proj.out_features == 16
    assert isinstance(p.attn, nn.MultiheadAttention) and p.attn.num_heads == 4
    assert [type(m) for m in p.mlp] == [nn.Linear, nn.GELU, nn.Linear] and isinstance(p.norm, nn.LayerNorm)
    assert p.mlp[0].out_features == 16 and p.mlp[2].out_features == 10
    # reference sizes are accepted
    ref = ProjectorConfig(in_dim=864, out_dim=2560, num_queries=128, width=2048, num_heads=8)
    assert ref.width // ref.num_heads == 256


def test_padding_does_not_change_the_output():
    p = _proj()
    torch.manual_seed(1)
    a = torch.randn(4, 12)   # 4 real tokens
    b = torch.randn(7, 12)   # 7 real tokens
    alone_a = p(a[None])[0]
    alone_b = p(b[None])[0]
    batch = torch.full((2, 9, 12), 1e3)          # padding values are garbage on purpose
    batch[0, :4] = a
    batch[1, :7] = b
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[0, :4] = False
    mask[1, :7] = False
    out = p(batch, key_padding_mask=mask)
    torch.testing.assert_close(out[0], alone_a, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1], alone_b, atol=1e-5, rtol=1e-5)
    # without the mask the garbage would matter
    assert not torch.allclose(p(batch)[0], alone_a, atol=1e-3)


def test_single_cls_token_gives_identical_queries_as_in_the_reference():
    """With one key token every query's attention output is the same value vector (reference §5)."""
    p = _proj()
    out = p(torch.randn(2, 1, 12))
    # all queries see softmax over one key = 1 → same attention output → same projected token
    torch.testing.assert_close(out[:, 0], out[:, 3])


def test_projector_validation_and_gradients():
    p = _proj()
    with pytest.raises(ValueError, match="only padding"):
        p(torch.randn(2, 3, 12), key_padding_mask=torch.tensor([[False, True, True], [True, True, True]]))
    with pytest.raises(ValueError, match=r"\[B, N, 12\]"):
        p(torch.randn(2, 3, 11))
    with pytest.raises(ValueError, match="divisible"):
        ProjectorConfig(in_dim=4, out_dim=4, width=10, num_heads=4)
    p.train()
    p(torch.randn(2, 3, 12)).sum().backward()
    assert all(q.grad is not None for q in p.parameters())


def _embed(vocab=50, hidden=6):
    torch.manual_seed(0)
    return nn.Embedding(vocab, hidden)


def test_injector_right_padding_layout():
    emb = _embed()
    Q, H = 3, 6
    ids = torch.tensor([[5, 6, IMAGE_TOKEN_INDEX, 7, 8, 9],
                        [11, IMAGE_TOKEN_INDEX, 12, 0, 0, 0]])     # sample 1 right-padded (pad id 0)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    labels = torch.tensor([[-100, -100, -100, 7, 8, 9], [-100, -100, 12, -100, -100, -100]])
    img = torch.arange(2 * Q * H, dtype=torch.float32).reshape(2, Q, H)
    out = inject_image_tokens(ids, mask, img, emb, labels)
    assert out.inputs_embeds.shape == (2, 6 - 1 + Q, H)
    e = out.inputs_embeds
    torch.testing.assert_close(e[0, :2], emb(torch.tensor([5, 6])))
    torch.testing.assert_close(e[0, 2:5], img[0])
    torch.testing.assert_close(e[0, 5:], emb(torch.tensor([7, 8, 9])))
    torch.testing.assert_close(e[1, 0], emb(torch.tensor(11)))
    torch.testing.assert_close(e[1, 1:4], img[1])
    torch.testing.assert_close(e[1, 4], emb(torch.tensor(12)))
    assert torch.all(e[1, 5:] == 0)
    assert out.attention_mask.tolist() == [[1] * 8, [1] * 5 + [0] * 3]
    assert out.labels.tolist() == [[IGNORE_INDEX] * 5 + [7, 8, 9], [IGNORE_INDEX] * 4 + [12] + [IGNORE_INDEX] * 3]
    assert out.position_ids.tolist() == [list(range(8)), [0, 1, 2, 3, 4, 0, 0, 0]]


def test_injector_left_padding_and_gradients():
    emb = _embed()
    Q, H = 2, 6
    ids = torch.tensor([[0, 0, 3, IMAGE_TOKEN_INDEX, 4], [1, 2, IMAGE_TOKEN_INDEX, 5, 6]])  # left-padded input
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    img = torch.randn(2, Q, H, requires_grad=True)
    out = inject_image_tokens(ids, mask, img, emb, padding_side="left")
    assert out.inputs_embeds.shape == (2, 6, H)
    assert out.attention_mask.tolist() == [[0, 0, 1, 1, 1, 1], [1] * 6]
    assert out.position_ids.tolist() == [[0, 0, 0, 1, 2, 3], list(range(6))]
    torch.testing.assert_close(out.inputs_embeds[0, 3:5], img[0])
    torch.testing.assert_close(out.inputs_embeds[0, 5], emb(torch.tensor(4)))
    assert out.labels is None
    out.inputs_embeds.sum().backward()
    assert torch.all(img.grad == 1)


def test_injector_needs_exactly_one_placeholder():
    emb = _embed()
    img = torch.randn(1, 2, 6)
    with pytest.raises(ValueError, match="exactly one image placeholder; sample 0 has 0"):
        inject_image_tokens(torch.tensor([[1, 2]]), torch.ones(1, 2), img, emb)
    with pytest.raises(ValueError, match="has 2"):
        inject_image_tokens(torch.tensor([[IMAGE_TOKEN_INDEX, IMAGE_TOKEN_INDEX]]), torch.ones(1, 2), img, emb)
    # a placeholder id hidden in the padding does not count
    out = inject_image_tokens(torch.tensor([[IMAGE_TOKEN_INDEX, 3, IMAGE_TOKEN_INDEX]]), torch.tensor([[1, 1, 0]]),
                              img, emb)
    assert out.inputs_embeds.shape == (1, 3, 6)
    with pytest.raises(ValueError, match="hidden size"):
        inject_image_tokens(torch.tensor([[IMAGE_TOKEN_INDEX]]), torch.ones(1, 1), torch.randn(1, 2, 5), emb)


def test_input_standardisation_uses_stored_statistics():
    """Tokens are standardised per channel with the stored statistics before the key/value projections."""
    p = _proj(dropout=0.0)
    torch.manual_seed(2)
    toks = [torch.randn(n, 12) * 0.01 + 5.0 for n in (1, 3, 4)]   # tiny variation around a big offset
    mean, std = PerceiverResampler.token_statistics(toks)
    allt = torch.cat(toks).double()
    torch.testing.assert_close(mean, allt.mean(0))
    torch.testing.assert_close(std, allt.std(0, unbiased=False))
    p.set_input_statistics(mean, std)
    x = toks[1][None]
    # oracle: a projector without normalisation fed the standardised tokens
    q = PerceiverResampler(ProjectorConfig(**{**p.config.to_dict(), "input_norm": "none"})).eval()
    q.load_state_dict({k: v for k, v in p.state_dict().items() if not k.startswith("input_")})
    torch.testing.assert_close(p(x), q(((x.double() - mean) / std).float()), atol=1e-4, rtol=1e-4)
    # the statistics are part of the state dict (saved with the projector, used by generation)
    sd = p.state_dict()
    assert torch.equal(sd["input_mean"], mean.float()) and torch.equal(sd["input_std"], std.float())
    # constant channels are not blown up
    p.set_input_statistics(torch.zeros(12), torch.zeros(12))
    assert torch.equal(p.input_std, torch.ones(12))
    with pytest.raises(ValueError, match="12 channels"):
        p.set_input_statistics(torch.zeros(3), torch.ones(3))


def test_standardisation_separates_nearly_identical_inputs():
    """Two inputs that differ by 1e-4 on a large common offset give clearly different outputs only
    with standardisation (the failure mode of a random-init CLS token)."""
    torch.manual_seed(3)
    base = torch.randn(12) * 3
    toks = [(base + 1e-4 * torch.randn(12))[None] for _ in range(20)]
    raw = _proj(input_norm="none", dropout=0.0)
    std = _proj(dropout=0.0)
    std.set_input_statistics(*PerceiverResampler.token_statistics(toks))
    a, b = toks[0][None], toks[1][None]
    spread_raw = (raw(a) - raw(b)).norm() / raw(a).norm()
    spread_std = (std(a) - std(b)).norm() / std(a).norm()
    assert spread_raw < 1e-3 and spread_std > 0.1


def test_config_without_input_norm_loads_as_none():
    d = ProjectorConfig(in_dim=12, out_dim=10).to_dict()
    assert d["input_norm"] == "standardize"
    d.pop("input_norm")
    assert ProjectorConfig.from_dict(d).input_norm == "none"
    assert not hasattr(PerceiverResampler(ProjectorConfig.from_dict(d)), "input_mean")
    with pytest.raises(ValueError, match="input_norm"):
        ProjectorConfig(in_dim=12, out_dim=10, input_norm="layernorm")
