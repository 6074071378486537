"""Pre-training speed: model steps/s of a config vs data-loader crops/s (does the loader keep up?).

Measures, on synthetic phantom-like int16 volumes in a temporary ``.npy`` store (no phantom
generation needed):

* ``model``: optimizer steps/s and volumes/s of :class:`voxelfm.ssl.meta_arch.SSLMetaArch` on a
  pre-collated batch (forward + backward + AdamW + EMA), ``--threads`` torch threads;
* ``loader``: multi-crop samples/s (2 global + n local crops, window, masks, collate) of the real
  DataLoader with ``--workers`` worker processes, and for 0 workers (in-process);
* ``keeps_up``: loader volumes/s ≥ model volumes/s.

Usage::

    .venv/bin/python benchmarks/pretrain_speed.py                 # tiny config, 2 workers
    .venv/bin/python benchmarks/pretrain_speed.py --config vit_base --steps 2 --batch 2

Prints JSON and writes ``benchmarks/results/pretrain_speed.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


class _NpyStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.ids = sorted(p.stem for p in root.glob("*.npy"))

    def open(self, vid: str):
        return np.load(self.root / f"{vid}.npy", mmap_mode="r")

    def spacing(self, vid: str):
        return (1.0, 1.0, 1.0)

    def shape(self, vid: str):
        return tuple(self.open(vid).shape)


def _make_store(root: Path, n: int, side: int) -> _NpyStore:
    rng = np.random.default_rng(0)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, side)] * 3, indexing="ij")
    body = (y ** 2 + x ** 2 < 0.8) & (np.abs(z) < 0.95)
    for i in range(n):
        vol = np.where(body, 40.0, -1000.0) + rng.normal(0, 20, body.shape)
        vol[(y + 0.3) ** 2 + (x - 0.35) ** 2 < 0.08] = -850.0  # a "lung"
        np.save(root / f"v{i:03d}.npy", vol.astype(np.int16))
    return _NpyStore(root)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="tiny")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch", type=int, default=None, help="train.batch_size_per_gpu override")
    p.add_argument("--volumes", type=int, default=24)
    p.add_argument("--side", type=int, default=120, help="volume side in voxels (phantoms: ~112-140)")
    p.add_argument("--loader-batches", type=int, default=8)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "pretrain_speed.json"))
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)

    os.environ.setdefault("VOXELFM_NO_PROGRESS", "1")
    import torch
    from torch.utils.data import DataLoader

    from voxelfm.ssl.augmentations import DataAugmentationDINO
    from voxelfm.ssl.collate import SSLCollator
    from voxelfm.ssl.config import load_config
    from voxelfm.ssl.dataset import PretrainDataset
    from voxelfm.ssl.masking import MaskingGenerator3D
    from voxelfm.ssl.meta_arch import SSLMetaArch
    from voxelfm.ssl.param_groups import apply_optim_scheduler
    from voxelfm.ssl.sampler import InfiniteShardedSampler
    from voxelfm.ssl.trainer import tokens_per_volume

    torch.set_num_threads(args.threads)
    overrides = list(args.overrides) + ([f"train.batch_size_per_gpu={args.batch}"] if args.batch else [])
    cfg = load_config(args.config, overrides)
    B = int(cfg.train.batch_size_per_gpu)
    g = cfg.crops.global_crops_size
    g = [g] * 3 if isinstance(g, int) else list(g)
    grid = tuple(s // int(cfg.student.patch_size) for s in g)
    masker = MaskingGenerator3D(grid, max_num_patches=0.5 * int(np.prod(grid)))
    collate = SSLCollator(masker, cfg.ibot.mask_ratio_min_max, cfg.ibot.mask_sample_probability, seed=0)

    with tempfile.TemporaryDirectory() as tmp:
        store = _make_store(Path(tmp), args.volumes, args.side)
        ds = PretrainDataset(store, DataAugmentationDINO.from_config(cfg), seed=0)
        result: dict = {"benchmark": "pretrain_speed", "config": args.config, "overrides": overrides,
                        "batch_size": B, "threads": args.threads, "volume_side": args.side,
                        "tokens_per_volume": tokens_per_volume(cfg), "torch": torch.__version__}

        # --- data loader: crops/s with 0 and N workers
        loader_res = {}
        for workers in sorted({0, args.workers}):
            kwargs = {"persistent_workers": False, "prefetch_factor": 2} if workers else {}
            dl = DataLoader(ds, batch_size=B, sampler=InfiniteShardedSampler(len(ds), seed=0),
                            num_workers=workers, collate_fn=collate, drop_last=True, **kwargs)
            it = iter(dl)
            next(it)  # warm-up (worker start)
            t = time.perf_counter()
            for _ in range(args.loader_batches):
                next(it)
            dt = time.perf_counter() - t
            del it, dl
            crops = 2 + int(cfg.crops.local_crops_number)
            loader_res[str(workers)] = {"volumes_per_s": args.loader_batches * B / dt,
                                        "crops_per_s": args.loader_batches * B * crops / dt}
        result["loader"] = loader_res

        # --- model: optimizer steps/s on one collated batch
        torch.manual_seed(0)
        model = SSLMetaArch(cfg)
        model.train()
        opt = torch.optim.AdamW(model.get_params_groups())
        apply_optim_scheduler(opt, 1e-4, 0.04, 1e-4)
        batch = collate([ds[(i, i % len(ds))] for i in range(B)])

        def step() -> None:
            _, loss = model(batch, teacher_temp=0.05)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.student.parameters(), 3.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            model.update_teacher(0.994)

        step()
        t = time.perf_counter()
        for _ in range(args.steps):
            step()
        dt = (time.perf_counter() - t) / args.steps
        result["model"] = {"steps_per_s": 1 / dt, "seconds_per_step": dt, "volumes_per_s": B / dt,
                           "tokens_per_s": B * tokens_per_volume(cfg) / dt,
                           "parameters_student": sum(p.numel() for p in model.student.parameters())}
        best_loader = max(v["volumes_per_s"] for v in loader_res.values())
        result["keeps_up"] = bool(loader_res[str(args.workers)]["volumes_per_s"] >= result["model"]["volumes_per_s"])
        result["loader_over_model"] = best_loader / result["model"]["volumes_per_s"]
        result["note"] = ("the loader workers and the model share the CPU cores: on 2 cores the real run "
                          "interleaves them; timings on a shared machine are pessimistic")
    print(json.dumps(result, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
    sys.exit(0)
