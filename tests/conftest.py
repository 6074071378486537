"""Shared test configuration: tiny, deterministic, CPU-only, no progress bars, no network."""

from __future__ import annotations

import os

os.environ.setdefault("VOXELFM_NO_PROGRESS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "2")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _torch_threads():
    """At most two torch threads (the CI machine has two cores); seeds fixed per test."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        yield
        return
    torch.set_num_threads(int(os.environ.get("VOXELFM_TEST_THREADS", "2")))
    torch.manual_seed(0)
    yield
