"""Processor time of this process and its descendants (for stage and benchmark timings)."""

from __future__ import annotations

__all__ = ["cpu_seconds"]


def cpu_seconds() -> float:
    """Processor time (user + system, seconds) of this process and all its descendants.

    Finished children count through ``RUSAGE_CHILDREN``; live descendants (a multiprocessing
    forkserver, whose workers are its children rather than ours, data-loader workers) are read
    with ``psutil`` when it is installed, including the children they already reaped. Without
    psutil, live descendants are missed.
    """
    import resource

    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        r = resource.getrusage(who)
        total += r.ru_utime + r.ru_stime
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil is optional
        return total
    try:
        kids = psutil.Process().children(recursive=True)
    except psutil.Error:  # pragma: no cover
        return total
    for p in kids:
        try:
            t = p.cpu_times()
        except psutil.Error:  # exited meanwhile
            continue
        total += t.user + t.system + getattr(t, "children_user", 0.0) + getattr(t, "children_system", 0.0)
    return total
