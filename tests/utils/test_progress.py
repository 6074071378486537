"""Progress bars: redrawn in a terminal, plain lines (no carriage returns) in a log file or pipe."""

from __future__ import annotations

import io
import time

from voxelfm.utils.progress import progress


def test_non_terminal_stream_gets_plain_lines_without_carriage_returns():
    buf = io.StringIO()  # not a terminal, like a log file or a pipe
    bar = progress(total=4, desc="extract", unit="vol", file=buf, disable=False, mininterval=0.0)
    for _ in range(4):
        time.sleep(0.002)
        bar.update(1)
    bar.close()
    text = buf.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert lines[0].startswith("extract:   0%") and lines[-1].startswith("extract: 100%")
    assert "4/4" in lines[-1] and "vol/s" in lines[-1]
    assert len(lines) == 5 and text.endswith("\n")  # 0..4, the final count not repeated by close()


def test_non_terminal_lines_are_rate_limited_and_final_line_written():
    buf = io.StringIO()
    for _ in progress(range(1000), desc="many", file=buf, disable=False):  # default interval: seconds
        pass
    lines = buf.getvalue().splitlines()
    assert len(lines) <= 3 and "1000/1000" in lines[-1]


def test_disabled_by_environment(monkeypatch):
    monkeypatch.setenv("VOXELFM_NO_PROGRESS", "1")
    buf = io.StringIO()
    for _ in progress(range(3), desc="quiet", file=buf):
        pass
    assert buf.getvalue() == ""
