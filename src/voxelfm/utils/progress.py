"""Progress bars (tqdm) with an ETA; plain lines every few seconds when stderr is not a terminal."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any, TypeVar

__all__ = ["progress", "LOG_INTERVAL_SECONDS"]

T = TypeVar("T")

#: seconds between two progress lines written to a file or pipe
LOG_INTERVAL_SECONDS = 10.0


def progress(iterable: Iterable[T] | None = None, *, total: int | None = None, desc: str = "",
             unit: str = "it", disable: bool | None = None, file: Any = None, **kwargs: Any):
    """Wrap ``iterable`` in a tqdm bar showing rate and ETA on stderr (or ``file``).

    The bar is disabled when ``VOXELFM_NO_PROGRESS=1`` is set (tests) unless ``disable=False`` is
    passed explicitly. When the stream is not a terminal (a log file, a pipe, a batch job) there
    are no carriage-return redraws: one plain line (``desc: 40%| 80/200 [01:10<01:45, 1.1vol/s]``)
    at most every :data:`LOG_INTERVAL_SECONDS`, and a final line when the bar closes.
    """
    from tqdm import tqdm  # not tqdm.auto: its asyncio variant iterates a DataLoader twice

    if disable is None:
        disable = os.environ.get("VOXELFM_NO_PROGRESS", "") not in ("", "0")
    stream = sys.stderr if file is None else file
    if _is_terminal(stream):
        return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable, file=stream,
                    dynamic_ncols=True, **kwargs)
    kwargs.setdefault("mininterval", LOG_INTERVAL_SECONDS)
    kwargs.setdefault("ncols", 100)
    kwargs.setdefault("ascii", True)
    return _line_bar_class()(iterable, total=total, desc=desc, unit=unit, disable=disable, file=stream,
                             **kwargs)


_LINE_BAR: type | None = None


def _line_bar_class() -> type:
    """A tqdm whose every refresh is one new line (no ``\\r``), defined on first use."""
    global _LINE_BAR
    if _LINE_BAR is None:
        from tqdm import tqdm

        class LineBar(tqdm):  # type: ignore[misc]
            def display(self, msg: str | None = None, pos: int | None = None) -> bool:
                text = self.__str__() if msg is None else msg
                if not text.strip():
                    return False  # tqdm "clears" with an empty message: nothing to clear in a log
                self.fp.write(text.rstrip() + "\n")
                self.fp.flush()
                return True

            def close(self) -> None:
                if not self.disable and self.n != getattr(self, "_last_line_n", None):
                    self.display()  # the final count and rate
                self.leave = False  # no trailing '\n' / '\r' from tqdm
                super().close()

            def refresh(self, *args: Any, **kwargs: Any) -> bool:
                self._last_line_n = self.n
                return super().refresh(*args, **kwargs)

        _LINE_BAR = LineBar
    return _LINE_BAR


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # replaced or closed stream
        return False
