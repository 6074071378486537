"""Parsing shared by subcommands: ``--set KEY=VALUE`` options."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

__all__ = ["parse_set_options"]


def _value(text: str) -> Any:
    """JSON where possible (numbers, lists, null, true/false), else the string itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


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
        out[key.strip()] = _value(val)
    return out
