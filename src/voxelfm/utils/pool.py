"""Process pools for the parallel stages (phantom generation, volume preparation).

Workers start through ``forkserver`` on POSIX and ``spawn`` elsewhere: unlike ``fork``, neither
copies the caller's threads or locks (torch's OpenMP pool, open files), so a worker never deadlocks
on a lock held by a thread of the parent. The price: every worker imports the *main module* of the
program again. A script that calls ``generate_cohort(..., workers=2)`` or
``prepare_volumes(..., workers=2)`` at its top level, without an ``if __name__ == "__main__":``
guard, therefore starts the same call again inside each worker, the workers die, and Python reports
a bare ``BrokenProcessPool``. :func:`process_pool` turns that into a :class:`VoxelFMError` that says
what to do.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from voxelfm.errors import VoxelFMError

if TYPE_CHECKING:
    from concurrent.futures import ProcessPoolExecutor

__all__ = ["process_pool"]


@contextlib.contextmanager
def process_pool(
    workers: int,
    *,
    initializer: Callable[..., None] | None = None,
    initargs: tuple[Any, ...] = (),
    what: str = "the work",
) -> Iterator[ProcessPoolExecutor]:
    """A ``ProcessPoolExecutor`` of ``workers`` processes (forkserver on POSIX, else spawn).

    Use it as a context manager around the whole use of the pool (submitting *and* collecting
    results); the pool is shut down on exit.

    Args:
        workers: number of worker processes (≥ 1).
        initializer, initargs: run once in every worker (e.g. limit its threads).
        what: the caller's name for the error message (``"generate_cohort"``).

    Raises:
        VoxelFMError: a worker died (``BrokenProcessPool``). The message says to add the
            ``if __name__ == "__main__":`` guard to the calling script or to use ``workers=1``
            (the usual cause), or to look for a killed worker (out of memory).
        ValueError: ``workers < 1``.
    """
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    if int(workers) < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
    try:
        with ProcessPoolExecutor(max_workers=int(workers), mp_context=mp.get_context(method),
                                 initializer=initializer, initargs=initargs) as ex:
            yield ex
    except BrokenProcessPool as exc:
        raise _pool_error(what) from exc


def _pool_error(what: str) -> VoxelFMError:
    """The error for a pool whose worker died. The missing ``__main__`` guard is named when the
    program has a main module file (a script or ``python -m``: the case where workers import it
    again); from a REPL or notebook only a killed worker is possible."""
    guard = (
        "if this runs from a Python script, put the script's top-level code under "
        "`if __name__ == \"__main__\":` (every worker process imports the script again and would "
        "repeat its top-level calls) or use workers=1; otherwise "
    )
    main = sys.modules.get("__main__")
    hint = (guard if getattr(main, "__file__", None) else "") + (
        "a worker was killed, e.g. out of memory: use fewer workers"
    )
    return VoxelFMError(f"{what}: a worker process died before finishing ({hint})")
