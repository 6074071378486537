"""Pre-training configuration: the reference key layout, YAML files, ``key=value`` overrides.

A config is the reference defaults (``configs/pretrain/vit_base.yaml`` = the reference
``ssl_default_config.yaml`` plus a few voxelfm keys) merged with a YAML file (``vit_base``, ``tiny``,
a path, or a reference run's ``config.yaml``) and then with command-line overrides::

    cfg = load_config("tiny", ["optim.epochs=2", "crops.local_crops_number=4",
                               "datasets[0].norm.mean=-600"])
    cfg.student.embed_dim, cfg.datasets[0].norm.std

Override values are parsed as YAML (``a.b=[1,2]``, ``x=null``, ``y=1e-3``). An unknown key in an
override is an error (with a suggestion); unknown keys in a file are reported as warnings and kept
(reference run configs may carry keys voxelfm does not use).
"""

from __future__ import annotations

import copy
import difflib
import logging
import re
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from voxelfm.errors import ConfigError

__all__ = ["Config", "load_config", "default_config", "apply_overrides", "save_config",
           "validate_config", "objective_names", "PRESET_CONFIGS"]

logger = logging.getLogger("voxelfm.ssl")

PRESET_CONFIGS = ("vit_base", "tiny")


class Config(dict):
    """A nested ``dict`` with attribute access (``cfg.optim.epochs``); lists of dicts are wrapped too."""

    def __init__(self, data: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        for k, v in (data or {}).items():
            self[k] = _wrap(v)

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"config has no key {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = _wrap(value)

    def __deepcopy__(self, memo: dict[int, Any]) -> "Config":
        return Config(copy.deepcopy(self.to_dict(), memo))

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dicts/lists (YAML/JSON-serialisable)."""
        return _unwrap(self)

    def select(self, dotted: str, default: Any = None) -> Any:
        """Value at ``"a.b[0].c"`` or ``default``."""
        node: Any = self
        for part in _split_key(dotted):
            try:
                node = node[part]
            except (KeyError, IndexError, TypeError):
                return default
        return node


def _wrap(v: Any) -> Any:
    if isinstance(v, Config):
        return v
    if isinstance(v, Mapping):
        return Config(v)
    if isinstance(v, list):
        return [_wrap(x) for x in v]
    return v


def _unwrap(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {str(k): _unwrap(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_unwrap(x) for x in v]
    return v


_KEY_RE = re.compile(r"[^.\[\]]+|\[\d+\]")


def _split_key(key: str) -> list[Any]:
    parts: list[Any] = []
    for tok in _KEY_RE.findall(key):
        if tok.startswith("["):
            parts.append(int(tok[1:-1]))
        elif tok.isdigit() and parts:  # datasets.0.norm.mean
            parts.append(int(tok))
        else:
            parts.append(tok)
    if not parts or "".join(str(p) for p in parts) == "":
        raise ConfigError(f"empty config key {key!r}")
    return parts


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a pre-training config must be a YAML mapping")
    return data


def _preset_path(name: str) -> Path:
    ref = resources.files("voxelfm") / "configs" / "pretrain" / f"{name}.yaml"
    return Path(str(ref))


def default_config() -> Config:
    """The reference defaults (``configs/pretrain/vit_base.yaml``)."""
    return Config(_read_yaml(_preset_path("vit_base")))


def _merge(base: Any, update: Any, path: str, unknown: list[str]) -> Any:
    if isinstance(base, Mapping) and isinstance(update, Mapping):
        out = dict(base)
        for k, v in update.items():
            sub = f"{path}.{k}" if path else str(k)
            if k in base:
                out[k] = _merge(base[k], v, sub, unknown)
            else:
                unknown.append(sub)
                out[k] = copy.deepcopy(v)
        return out
    if path == "datasets" and isinstance(base, list) and isinstance(update, list) and base:
        # every dataset entry is completed from the default entry
        return [_merge(base[0], u, f"datasets[{i}]", unknown) if isinstance(u, Mapping) else u
                for i, u in enumerate(update)]
    return copy.deepcopy(update)


def apply_overrides(cfg: Mapping[str, Any], overrides: Iterable[str]) -> Config:
    """Return a copy of ``cfg`` with ``key=value`` overrides applied (values parsed as YAML).

    Raises:
        ConfigError: on malformed items or unknown keys (with the closest known key).
    """
    data = _unwrap(cfg)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value, e.g. optim.epochs=10")
        key, raw = item.split("=", 1)
        key = key.strip()
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: cannot parse value ({exc})") from exc
        parts = _split_key(key)
        node: Any = data
        for i, part in enumerate(parts[:-1]):
            node = _descend(node, part, key, parts[: i + 1])
        last = parts[-1]
        if isinstance(node, list):
            if not isinstance(last, int) or not 0 <= last < len(node):
                raise ConfigError(f"override {key!r}: index {last} out of range")
        elif not isinstance(node, dict) or last not in node:
            known = list(node) if isinstance(node, dict) else []
            hint = difflib.get_close_matches(str(last), known, n=1)
            raise ConfigError(f"unknown config key {key!r}"
                              + (f"; did you mean {'.'.join(map(str, parts[:-1] + [hint[0]]))!r}?"
                                 if hint else ""))
        node[last] = value
    return Config(data)


def _descend(node: Any, part: Any, key: str, so_far: list[Any]) -> Any:
    try:
        nxt = node[part]
    except (KeyError, IndexError, TypeError):
        known = list(node) if isinstance(node, dict) else []
        hint = difflib.get_close_matches(str(part), known, n=1)
        raise ConfigError(f"unknown config key {key!r} (no {'.'.join(map(str, so_far))!r})"
                          + (f"; did you mean {hint[0]!r}?" if hint else "")) from None
    if not isinstance(nxt, (dict, list)):
        raise ConfigError(f"override {key!r}: {'.'.join(map(str, so_far))!r} is not a section")
    return nxt


def load_config(config: str | Path | Mapping[str, Any] | None = None,
                overrides: Iterable[str] = ()) -> Config:
    """Defaults ← ``config`` ← ``overrides``, validated.

    Args:
        config: ``None`` (reference defaults), a preset name (``"vit_base"``, ``"tiny"``), a YAML
            path, or a mapping.
        overrides: ``key=value`` strings (dotted keys; ``datasets[0].norm.mean`` or
            ``datasets.0.norm.mean``).
    """
    base = _unwrap(default_config())
    if config is None:
        data: dict[str, Any] = {}
    elif isinstance(config, Mapping):
        data = _unwrap(config)
    else:
        p = Path(config)
        if not p.suffix and str(config) in PRESET_CONFIGS:
            p = _preset_path(str(config))
        if not p.is_file():
            raise ConfigError(f"config {str(config)!r} not found: give a YAML file or one of "
                              f"{', '.join(PRESET_CONFIGS)}")
        data = _read_yaml(p)
    unknown: list[str] = []
    merged = _merge(base, data, "", unknown)
    if unknown:
        logger.warning("config keys not used by voxelfm (kept): %s", ", ".join(unknown))
    cfg = apply_overrides(merged, overrides)
    validate_config(cfg)
    return cfg


def _size3(v: Any, name: str) -> tuple[int, int, int]:
    if isinstance(v, int):
        v = [v, v, v]
    if not isinstance(v, (list, tuple)) or len(v) != 3 or not all(isinstance(x, int) and x > 0 for x in v):
        if isinstance(v, (list, tuple)) and v and isinstance(v[0], (list, tuple)):
            raise ConfigError(f"{name}: multi-resolution crop lists are not supported; give one size")
        raise ConfigError(f"{name} must be an int or three positive ints, got {v!r}")
    return tuple(v)  # type: ignore[return-value]


def validate_config(cfg: Config) -> None:
    """Check types and relations a run depends on; raise :class:`ConfigError` saying what to fix."""
    try:
        ps = int(cfg.student.patch_size)
        g = _size3(cfg.crops.global_crops_size, "crops.global_crops_size")
        loc = _size3(cfg.crops.local_crops_size, "crops.local_crops_size")
        for name, size in (("global", g), ("local", loc)):
            if any(s % ps for s in size) or any(s < ps for s in size):
                raise ConfigError(f"crops.{name}_crops_size {list(size)} must be multiples of "
                                  f"student.patch_size ({ps})")
        if not isinstance(cfg.crops.crop_pairs_ratios, (int, float)):
            raise ConfigError("crops.crop_pairs_ratios: multi-resolution loaders are not supported")
        for name in ("global_crops_scale", "local_crops_scale"):
            lo, hi = cfg.crops[name]
            if not 0 < float(lo) <= float(hi):
                raise ConfigError(f"crops.{name} must be [min, max] with 0 < min <= max")
        if int(cfg.crops.local_crops_number) < 0:
            raise ConfigError("crops.local_crops_number must be >= 0")
        emb, heads = int(cfg.student.embed_dim), int(cfg.student.num_heads)
        if emb % heads or (emb // heads) % 6:
            raise ConfigError(f"student.embed_dim / student.num_heads = {emb}/{heads} must be an "
                              "integer divisible by 6 (3D RoPE)")
        for key in ("train.batch_size_per_gpu", "train.grad_accum_steps", "optim.epochs",
                    "train.official_epoch_length", "dino.head_n_prototypes"):
            if float(cfg.select(key)) <= 0:
                raise ConfigError(f"{key} must be positive")
        if int(cfg.train.num_workers) < 0:
            raise ConfigError("train.num_workers must be >= 0")
        if cfg.train.centering not in ("centering", "sinkhorn_knopp"):
            raise ConfigError("train.centering must be 'centering' or 'sinkhorn_knopp'")
        if cfg.train.distributed not in ("ddp", "fsdp"):
            raise ConfigError("train.distributed must be 'ddp' or 'fsdp'")
        if cfg.compute_precision not in ("fp32", "bf16", "fp16", "auto"):
            raise ConfigError("compute_precision must be fp32, bf16, fp16 or auto")
        lo, hi = float(cfg.ibot.mask_ratio_min_max[0]), float(cfg.ibot.mask_ratio_min_max[1])
        if not 0 <= lo <= hi <= 1:
            raise ConfigError("ibot.mask_ratio_min_max must be [min, max] within [0, 1]")
        if not 0 <= float(cfg.ibot.mask_sample_probability) <= 1:
            raise ConfigError("ibot.mask_sample_probability must be within [0, 1]")
        if float(cfg.dino.loss_weight) <= 0 and float(cfg.ibot.loss_weight) <= 0:
            raise ConfigError("nothing to optimise: set dino.loss_weight or ibot.loss_weight > 0")
        if float(cfg.dino.loss_weight) <= 0 and float(cfg.ibot.mask_sample_probability) <= 0:
            raise ConfigError("with dino.loss_weight=0 iBOT is the only loss: ibot.mask_sample_probability "
                              "must be > 0")
        if not cfg.datasets:
            raise ConfigError("datasets must have at least one entry (norm, pixel_range)")
        ds = cfg.datasets[0]
        if float(ds.norm.std) <= 0 or float(ds.pixel_range.lower) >= float(ds.pixel_range.upper):
            raise ConfigError("datasets[0]: norm.std must be > 0 and pixel_range.lower < upper")
        if float(cfg.dino.koleo_loss_weight) > 0 and int(cfg.train.batch_size_per_gpu) < 2:
            raise ConfigError("KoLeo needs train.batch_size_per_gpu >= 2 (or dino.koleo_loss_weight=0)")
    except ConfigError:
        raise
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"invalid pre-training config: {exc}") from exc


def objective_names(cfg: Config) -> str:
    """The losses a config optimises, e.g. ``"DINO + iBOT + KoLeo"`` (reference) or ``"iBOT"`` (``tiny``)."""
    weights = (("DINO", cfg.dino.loss_weight), ("iBOT", cfg.ibot.loss_weight), ("KoLeo", cfg.dino.koleo_loss_weight))
    return " + ".join(name for name, w in weights if float(w) > 0) or "no loss"


def save_config(cfg: Mapping[str, Any], path: str | Path) -> None:
    """Write the resolved config as YAML, atomically."""
    from voxelfm.utils import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(_unwrap(cfg), sort_keys=False))
