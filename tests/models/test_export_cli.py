"""voxelfm export: reference → voxelfm → reference gives identical tensors."""

from __future__ import annotations

import torch

from voxelfm.cli.main import main
from voxelfm.models import load_backbone


def test_export_roundtrip(tmp_path, data_dir, capsys):
    vfm = tmp_path / "vfm"
    ref = tmp_path / "ref"
    rc = main(["export", "--weights", str(data_dir / "training_checkpoint.pth"), "--config",
               str(data_dir / "config.yaml"), "-o", str(vfm)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "model.safetensors" in out and "parameters: 231,072" in out
    assert main(["export", "-w", str(vfm), "-o", str(ref), "--format", "reference"]) == 0
    assert main(["export", "-w", str(ref), "-o", str(tmp_path / "single.pth"), "--format", "reference"]) == 0

    original = torch.load(data_dir / "teacher_checkpoint.pth", map_location="cpu", weights_only=True)["teacher"]
    original = {k: v for k, v in original.items() if k.startswith("backbone.")}
    for path in (ref / "checkpoints" / "teacher_checkpoint.pth", tmp_path / "single.pth"):
        exported = torch.load(path, map_location="cpu", weights_only=True)
        assert list(exported) == ["teacher"]
        assert list(exported["teacher"]) == list(original)
        for k, v in original.items():
            assert torch.equal(exported["teacher"][k], v), k
    # The exported reference folder carries the normalisation and architecture.
    m = load_backbone(ref)
    assert m.config.embed_dim == 96 and m.preset.mean == -573.8


def test_export_user_errors(tmp_path, capsys):
    assert main(["export", "-w", str(tmp_path / "none.pth"), "-o", str(tmp_path / "o")]) == 2
    assert "error" in capsys.readouterr().err
    assert main(["export", "-w", "vit_tiny", "-o", str(tmp_path / "o.pth")]) == 2
