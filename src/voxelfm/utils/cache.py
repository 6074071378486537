"""voxelfm's cache folder: materialised language models, compiled CPU kernels."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir"]


def cache_dir(*parts: str) -> Path:
    """``$VOXELFM_CACHE/<parts>``, else ``$XDG_CACHE_HOME/voxelfm/<parts>``, else
    ``~/.cache/voxelfm/<parts>`` (not created)."""
    if os.environ.get("VOXELFM_CACHE"):
        return Path(os.environ["VOXELFM_CACHE"]).expanduser().joinpath(*parts)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base.joinpath("voxelfm", *parts)
