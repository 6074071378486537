"""Turning user-supplied ids (series UIDs, file names, manifest ids) into safe file names."""

from __future__ import annotations

import hashlib
import re

__all__ = ["safe_id"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def safe_id(item_id: str, *, max_length: int = 150) -> str:
    """Return a file-name-safe version of ``item_id`` that cannot escape its output folder.

    Characters outside ``[A-Za-z0-9._+-]`` (path separators, ``..`` tricks, spaces, control
    characters) are replaced by ``_``; leading dots are removed so no hidden or relative names
    appear. If anything had to change, a short hash of the original id is appended so two
    different ids never map to the same file. DICOM UIDs (digits and dots) pass unchanged.

    Raises:
        ValueError: if ``item_id`` is empty.
    """
    if not isinstance(item_id, str) or not item_id.strip():
        raise ValueError("an item id must be a non-empty string")
    cleaned = _UNSAFE.sub("_", item_id.strip()).lstrip(".")
    if cleaned in ("", "_"):
        cleaned = "id"
    if cleaned != item_id or len(cleaned) > max_length:
        digest = hashlib.sha1(item_id.encode("utf-8")).hexdigest()[:8]
        cleaned = f"{cleaned[: max_length - 9]}-{digest}"
    return cleaned
