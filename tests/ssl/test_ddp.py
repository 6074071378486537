"""Two-process gloo runs (DDP and FSDP2): identical parameters on both ranks after every step, every
sample seen once per epoch across ranks, gradient accumulation without per-micro-step sync, and the
same losses in both modes."""

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


def _run(tmp_path, mode: str) -> tuple[list, list]:
    import torch.multiprocessing as mp

    from tests.ssl._ddp_worker import main

    store = tmp_path / "store"
    if not store.exists():
        make_store(store, n=8)
    out = tmp_path / mode
    overrides = MICRO + ["train.grad_accum_steps=2", "train.batch_size_per_gpu=2", f"train.distributed={mode}"]
    mp.start_processes(main, args=(2, _free_port(), str(store), str(out), overrides, 3), nprocs=2,
                       start_method="spawn")
    return (json.loads((out / "rank0.json").read_text()), json.loads((out / "rank1.json").read_text()))


def test_two_process_gloo_ddp_and_fsdp(tmp_path):
    results = {mode: _run(tmp_path, mode) for mode in ("ddp", "fsdp")}
    for mode, (r0, r1) in results.items():
        assert [r["step"] for r in r0] == [r["step"] for r in r1] == [0, 1, 2], mode
        for a, b in zip(r0, r1):
            assert a["student"] == b["student"] and a["teacher"] == b["teacher"], mode  # bit-identical ranks
            assert a["total"] == b["total"] and a["dino_center"] == b["dino_center"], mode
        # effective batch 2 (batch) × 2 (accum) × 2 (ranks) = 8 = the whole store: one step = one epoch
        epoch0 = r0[0]["volumes"] + r1[0]["volumes"]
        assert sorted(epoch0) == list(range(8)), mode
        assert not set(r0[0]["positions"]) & set(r1[0]["positions"])
        epoch1 = r0[1]["volumes"] + r1[1]["volumes"]
        assert sorted(epoch1) == list(range(8)) and epoch1 != epoch0
    # sharded and replicated training compute the same thing
    ddp, fsdp = results["ddp"][0], results["fsdp"][0]
    assert [r["total"] for r in ddp] == pytest.approx([r["total"] for r in fsdp], rel=1e-5)
