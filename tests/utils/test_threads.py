"""Thread defaults from the cores actually free; explicit choices win; the choice is logged."""

from __future__ import annotations

import io

import pytest
import torch

from voxelfm.utils import threads
from voxelfm.utils.threads import choose_threads, configure_threads


@pytest.fixture
def four_cores(monkeypatch):
    monkeypatch.setattr(threads, "usable_cores", lambda: 4)
    monkeypatch.delenv("VOXELFM_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)


@pytest.mark.parametrize("load, expected", [(0.0, 4), (0.4, 4), (1.6, 2), (3.2, 1), (9.0, 1)])
def test_free_cores_minus_load(four_cores, load, expected):
    c = choose_threads(load_1min=load)
    assert (c.threads, c.source, c.cores) == (expected, "free cores", 4)
    assert "--threads" in c.describe() and f"load {load:.1f}" in c.describe()


def test_precedence_argument_then_env(four_cores, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert choose_threads(load_1min=4.0).to_dict()["threads"] == 3
    monkeypatch.setenv("VOXELFM_THREADS", "2")
    assert choose_threads(load_1min=0.0).source == "VOXELFM_THREADS"
    c = choose_threads(1, load_1min=0.0)
    assert (c.threads, c.source) == (1, "argument")


@pytest.mark.parametrize("bad", ["0", "many", "-2"])
def test_bad_values_say_what_to_fix(four_cores, monkeypatch, bad):
    monkeypatch.setenv("VOXELFM_THREADS", bad)
    with pytest.raises(ValueError, match="VOXELFM_THREADS must be a positive number of threads"):
        choose_threads(load_1min=0.0)
    with pytest.raises(ValueError, match="--threads"):
        choose_threads(0)


def test_configure_sets_torch_and_logs_one_line(four_cores):
    before = torch.get_num_threads()
    log = io.StringIO()
    try:
        c = configure_threads(1, log=log, prefix="voxelfm extract")
        assert torch.get_num_threads() == 1 == c.threads
    finally:
        torch.set_num_threads(before)
    assert log.getvalue().startswith("voxelfm extract: 1 CPU thread(s) of 4 core(s), from argument")
    assert log.getvalue().count("\n") == 1
