"""Freed activations kept in the C heap during CPU inference: no page faults for reused sizes."""

from __future__ import annotations

import resource

import pytest
import torch

from voxelfm.inference import inference_scope
from voxelfm.inference.heap import _glibc, reuse_freed_memory

GLIBC = _glibc() is not None
BIG = 16 * 2**20  # float32 elements: 64 MB, far above glibc's 32 MB mmap threshold


def _faults_of_second_allocation() -> int:
    torch.empty(BIG).fill_(1.0)  # first: may fault (the heap grows)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(BIG).fill_(1.0)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt only")
def test_a_freed_activation_is_reused_without_page_faults_inside_the_block():
    pages = BIG * 4 // 4096
    assert _faults_of_second_allocation() > pages // 2  # mmap'd afresh, every page faulted
    with reuse_freed_memory() as active:
        assert active
        with reuse_freed_memory():  # nested: shares the outer block
            assert _faults_of_second_allocation() < pages // 20
        assert _faults_of_second_allocation() < pages // 20
    assert _faults_of_second_allocation() > pages // 2  # defaults again after the outermost block


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt only")
def test_inference_scope_reuses_memory_on_the_cpu_only():
    with inference_scope("cpu"):
        assert _faults_of_second_allocation() < BIG * 4 // 4096 // 20
    with inference_scope("meta"):  # not the CPU: linear packing only
        assert _faults_of_second_allocation() > BIG * 4 // 4096 // 2


def test_switched_off_by_the_environment(monkeypatch):
    monkeypatch.setenv("VOXELFM_CPU_KERNELS", "0")
    with reuse_freed_memory() as active:
        assert not active
