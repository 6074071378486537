"""Progress bars (tqdm) with an ETA; sparse updates when stderr is not a terminal (log files)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any, TypeVar

__all__ = ["progress"]

T = TypeVar("T")


def progress(iterable: Iterable[T] | None = None, *, total: int | None = None, desc: str = "",
             unit: str = "it", disable: bool | None = None, **kwargs: Any):
    """Wrap ``iterable`` in a tqdm bar showing rate and ETA on stderr.

    The bar is disabled when ``VOXELFM_NO_PROGRESS=1`` is set (tests) unless ``disable=False`` is
    passed explicitly. When stderr is not a terminal (a log file, a batch job) the bar still shows
    progress and ETA, but refreshes at most every 30 s so logs stay readable.
    """
    from tqdm import tqdm  # not tqdm.auto: its asyncio variant iterates a DataLoader twice

    if disable is None:
        disable = os.environ.get("VOXELFM_NO_PROGRESS", "") not in ("", "0")
    if not _stderr_is_terminal():
        kwargs.setdefault("mininterval", 30.0)
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable, file=sys.stderr,
                dynamic_ncols=True, **kwargs)


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stream
        return False
