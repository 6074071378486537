"""Two-process gloo DDP run: identical parameters on both ranks after every step, every sample seen
once per epoch across ranks, gradient accumulation with no_sync."""

from __future__ import annotations

import json
import socket

import pytest

from tests.ssl._helpers import MICRO, make_store

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo_ddp(tmp_path):
    import torch.multiprocessing as mp

    from tests.ssl._ddp_worker import main

    make_store(tmp_path / "store", n=8)
    out = tmp_path / "run"
    overrides = MICRO + ["train.grad_accum_steps=2", "train.batch_size_per_gpu=2"]
    mp.start_processes(main, args=(2, _free_port(), str(tmp_path / "store"), str(out), overrides, 3),
                       nprocs=2, start_method="spawn")
    r0 = json.loads((out / "rank0.json").read_text())
    r1 = json.loads((out / "rank1.json").read_text())
    assert [r["step"] for r in r0] == [r["step"] for r in r1] == [0, 1, 2]
    for a, b in zip(r0, r1):
        assert a["student"] == b["student"] and a["teacher"] == b["teacher"]  # bit-identical ranks
        assert a["total"] == b["total"] and a["dino_center"] == b["dino_center"]  # reduced metrics
    # effective batch 2 (batch) × 2 (accum) × 2 (ranks) = 8 = the whole store: step 0 is epoch 0
    epoch0 = r0[0]["volumes"] + r1[0]["volumes"]
    assert sorted(epoch0) == list(range(8))
    assert not set(r0[0]["positions"]) & set(r1[0]["positions"])
    epoch1 = r0[1]["volumes"] + r1[1]["volumes"]
    assert sorted(epoch1) == list(range(8)) and epoch1 != epoch0
