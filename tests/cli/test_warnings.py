"""The voxelfm command prints warnings as one line each, named by the subcommand."""

from __future__ import annotations

import subprocess
import sys


def test_export_warning_is_one_line_without_source_location(tmp_path):
    from voxelfm.models import build_backbone
    from voxelfm.models.checkpoint import save_reference_teacher

    weights = tmp_path / "teacher.pth"  # no config stored: load_backbone warns about the normalisation
    save_reference_teacher(weights, build_backbone({"embed_dim": 24, "depth": 1, "num_heads": 2, "patch_size": 4}))
    out = subprocess.run([sys.executable, "-m", "voxelfm", "export", "--weights", str(weights),
                          "-o", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stderr.splitlines()
    assert lines, "expected the missing-normalisation warning"
    assert all(line.startswith("voxelfm export: warning: ") for line in lines), lines
    assert any("no normalisation stored with the weights" in line for line in lines)
    assert not any(".py:" in line for line in lines)
    assert (tmp_path / "out" / "model.safetensors").is_file()
