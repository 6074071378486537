"""Building a backbone from a name, a :class:`ViTConfig`, a dict, or a config file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from voxelfm.errors import ConfigError
from voxelfm.models.config import CONFIGS, ViTConfig, config_names, get_config
from voxelfm.models.reference_config import load_reference_yaml, read_reference_config, reference_preset
from voxelfm.models.vit import VisionTransformer3D
from voxelfm.preprocess.presets import Preset
from voxelfm.utils.json_file import read_json_object

__all__ = ["build_backbone", "resolve_config", "ConfigLike", "VOXELFM_FORMAT"]

ConfigLike = str | os.PathLike[str] | ViTConfig | dict[str, Any]

#: ``format`` tag of the ``config.json`` written by :func:`voxelfm.models.save_backbone`.
VOXELFM_FORMAT = "voxelfm-backbone"


def _from_voxelfm_json(data: dict[str, Any], source: str) -> tuple[ViTConfig, Preset | None]:
    if "config" in data and isinstance(data["config"], dict):
        cfg = ViTConfig.from_dict(data["config"])
        preset = Preset.from_dict(data["preset"]) if isinstance(data.get("preset"), dict) else None
        return cfg, preset
    try:  # a plain JSON dump of ViTConfig fields
        return ViTConfig.from_dict(data), None
    except ConfigError as exc:
        raise ConfigError(f"{source}: neither a voxelfm config.json nor ViTConfig fields ({exc})") from None


def resolve_config(config: ConfigLike) -> tuple[ViTConfig, Preset | None, str]:
    """Turn any accepted config form into ``(ViTConfig, preset or None, description)``.

    Accepted: a :class:`ViTConfig`; a registered name (``vit_tiny``, ``vit_small``, ``vit_base``);
    a dict of ViTConfig fields, a parsed reference config (with a ``student`` section) or a parsed
    voxelfm ``config.json``; a path to a reference ``config.yaml``, a voxelfm ``config.json``, or a
    folder holding one of them. The preset (normalisation) is returned when the source carries one.

    Raises:
        ConfigError: anything else, with the accepted forms in the message.
    """
    if isinstance(config, ViTConfig):
        return config, None, "ViTConfig"
    if isinstance(config, dict):
        if "student" in config:
            cfg, _, _ = read_reference_config(config)
            return cfg, reference_preset(config), "reference config dict"
        if config.get("format") == VOXELFM_FORMAT or "config" in config:
            cfg, preset = _from_voxelfm_json(config, "config dict")
            return cfg, preset, "voxelfm config dict"
        return ViTConfig.from_dict(config), None, "dict"
    if isinstance(config, (str, os.PathLike)):
        if isinstance(config, str) and config in CONFIGS:
            return get_config(config), None, config
        path = Path(config)
        if path.is_dir():
            for name in ("config.json", "config.yaml", "config.yml"):
                if (path / name).is_file():
                    return resolve_config(path / name)
            raise ConfigError(f"{path}: folder holds no config.json or config.yaml")
        if path.is_file():
            if path.suffix.lower() in (".yaml", ".yml"):
                data = load_reference_yaml(path)
                cfg, _, _ = read_reference_config(data)
                return cfg, reference_preset(data), str(path)
            if path.suffix.lower() == ".json":
                data = read_json_object(path, ConfigError)
                cfg, preset = _from_voxelfm_json(data, str(path))
                return cfg, preset, str(path)
            raise ConfigError(f"{path}: config files must be .yaml/.yml (reference) or .json (voxelfm)")
        raise ConfigError(f"unknown model config {str(config)!r}: not a registered name "
                          f"({', '.join(config_names())}) and no such file")
    raise ConfigError(f"config must be a name, a ViTConfig, a dict or a path, got {type(config).__name__}")


def build_backbone(name_or_config: ConfigLike, *, attention_mode: str = "sdpa",
                   **overrides: Any) -> VisionTransformer3D:
    """Build a randomly initialised :class:`VisionTransformer3D`.

    Args:
        name_or_config: ``"vit_tiny"`` (216/12 blocks/3 heads), ``"vit_small"`` (432/12/6),
            ``"vit_base"`` (864/12/12, the VoxelFM ViT-B), a :class:`ViTConfig`, a dict of its fields,
            or a config file (see :func:`resolve_config`).
        attention_mode: ``"sdpa"`` or ``"naive"``.
        **overrides: ViTConfig fields to change, e.g. ``drop_path_rate=0.1``, ``patch_size=8``,
            ``depth=6`` (validated: head_dim must stay divisible by 6).

    Example::

        student = build_backbone("vit_base", drop_path_rate=0.1)

    Raises:
        ConfigError: unknown name/field or an invalid combination.
    """
    config, preset, _ = resolve_config(name_or_config)
    if overrides:
        config = config.replace(**overrides)
    return VisionTransformer3D(config, attention_mode=attention_mode, preset=preset)
