"""Package-level behaviour: lazy public API, CLI entry point, shared utilities."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import voxelfm
from voxelfm.utils import atomic_write_text, safe_id


def test_version_and_lazy_api():
    assert voxelfm.__version__
    assert "read_volume" in dir(voxelfm)
    with pytest.raises(AttributeError):
        voxelfm.does_not_exist  # noqa: B018


@pytest.mark.parametrize("raw", ["../../etc/passwd", "a/b", "..", "x\x00y", " .hidden", "C:\\win"])
def test_safe_id_cannot_escape(raw, tmp_path):
    s = safe_id(raw)
    assert "/" not in s and "\\" not in s and not s.startswith(".")
    assert (tmp_path / s).resolve().parent == tmp_path.resolve()


def test_safe_id_keeps_dicom_uids_and_separates_collisions():
    uid = "1.2.840.113619.2.55.3.604688119"
    assert safe_id(uid) == uid
    assert safe_id("a/b") != safe_id("a_b")


def test_atomic_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "f.txt"
    atomic_write_text(target, "one")
    from voxelfm.utils.atomic import atomic_write

    with pytest.raises(RuntimeError):
        with atomic_write(target) as tmp:
            Path(tmp).write_text("half")
            raise RuntimeError("crash")
    assert target.read_text() == "one"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_cli_help_runs():
    out = subprocess.run([sys.executable, "-m", "voxelfm", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    assert "voxelfm" in out.stdout


def test_every_lazy_public_name_resolves():
    for name in voxelfm.__all__:
        assert getattr(voxelfm, name) is not None, name


def test_import_voxelfm_stays_light():
    code = "import sys, voxelfm, voxelfm.stats; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_atomic_write_gives_umask_mode(tmp_path):
    import os

    mask = os.umask(0o022)
    try:
        target = tmp_path / "m.txt"
        atomic_write_text(target, "x")
        assert (target.stat().st_mode & 0o777) == 0o644
    finally:
        os.umask(mask)
