"""Append-only JSON-lines logs: durable appends, and reads that survive a crash mid-write.

Stores keep their status in ``*.jsonl`` logs, one JSON object per line, appended as work finishes
(``voxelfm prepare``'s ``index/prepare.jsonl``, the embedding store's ``index/<writer>.jsonl``). A
process killed during a write can leave the last line cut short; readers skip such a line, and the
next append starts on a fresh line so the cut line never swallows a new record.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["append_jsonl", "read_jsonl", "read_jsonl_folder"]


def append_jsonl(path: str | os.PathLike[str], record: Mapping[str, Any], *, sort_keys: bool = False) -> None:
    """Append ``record`` as one JSON line to ``path`` (created with its folder) and fsync it.

    If the file does not end with a newline (a write cut by a crash), a newline is written first,
    so the cut line stays one unreadable line and ``record`` is read back intact. One writer per
    file at a time.

    Raises:
        TypeError: ``record`` holds a value JSON cannot encode.
    """
    line = json.dumps(dict(record), sort_keys=sort_keys) + "\n"  # encode first: no half-written record
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "ab+") as fh:
        if fh.tell() > 0:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":
                line = "\n" + line
        fh.write(line.encode("utf-8"))
        fh.flush()
        os.fsync(fh.fileno())


def read_jsonl(path: str | os.PathLike[str], *, missing_ok: bool = False) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file, in file order.

    Blank lines, lines that are not valid JSON (a write cut by a crash) and lines holding
    something other than an object are skipped.

    Args:
        path: the ``.jsonl`` file.
        missing_ok: return ``[]`` when the file does not exist (else ``FileNotFoundError``).
    """
    target = Path(path)
    if missing_ok and not target.exists():
        return []
    records: list[dict[str, Any]] = []
    with open(target, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash
            if isinstance(rec, dict):
                records.append(rec)
    return records


def read_jsonl_folder(folder: str | os.PathLike[str], pattern: str = "*.jsonl") -> list[dict[str, Any]]:
    """The records of every file matching ``pattern`` in ``folder`` (files in name order, each in
    file order; :func:`read_jsonl` rules). A missing folder gives ``[]``."""
    root = Path(folder)
    if not root.is_dir():
        return []
    return [rec for log in sorted(root.glob(pattern)) for rec in read_jsonl(log)]
