"""DINOHead: reference key names/shapes, weight norm, L2 normalisation."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from voxelfm.models.layers import DINOHead


def test_reference_keys_and_shapes_vit_b():
    with torch.device("meta"):
        head = DINOHead(864)
    shapes = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    assert shapes == {
        "mlp.0.weight": (2048, 864), "mlp.0.bias": (2048,),
        "mlp.2.weight": (2048, 2048), "mlp.2.bias": (2048,),
        "mlp.4.weight": (256, 2048), "mlp.4.bias": (256,),
        "last_layer.parametrizations.weight.original0": (65536, 1),
        "last_layer.parametrizations.weight.original1": (65536, 256),
    }


def test_variants_bn_and_single_layer():
    bn = DINOHead(32, out_dim=10, hidden_dim=16, bottleneck_dim=8, use_bn=True)
    assert [type(m).__name__ for m in bn.mlp] == ["Linear", "BatchNorm1d", "GELU", "Linear", "BatchNorm1d",
                                                  "GELU", "Linear"]
    one = DINOHead(32, out_dim=10, bottleneck_dim=8, nlayers=1)
    assert isinstance(one.mlp, torch.nn.Linear) and one.mlp.weight.shape == (8, 32)


def test_forward_normalises_and_uses_weight_norm():
    torch.manual_seed(0)
    head = DINOHead(32, out_dim=50, hidden_dim=24, bottleneck_dim=16)
    assert torch.all(head.last_layer.parametrizations.weight.original0 == 1)
    assert torch.count_nonzero(head.mlp[0].bias) == 0
    x = torch.randn(7, 32)
    out = head(x)
    z = F.normalize(head.mlp(x), dim=-1)
    v = head.last_layer.parametrizations.weight.original1
    expected = z @ (v / v.norm(dim=1, keepdim=True)).T  # g = 1: unit prototypes
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    assert out.shape == (7, 50) and out.abs().max() <= 1.0 + 1e-5  # cosine similarities
    # Magnitude g scales the logits.
    with torch.no_grad():
        head.last_layer.parametrizations.weight.original0.fill_(2.0)
    torch.testing.assert_close(head(x), 2 * expected, rtol=1e-5, atol=1e-6)
    # A zero bottleneck output does not divide by zero.
    with torch.no_grad():
        head.mlp[-1].weight.zero_()
        head.mlp[-1].bias.zero_()
    assert torch.all(torch.isfinite(head(x)))


def test_load_reference_style_state_dict():
    a = DINOHead(32, out_dim=20, hidden_dim=16, bottleneck_dim=8)
    b = DINOHead(32, out_dim=20, hidden_dim=16, bottleneck_dim=8)
    b.load_state_dict(a.state_dict(), strict=True)
    x = torch.randn(3, 32)
    torch.testing.assert_close(a(x), b(x))
