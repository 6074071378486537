"""Stage bookkeeping of a demo run: headers with elapsed time, timings, and reuse on re-runs.

The state of a demo folder lives in ``OUT/demo.json``::

    {"format": "voxelfm-demo", "version": 1,
     "stages": {"phantoms": {"signature": "…", "status": "finished", "seconds": 61.2,
                             "runs": [61.2], "summary": {…}, "finished_at": "…"}, …}}

A stage's *signature* hashes its own settings and the signatures of the stages it reads from, so
changing ``--cases`` re-runs the phantoms and everything after them, while changing only the
probe settings re-runs the probes and the report. A stage whose record is ``finished`` with the
same signature is reused; one that was ``started`` with the same signature is resumed (every
stage of voxelfm resumes from its own files); one recorded with another signature has its folder
cleared and runs from scratch.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from voxelfm.errors import VoxelFMError
from voxelfm.utils import atomic_write_text
from voxelfm.utils.cpu_time import cpu_seconds

__all__ = ["StageRecord", "DemoState", "StageRunner", "signature", "format_seconds", "cpu_seconds"]

STATE_FILE = "demo.json"
_FORMAT = "voxelfm-demo"


def signature(settings: Mapping[str, Any], upstream: Mapping[str, str] | None = None) -> str:
    """Short stable hash of a stage's settings and its upstream stages' signatures."""
    blob = json.dumps({"settings": settings, "upstream": dict(sorted((upstream or {}).items()))},
                      sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def format_seconds(seconds: float) -> str:
    """``73.4`` → ``"1:13"``; ``3725`` → ``"1:02:05"``."""
    s = int(round(max(0.0, float(seconds))))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


@dataclass
class StageRecord:
    """What ``demo.json`` knows about one stage.

    Attributes:
        signature: hash of the settings the stage ran with.
        status: ``started`` or ``finished``.
        seconds: total wall time spent in the stage over all runs that worked on it.
        runs: wall time of each run that worked on it (a reused stage adds nothing).
        cpu_seconds: processor time of the demo and its worker processes in the stage (all runs);
            unlike wall time it hardly depends on other load on the machine.
        summary: small JSON-able facts the report shows (counts, steps, losses...).
    """

    signature: str
    status: str = "started"
    seconds: float = 0.0
    runs: list[float] = field(default_factory=list)
    cpu_seconds: float = 0.0
    summary: dict[str, Any] = field(default_factory=dict)
    finished_at: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"signature": self.signature, "status": self.status, "seconds": round(self.seconds, 3),
                "runs": [round(r, 3) for r in self.runs], "cpu_seconds": round(self.cpu_seconds, 3),
                "summary": self.summary,
                "finished_at": self.finished_at}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "StageRecord":
        return cls(signature=str(d.get("signature", "")), status=str(d.get("status", "started")),
                   seconds=float(d.get("seconds", 0.0)), runs=[float(r) for r in d.get("runs", [])],
                   cpu_seconds=float(d.get("cpu_seconds", 0.0)),
                   summary=dict(d.get("summary") or {}), finished_at=d.get("finished_at"))


class DemoState:
    """``OUT/demo.json``: the stage records of a demo folder, saved atomically after every change."""

    def __init__(self, root: Path, stages: dict[str, StageRecord] | None = None,
                 settings: dict[str, Any] | None = None) -> None:
        self.root = Path(root)
        self.stages: dict[str, StageRecord] = dict(stages or {})
        self.settings: dict[str, Any] = dict(settings or {})

    @property
    def path(self) -> Path:
        return self.root / STATE_FILE

    @classmethod
    def load(cls, root: str | Path) -> "DemoState":
        """Read ``root/demo.json`` (an empty state if there is none).

        Raises:
            VoxelFMError: the file exists but is not a demo state.
        """
        root = Path(root)
        path = root / STATE_FILE
        if not path.exists():
            return cls(root)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise VoxelFMError(f"{path} is unreadable ({exc}); re-run with --fresh to start over") from None
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise VoxelFMError(f"{path} is not a voxelfm demo state; use another output folder")
        stages = {k: StageRecord.from_dict(v) for k, v in (data.get("stages") or {}).items()}
        return cls(root, stages, data.get("settings"))

    def save(self) -> None:
        data = {"format": _FORMAT, "version": 1, "settings": self.settings,
                "stages": {k: v.to_dict() for k, v in self.stages.items()}}
        atomic_write_text(self.path, json.dumps(data, indent=2, default=str) + "\n")


class StageRunner:
    """Runs the stages of a demo in order, printing one header line per stage and its outcome.

    Args:
        state: the folder's :class:`DemoState`.
        total: number of stages this run will go through (for ``[k/N]`` in headers).
        stream: where header lines go (default ``sys.stdout``; progress bars use stderr).
    """

    def __init__(self, state: DemoState, total: int, *, stream: TextIO | None = None) -> None:
        self.state = state
        self.total = int(total)
        self.index = 0
        self.stream = stream
        self.t0 = time.monotonic()
        self.this_run: dict[str, dict[str, Any]] = {}

    def elapsed(self) -> float:
        """Seconds since this runner was created."""
        return time.monotonic() - self.t0

    def _print(self, text: str) -> None:
        print(text, file=self.stream or sys.stdout, flush=True)

    def reusable(self, name: str, sig: str) -> bool:
        rec = self.state.stages.get(name)
        return rec is not None and rec.status == "finished" and rec.signature == sig

    def run(self, name: str, title: str, sig: str, fn: Callable[[bool], dict[str, Any] | None], *,
            folders: Sequence[Path] = (), always: bool = False) -> StageRecord:
        """Run (or reuse) stage ``name``.

        Args:
            name: stage name (key in ``demo.json``).
            title: one-line description for the header.
            sig: the stage's :func:`signature`.
            fn: ``fn(resuming) -> summary``; does the work (resuming from its own files when
                ``resuming`` is true) and returns facts for the report.
            folders: the stage's own output folders, cleared when the stage ran before with other
                settings.
            always: run even when a finished record matches (the final report, which shows the
                timings of this run).
        """
        self.index += 1
        head = f"[demo {self.index}/{self.total}] {name}"
        rec = self.state.stages.get(name)
        if not always and rec is not None and rec.status == "finished" and rec.signature == sig:
            self._print(f"{head}: reused (finished in an earlier run, {format_seconds(rec.seconds)}) "
                        f"— elapsed {format_seconds(self.elapsed())}")
            self.this_run[name] = {"status": "reused", "seconds": 0.0, "cpu_seconds": 0.0}
            return rec
        resuming = rec is not None and rec.signature == sig and rec.status != "finished"
        if rec is not None and rec.signature != sig:
            for folder in folders:
                if Path(folder).exists():
                    self._print(f"{head}: settings changed since the last run; clearing {folder}")
                    shutil.rmtree(folder)
        if not resuming:
            rec = StageRecord(signature=sig)
        assert rec is not None
        rec.status = "started"
        self.state.stages[name] = rec
        self.state.save()
        self._print(f"{head}: {title}{' (resuming)' if resuming else ''} — elapsed "
                    f"{format_seconds(self.elapsed())}")
        t, c = time.monotonic(), cpu_seconds()
        try:
            summary = fn(resuming) or {}
        except BaseException:  # interrupted or failed: keep the time spent, the stage stays "started"
            dt = time.monotonic() - t  # once: the CPU-time reading in between takes time under load
            rec.seconds += dt
            rec.cpu_seconds += cpu_seconds() - c
            rec.runs.append(dt)
            self.state.save()
            raise
        dt, dc = time.monotonic() - t, cpu_seconds() - c
        rec.seconds += dt
        rec.cpu_seconds += dc
        rec.runs.append(dt)
        rec.summary = dict(summary)
        rec.status = "finished"
        rec.finished_at = _now()
        self.state.save()
        note = summary.get("_line")
        self._print(f"{head}: done in {format_seconds(dt)}{' — ' + note if note else ''}")
        self.this_run[name] = {"status": "resumed" if resuming else "ran", "seconds": dt, "cpu_seconds": dc}
        return rec
