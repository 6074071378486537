"""A tiny backbone family used to test the backbone contract (registered by the tests only)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from voxelfm.baselines._weights import load_matching, random_init, read_state_dict
from voxelfm.baselines.base import BaselineBackbone, dinov2_output, make_preprocessed
from voxelfm.baselines.registry import BackboneFamily
from voxelfm.preprocess import source_grid

SIZE = 16


class FakeBackbone(BaselineBackbone):
    family = "fake"
    embed_dim = 8
    patch_size = (4, 4, 4)

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv3d(1, 8, 4, stride=4), nn.BatchNorm3d(8))

    def preprocess(self, source: Any, *, spacing=None, shift: float = 0.0, **options: Any):
        x, sp, info = source_grid(source, "default", spacing=spacing)
        x = ((x.clamp(-1000, 1000) + 1000) / 2000 + shift)
        pad = [max(0, SIZE - n) for n in x.shape]
        x = F.pad(x, (0, pad[2], 0, pad[1], 0, pad[0]))[:SIZE, :SIZE, :SIZE]
        return make_preprocessed(x, family=self.family, info=info, input_shape=x.shape, input_spacing=sp,
                                 spacing=sp, patch_size=self.patch_size,
                                 to_source={"scale": [1, 1, 1], "offset": [0, 0, 0]},
                                 steps=[{"op": "clip_scale", "range": [-1000, 1000]}], shift=shift)

    def forward(self, x: torch.Tensor):
        fmap = self.net(x[:, None])
        return dinov2_output(fmap.mean((2, 3, 4)), fmap)

    def options_from_columns(self, columns):
        return {"shift": float(columns["shift"])} if "shift" in columns else {}


def load(weights, *, device="cpu", width: int = 8) -> FakeBackbone:
    if width != 8:
        raise ValueError("width must be 8")
    if weights is None:
        model = random_init("fake", FakeBackbone)
        model.source = {"format": "random-init"}
    else:
        model = FakeBackbone()
        report = load_matching(model, read_state_dict(weights), strip=("backbone.",), drop=("head.",),
                               source=str(weights), family="fake")
        model.source = {"format": "fake", "path": str(weights), **report.to_dict()}
    return model.to(device)


FAMILY = BackboneFamily(name="fake", load=load, embed_dim=8, description="test family",
                        weights_help="nowhere", requires=("torch",), extra=None,
                        weight_files=("fake_weights.pt",), hub_repo="org/fake")
