"""Reading and writing the reference config.yaml."""

from __future__ import annotations

import pytest

from voxelfm.errors import ConfigError
from voxelfm.models import ViTConfig, read_reference_config, resolve_config, write_reference_config


def test_read_fixture_config(data_dir):
    cfg, mean, std = read_reference_config(data_dir / "config.yaml")
    assert cfg == ViTConfig(embed_dim=96, depth=2, num_heads=2, patch_size=4, mlp_ratio=4, layerscale=1e-5,
                            drop_path_rate=0.1, rope_base=100.0, num_register_tokens=4)
    assert (mean, std) == (-573.8, 461.3)


def test_yaml11_numbers_and_defaults(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("student:\n  embed_dim: 864\n  layerscale: 1e-5\n  rope_rescale_coords: 2\n"
                 "  pretrained_weights: ''\ndatasets:\n- norm:\n    mean: -500\n    std: 400\n")
    cfg, mean, std = read_reference_config(p)
    assert cfg.layerscale == 1e-5 and cfg.rope_rescale_coords == 2.0 and cfg.depth == 12
    assert (mean, std) == (-500.0, 400.0)
    cfg, mean, std = read_reference_config({"student": {"embed_dim": 216, "num_heads": 3}})
    assert cfg.head_dim == 72 and (mean, std) == (-573.8, 461.3)


def test_errors(tmp_path):
    (tmp_path / "a.yaml").write_text("train:\n  batch_size_per_gpu: 4\n")
    with pytest.raises(ConfigError, match="no 'student' section"):
        read_reference_config(tmp_path / "a.yaml")
    (tmp_path / "b.yaml").write_text("student:\n  embed_dim: 100\n  num_heads: 2\n")
    with pytest.raises(ConfigError, match="divisible by 6"):
        read_reference_config(tmp_path / "b.yaml")
    with pytest.raises(ConfigError, match="not found"):
        read_reference_config(tmp_path / "missing.yaml")


def test_write_then_read(tmp_path):
    cfg = ViTConfig(embed_dim=432, num_heads=6, depth=3, ffn_layer="swiglu")
    write_reference_config(tmp_path / "config.yaml", cfg, -600.0, 450.0)
    back, mean, std = read_reference_config(tmp_path / "config.yaml")
    assert back == cfg and (mean, std) == (-600.0, 450.0)
    resolved, preset, _ = resolve_config(tmp_path)
    assert resolved == cfg and preset.mean == -600.0


def test_reference_preset_reads_norm_and_pixel_range(data_dir, tmp_path):
    from voxelfm.models.reference_config import reference_preset

    p = reference_preset(data_dir / "config.yaml")
    assert (p.name, p.mean, p.std, p.hu_window) == ("default", -573.8, 461.3, (-1000.0, 1900.0))
    (tmp_path / "c.yaml").write_text("student: {}\ndatasets:\n- pixel_range: {lower: -1024, upper: 3071}\n")
    assert reference_preset(tmp_path / "c.yaml").hu_window == (-1024.0, 3071.0)
