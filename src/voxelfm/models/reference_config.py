"""Reading (and writing) the reference run configuration ``config.yaml``.

The reference writes the resolved OmegaConf config of a run to ``<output_dir>/config.yaml``; the
released weights come with one (``vitb_3d/config.yaml``). Only two parts matter for a backbone:
``student.*`` (the architecture, REFERENCE.md §1.1) and ``datasets[0].norm`` (the intensity
normalisation mean/std in HU, §7).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from voxelfm.errors import ConfigError
from voxelfm.models.config import ViTConfig

__all__ = ["read_reference_config", "reference_config_dict", "write_reference_config",
           "DEFAULT_MEAN", "DEFAULT_STD"]

DEFAULT_MEAN = -573.8
DEFAULT_STD = 461.3

# student.* keys that are not architecture (ignored when building a ViTConfig).
_IGNORED_STUDENT_KEYS = {"pretrained_weights", "arch"}


def _load_yaml(path: Path) -> dict[str, Any]:
    import yaml

    if not path.is_file():
        raise ConfigError(f"reference config not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a YAML mapping with a 'student' section")
    return data


def read_reference_config(path_or_dict: str | os.PathLike[str] | dict[str, Any]
                          ) -> tuple[ViTConfig, float, float]:
    """Read a reference ``config.yaml`` (path or already-parsed dict).

    Returns:
        ``(ViTConfig from student.*, mean, std)``; mean/std (HU) come from ``datasets[0].norm`` and
        default to −573.8 / 461.3 when absent. Missing ``student`` keys take the reference ViT-B
        defaults (the reference merges every run config onto ``ssl_default_config.yaml``).
        ``student.drop_path_rate`` is kept (it is the student's training rate; the loaders set 0).

    Raises:
        ConfigError: no ``student`` section, invalid values or normalisation.
    """
    source = "config"
    if isinstance(path_or_dict, dict):
        data = path_or_dict
    else:
        source = str(path_or_dict)
        data = _load_yaml(Path(path_or_dict))
    student = data.get("student")
    if not isinstance(student, dict):
        raise ConfigError(f"{source}: no 'student' section; this does not look like a reference "
                          "VoxelFM/DINOv2 config.yaml")
    fields = {k: v for k, v in student.items() if k not in _IGNORED_STUDENT_KEYS}
    try:
        config = ViTConfig.from_dict(fields, ignore_unknown=True)
    except ConfigError as exc:
        raise ConfigError(f"{source}: student section: {exc}") from None
    mean, std = DEFAULT_MEAN, DEFAULT_STD
    datasets = data.get("datasets")
    if isinstance(datasets, list) and datasets and isinstance(datasets[0], dict):
        norm = datasets[0].get("norm")
        if isinstance(norm, dict):
            try:
                mean = float(norm.get("mean", mean))
                std = float(norm.get("std", std))
            except (TypeError, ValueError):
                raise ConfigError(f"{source}: datasets[0].norm mean/std must be numbers, got {norm}") from None
    if not std > 0:
        raise ConfigError(f"{source}: datasets[0].norm.std must be > 0, got {std}")
    return config, mean, std


def reference_config_dict(config: ViTConfig, mean: float = DEFAULT_MEAN, std: float = DEFAULT_STD,
                          *, hu_window: tuple[float, float] | None = (-1000.0, 1900.0)) -> dict[str, Any]:
    """A minimal reference-format config (``student`` + ``datasets[0]``) for ``config``.

    Enough for the reference ``dinov2.inference.build_model`` (which reads ``config.student``) and for
    :func:`read_reference_config`. ``drop_path_mode`` (ours) is not written.
    """
    student = config.to_dict()
    student.pop("drop_path_mode", None)
    student["pretrained_weights"] = ""
    dataset: dict[str, Any] = {"name": "exported", "weight": 1.0, "modality": "ct",
                               "norm": {"mean": float(mean), "std": float(std)}}
    if hu_window is not None:
        dataset["pixel_range"] = {"lower": float(hu_window[0]), "upper": float(hu_window[1])}
    return {"compute_precision": "fp32", "student": student, "datasets": [dataset]}


def write_reference_config(path: str | os.PathLike[str], config: ViTConfig, mean: float = DEFAULT_MEAN,
                           std: float = DEFAULT_STD, *,
                           hu_window: tuple[float, float] | None = (-1000.0, 1900.0)) -> Path:
    """Write :func:`reference_config_dict` as YAML, atomically. Returns the path."""
    import yaml

    from voxelfm.utils import atomic_write_text

    text = yaml.safe_dump(reference_config_dict(config, mean, std, hu_window=hu_window),
                          sort_keys=False, default_flow_style=False)
    atomic_write_text(path, text)
    return Path(path)
