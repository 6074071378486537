"""Worker of the 2-process gloo DDP test (run by torch.multiprocessing in test_ddp.py)."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path


def _digest(module) -> str:
    h = hashlib.sha256()
    for p in module.parameters():
        t = p.full_tensor() if hasattr(p, "full_tensor") else p  # FSDP2 shards: gather (collective)
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def main(rank: int, world: int, port: int, store_dir: str, out_dir: str, overrides: list[str],
         max_steps: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      OMP_NUM_THREADS="1", VOXELFM_NO_PROGRESS="1")
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.ssl._helpers import NpyStore
    from voxelfm.ssl import pretrain
    from voxelfm.ssl.distributed import destroy_distributed
    from voxelfm.ssl.meta_arch import unwrap

    log = []

    def record(trainer, step, rec):
        m = trainer.model
        log.append({"step": step, "positions": trainer.last_positions, "volumes": trainer.last_volume_indices,
                    "student": _digest(torch.nn.ModuleList([unwrap(m.student[k]) for k in m.student.keys()])),
                    "teacher": _digest(m.teacher), "total": rec["total"],
                    "dino_center": float(m.dino_loss.center.sum())})

    try:
        pretrain(None, NpyStore(store_dir), out_dir, max_steps=max_steps, overrides=overrides,
                 resume=False, device="cpu", show_progress=False, export=False, callbacks=[record])
    finally:
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(log))
        destroy_distributed()
