"""voxelfm.utils.pool: the shared process pool and its error for a worker that died."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import types

import pytest

from voxelfm.errors import VoxelFMError
from voxelfm.utils.pool import _pool_error, process_pool


def test_pool_maps_in_order():
    with process_pool(2, what="test") as ex:
        assert list(ex.map(pow, [2, 3, 4], [2, 2, 3])) == [4, 9, 64]


def test_workers_must_be_positive():
    with pytest.raises(ValueError, match="workers must be >= 1"):
        with process_pool(0):
            pass


def test_a_dead_worker_becomes_a_voxelfm_error():
    with pytest.raises(VoxelFMError, match=r"^mytask: a worker process died") as info:
        with process_pool(1, what="mytask") as ex:
            ex.submit(os._exit, 3).result()
    assert type(info.value.__cause__).__name__ == "BrokenProcessPool"


def test_message_names_the_main_guard_only_for_a_script(monkeypatch):
    monkeypatch.setitem(sys.modules, "__main__", types.SimpleNamespace(__file__="/x/run.py"))
    msg = str(_pool_error("generate_cohort"))
    assert 'if __name__ == "__main__":' in msg and "workers=1" in msg and "out of memory" in msg
    monkeypatch.setitem(sys.modules, "__main__", types.SimpleNamespace())  # REPL / notebook
    msg = str(_pool_error("generate_cohort"))
    assert "__main__" not in msg and "out of memory" in msg


@pytest.mark.slow
@pytest.mark.parametrize("call", [
    'from voxelfm.data.phantoms import generate_cohort\ngenerate_cohort("out", n=2, workers=2, progress=False)',
    'from voxelfm.data.volume_store import prepare_volumes\n'
    'prepare_volumes(["a.nii.gz", "b.nii.gz"], "store", workers=2, progress=False)',
])
def test_script_without_main_guard_gets_the_guard_message(tmp_path, call):
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(call) + "\n")
    for name in ("a.nii.gz", "b.nii.gz"):  # never read: the workers die first
        (tmp_path / name).write_bytes(b"")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VOXELFM_NO_PROGRESS": "1"}
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
                         timeout=240, env=env)
    assert out.returncode == 1
    errors = [line for line in out.stderr.splitlines() if line.startswith("voxelfm.errors.VoxelFMError: ")]
    assert len(errors) == 1, out.stderr[-3000:]
    last = errors[0]
    assert 'put the script\'s top-level code under `if __name__ == "__main__":`' in last
    assert "BrokenProcessPool" in out.stderr  # the cause stays in the traceback
