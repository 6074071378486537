"""The pre-training loop: :func:`pretrain` (Python API) behind ``voxelfm pretrain``.

One process or many (``torchrun``: DDP on NCCL/gloo, optional FSDP2 ``fully_shard``), gradient accumulation with
``no_sync`` on the micro-steps that do not end a window, bf16 autocast where supported, exact
resume from the newest checkpoint of the output folder, per-step metrics (JSONL + TensorBoard),
optional periodic kNN check, and at the end the teacher exported as a voxelfm backbone and in the
reference teacher-dump layout.

Run folder ``OUTPUT/``::

    config.yaml                 resolved config (reference key layout)
    metrics.jsonl               one JSON object per optimizer step
    tensorboard/                TensorBoard events (if tensorboard is installed)
    checkpoints/step_*.pth      resumable checkpoints (newest ``checkpointing.max_to_keep``)
    eval/training_<N>/          reference teacher dumps (teacher_checkpoint.pth + config.yaml)
    backbone/                   the final teacher as a voxelfm backbone (load_backbone)
    knn.jsonl                   kNN checks (with --knn-labels)
    run.json                    summary: steps, effective batch, throughput, time
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import signal
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from voxelfm.errors import ConfigError, VoxelFMError

__all__ = ["pretrain", "Trainer", "resolve_precision", "tokens_per_volume"]

logger = logging.getLogger("voxelfm.ssl")

LOSS_KEYS = ("dino_local_crops_loss", "dino_global_crops_loss", "koleo_loss", "ibot_loss")
_METRIC_NAMES = {"dino_local_crops_loss": "dino_local", "dino_global_crops_loss": "dino_global",
                 "koleo_loss": "koleo", "ibot_loss": "ibot"}


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for ``compute_precision`` (``None`` = fp32, no autocast)."""
    if name == "fp32":
        return None
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return None
    if name == "bf16":
        return torch.bfloat16
    if name == "fp16":
        if device.type != "cuda":
            raise ConfigError("compute_precision fp16 needs a CUDA device; use bf16 or fp32 on CPU")
        return torch.float16
    raise ConfigError(f"unknown compute_precision {name!r}")


def tokens_per_volume(cfg: Any) -> int:
    """Patch tokens the student sees per volume: 2 global crops + the local crops."""
    ps = int(cfg.student.patch_size)

    def n(size: Any) -> int:
        s = [size] * 3 if isinstance(size, int) else list(size)
        return int(np.prod([x // ps for x in s]))
    return 2 * n(cfg.crops.global_crops_size) + int(cfg.crops.local_crops_number) * n(cfg.crops.local_crops_size)


def _open_store(data: Any) -> Any:
    if isinstance(data, (str, os.PathLike)):
        path = Path(data)
        if not path.exists():
            raise FileNotFoundError(f"volume store {path} does not exist; create it with `voxelfm prepare`")
        from voxelfm.data.volume_store import VolumeStore

        return VolumeStore(path)
    if data is None or not hasattr(data, "open") or not hasattr(data, "ids"):
        raise TypeError("data must be a prepared-volume store folder or an object with .ids and .open(id)")
    return data


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    non_blocking = device.type == "cuda"
    return {k: (v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v)
            for k, v in batch.items()}


class _StopFlag:
    """Set by SIGINT/SIGTERM: finish the current step, checkpoint, exit cleanly."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "_StopFlag":
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:  # second signal: give up immediately
            raise KeyboardInterrupt
        self.requested = True
        logger.warning("signal %d received: stopping after this step (checkpoint will be written)", signum)

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


class _MetricsWriter:
    """``metrics.jsonl`` (+ TensorBoard) on the main process; resuming drops lines of steps ≥ start."""

    def __init__(self, run_dir: Path, start_step: int, enabled: bool, tensorboard: bool = True) -> None:
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.tb = None
        if not enabled:
            return
        if self.path.exists():
            kept = []
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    if int(json.loads(line).get("step", -1)) < start_step:
                        kept.append(line)
                except (ValueError, json.JSONDecodeError):
                    continue
            from voxelfm.utils import atomic_write_text

            atomic_write_text(self.path, "".join(k + "\n" for k in kept))
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_step)
            except Exception as exc:  # noqa: BLE001 - tensorboard is optional
                logger.info("TensorBoard logging off (%s)", exc)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.tb is not None:
            step = int(record["step"])
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                    self.tb.add_scalar(f"train/{k}", v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()


class Trainer:
    """Holds a pre-training run; :meth:`run` trains until ``max_steps`` / time budget / signal.

    Prefer :func:`pretrain`. Args as :func:`pretrain`.
    """

    def __init__(self, cfg: Any, store: Any, output: Path, *, max_steps: int | None = None,
                 max_minutes: float | None = None, resume: bool = True, device: str | None = None,
                 num_workers: int | None = None, knn_labels: str | os.PathLike[str] | None = None,
                 knn_target: str | Sequence[str] | None = None, show_progress: bool = True,
                 export: bool = True, callbacks: Sequence[Any] = ()) -> None:
        from voxelfm.ssl.distributed import init_distributed

        self.cfg = cfg
        self.info = init_distributed(device)
        self.device = self.info.device
        self.output = Path(output)
        self.max_minutes = max_minutes
        self.show_progress = show_progress
        self.export = export
        self.store = store
        self.knn_labels, self.knn_target = knn_labels, knn_target
        self.num_workers = int(cfg.train.num_workers if num_workers is None else num_workers)
        self.batch_size = int(cfg.train.batch_size_per_gpu)
        self.accum = int(cfg.train.grad_accum_steps)
        self.world = self.info.world_size
        self.effective_batch = self.batch_size * self.accum * self.world
        self.amp_dtype = resolve_precision(str(cfg.compute_precision), self.device)
        self.resume = resume
        self._requested_max_steps = max_steps
        self.callbacks = list(callbacks)
        self.last_positions: list[int] = []
        self.last_volume_indices: list[int] = []

    # ------------------------------------------------------------------ set-up
    def _setup(self) -> None:
        from voxelfm.ssl.augmentations import DataAugmentationDINO
        from voxelfm.ssl.checkpoint import find_latest_checkpoint, load_checkpoint
        from voxelfm.ssl.config import save_config
        from voxelfm.ssl.dataset import PretrainDataset
        from voxelfm.ssl.meta_arch import SSLMetaArch
        from voxelfm.ssl.schedules import build_schedules

        cfg, rank = self.cfg, self.info.rank
        seed = int(cfg.train.seed)
        if self.info.is_main:
            self.output.mkdir(parents=True, exist_ok=True)
        self.schedules = build_schedules(cfg)
        self.max_steps = self.schedules.total_steps if self._requested_max_steps is None \
            else int(self._requested_max_steps)
        if self.max_steps < 0:
            raise ValueError("max_steps must be >= 0")

        augmentation = DataAugmentationDINO.from_config(cfg)
        g = cfg.crops.global_crops_size
        min_side = (max(g) if not isinstance(g, int) else g) // 2
        self.dataset = PretrainDataset(self.store, augmentation, seed=seed, min_side=min_side)

        # identical initialisation on every rank; per-rank randomness (drop path) afterwards
        torch.manual_seed(seed)
        self.model = SSLMetaArch(cfg).to(self.device)
        self.fsdp = self.world > 1 and str(cfg.train.get("distributed", "ddp")) == "fsdp"
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None

        self.start_step = 0
        self.elapsed_before = 0.0
        latest = find_latest_checkpoint(self.output) if self.resume else None
        if not self.resume and self.info.is_main and find_latest_checkpoint(self.output) is not None:
            # starting over: keep the old checkpoints, but out of the way of a later resume
            old = self.output / f"checkpoints.replaced-{time.strftime('%Y%m%d-%H%M%S')}"
            (self.output / "checkpoints").rename(old)
            logger.warning("--no-resume: previous checkpoints moved to %s", old)
        if self.world > 1:
            dist.barrier()
        state: dict[str, Any] | None = None
        if latest is not None:
            state = load_checkpoint(latest)
            self._check_compatible(state, latest)
            self.model.load_state_dict(state["model"])
        if self.info.is_main:  # only once the checkpoint is known to match: a refused resume keeps it
            save_config(cfg, self.output / "config.yaml")
        self._wrap_distributed()  # FSDP replaces parameters: the optimizer is built afterwards
        self.optimizer = torch.optim.AdamW(self.model.get_params_groups(),
                                           betas=(float(cfg.optim.adamw_beta1), float(cfg.optim.adamw_beta2)))
        _seed_everything(seed + rank)
        if state is not None:
            self._load_optimizer_state(state)
            if self.scaler is not None and "grad_scaler" in state:
                self.scaler.load_state_dict(state["grad_scaler"])
            self.start_step = int(state["iteration"])
            rng = state.get("rng") or []
            if int(state.get("world_size", 1)) == self.world and rank < len(rng):
                from voxelfm.ssl.checkpoint import restore_rng_state

                restore_rng_state(rng[rank])
            else:
                logger.warning("resuming with %d processes (checkpoint: %s): RNG re-seeded per rank",
                               self.world, state.get("world_size"))
                _seed_everything(seed + rank + 1_000_003 * self.start_step)
            self.elapsed_before = float(state.get("elapsed_seconds", 0.0))
            if self.info.is_main:
                logger.info("resumed from %s (step %d)", latest, self.start_step)

    def _load_optimizer_state(self, state: dict[str, Any]) -> None:
        if state.get("optimizer_format") == "fqn":  # written under FSDP (parameter names as keys)
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(self.model, self.optimizer, state["optimizer"],
                                     options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=False))
        elif self.fsdp:
            raise ConfigError("this checkpoint was written without FSDP; resume it with train.distributed=ddp")
        else:
            self.optimizer.load_state_dict(state["optimizer"])

    def _check_compatible(self, state: dict[str, Any], path: Path) -> None:
        import yaml

        old = yaml.safe_load(state.get("config", "{}")) or {}
        for section in ("student", "dino", "ibot"):
            keys = ("embed_dim", "depth", "num_heads", "patch_size", "num_register_tokens", "head_n_prototypes",
                    "head_bottleneck_dim", "head_hidden_dim", "head_nlayers", "separate_head")
            for k in keys:
                if k in old.get(section, {}) and k in self.cfg[section] and old[section][k] != self.cfg[section][k]:
                    raise ConfigError(f"{path}: {section}.{k} was {old[section][k]!r}, the config now says "
                                      f"{self.cfg[section][k]!r}; use a new --output folder for a different model")
        # other crops are allowed (progressive resolution: the same model continues on larger crops),
        # but never silently: a resumed run whose crops changed by accident trains another grid
        from voxelfm.ssl.config import _size3

        old_crops, new_crops = old.get("crops", {}), self.cfg.get("crops", {})
        setting = {"global_crops_size": _size3, "local_crops_size": _size3,  # a scalar n = (n, n, n)
                   "local_crops_number": lambda v, _: int(v)}
        changed = [f"crops.{k} {old_crops[k]} → {new_crops[k]}" for k, value in setting.items()
                   if k in old_crops and k in new_crops and value(old_crops[k], k) != value(new_crops[k], k)]
        if changed and self.info.is_main:
            logger.warning("resuming %s with other crops (%s): the model continues on another input grid "
                           "(use a new --output folder to train from scratch instead)", path, "; ".join(changed))

    def _wrap_distributed(self) -> None:
        """DDP around each student module, or FSDP2 (``fully_shard``) on student *and* teacher
        (identical sharding, so the EMA works shard by shard)."""
        self.ddp_modules: list[Any] = []
        if self.world <= 1:
            return
        # identical start on every rank (same seed, or the same checkpoint) — make it certain
        for p in list(self.model.student.parameters()) + list(self.model.teacher.parameters()):
            dist.broadcast(p.data, src=0)
        if self.fsdp:
            import warnings

            from torch.distributed.fsdp import fully_shard

            # the backbone returns views (x_norm[:, 0]); nothing modifies them in place
            warnings.filterwarnings("ignore", message=".*returned a view tensor.*")

            for tree in (self.model.student, self.model.teacher):
                for k in tree.keys():
                    module = tree[k]
                    for blk in getattr(module, "blocks", []):
                        fully_shard(blk)
                    fully_shard(module)
                    if tree is self.model.student:
                        self.ddp_modules.append(module)
            return
        import inspect

        from torch.nn.parallel import DistributedDataParallel as DDP

        # buffers (RoPE periods) are constants: no per-forward buffer sync
        sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in \
            inspect.signature(DDP.__init__).parameters else {"broadcast_buffers": False}
        for k in list(self.model.student.keys()):
            wrapped = DDP(self.model.student[k],
                          device_ids=[self.device.index] if self.device.type == "cuda" else None,
                          find_unused_parameters=False, **sync)
            self.model.student[k] = wrapped
            self.ddp_modules.append(wrapped)

    def _make_loader(self) -> Any:
        from torch.utils.data import DataLoader

        from voxelfm.ssl.collate import SSLCollator
        from voxelfm.ssl.masking import MaskingGenerator3D
        from voxelfm.ssl.sampler import InfiniteShardedSampler

        cfg = self.cfg
        g = cfg.crops.global_crops_size
        g = [g] * 3 if isinstance(g, int) else list(g)
        grid = tuple(s // int(cfg.student.patch_size) for s in g)
        n_tokens = int(np.prod(grid))
        masker = MaskingGenerator3D(grid, max_num_patches=0.5 * n_tokens)
        collate = SSLCollator(masker, cfg.ibot.mask_ratio_min_max, float(cfg.ibot.mask_sample_probability),
                              seed=int(cfg.train.seed))
        start = self.start_step * self.accum * self.batch_size * self.world
        sampler = InfiniteShardedSampler(len(self.dataset), rank=self.info.rank, world_size=self.world,
                                         seed=int(cfg.train.seed), start=start)
        kwargs: dict[str, Any] = {}
        if self.num_workers > 0:
            kwargs.update(persistent_workers=True, prefetch_factor=2, worker_init_fn=_worker_init)
        return DataLoader(self.dataset, batch_size=self.batch_size, sampler=sampler,
                          num_workers=self.num_workers, collate_fn=collate, drop_last=True,
                          pin_memory=self.device.type == "cuda",
                          generator=torch.Generator().manual_seed(int(cfg.train.seed)), **kwargs)

    # ------------------------------------------------------------------ one optimizer step
    def _train_step(self, step: int, batches: Any) -> dict[str, float]:
        from voxelfm.ssl.param_groups import apply_optim_scheduler

        sched = self.schedules.at(step)
        apply_optim_scheduler(self.optimizer, sched["lr"], sched["wd"], sched["last_layer_lr"])
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, torch.Tensor] = {}
        total_sum = torch.zeros((), device=self.device)
        data_time = 0.0
        self.last_positions, self.last_volume_indices = [], []
        for micro in range(self.accum):
            t0 = time.perf_counter()
            batch = _to_device(next(batches), self.device)
            data_time += time.perf_counter() - t0
            if "positions" in batch:
                self.last_positions += [int(p) for p in batch["positions"].tolist()]
            if "volume_indices" in batch:
                self.last_volume_indices += [int(i) for i in batch["volume_indices"].tolist()]
            last = micro == self.accum - 1
            with contextlib.ExitStack() as stack:
                for m in self.ddp_modules:
                    if self.fsdp:  # FSDP2: reduce-scatter only on the last micro-step
                        m.set_requires_gradient_sync(last)
                    elif not last:
                        stack.enter_context(m.no_sync())
                with torch.autocast(device_type=self.device.type, dtype=self.amp_dtype or torch.float32,
                                    enabled=self.amp_dtype is not None):
                    loss_dict, loss = self.model(batch, teacher_temp=sched["teacher_temp"])
                if self.scaler is not None:
                    self.scaler.scale(loss).backward()
                else:
                    loss.backward()
            for k, v in loss_dict.items():
                sums[k] = sums.get(k, torch.zeros((), device=self.device)) + v.detach().float()
            total_sum = total_sum + loss.detach().float()
        # the reference sums gradients over the window and divides them afterwards
        if self.accum > 1:
            for group in self.optimizer.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        p.grad.div_(self.accum)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        clip = float(self.cfg.optim.clip_grad or 0)
        grad_norm = float("nan")
        if clip > 0:
            grad_norm = float(self._clip_grad(clip))
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.model.update_teacher(sched["momentum"])

        keys = sorted(sums)
        values = torch.stack([sums[k] for k in keys] + [total_sum]) / self.accum
        if self.world > 1:
            dist.all_reduce(values)
            values /= self.world
        vals = values.tolist()
        out = {k: float(v) for k, v in zip(keys, vals[:-1])}
        out["total"] = float(vals[-1])
        out.update(sched)
        out["grad_norm"] = grad_norm
        out["data_time"] = data_time
        return out

    def _clip_grad(self, clip: float) -> torch.Tensor:
        params = [p for k in self.model.student.keys() for p in self.model.student[k].parameters()]
        norm = torch.nn.utils.clip_grad_norm_(params, clip)
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # FSDP2: DTensor

    # ------------------------------------------------------------------ state
    def _state(self, step: int, elapsed: float) -> dict[str, Any]:
        import yaml

        from voxelfm.ssl.checkpoint import capture_rng_state

        self.model.dino_loss.apply_center_update()
        self.model.ibot_patch_loss.apply_center_update()
        rng = capture_rng_state()
        if self.world > 1:
            gathered: list[Any] = [None] * self.world
            dist.all_gather_object(gathered, rng)
            rngs = gathered
        else:
            rngs = [rng]
        model_sd = self._model_state_dict()
        optim_sd, optim_format = self._optimizer_state_dict()
        state = {
            "format": "voxelfm-ssl", "version": 1, "iteration": int(step),
            "model": model_sd, "optimizer": optim_sd, "optimizer_format": optim_format, "rng": rngs,
            "sampler": {"position": int(step) * self.accum * self.batch_size * self.world,
                        "seed": int(self.cfg.train.seed), "dataset_size": len(self.dataset)},
            "schedules": {"total_steps": self.schedules.total_steps, **self.schedules.at(step)},
            "config": yaml.safe_dump(self.cfg.to_dict(), sort_keys=False),
            "world_size": self.world, "effective_batch_size": self.effective_batch,
            "distributed": "fsdp" if self.fsdp else ("ddp" if self.world > 1 else "none"),
            "elapsed_seconds": float(elapsed),
        }
        if self.scaler is not None:
            state["grad_scaler"] = self.scaler.state_dict()
        return state

    def _model_state_dict(self) -> dict[str, torch.Tensor]:
        """Full (unsharded, CPU) state dict with bare keys; a collective under FSDP."""
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            sd = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        else:
            sd = self.model.state_dict()
        return {k.replace("module.", ""): v.detach().cpu() for k, v in sd.items()}

    def _optimizer_state_dict(self) -> tuple[dict[str, Any], str]:
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

            return get_optimizer_state_dict(self.model, self.optimizer,
                                            options=StateDictOptions(full_state_dict=True, cpu_offload=True)), "fqn"
        return self.optimizer.state_dict(), "index"

    def _save(self, step: int, elapsed: float) -> None:
        from voxelfm.ssl.checkpoint import save_checkpoint

        state = self._state(step, elapsed)
        if self.info.is_main:
            ck = self.cfg.checkpointing
            save_checkpoint(self.output, step, state, max_to_keep=int(ck.get("max_to_keep") or 0),
                            keep_every=int(ck.get("keep_every") or 0) or None)
        if self.world > 1:
            dist.barrier()

    def _teacher_state(self, step: int) -> dict[str, Any]:
        """Checkpoint-like dict of the teacher (``model``, ``config``, ``iteration``); collective."""
        import yaml

        sd = self._model_state_dict()
        return {"model": {k: v for k, v in sd.items() if k.startswith("teacher.")},
                "config": yaml.safe_dump(self.cfg.to_dict(), sort_keys=False), "iteration": int(step)}

    def _rng_preserved(self) -> Any:
        """Building export models draws random init weights: keep the training RNG stream intact."""
        devices = [self.device] if self.device.type == "cuda" else []
        return torch.random.fork_rng(devices=devices)

    def _teacher_dump(self, step: int, state: dict[str, Any] | None = None) -> None:
        """Reference teacher dump ``eval/training_<step>/``; a collective unless ``state`` (from
        :meth:`_teacher_state`) is given."""
        from voxelfm.ssl.export import _teacher_head_state, teacher_backbone, write_reference_teacher

        state = self._teacher_state(step) if state is None else state
        if self.info.is_main:
            with self._rng_preserved():
                write_reference_teacher(self.output / "eval" / f"training_{step}", teacher_backbone(state),
                                        _teacher_head_state(state), self.cfg)

    # ------------------------------------------------------------------ main loop
    def run(self) -> Path:
        from voxelfm.ssl.distributed import barrier
        from voxelfm.utils import atomic_write_text, progress

        self._setup()
        cfg, main = self.cfg, self.info.is_main
        metrics = _MetricsWriter(self.output, self.start_step, enabled=main)
        knn = self._make_knn() if main else None
        tokens = tokens_per_volume(cfg)
        if main:
            logger.info("pre-training %s: %d volumes, %d process(es) on %s, batch %d × accum %d × world %d = "
                        "effective batch %d, steps %d → %d", self.output, len(self.dataset), self.world,
                        self.device, self.batch_size, self.accum, self.world, self.effective_batch,
                        self.start_step, self.max_steps)
        t_start = time.monotonic()
        step = self.start_step
        last_saved = self.start_step
        period = int(cfg.checkpointing.get("period") or 0)
        eval_period = int(cfg.evaluation.get("eval_period_iterations") or 0)
        knn_period = int(cfg.evaluation.get("knn_period_iterations") or 0)
        bar = progress(total=self.max_steps, desc="pretrain", unit="step",
                       disable=None if (self.show_progress and main) else True, initial=self.start_step)
        recent: list[float] = []
        self.model.train()
        with _StopFlag() as stop:
            loader = self._make_loader() if step < self.max_steps else None
            batches = iter(loader) if loader is not None else None
            try:
                while step < self.max_steps:
                    t0 = time.perf_counter()
                    rec = self._train_step(step, batches)
                    dt = time.perf_counter() - t0
                    if not math.isfinite(rec["total"]):
                        raise VoxelFMError(f"the loss became {rec['total']} at step {step}; lower "
                                           "schedules.lr.peak or check the data (last checkpoint kept)")
                    record = {"step": step, "total": rec["total"]}
                    for key, name in _METRIC_NAMES.items():
                        if key in rec:
                            record[name] = rec[key]
                    record.update(lr=rec["lr"], wd=rec["wd"], momentum=rec["momentum"],
                                  teacher_temp=rec["teacher_temp"], last_layer_lr=rec["last_layer_lr"],
                                  throughput=self.effective_batch / dt,
                                  tokens_per_s=self.effective_batch * tokens / dt,
                                  step_time=dt, data_time=rec["data_time"], grad_norm=rec["grad_norm"],
                                  teacher_entropy=rec.get("teacher_entropy", float("nan")),
                                  ibot_teacher_entropy=rec.get("ibot_teacher_entropy", float("nan")),
                                  teacher_cls_std=rec.get("teacher_cls_std", float("nan")),
                                  student_cls_std=rec.get("student_cls_std", float("nan")))
                    metrics.write(record)
                    for callback in self.callbacks:
                        callback(self, step, record)
                    step += 1
                    recent = (recent + [dt])[-20:]
                    bar.update(1)
                    bar.set_postfix(loss=f"{rec['total']:.3f}", vol_s=f"{self.effective_batch / np.mean(recent):.2f}")
                    elapsed = self.elapsed_before + time.monotonic() - t_start
                    out_of_time = self.max_minutes is not None and \
                        (time.monotonic() - t_start) >= 60.0 * float(self.max_minutes)
                    flag = torch.tensor([1.0 if (out_of_time or stop.requested) else 0.0], device=self.device)
                    if self.world > 1:
                        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                    stopping = bool(flag.item()) or step >= self.max_steps
                    if (period and step % period == 0) or stopping:
                        self._save(step, elapsed)
                        last_saved = step
                    if eval_period and step % eval_period == 0 and not stopping:
                        self._teacher_dump(step)
                    if knn_period and self.knn_labels and step % knn_period == 0 and not stopping:
                        teacher = self._teacher_state(step)  # collective under FSDP
                        if knn is not None:
                            self._knn(knn, step, teacher)
                    if knn_period:
                        barrier()
                    if stopping:
                        break
            finally:
                bar.close()
                del batches, loader
        if step > last_saved:  # pragma: no cover - loop always saves when stopping
            self._save(step, self.elapsed_before + time.monotonic() - t_start)
        result = self.output / "backbone"
        final_teacher = self._teacher_state(step) if (self.export or knn is not None or self.knn_labels) else None
        if main:
            if self.export:
                from voxelfm.ssl.export import export_teacher

                self._teacher_dump(step, final_teacher)
                export_teacher(final_teacher, result, reference=False,
                               provenance={"iteration": step, "run": str(self.output)})
            if knn is not None:
                self._knn(knn, step, final_teacher)
            minutes = (time.monotonic() - t_start) / 60.0
            done = step - self.start_step
            summary = {"steps_done": step, "steps_this_run": done, "max_steps": self.max_steps,
                       "world_size": self.world, "batch_size_per_process": self.batch_size,
                       "grad_accum_steps": self.accum, "effective_batch_size": self.effective_batch,
                       "minutes_this_run": minutes, "device": str(self.device),
                       "precision": str(self.amp_dtype or torch.float32),
                       "volumes_per_s": (done * self.effective_batch / (minutes * 60)) if done and minutes else None,
                       "num_volumes": len(self.dataset), "backbone": str(result) if self.export else None}
            atomic_write_text(self.output / "run.json", json.dumps(summary, indent=2) + "\n")
        metrics.close()
        barrier()
        return result

    # ------------------------------------------------------------------ kNN monitor
    def _make_knn(self) -> Any:
        if not self.knn_labels:
            return None
        from voxelfm.ssl.knn_monitor import KnnMonitor

        if not self.knn_target:
            raise ValueError("--knn-labels needs --knn-target (a 0/1 column of the labels CSV)")
        g = self.cfg.crops.global_crops_size
        g = [g] * 3 if isinstance(g, int) else list(g)
        ps = int(self.cfg.student.patch_size)
        # embed whole volumes at the scale of a global crop (what the teacher is trained on)
        budget = int(np.prod([s // ps for s in g]))
        return KnnMonitor(self.store, self.knn_labels, self.knn_target, k=int(self.cfg.evaluation.get("knn_k", 20)),
                          patch_size=ps, max_patches=budget)

    def _knn(self, knn: Any, step: int, teacher_state: dict[str, Any]) -> None:
        from voxelfm.ssl.export import teacher_backbone
        from voxelfm.utils.jsonl import append_jsonl

        with self._rng_preserved():
            result = knn.evaluate(teacher_backbone(teacher_state).to(self.device))
        result["step"] = step
        append_jsonl(self.output / "knn.jsonl", result)
        logger.info("kNN check at step %d: %s", step, {k: v for k, v in result.items() if k != "step"})


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _worker_init(worker_id: int) -> None:
    # one intra-op thread per loader worker: the workers must not fight the training threads
    torch.set_num_threads(1)


def pretrain(config: str | os.PathLike[str] | Mapping[str, Any] | None = None, data: Any = None,
             output: str | os.PathLike[str] | None = None, *, max_steps: int | None = None,
             max_minutes: float | None = None, overrides: Iterable[str] = (), resume: bool = True,
             knn_labels: str | os.PathLike[str] | None = None, knn_target: str | Sequence[str] | None = None,
             device: str | None = None, num_workers: int | None = None, show_progress: bool = True,
             export: bool = True, callbacks: Sequence[Any] = ()) -> Path:
    """Pre-train (or continue) a 3D ViT with DINO + iBOT + KoLeo on a prepared-volume store.

    Re-running with the same ``output`` resumes from its newest checkpoint (exactly: same data,
    masks, drop path, schedules), so ``max_steps``/``max_minutes`` can split a run into pieces.

    Args:
        config: ``"vit_base"`` (reference defaults), ``"tiny"`` (CPU-sized), a YAML path (a reference
            run's ``config.yaml`` works) or a mapping; see :func:`voxelfm.ssl.config.load_config`.
        data: the prepared-volume store folder (``voxelfm prepare``) or a store object.
        output: the run folder.
        max_steps: stop after this many optimizer steps in total (default: ``optim.epochs ×
            train.official_epoch_length``; the schedules always span that full length).
        max_minutes: stop (with a checkpoint) after this much wall time in this call.
        overrides: ``key=value`` config overrides (``optim.epochs=5``, ``train.batch_size_per_gpu=4``).
        resume: resume from the newest checkpoint in ``output`` (default) or start over.
        knn_labels, knn_target: optional kNN check of the teacher CLS on labelled volumes of the
            store (CSV with ``id`` and the 0/1 target column[s]; ``split`` train/val/test used if
            present, else leave-one-out), every ``evaluation.knn_period_iterations`` steps and at
            the end, logged to ``output/knn.jsonl``.
        device: ``"cpu"``/``"cuda"`` (default: CUDA when available).
        num_workers: data-loader workers (default ``train.num_workers``).
        show_progress: progress bar on the main process.
        export: write the final teacher (``output/backbone`` + reference dump in ``output/eval``).
        callbacks: ``callback(trainer, step, record)`` called on every process after each optimizer
            step (``record`` = the metrics of the step; ``trainer.model``, ``trainer.last_positions``).

    Returns:
        ``output/backbone`` — the teacher as a voxelfm backbone folder
        (``voxelfm.load_backbone(path)``).

    Launch on several GPUs / nodes with ``torchrun --nproc_per_node=N -m voxelfm pretrain ...``.
    """
    from voxelfm.ssl.config import load_config

    if output is None:
        raise ValueError("pretrain needs an output folder")
    if max_minutes is not None and max_minutes <= 0:
        raise ValueError("max_minutes must be > 0")
    cfg = load_config(config, list(overrides))
    store = _open_store(data)
    trainer = Trainer(cfg, store, Path(output), max_steps=max_steps, max_minutes=max_minutes, resume=resume,
                      device=device, num_workers=num_workers, knn_labels=knn_labels, knn_target=knn_target,
                      show_progress=show_progress, export=export, callbacks=callbacks)
    return trainer.run()
