"""The data file of ``voxelfm benchmark paper --data ROOTS.yaml``: which datasets, where.

::

    # dataset name -> a prepared folder (voxelfm datasets prepare ... -o DIR), or the dataset's
    # download root (prepared into OUT/prepared/<name> on the first run)
    ct_rate: /data/prepared/ct_rate
    luna16: /data/downloads/LUNA16
    nsclc_radiomics:                    # the long form
      root: /data/downloads/NSCLC-Radiomics
      prepared: /data/prepared/nsclc    # where the prepared folder is (or goes)
      options: {}                       # recipe options for the preparation (voxelfm datasets info NAME)
      extract: {max_patches: 8000}      # extraction options for this dataset only

A top-level ``datasets:`` mapping holding the same entries and a top-level ``extract:`` mapping
(options for every dataset) are accepted too. Relative paths are relative to the YAML file.
A prepared folder is one holding ``manifest.csv`` and ``suite.yaml``; any such folder works,
also one written by hand for a dataset without a recipe.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from voxelfm.errors import ConfigError

__all__ = ["DatasetEntry", "EXTRACT_OPTIONS", "is_prepared", "read_roots", "read_yaml_mapping"]

#: extraction options a ROOTS.yaml may set (globally or per dataset); as :func:`voxelfm.extract_batch`
EXTRACT_OPTIONS = ("preset", "crop_background", "max_patches", "mode", "window", "overlap", "dtype",
                   "memory_budget_gb")
_ENTRY_KEYS = {"root", "prepared", "extract", "options"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class DatasetEntry:
    """One dataset of a benchmark.

    Attributes:
        name: dataset name (a recipe name of ``voxelfm datasets list`` when it must be prepared).
        prepared: the prepared folder (exists, or is written from ``root``).
        root: the download root to prepare from (``None``: ``prepared`` must already exist).
        extract: extraction options for this dataset (:data:`EXTRACT_OPTIONS`).
        options: recipe options used when preparing from ``root`` (``--set`` of ``voxelfm datasets prepare``).
    """

    name: str
    prepared: Path
    root: Path | None = None
    extract: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def needs_preparation(self) -> bool:
        return not is_prepared(self.prepared)


def is_prepared(folder: str | os.PathLike[str]) -> bool:
    """True when ``folder`` holds a prepared dataset (``manifest.csv`` and ``suite.yaml``)."""
    f = Path(folder)
    return (f / "manifest.csv").is_file() and (f / "suite.yaml").is_file()


def read_yaml_mapping(path: Path, what: str) -> dict[str, Any]:
    """A YAML file that must hold a mapping; ``what`` completes "must be ..." in the error."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: must be {what}")
    return data


def _check_extract(opts: Any, where: str) -> dict[str, Any]:
    if opts is None:
        return {}
    if not isinstance(opts, dict):
        raise ConfigError(f"{where}: 'extract' must be a mapping of options ({', '.join(EXTRACT_OPTIONS)})")
    bad = sorted(set(opts) - set(EXTRACT_OPTIONS))
    if bad:
        raise ConfigError(f"{where}: unknown extraction option(s) {', '.join(bad)}; valid: {', '.join(EXTRACT_OPTIONS)}")
    return dict(opts)


def read_roots(path: str | os.PathLike[str], out: str | os.PathLike[str]) -> tuple[list[DatasetEntry], dict[str, Any]]:
    """Read a ROOTS.yaml (see the module docstring).

    Args:
        path: the YAML file.
        out: the benchmark's output folder (download roots are prepared into ``out/prepared/<name>``).

    Returns:
        ``(entries in file order, global extraction options)``.

    Raises:
        FileNotFoundError: no such file, or a listed folder does not exist.
        ConfigError: not a mapping, unknown keys, a bad name.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"data file {p} does not exist (a YAML mapping: dataset name -> folder)")
    data = read_yaml_mapping(p, "a mapping of dataset name -> folder")
    global_extract = _check_extract(data.get("extract"), f"{p}: extract")
    entries_raw = data.get("datasets", {k: v for k, v in data.items() if k != "extract"})
    if not isinstance(entries_raw, dict) or not entries_raw:
        raise ConfigError(f"{p}: lists no datasets (name: folder)")
    base = p.resolve().parent

    def resolve(v: Any) -> Path:
        q = Path(os.path.expanduser(str(v)))
        return q if q.is_absolute() else base / q

    entries = []
    for name, value in entries_raw.items():
        name = str(name)
        where = f"{p}: {name}"
        if not _NAME.match(name):
            raise ConfigError(f"{where}: dataset names use letters, digits, '_', '.' or '-'")
        if isinstance(value, (str, os.PathLike)):
            folder = resolve(value)
            if not folder.is_dir():
                raise FileNotFoundError(f"{where}: folder {folder} does not exist")
            if is_prepared(folder):
                entries.append(DatasetEntry(name, folder))
            else:
                entries.append(DatasetEntry(name, Path(out) / "prepared" / name, root=folder))
            continue
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: give a folder, or a mapping with root / prepared / extract")
        bad = sorted(set(value) - _ENTRY_KEYS)
        if bad:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(bad)}; valid: {', '.join(sorted(_ENTRY_KEYS))}")
        root = resolve(value["root"]) if value.get("root") else None
        prepared = resolve(value["prepared"]) if value.get("prepared") else Path(out) / "prepared" / name
        if root is None and not is_prepared(prepared):
            raise FileNotFoundError(f"{where}: {prepared} is not a prepared folder (no manifest.csv + suite.yaml) "
                                    "and no download 'root' is given to prepare it from")
        if root is not None and not root.is_dir():
            raise FileNotFoundError(f"{where}: download root {root} does not exist")
        options = value.get("options") or {}
        if not isinstance(options, dict):
            raise ConfigError(f"{where}: 'options' must be a mapping of recipe options")
        entries.append(DatasetEntry(name, prepared, root=root, extract=_check_extract(value.get("extract"), where),
                                    options=dict(options)))
    return entries, global_extract
