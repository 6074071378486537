"""Test helpers: a tiny store of .npy volumes following the prepared-volume store contract, and
the micro pre-training config used across the ssl tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

MICRO = [
    "student.embed_dim=48", "student.depth=2", "student.num_heads=1", "student.patch_size=4",
    "student.num_register_tokens=1",
    "crops.global_crops_size=16", "crops.local_crops_size=8", "crops.local_crops_number=2",
    "dino.head_n_prototypes=256", "ibot.head_n_prototypes=256", "dino.head_hidden_dim=64",
    "dino.head_bottleneck_dim=32", "ibot.head_hidden_dim=64", "ibot.head_bottleneck_dim=32",
    "train.batch_size_per_gpu=2", "train.grad_accum_steps=1", "train.num_workers=0",
    "train.official_epoch_length=4", "optim.epochs=3", "schedules.lr.warmup_epochs=1",
    "schedules.teacher_temp.warmup_epochs=1", "schedules.lr.peak=0.001",
    "checkpointing.period=2", "checkpointing.max_to_keep=2", "evaluation.eval_period_iterations=0",
    "compute_precision=fp32",
]


class NpyStore:
    """``root/<id>.npy`` int16 HU volumes: ``ids``, ``open`` (memory map), ``spacing``, ``shape``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.ids = sorted(p.stem for p in self.root.glob("*.npy"))

    def __len__(self) -> int:
        return len(self.ids)

    def open(self, vid: str) -> np.memmap:
        return np.load(self.root / f"{vid}.npy", mmap_mode="r")

    def spacing(self, vid: str) -> tuple[float, float, float]:
        return (1.0, 1.0, 1.0)

    def shape(self, vid: str) -> tuple[int, int, int]:
        return tuple(self.open(vid).shape)


def make_store(root: str | Path, n: int = 6, shape=(24, 26, 22), seed: int = 0) -> NpyStore:
    """``n`` random phantom-like volumes (air, soft tissue, a bright blob) as int16 HU."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    for i in range(n):
        vol = np.full(shape, -1000.0)
        c = np.array(shape) / 2 + rng.normal(0, 2, 3)
        r2 = ((zz - c[0]) / (shape[0] / 2.5)) ** 2 + ((yy - c[1]) / (shape[1] / 2.5)) ** 2 + \
            ((xx - c[2]) / (shape[2] / 2.5)) ** 2
        vol[r2 < 1] = 40 + rng.normal(0, 20, (r2 < 1).sum())
        b = rng.integers(4, np.array(shape) - 4)
        vol[b[0] - 2:b[0] + 2, b[1] - 2:b[1] + 2, b[2] - 2:b[2] + 2] = 400 + 300 * (i % 2)
        np.save(root / f"vol{i:02d}.npy", vol.astype(np.int16))
    return NpyStore(root)
