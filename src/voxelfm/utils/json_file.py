"""JSON helpers: read a file that must hold one object (errors name the file); parse a ``KEY=VALUE``
option's value."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["json_or_text", "read_json_object"]


def read_json_object(path: str | os.PathLike[str], error: type[Exception] = ValueError) -> dict[str, Any]:
    """The JSON object in ``path``.

    Raises:
        ``error`` (e.g. :class:`voxelfm.errors.ConfigError`): the file is not valid JSON, or holds
            something other than an object; the message names the file.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise error(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise error(f"{path}: expected a JSON object")
    return data


def json_or_text(text: str) -> Any:
    """An option value: JSON where possible (numbers, lists, null, true/false), else the string itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text
