"""Progress bars (tqdm) with an ETA, quiet when not attached to a terminal unless forced."""

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

    The bar is disabled when ``VOXELFM_NO_PROGRESS=1`` is set (tests, log files) unless
    ``disable=False`` is passed explicitly.
    """
    from tqdm.auto import tqdm

    if disable is None:
        disable = os.environ.get("VOXELFM_NO_PROGRESS", "") not in ("", "0")
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable, file=sys.stderr,
                dynamic_ncols=True, **kwargs)
