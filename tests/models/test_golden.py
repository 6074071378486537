"""Golden test: the reference implementation's outputs on a tiny random ViT (REFERENCE.md §1)."""

from __future__ import annotations

import contextlib

import pytest
import torch

from tests.models.conftest import min_cosine
from voxelfm.models import load_backbone
from voxelfm.models.checkpoint import extract_backbone_state_dict, read_checkpoint
from voxelfm.models.layers import packed_linears

COS = 0.99999


@pytest.mark.parametrize("packed", [False, True], ids=["nn-linear", "packed-linears"])
@pytest.mark.parametrize("ckpt", ["teacher_checkpoint.pth", "training_checkpoint.pth"])
@pytest.mark.parametrize("mode", ["sdpa", "naive"])
def test_matches_reference_outputs(data_dir, expected, ckpt, mode, packed):
    """Also through oneDNN's packed linears, the path ``voxelfm.inference`` takes on the CPU."""
    model = load_backbone(data_dir / ckpt, config=data_dir / "config.yaml")
    model.set_attention_mode(mode)
    assert not model.training
    assert model.preset.mean == pytest.approx(-573.8) and model.preset.std == pytest.approx(461.3)
    for i in range(2):
        x = torch.from_numpy(expected[f"input_{i}"])[None]
        with torch.inference_mode(), packed_linears() if packed else contextlib.nullcontext():
            out = model(x)
        n_patches = expected[f"patch_{i}"].shape[0]
        assert out["x_norm_clstoken"].shape == (1, 96)
        assert out["x_norm_regtokens"].shape == (1, 4, 96)
        assert out["x_norm_patchtokens"].shape == (1, n_patches, 96)
        assert out["x_prenorm"].shape == (1, 5 + n_patches, 96)
        assert min_cosine(out["x_norm_clstoken"], expected[f"cls_{i}"][None]) >= COS
        assert min_cosine(out["x_norm_regtokens"][0], expected[f"reg_{i}"]) >= COS
        assert min_cosine(out["x_norm_patchtokens"][0], expected[f"patch_{i}"]) >= COS
        torch.testing.assert_close(out["x_norm_patchtokens"][0], torch.from_numpy(expected[f"patch_{i}"]),
                                   rtol=1e-3, atol=1e-4)


def test_training_checkpoint_gives_teacher_not_student(data_dir, expected):
    model = load_backbone(data_dir / "training_checkpoint.pth", config=data_dir / "config.yaml")
    assert model.source["format"] == "reference-training"
    assert model.source["iteration"] == 99
    raw = read_checkpoint(data_dir / "training_checkpoint.pth")["model"]
    teacher_w = raw["teacher.backbone.blocks.0.attn.qkv.weight"]
    student_w = raw["student.backbone.module.blocks.0.attn.qkv.weight"]
    assert not torch.equal(teacher_w, student_w)
    torch.testing.assert_close(model.blocks[0].attn.qkv.weight.detach(), teacher_w, rtol=0, atol=0)

    # The student, loaded on purpose as a bare dict, gives different (non-reference) features.
    student_sd = {k[len("student.backbone.module."):]: v for k, v in raw.items()
                  if k.startswith("student.backbone.module.")}
    student = load_backbone(student_sd, config=data_dir / "config.yaml")
    x = torch.from_numpy(expected["input_0"])[None]
    with torch.no_grad():
        cls_student = student(x)["x_norm_clstoken"]
    assert min_cosine(cls_student, expected["cls_0"][None]) < 0.999


def test_teacher_dump_and_training_checkpoint_hold_same_teacher(data_dir):
    a, fmt_a, _ = extract_backbone_state_dict(read_checkpoint(data_dir / "teacher_checkpoint.pth"))
    b, fmt_b, _ = extract_backbone_state_dict(read_checkpoint(data_dir / "training_checkpoint.pth"))
    assert (fmt_a, fmt_b) == ("reference-teacher", "reference-training")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
