"""Reading (and writing) the reference run configuration ``config.yaml``.

The reference writes the resolved OmegaConf config of a run to ``<output_dir>/config.yaml``; the
released weights come with one (``vitb_3d/config.yaml``). Only two parts matter for a backbone:
``student.*`` (the architecture, REFERENCE.md §1.1) and ``datasets[0].norm`` (the intensity
normalisation mean/std in HU, §7).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from voxelfm.errors import ConfigError
from voxelfm.models.config import ViTConfig

__all__ = ["read_reference_config", "reference_preset", "reference_config_dict", "write_reference_config",
           "load_reference_yaml", "parse_reference_yaml", "DEFAULT_MEAN", "DEFAULT_STD"]

DEFAULT_MEAN = -573.8
DEFAULT_STD = 461.3

# student.* keys that are not architecture (ignored when building a ViTConfig).
_IGNORED_STUDENT_KEYS = {"pretrained_weights", "arch"}


def load_reference_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse a YAML config file into a dict (:class:`ConfigError` if missing or invalid)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"reference config not found: {path}")
    return parse_reference_yaml(path.read_text(encoding="utf-8"), str(path))


def parse_reference_yaml(text: str, source: str = "config") -> dict[str, Any]:
    """Parse YAML text into a dict (:class:`ConfigError` if invalid or not a mapping)."""
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a YAML mapping with a 'student' section")
    return data


def _as_data(path_or_dict: str | os.PathLike[str] | dict[str, Any]) -> tuple[dict[str, Any], str]:
    if isinstance(path_or_dict, dict):
        return path_or_dict, "config"
    return load_reference_yaml(Path(path_or_dict)), str(path_or_dict)


def _dataset0(data: dict[str, Any]) -> dict[str, Any]:
    datasets = data.get("datasets")
    if isinstance(datasets, list) and datasets and isinstance(datasets[0], dict):
        return datasets[0]
    return {}


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
    data, source = _as_data(path_or_dict)
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
    norm = _dataset0(data).get("norm")
    if isinstance(norm, dict):
        try:
            mean = float(norm.get("mean", mean))
            std = float(norm.get("std", std))
        except (TypeError, ValueError):
            raise ConfigError(f"{source}: datasets[0].norm mean/std must be numbers, got {norm}") from None
    if not std > 0:
        raise ConfigError(f"{source}: datasets[0].norm.std must be > 0, got {std}")
    return config, mean, std


def reference_preset(path_or_dict: str | os.PathLike[str] | dict[str, Any]):
    """The ``default`` :class:`~voxelfm.preprocess.Preset` of a reference config: normalisation from
    ``datasets[0].norm`` and HU window from ``datasets[0].pixel_range`` (the training clip;
    [−1000, 1900] when absent)."""
    from voxelfm.preprocess.presets import Preset

    data, source = _as_data(path_or_dict)
    _, mean, std = read_reference_config(data)
    preset = Preset(name="default").with_normalisation(mean, std)
    pixel_range = _dataset0(data).get("pixel_range")
    if isinstance(pixel_range, dict) and "lower" in pixel_range and "upper" in pixel_range:
        try:
            window = (float(pixel_range["lower"]), float(pixel_range["upper"]))
            preset = dataclasses.replace(preset, hu_window=window)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{source}: invalid datasets[0].pixel_range {pixel_range} ({exc})") from None
    return preset


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
