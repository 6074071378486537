"""Freed activations kept in the C heap during CPU inference: no page faults for reused sizes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from voxelfm.inference.heap import _glibc, reuse_freed_memory

GLIBC = _glibc() is not None

# In a fresh process: the allocator's state depends on everything the process allocated before.
_SCRIPT = textwrap.dedent("""
    import json, resource, torch
    from voxelfm.inference import inference_scope
    from voxelfm.inference.heap import reuse_freed_memory

    BIG = 16 * 2**20  # float32 elements: 64 MB, far above glibc's 32 MB mmap threshold

    def faults(n: int) -> int:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        torch.empty(n).fill_(1.0)
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    def second(n: int = BIG) -> int:  # the steady state: the first allocation may fault (the heap grows)
        faults(n)
        return min(faults(n), faults(n))

    out = {"plain": second()}
    with reuse_freed_memory() as active:
        out["active"] = active
        with reuse_freed_memory():  # nested: shares the outer block
            out["nested"] = second()
        out["outer"] = second()
    with inference_scope("meta"):  # not the CPU: linear packing only, glibc's own allocation
        out["meta"] = second(3 * BIG)  # larger than any hole the heap kept, so only the settings decide
    with inference_scope("cpu"):
        out["scope"] = second()
    print(json.dumps(out))
""")


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt only")
def test_a_freed_activation_is_reused_without_page_faults_inside_the_block():
    env = {k: v for k, v in os.environ.items() if k not in ("VOXELFM_CPU_KERNELS", "VOXELFM_HEAP_REUSE")}
    env["OMP_NUM_THREADS"] = "1"
    run = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, timeout=120,
                         env=env)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout.strip().splitlines()[-1])
    pages = 16 * 2**20 * 4 // 4096
    assert out["plain"] > pages // 2  # glibc maps 64 MB afresh: every page faulted
    assert out["meta"] > pages // 2  # the same outside the CPU scope (the settings were restored)
    assert out["active"] is True
    for key in ("nested", "outer", "scope"):
        assert out[key] < pages // 20, (key, out)


@pytest.mark.parametrize("name", ["VOXELFM_CPU_KERNELS", "VOXELFM_HEAP_REUSE"])
def test_switched_off_by_the_environment(monkeypatch, name):
    monkeypatch.setenv(name, "0")
    with reuse_freed_memory() as active:
        assert not active
