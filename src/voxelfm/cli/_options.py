"""Parsing shared by subcommands: ``--set KEY=VALUE`` options."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from voxelfm.utils.json_file import json_or_text

__all__ = ["parse_set_options"]


def parse_set_options(items: Iterable[str]) -> dict[str, Any]:
    """``["epochs=3", "name=x"]`` → ``{"epochs": 3, "name": "x"}``.

    Raises:
        ConfigError: an item without ``=`` or with an empty key.
    """
    from voxelfm.errors import ConfigError

    out: dict[str, Any] = {}
    for item in items:
        key, sep, val = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        out[key.strip()] = json_or_text(val)
    return out
