"""Schedules (warm-up linspace, cosine end, last-layer freeze), parameter groups (layer decay,
patch-embed multiplier, no weight decay on bias/norm/gamma), and the config loader."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from voxelfm.errors import ConfigError
from voxelfm.ssl.config import apply_overrides, default_config, load_config, objective_names
from voxelfm.ssl.param_groups import (apply_optim_scheduler, fuse_params_groups,
                                      get_params_groups_with_decay)
from voxelfm.ssl.schedules import build_schedules, linear_warmup_cosine_decay


# ----------------------------------------------------------------------------- schedules
def test_linear_warmup_cosine_decay_shape_and_values():
    s = linear_warmup_cosine_decay(0.0, 1e-3, 1e-6, warmup_iterations=4, total_iterations=10)
    assert s.shape == (10,)
    np.testing.assert_allclose(s[:4], [0.0, 2.5e-4, 5e-4, 7.5e-4])  # linspace, endpoint excluded
    assert s[4] == pytest.approx(1e-3)  # cosine starts at the peak
    assert s[-1] == pytest.approx(1e-6)  # and ends exactly at end
    assert np.all(np.diff(s[4:]) <= 0)
    # cosine shorter than the run: constant tail at `end`
    t = linear_warmup_cosine_decay(0.04, 0.07, 0.07, 3, 8, cosine_iterations=2)
    np.testing.assert_allclose(t, [0.04, 0.05, 0.06, 0.07, 0.07, 0.07, 0.07, 0.07])
    with pytest.raises(ValueError):
        linear_warmup_cosine_decay(0, 1, 0, warmup_iterations=11, total_iterations=10)


def test_build_schedules_reference_defaults():
    cfg = load_config("vit_base")
    s = build_schedules(cfg)
    assert s.total_steps == 100_000
    assert s.lr[0] == 0.0 and s.lr[10_000] == pytest.approx(1e-3) and s.lr[-1] == pytest.approx(1e-6)
    assert s.lr[5_000] == pytest.approx(5e-4)
    assert np.all(s.last_layer_lr[:1000] == 0) and s.last_layer_lr[1000] == s.lr[1000]
    assert s.wd[0] == pytest.approx(0.04) and s.wd[-1] == pytest.approx(0.2)
    assert np.all(s.momentum == 0.994)
    assert s.teacher_temp[0] == pytest.approx(0.04) and s.teacher_temp[15_000] == pytest.approx(0.055)
    assert np.all(s.teacher_temp[30_000:] == pytest.approx(0.07))
    assert s.at(10**9)["lr"] == pytest.approx(1e-6)  # past the end: last value


# ----------------------------------------------------------------------------- param groups
def _backbone(depth=12):
    from voxelfm.models import build_backbone

    return build_backbone({"embed_dim": 12, "depth": depth, "num_heads": 1, "patch_size": 2,
                           "num_register_tokens": 2})


def test_layer_decay_patch_embed_and_weight_decay_rules():
    groups = {d["name"]: d for d in get_params_groups_with_decay(_backbone(), lr_decay_rate=0.9,
                                                                  patch_embed_lr_mult=0.2)}
    assert groups["cls_token"]["lr_multiplier"] == pytest.approx(0.9 ** 13)
    assert groups["register_tokens"]["lr_multiplier"] == pytest.approx(0.9 ** 13)
    assert groups["mask_token"]["lr_multiplier"] == pytest.approx(0.9 ** 13)
    assert groups["patch_embed.proj.weight"]["lr_multiplier"] == pytest.approx(0.9 ** 13 * 0.2)
    assert groups["blocks.0.attn.qkv.weight"]["lr_multiplier"] == pytest.approx(0.9 ** 12)  # 0.282
    assert groups["blocks.11.attn.qkv.weight"]["lr_multiplier"] == pytest.approx(0.9)
    assert groups["norm.weight"]["lr_multiplier"] == pytest.approx(1.0)
    for name, d in groups.items():
        no_wd = name.endswith(".bias") or "norm" in name or "gamma" in name
        assert d["wd_multiplier"] == (0.0 if no_wd else 1.0), name
        assert not d["is_last_layer"]
    assert groups["blocks.3.ls1.gamma"]["wd_multiplier"] == 0.0
    assert groups["cls_token"]["wd_multiplier"] == 1.0 and groups["patch_embed.proj.weight"]["wd_multiplier"] == 1.0


def test_head_groups_last_layer_and_scheduler():
    from voxelfm.models.layers import DINOHead

    head = DINOHead(12, out_dim=16, hidden_dim=8, bottleneck_dim=4)
    raw = get_params_groups_with_decay(head, lr_decay_rate=0.9, patch_embed_lr_mult=0.2)
    assert all(d["lr_multiplier"] == 1.0 for d in raw)
    last = [d["name"] for d in raw if d["is_last_layer"]]
    assert last and all("last_layer" in n for n in last)
    fused = fuse_params_groups(raw)
    assert sum(len(g["params"]) for g in fused) == len(raw)
    opt = torch.optim.AdamW(fused)
    apply_optim_scheduler(opt, lr=1e-3, wd=0.04, last_layer_lr=0.0)
    for g in opt.param_groups:
        assert g["lr"] == (0.0 if g["is_last_layer"] else 1e-3 * g["lr_multiplier"])
        assert g["weight_decay"] == pytest.approx(0.04 * g["wd_multiplier"])


# ----------------------------------------------------------------------------- config
def test_vit_base_is_the_reference_default():
    cfg = default_config()
    assert cfg.student.embed_dim == 864 and cfg.student.depth == 12 and cfg.student.num_heads == 12
    assert cfg.student.patch_size == 14 and cfg.student.num_register_tokens == 4
    assert cfg.student.drop_path_rate == 0.1 and cfg.student.drop_path_uniform is True
    assert cfg.dino.head_n_prototypes == 65536 and cfg.dino.head_bottleneck_dim == 256
    assert cfg.dino.koleo_loss_weight == 0.1 and cfg.ibot.mask_ratio_min_max == [0.1, 0.5]
    assert cfg.crops.global_crops_size == [112, 112, 112] and cfg.crops.local_crops_number == 8
    assert cfg.crops.global_crops_scale == [0.32, 1.0] and cfg.crops.local_crops_scale == [0.05, 0.32]
    assert cfg.optim.layerwise_decay == 0.9 and cfg.optim.patch_embed_lr_mult == 0.2
    assert cfg.optim.clip_grad == 3.0 and cfg.train.grad_accum_steps == 16
    assert cfg.datasets[0].norm.mean == -573.8 and cfg.datasets[0].pixel_range.upper == 1900.0
    assert load_config("vit_base") == cfg


def test_tiny_config_loads_and_is_small():
    cfg = load_config("tiny")
    assert cfg.student.embed_dim < 864 and cfg.dino.head_n_prototypes < 65536


def test_tiny_small_data_recipe_and_reference_untouched():
    """The small-data recipe (docs/pretraining.md): whole-volume global views like the evaluation,
    no local crops, no axis permutation / HU-window perturbation, a constant teacher
    temperature (0.06), LayerScale, KoLeo and the DINO CLS loss off, every crop masked for iBOT (ratio 0.3-0.7);
    vit_base keeps the reference values of every one of these keys."""
    tiny, ref = load_config("tiny"), load_config("vit_base")
    assert tiny.crops.global_crops_scale == [0.9, 1.0] and tiny.crops.local_crops_number == 0
    assert tiny.crops.permute_axes is False and tiny.crops.window_p == 0.0 and tiny.crops.flip_p == 0.5
    t = tiny.schedules.teacher_temp
    assert t.start == t.peak == t.end == 0.06
    assert tiny.student.layerscale is None and tiny.dino.head_n_prototypes == tiny.ibot.head_n_prototypes == 256
    assert tiny.optim.epochs * tiny.train.official_epoch_length == 3500
    assert tiny.train.centering == "centering" and tiny.dino.koleo_loss_weight == 0.0
    assert tiny.dino.loss_weight == 0.0 and tiny.ibot.loss_weight == 1.0
    assert tiny.ibot.mask_sample_probability == 1.0 and tiny.ibot.mask_ratio_min_max == [0.3, 0.7]
    # reference defaults unchanged
    assert ref.crops.global_crops_scale == [0.32, 1.0] and ref.crops.local_crops_number == 8
    assert ref.crops.permute_axes is True and ref.crops.window_p == 0.5 and ref.crops.flip_p == 0.5
    r = ref.schedules.teacher_temp
    assert (r.start, r.peak, r.end, r.warmup_epochs) == (0.04, 0.07, 0.07, 30)
    assert ref.student.layerscale == 1e-5 and ref.dino.head_n_prototypes == 65536
    assert ref.dino.koleo_loss_weight == 0.1 and ref.dino.loss_weight == 1.0
    assert ref.ibot.mask_sample_probability == 0.5 and ref.ibot.mask_ratio_min_max == [0.1, 0.5]


def test_overrides_and_errors(tmp_path):
    cfg = load_config(None, ["optim.epochs=2", "datasets[0].norm.mean=-600", "crops.local_crops_size=[28,28,28]",
                             "datasets.0.pixel_range.lower=-1024", "student.rope_rescale_coords=null"])
    assert cfg.optim.epochs == 2 and cfg.datasets[0].norm.mean == -600
    assert cfg.datasets[0].pixel_range.lower == -1024 and cfg.student.rope_rescale_coords is None
    with pytest.raises(ConfigError, match="did you mean 'optim.epochs'"):
        load_config(None, ["optim.epoch=2"])
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides(cfg, ["optim.epochs"])
    with pytest.raises(ConfigError, match="multiples of student.patch_size"):
        load_config(None, ["crops.global_crops_size=100"])
    with pytest.raises(ConfigError, match="divisible by 6"):
        load_config(None, ["student.embed_dim=64", "student.num_heads=2"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_reference_run_config_merges_onto_defaults(tmp_path):
    """A reference ``config.yaml`` (partial, with keys voxelfm ignores) loads."""
    ref = {"student": {"embed_dim": 432, "num_heads": 6}, "train": {"batch_size_per_gpu": 8, "cache": True},
           "datasets": [{"name": "x", "index_path": "/data/index.csv", "norm": {"mean": -500.0, "std": 400.0}}]}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(ref))
    cfg = load_config(path)
    assert cfg.student.embed_dim == 432 and cfg.student.depth == 12
    assert cfg.train.batch_size_per_gpu == 8 and cfg.train.grad_accum_steps == 16
    assert cfg.datasets[0].norm.std == 400.0 and cfg.datasets[0].pixel_range.lower == -1000.0


def test_objective_names_follow_the_loss_weights():
    assert objective_names(load_config("vit_base")) == "DINO + iBOT + KoLeo"
    assert objective_names(load_config("tiny")) == "iBOT"
    assert objective_names(load_config("tiny", ["dino.loss_weight=1", "dino.koleo_loss_weight=0.1"])) \
        == "DINO + iBOT + KoLeo"
    with pytest.raises(ConfigError, match="nothing to optimise"):
        load_config("tiny", ["ibot.loss_weight=0"])
    with pytest.raises(ConfigError, match="mask_sample_probability"):
        load_config("tiny", ["ibot.mask_sample_probability=0"])
