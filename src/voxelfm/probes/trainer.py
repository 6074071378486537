"""The probe training loop: seeded, shuffled, noise on training data only, correct gradient
accumulation, warm-up + cosine schedule, and selection of the best validation epoch.

Fixes relative to the reference probe loop (REFERENCE §6 "Probes"):

* feature noise is added inside the training step only — validation/test embeddings are never
  perturbed (the reference also noised the sets used for model selection and ``results.json``);
* every training loader is shuffled each epoch with a seeded generator (the reference's regression
  and survival loaders were not shuffled);
* gradient accumulation weights every micro-batch loss by ``micro-batch size / step size``, so one
  optimizer step sees exactly the gradient of the mean loss over all its samples (the reference
  summed unscaled losses, multiplying the effective learning rate by the accumulation factor); a
  leftover group of micro-batches at the end of an epoch is stepped and advances the scheduler;
* the checkpoint with the best validation score (strictly greater; ties keep the earlier epoch) is
  restored before testing.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from voxelfm.probes.data import pad_collate, stack_collate

__all__ = ["TrainConfig", "TrainResult", "Trainer", "limit_threads", "lr_at"]


@dataclass
class TrainConfig:
    """Optimisation settings of one probe.

    Attributes:
        epochs: passes over the training set.
        batch_size: micro-batch size; ``None`` = the whole training set in one batch.
        accum_steps: micro-batches per optimizer step.
        lr: peak learning rate; min_lr: floor of the schedule (and start of the warm-up).
        schedule: ``"constant"`` (``lr`` after warm-up) or ``"cosine"`` (cosine decay to ``min_lr``).
        warmup_epochs: linear warm-up ``min_lr → lr`` (may be fractional).
        optimizer: ``"adamw"`` or ``"sgd"`` (momentum ``momentum``); weight_decay: decoupled (AdamW)
            or L2 (SGD).
        noise_p, noise_sigma: with probability ``noise_p`` per training sample add ``N(0, σ²)`` to
            its whole embedding (training steps only).
        grad_clip: max global grad norm (``None`` = off).
        patience: stop after this many epochs without improvement (``None`` = run all epochs).
        eval_batch_size: batch size for validation / prediction.
        num_workers: DataLoader workers for token datasets (0 = main process).
        device: where the head trains (``"cpu"`` default, ``"cuda"``, ``"mps"``); batches are moved
            there, outputs come back to the CPU.
        threads: torch intra-op threads while training/predicting (restored afterwards); ``None``
            leaves the global setting. Small heads run fastest on one thread (and do not fight
            other processes for cores); large decoders may want more.
        seed: seeds shuffling and noise.
    """

    epochs: int = 20
    batch_size: int | None = 32
    accum_steps: int = 1
    lr: float = 1e-3
    min_lr: float = 0.0
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    optimizer: str = "adamw"
    momentum: float = 0.9
    weight_decay: float = 1e-4
    noise_p: float = 0.0
    noise_sigma: float = 0.1
    grad_clip: float | None = None
    patience: int | None = None
    eval_batch_size: int = 64
    num_workers: int = 0
    device: str | None = None
    threads: int | None = 1
    seed: int = 4

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 or None (full batch), got {self.batch_size}")
        if self.accum_steps < 1:
            raise ValueError(f"accum_steps must be >= 1, got {self.accum_steps}")
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise ValueError(f"need 0 <= min_lr <= lr and lr > 0, got lr={self.lr}, min_lr={self.min_lr}")
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(f"schedule must be 'constant' or 'cosine', got {self.schedule!r}")
        if self.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}")
        if not 0 <= self.noise_p <= 1 or self.noise_sigma < 0:
            raise ValueError("noise_p must be in [0, 1] and noise_sigma >= 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@contextlib.contextmanager
def limit_threads(n: int | None):
    """Temporarily run torch **and** the BLAS / OpenMP pools of numpy, scipy and scikit-learn on
    ``n`` threads (``None`` / 0: leave everything as it is).

    Probe workloads are many tiny linear-algebra calls (sklearn's lbfgs on a ``200 × 216`` matrix,
    kNN similarities, bootstrap matrix products). A multi-threaded OpenBLAS spends most of such a
    call waking and synchronising its threads, and on a busy machine a spinning BLAS thread can wait
    for a whole scheduler slice: a 9-value logistic-regression grid took 1–2 s instead of 0.15 s.
    """
    if not n:
        yield
        return
    # load the pools first: scipy's OpenBLAS and sklearn's OpenMP are loaded on first import, and
    # a pool loaded after the limit is set would keep its default thread count
    import scipy.linalg  # noqa: F401
    import sklearn  # noqa: F401

    try:
        from threadpoolctl import ThreadpoolController

        limiter = ThreadpoolController().limit  # a fresh controller sees every library loaded so far
    except ImportError:  # threadpoolctl < 3.0
        from threadpoolctl import threadpool_limits as limiter

    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        with limiter(limits=int(n)):
            yield
    finally:
        torch.set_num_threads(old)


_threads = limit_threads  # the trainer's name for it


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` returns. ``best_epoch`` is 1-based; ``history`` has one dict per epoch."""

    best_epoch: int
    best_score: float
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def lr_at(step: int, *, total_steps: int, warmup_steps: int, lr: float, min_lr: float,
          schedule: str) -> float:
    """Learning rate at optimizer ``step`` (0-based): linear warm-up ``min_lr → lr`` over
    ``warmup_steps``, then constant ``lr`` or cosine ``lr → min_lr`` over the remaining steps."""
    if warmup_steps > 0 and step < warmup_steps:
        return min_lr + (lr - min_lr) * (step + 1) / warmup_steps
    if schedule == "constant":
        return lr
    decay = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay)
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * progress))


class Trainer:
    """Train a head with a loss on a dataset from :mod:`voxelfm.probes.data`.

    Args:
        model: a head (``input_kind`` ``"vector"``, ``"tokens"`` or ``"grid"``).
        loss_fn: ``loss_fn(outputs, y) -> scalar`` (mean over the batch's samples).
        config: :class:`TrainConfig`.
        convention: token position convention for token datasets (``"centre"`` / ``"corner"``).
    """

    def __init__(self, model: nn.Module, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 config: TrainConfig, *, convention: str = "centre") -> None:
        self.model = model
        self.loss_fn = loss_fn
        self.config = config
        self.convention = convention
        self.device = torch.device(config.device or "cpu")
        self.model.to(self.device)
        self._gen = torch.Generator().manual_seed(int(config.seed))
        self._noise_gen = torch.Generator().manual_seed(int(config.seed) + 1)

    # ------------------------------------------------------------------ batching
    def _collate(self, ds: Any) -> Callable:
        if getattr(ds, "kind", "vector") == "tokens":
            conv = self.convention
            return lambda items: pad_collate(items, convention=conv)
        return stack_collate

    def epoch_batches(self, ds: Any, *, shuffle: bool, batch_size: int | None) -> list[list[int]]:
        """Index lists of one pass. Shuffled passes draw a fresh permutation from the trainer's
        seeded generator; grid datasets (segmentation) batch only equal grids together."""
        n = len(ds)
        bs = n if batch_size is None else int(batch_size)
        if getattr(ds, "kind", "") == "grid":
            groups: dict[tuple, list[int]] = {}
            for i in range(n):
                groups.setdefault(tuple(ds.grid(i)), []).append(i)
            batches: list[list[int]] = []
            for members in groups.values():
                if shuffle:
                    members = [members[j] for j in torch.randperm(len(members), generator=self._gen).tolist()]
                batches.extend(members[s:s + bs] for s in range(0, len(members), bs))
            if shuffle:
                batches = [batches[j] for j in torch.randperm(len(batches), generator=self._gen).tolist()]
            return batches
        order = torch.randperm(n, generator=self._gen).tolist() if shuffle else list(range(n))
        return [order[s:s + bs] for s in range(0, n, bs)]

    def _iterate(self, ds: Any, batches: Sequence[Sequence[int]]):
        if getattr(ds, "kind", "vector") == "vector" and hasattr(ds, "x"):
            for idx in batches:
                t = torch.as_tensor(list(idx), dtype=torch.long)
                yield {"x": ds.x[t], "y": ds.y[t], "index": t}
            return
        if getattr(ds, "kind", "") == "tokens" and self.config.num_workers == 0 and hasattr(ds, "padded"):
            dense = ds.padded(self.convention)  # built once per dataset, within the cache budget
            if dense is not None:
                for idx in batches:
                    yield dense.batch(idx, ds.y)
                return
        loader = torch.utils.data.DataLoader(ds, batch_sampler=[list(b) for b in batches],
                                             collate_fn=self._collate(ds),
                                             num_workers=self.config.num_workers)
        yield from loader

    # ------------------------------------------------------------------ model calls
    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        if self.device.type == "cpu":
            return batch
        return {k: (v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) and k != "index" else v)
                for k, v in batch.items()}

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        """Call the head with the inputs its ``input_kind`` needs."""
        kind = getattr(self.model, "input_kind", "vector")
        if kind == "tokens":
            return self.model(batch["x"], batch["mask"], batch["coords"])
        if kind == "grid":
            return self.model(batch["x"], target_shape=tuple(batch["y"].shape[-3:]))
        return self.model(batch["x"])

    def _add_noise(self, batch: dict[str, Any]) -> dict[str, Any]:
        cfg = self.config
        if cfg.noise_p <= 0 or cfg.noise_sigma <= 0:
            return batch
        x = batch["x"]
        pick = torch.nonzero(torch.rand(x.shape[0], generator=self._noise_gen) < cfg.noise_p).flatten()
        if len(pick) == 0:
            return batch
        # noise is drawn for the picked samples only (token sets: ~half the cost of a full draw)
        noise = torch.randn((len(pick), *x.shape[1:]), generator=self._noise_gen) * cfg.noise_sigma
        x = x.clone()  # never modify the dataset's (or the padded cache's) tensor
        x[pick.to(x.device)] += noise.to(x.device, x.dtype)
        return {**batch, "x": x}

    # ------------------------------------------------------------------ training
    def _optimizer(self) -> torch.optim.Optimizer:
        cfg = self.config
        params = [p for p in self.model.parameters() if p.requires_grad]
        if cfg.optimizer == "sgd":
            return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    def steps_per_epoch(self, n_micro: int) -> int:
        return max(1, math.ceil(n_micro / self.config.accum_steps))

    def train_epoch(self, ds: Any, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler | None) -> float:
        """One shuffled pass with accumulation; returns the sample-weighted mean training loss."""
        cfg = self.config
        self.model.train()
        batches = self.epoch_batches(ds, shuffle=True, batch_size=cfg.batch_size)
        groups = [batches[s:s + cfg.accum_steps] for s in range(0, len(batches), cfg.accum_steps)]
        it = self._iterate(ds, batches)
        total_loss, total_n = 0.0, 0
        for group in groups:
            group_n = sum(len(b) for b in group)
            optimizer.zero_grad(set_to_none=True)
            for idx in group:
                batch = self._add_noise(self._to_device(next(it)))
                loss = self.loss_fn(self.forward(batch), batch["y"])
                (loss * (len(idx) / group_n)).backward()
                total_loss += float(loss.detach()) * len(idx)
                total_n += len(idx)
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
        return total_loss / max(1, total_n)

    @torch.no_grad()
    def predict(self, ds: Any, *, reduce: Callable[[torch.Tensor], Any] | None = None,
                with_loss: bool = False) -> Any:
        """Outputs for every item of ``ds`` in index order (eval mode, no noise).

        Args:
            reduce: applied to each batch's output (e.g. argmax for segmentation); outputs are then
                returned as a list, one per item, instead of one concatenated array.
            with_loss: also return the sample-weighted mean loss.
        """
        with _threads(self.config.threads):
            return self._predict(ds, reduce=reduce, with_loss=with_loss)

    def _predict(self, ds: Any, *, reduce: Callable[[torch.Tensor], Any] | None, with_loss: bool) -> Any:
        self.model.eval()
        outs: list[Any] = [None] * len(ds)
        loss_sum, n = 0.0, 0
        for batch in self._iterate(ds, self.epoch_batches(ds, shuffle=False,
                                                          batch_size=self.config.eval_batch_size)):
            batch = self._to_device(batch)
            out = self.forward(batch)
            if with_loss:
                loss_sum += float(self.loss_fn(out, batch["y"])) * len(batch["index"])
                n += len(batch["index"])
            vals = reduce(out.cpu()) if reduce is not None else out.detach().float().cpu().numpy()
            for k, i in enumerate(batch["index"].tolist()):
                outs[i] = vals[k]
        result: Any = outs if reduce is not None else (np.stack(outs) if outs else np.zeros((0,)))
        return (result, loss_sum / max(1, n)) if with_loss else result

    def fit(self, train_ds: Any, val_ds: Any, score_fn: Callable[[Any], float], *,
            reduce: Callable[[torch.Tensor], Any] | None = None,
            on_epoch: Callable[[dict[str, Any]], None] | None = None) -> TrainResult:
        """Train for ``config.epochs`` and restore the weights of the best validation epoch.

        Args:
            train_ds, val_ds: datasets.
            score_fn: validation outputs (from :meth:`predict` with ``reduce``) → score, higher is
                better (NaN counts as no improvement).
            reduce: see :meth:`predict`.
            on_epoch: called with each history row (progress display).
        """
        if len(train_ds) == 0 or len(val_ds) == 0:
            raise ValueError("training and validation sets must be non-empty")
        with _threads(self.config.threads):
            return self._fit(train_ds, val_ds, score_fn, reduce=reduce, on_epoch=on_epoch)

    def _fit(self, train_ds: Any, val_ds: Any, score_fn: Callable[[Any], float], *,
             reduce: Callable[[torch.Tensor], Any] | None,
             on_epoch: Callable[[dict[str, Any]], None] | None) -> TrainResult:
        cfg = self.config
        start = time.perf_counter()
        optimizer = self._optimizer()
        n_micro = len(self.epoch_batches(train_ds, shuffle=False, batch_size=cfg.batch_size))
        steps = self.steps_per_epoch(n_micro)
        total = steps * cfg.epochs
        warm = round(cfg.warmup_epochs * steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_at(s, total_steps=total, warmup_steps=warm, lr=cfg.lr,
                                       min_lr=cfg.min_lr, schedule=cfg.schedule) / cfg.lr)
        best_score, best_epoch, best_state = -math.inf, 0, None
        history: list[dict[str, Any]] = []
        stale = 0
        for epoch in range(1, cfg.epochs + 1):
            t0 = time.perf_counter()
            lr_now = optimizer.param_groups[0]["lr"]
            train_loss = self.train_epoch(train_ds, optimizer, scheduler)
            with torch.no_grad():
                val_out, val_loss = self._predict(val_ds, reduce=reduce, with_loss=True)
            score = float(score_fn(val_out))
            improved = math.isfinite(score) and score > best_score
            if improved or best_state is None:
                if improved:
                    best_score = score
                best_epoch = epoch
                best_state = copy.deepcopy(self.model.state_dict())
                stale = 0
            else:
                stale += 1
            row = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val_score": score,
                   "lr": lr_now, "best": bool(improved), "seconds": round(time.perf_counter() - t0, 4)}
            history.append(row)
            if on_epoch is not None:
                on_epoch(row)
            if cfg.patience is not None and stale >= cfg.patience:
                break
        assert best_state is not None
        self.model.load_state_dict(best_state)
        return TrainResult(best_epoch=best_epoch, best_score=best_score, history=history,
                           seconds=time.perf_counter() - start)
