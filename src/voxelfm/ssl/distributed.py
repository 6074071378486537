"""Process-group set-up for ``torchrun`` launches (DDP/FSDP on NCCL or gloo) and small helpers.

One process without ``torchrun`` environment variables runs undistributed. Under ``torchrun``
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) the default process
group is initialised with NCCL when CUDA is available, else gloo (CPU), which is how tests run it.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "init_distributed", "is_distributed", "get_rank", "get_world_size",
           "is_main_process", "barrier", "all_reduce_mean", "destroy_distributed"]


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def init_distributed(device: str | None = None, timeout_minutes: float = 30.0) -> DistInfo:
    """Initialise from the ``torchrun`` environment (idempotent); pick the device.

    Args:
        device: ``"cpu"``, ``"cuda"`` or ``None`` (CUDA when available).
        timeout_minutes: collective timeout.
    """
    want_cuda = torch.cuda.is_available() if device is None else str(device).startswith("cuda")
    if want_cuda and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but CUDA is not available")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    backend = None
    if world > 1 or is_distributed():
        backend = "nccl" if want_cuda else "gloo"
        if not is_distributed():
            if want_cuda:
                torch.cuda.set_device(local_rank)
            dist.init_process_group(backend=backend,
                                    timeout=datetime.timedelta(minutes=timeout_minutes))
        rank, world = dist.get_rank(), dist.get_world_size()
        backend = dist.get_backend()
    dev = torch.device(f"cuda:{local_rank}") if want_cuda else torch.device("cpu")
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=dev, backend=backend)


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean over ranks (a copy; the input is unchanged)."""
    out = values.detach().clone()
    if is_distributed():
        dist.all_reduce(out)
        out /= get_world_size()
    return out


def destroy_distributed() -> None:
    if is_distributed():
        dist.destroy_process_group()
