"""Train a report model in the reference's two stages, with resumable checkpoints.

* **Stage 1** ("pretrain"): the LM is frozen, only the projector learns to turn CT embeddings into
  tokens the LM can read. No system prompt (reference ``01_pretrain``).
* **Stage 2** ("finetune"): the projector (initialised from stage 1's) and LoRA adapters on the
  LM's attention and MLP projections learn together, with the reference's radiology system prompt.

Loss is the mean cross-entropy over the assistant's answer tokens only (see
:mod:`voxelfm.reportgen.conversation`). AdamW (no weight decay on biases and norms), linear
warm-up over ``warmup_ratio`` of the steps, cosine decay to ``min_lr`` (the reference's schedule),
gradient clipping, gradient accumulation. The validation loss is computed after every epoch (and
when the time budget ends training); the saved model is the one with the lowest validation loss
(``select="best"``) or the last one.

Output folder::

    OUT/report_model.json, projector.safetensors, lora/    the trained model (a model folder)
    OUT/history.jsonl                                       one line per logged step / evaluation
    OUT/train_summary.json                                  steps, epochs, losses, time
    OUT/checkpoint/                                         model files + optimizer.pt + trainer_state.json

Running again with the same ``OUT`` resumes from ``OUT/checkpoint`` (same data order: each epoch's
shuffle is seeded by ``seed + epoch``, and the batches already done are skipped).
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from voxelfm.errors import CheckpointError, ConfigError
from voxelfm.reportgen.conversation import DEFAULT_PROMPT, STAGE2_SYSTEM_PROMPT
from voxelfm.reportgen.lm import LORA_TARGET_MODULES
from voxelfm.utils import atomic_write_text, progress

__all__ = ["TrainConfig", "TrainResult", "train_report_model", "train_two_stages"]

CHECKPOINT_DIR = "checkpoint"


@dataclass
class TrainConfig:
    """Training settings. :meth:`cpu` gives the small CPU defaults, :meth:`paper` the reference's.

    Attributes:
        stage: 1 (projector only) or 2 (projector + LoRA).
        epochs: passes over the training split.
        batch_size, grad_accum: micro-batch size and micro-batches per optimizer step.
        lr: peak learning rate (``None`` → 1e-3 for stage 1, 2e-4 for stage 2: the CPU defaults).
        min_lr, warmup_ratio: cosine schedule floor and warm-up fraction (reference 1e-6, 0.03).
        weight_decay: AdamW weight decay (not applied to biases and norms).
        max_grad_norm: gradient clipping (``None`` = off).
        max_minutes: stop after this wall time (then checkpoint, validate, save).
        lr_clock: what the warm-up and cosine decay follow: ``"steps"`` (the step count of
            ``epochs`` full epochs, the reference) or ``"time"`` (with ``max_minutes``: the further
            along of the step count and the elapsed share of the time budget, so a run stopped by
            its budget still warms up, decays and ends at ``min_lr`` — with a step-clocked schedule
            sized for 20 epochs a 10-minute CPU run never leaves the warm-up).
        seed: seed of initialisation and data order (reference 4).
        feature, max_patch_tokens: which embedding tokens feed the projector.
        num_queries, width, num_heads, dropout: projector shape (reference 128 / 2048 / 8 / 0.1).
        lora_r, lora_alpha, lora_dropout, lora_target_modules: stage-2 LoRA (reference 16 / 32 / 0.05).
        max_length: token limit of a conversation (reference 1024).
        prompt, system_prompt: the conversation (``system_prompt=None`` → none for stage 1, the
            reference radiology prompt for stage 2).
        report_style: train on the reports as written (``"original"``) or on their abnormal
            findings only (``"abnormal"``, default: what the reference trained on, via rules instead
            of an LLM; see :mod:`voxelfm.reportgen.restructure`).
        feature_noise: std of Gaussian noise added to the CT tokens during training only (the
            reference used 0.1 and, by mistake, also at evaluation; default 0 = off).
        checkpoint_every: optimizer steps between checkpoints (also at each epoch end).
        select: ``"best"`` (lowest validation loss) or ``"last"``.
        max_val_examples: validate on the first this many ``val`` rows only (``None`` = all); a
            time-budgeted CPU run otherwise spends a large share of its budget validating.
        gradient_checkpointing: trade compute for memory in the LM (large LMs on a GPU).
        device: ``"cpu"``, ``"cuda"``, ...
        log_every: optimizer steps between history lines.
        grounding: ``"none"`` (the pure LLaVA prompt, the paper's method), ``"probe"`` (the
            findings of per-finding probes with their probabilities), ``"retrieval"`` (the most
            similar training reports) or ``"both"`` in the prompt, next to the image tokens (see
            :mod:`voxelfm.reportgen.grounding`). Stage 2 reuses stage 1's fitted grounding.
        grounding_feature, grounding_top_k, grounding_threshold, grounding_train_findings: the
            :class:`~voxelfm.reportgen.grounding.GroundingConfig` fields ``feature``, ``top_k``,
            ``threshold`` (0.5 or ``"f1"``) and ``train_findings`` (``truth`` or ``probe``).
    """

    stage: int = 2
    epochs: int = 3
    batch_size: int = 4
    grad_accum: int = 1
    lr: float | None = None
    min_lr: float = 1e-6
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    max_minutes: float | None = None
    lr_clock: Literal["steps", "time"] = "steps"
    seed: int = 4
    feature: Literal["cls", "patch", "cls+patch"] = "cls"
    max_patch_tokens: int | None = 512
    num_queries: int = 32
    width: int = 256
    num_heads: int = 8
    dropout: float = 0.1
    lora_r: int = 16
    lora_alpha: float = 32.0
    lora_dropout: float = 0.05
    lora_target_modules: list[str] = field(default_factory=lambda: list(LORA_TARGET_MODULES))
    max_length: int | None = 1024
    prompt: str = DEFAULT_PROMPT
    system_prompt: str | None = None
    report_style: Literal["original", "abnormal"] = "abnormal"
    feature_noise: float = 0.0
    checkpoint_every: int = 50
    select: Literal["best", "last"] = "best"
    max_val_examples: int | None = None
    gradient_checkpointing: bool = False
    device: str = "cpu"
    log_every: int = 1
    grounding: Literal["none", "probe", "retrieval", "both"] = "none"
    grounding_feature: str = "cls"
    grounding_top_k: int = 1
    grounding_threshold: float | str = 0.5
    grounding_train_findings: Literal["truth", "probe"] = "truth"

    def __post_init__(self) -> None:
        self.grounding_config()  # validates the grounding fields
        if self.stage not in (1, 2):
            raise ConfigError(f"stage must be 1 or 2, got {self.stage}")
        for name in ("epochs", "batch_size", "grad_accum", "checkpoint_every", "log_every"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.lr is not None and not self.lr > 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if self.report_style not in ("original", "abnormal"):
            raise ConfigError(f"report_style must be 'original' or 'abnormal', got {self.report_style!r}")
        if self.lr_clock not in ("steps", "time"):
            raise ConfigError(f"lr_clock must be 'steps' or 'time', got {self.lr_clock!r}")
        if self.select not in ("best", "last"):
            raise ConfigError(f"select must be 'best' or 'last', got {self.select!r}")
        if self.max_val_examples is not None and int(self.max_val_examples) < 1:
            raise ConfigError(f"max_val_examples must be at least 1 or None, got {self.max_val_examples}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ConfigError(f"max_minutes must be positive, got {self.max_minutes}")

    def grounding_config(self) -> Any:
        """The :class:`~voxelfm.reportgen.grounding.GroundingConfig` of these settings."""
        from voxelfm.reportgen.grounding import GroundingConfig

        return GroundingConfig(mode=self.grounding, feature=self.grounding_feature, top_k=self.grounding_top_k,
                               threshold=self.grounding_threshold, train_findings=self.grounding_train_findings,
                               seed=self.seed)

    @property
    def peak_lr(self) -> float:
        return float(self.lr if self.lr is not None else (1e-3 if self.stage == 1 else 2e-4))

    @property
    def effective_system_prompt(self) -> str:
        if self.system_prompt is not None:
            return self.system_prompt
        return "" if self.stage == 1 else STAGE2_SYSTEM_PROMPT

    @classmethod
    def cpu(cls, stage: int = 2, **overrides: Any) -> TrainConfig:
        """Small CPU defaults (32 queries of width 256, lr 1e-3 / 2e-4)."""
        return cls(stage=stage, **overrides)

    @classmethod
    def paper(cls, stage: int = 2, **overrides: Any) -> TrainConfig:
        """The reference's settings: 128 queries, width 2048; stage 1 lr 1e-4, 1 epoch, batch 1 × 32;
        stage 2 lr 2e-5, 10 epochs, batch 1 × 16, LoRA r 16 / α 32 / dropout 0.05."""
        base = dict(num_queries=128, width=2048, num_heads=8, dropout=0.1, batch_size=1, min_lr=1e-6,
                    warmup_ratio=0.03, max_length=1024)
        if stage == 1:
            base.update(epochs=1, grad_accum=32, lr=1e-4)
        else:
            base.update(epochs=10, grad_accum=16, lr=2e-5)
        base.update(overrides)
        return cls(stage=stage, **base)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainResult:
    """What :func:`train_report_model` did (``seconds``: wall time including earlier runs of a resumed
    training; ``cpu_seconds``: CPU time of this process in this call, all threads)."""

    model_dir: Path
    steps: int
    epochs_completed: float
    train_loss: float
    val_loss: float | None
    best_step: int | None
    seconds: float
    stopped_by_time: bool
    cpu_seconds: float
    n_train: int
    n_val: int
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["model_dir"] = str(self.model_dir)
        d.pop("history")
        return d


# --------------------------------------------------------------------------------------------
def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _cosine_lr(progress: float, peak: float, floor: float, warmup: float) -> float:
    """Linear warm-up over the first ``warmup`` of training, then cosine from ``peak`` to ``floor``
    (``progress`` in [0, 1]; the shape of transformers' ``cosine_with_min_lr`` schedule)."""
    progress = min(max(progress, 0.0), 1.0)
    if warmup > 0 and progress < warmup:
        return peak * progress / warmup
    t = (progress - warmup) / max(1.0 - warmup, 1e-12)
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * t))


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or "norm" in name.lower() or name.endswith(".bias"):
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def _fingerprint(cfg: TrainConfig, n_train: int) -> dict[str, Any]:
    keys = ("stage", "batch_size", "grad_accum", "seed", "feature", "max_patch_tokens", "num_queries", "width",
            "num_heads", "lora_r", "lora_alpha", "lora_target_modules", "epochs", "report_style")
    grounding = cfg.grounding_config().to_dict() if cfg.grounding != "none" else None  # old checkpoints: no key
    fp = {**{k: getattr(cfg, k) for k in keys}, "n_train": n_train}
    if grounding is not None:
        fp["grounding"] = grounding
    return fp


def _write_checkpoint(ckpt: Path, model: Any, optimizer: Any, scheduler: Any, state: dict[str, Any],
                      best_state: dict[str, torch.Tensor] | None) -> None:
    """Write the whole checkpoint folder into a temporary sibling, then swap it in."""
    from safetensors.torch import save_file

    ckpt.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{ckpt.name}.", suffix=".tmp", dir=ckpt.parent))
    try:
        model.save(tmp)
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "torch_rng": torch.get_rng_state()}, tmp / "optimizer.pt")
        if best_state is not None:
            save_file({k: v.contiguous() for k, v in best_state.items()}, str(tmp / "best_trainable.safetensors"))
        (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2))
        old = ckpt.parent / f".{ckpt.name}.old"
        if ckpt.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.rename(ckpt, old)
        os.rename(tmp, ckpt)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _evaluate_loss(model: Any, loader: Any) -> float:
    """Mean cross-entropy per target token over a loader.

    The global torch RNG is restored afterwards (iterating a DataLoader draws a seed from it), so
    validating never changes the training trajectory — an interrupted and resumed run equals an
    uninterrupted one.
    """
    total, count = 0.0, 0
    was = model.training
    rng = torch.get_rng_state()
    model.eval()
    with torch.no_grad():
        for batch in loader:
            n = int((batch["labels"][:, 1:] != -100).sum())
            if n == 0:
                continue
            out = model(batch["features"], batch["input_ids"], batch["attention_mask"], batch["labels"],
                        feature_mask=batch["feature_mask"])
            total += float(out.loss) * n
            count += n
    model.train(was)
    torch.set_rng_state(rng)
    return total / count if count else math.nan


def _build_model(config: TrainConfig, lm: str | None, init_from: Path | None, store: Any,
                 lm_and_tokenizer: tuple[Any, Any] | None, allow_download: bool) -> Any:
    from voxelfm.reportgen.model import LoraSettings, ReportModel, ReportModelConfig
    from voxelfm.reportgen.projector import ProjectorConfig

    init_cfg = None
    if init_from is not None:
        p = Path(init_from) / "report_model.json"
        if not p.is_file():
            raise CheckpointError(f"--init {init_from} is not a report model folder (no report_model.json); "
                                  "pass the stage-1 output folder")
        init_cfg = ReportModelConfig.from_dict(json.loads(p.read_text()))
        if config.feature != init_cfg.feature:
            raise ConfigError(f"stage 1 used feature {init_cfg.feature!r} but this run asks for {config.feature!r}")
    ids = store.ids
    if not ids:
        raise ConfigError(f"the embedding store {store.root} is empty; run `voxelfm extract` first")
    in_dim = int(store.load_tensor(ids[0], "cls").shape[-1])
    if init_cfg is not None:
        pcfg = init_cfg.projector
        lm_name = lm if lm is not None else init_cfg.lm
    else:
        pcfg = ProjectorConfig(in_dim=in_dim, out_dim=1, num_queries=config.num_queries, width=config.width,
                               num_heads=config.num_heads, dropout=config.dropout)
        lm_name = lm if lm is not None else "default"
    if pcfg.in_dim != in_dim:
        raise ConfigError(f"the store's embeddings have width {in_dim} but the projector expects {pcfg.in_dim}")
    lora = None
    if config.stage == 2:
        lora = LoraSettings(r=config.lora_r, alpha=config.lora_alpha, dropout=config.lora_dropout,
                            target_modules=list(config.lora_target_modules))
    from voxelfm.reportgen.lm import DEFAULT_LM, resolve_lm_path

    if lm_and_tokenizer is not None or str(lm_name) in ("default", DEFAULT_LM):
        lm_ref = "default" if str(lm_name) in ("default", DEFAULT_LM) else str(lm_name)
    else:
        lm_ref = resolve_lm_path(lm_name)  # a folder → absolute path; an id stays an id
    mcfg = ReportModelConfig(lm=lm_ref, projector=pcfg, feature=config.feature,
                             max_patch_tokens=config.max_patch_tokens, prompt=config.prompt,
                             system_prompt=config.effective_system_prompt, lora=lora, stage=config.stage,
                             report_style=config.report_style)
    model = ReportModel.create(mcfg, device=config.device, allow_download=allow_download,
                               lm_and_tokenizer=lm_and_tokenizer)
    if init_from is not None:
        from safetensors.torch import load_file

        model.projector.load_state_dict(load_file(str(Path(init_from) / "projector.safetensors")), strict=True)
    if config.gradient_checkpointing:
        model.lm.gradient_checkpointing_enable()
    return model


def _grounded_training_prompts(model: Any, cfg: TrainConfig, store: Any, table: Any, init_from: Path | None, *,
                               id_col: str, report_col: str, split_col: str) -> dict[str, str] | None:
    """Fit (or, for stage 2, reuse stage 1's) grounding, attach it to ``model`` and return the
    training / validation prompts ``{id: prompt}`` (``None`` without grounding)."""
    from voxelfm.reportgen.dataset import normalise_split, read_table
    from voxelfm.reportgen.grounding import GROUNDING_JSON, Grounding

    gcfg = cfg.grounding_config()
    if gcfg.mode == "none":
        return None
    grounding = None
    if init_from is not None and (init_from / GROUNDING_JSON).is_file():
        saved = Grounding.load(init_from)
        if saved.config == gcfg:
            grounding = saved
    if grounding is None:
        grounding = Grounding.fit(store, table, gcfg, id_col=id_col, report_col=report_col, split_col=split_col,
                                  report_style=cfg.report_style)
    model.grounding = grounding
    model.config.grounding = gcfg.to_dict()
    df = read_table(table, id_col=id_col)
    keep = df[split_col].map(normalise_split).isin(["train", "val"])  # Grounding.fit checked the column
    ids = [i for i in dict.fromkeys(df.loc[keep, id_col]) if store.has(i)]
    if not ids:
        return {}
    texts, _, _ = grounding.prompts(ids, store.matrix(ids, feature=gcfg.feature), cfg.prompt, training=True)
    return dict(zip(ids, texts))


def train_report_model(store: Any, table: Any, out_dir: str | os.PathLike[str], *, lm: str | None = None,
                       config: TrainConfig | None = None, init_from: str | os.PathLike[str] | None = None,
                       resume: bool = True, lm_and_tokenizer: tuple[Any, Any] | None = None,
                       allow_download: bool = False, id_col: str = "id", report_col: str = "report",
                       split_col: str = "split") -> TrainResult:
    """Train one stage and save the model into ``out_dir``.

    Args:
        store: an :class:`~voxelfm.inference.store.EmbeddingStore` or its folder.
        table: report table (path or DataFrame) with ``id``, ``report`` and ``split`` columns; the
            ``train`` rows are trained on, the ``val`` rows give the validation loss.
        out_dir: output folder (see module docstring); an existing checkpoint there is resumed.
        lm: base LM folder / cached Hugging Face id / ``None`` = offline default (or stage 1's LM).
        config: :class:`TrainConfig` (default ``TrainConfig.cpu(stage=2)``).
        init_from: a stage-1 model folder whose projector initialises this run (stage 2).
        resume: continue from ``out_dir/checkpoint`` if present.
        lm_and_tokenizer: use an already loaded LM and tokenizer (tests, notebooks).
        allow_download: let transformers download a missing LM.

    Returns:
        :class:`TrainResult`.
    """
    from torch.utils.data import DataLoader
    from transformers import get_cosine_with_min_lr_schedule_with_warmup

    from voxelfm.inference.store import EmbeddingStore
    from voxelfm.reportgen.dataset import ReportDataset, collate_reports

    cfg = config or TrainConfig.cpu(stage=2)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    store = store if isinstance(store, EmbeddingStore) else EmbeddingStore(store)
    _seed_everything(cfg.seed)
    model = _build_model(cfg, lm, Path(init_from) if init_from else None, store, lm_and_tokenizer, allow_download)
    tok = model.tokenizer
    prompts = _grounded_training_prompts(model, cfg, store, table, Path(init_from) if init_from else None,
                                         id_col=id_col, report_col=report_col, split_col=split_col)
    ds_kw = dict(prompts=prompts, feature=cfg.feature, max_patch_tokens=cfg.max_patch_tokens, prompt=cfg.prompt,
                 system_prompt=cfg.effective_system_prompt,
                 chat_template_kwargs=model.config.chat_template_kwargs, max_length=cfg.max_length,
                 id_col=id_col, report_col=report_col, split_col=split_col, cache_features=True,
                 report_style=cfg.report_style)
    train_ds = ReportDataset(store, table, tok, split="train", **ds_kw)
    if len(train_ds) == 0:
        raise ConfigError("no training examples: the table needs rows with split 'train', a report, and an "
                          "embedding in the store")
    val_ds = ReportDataset(store, table, tok, split="val", **ds_kw)
    if init_from is None and model.projector.config.input_norm == "standardize":
        # training-set statistics of the projector's input, stored with the projector (stage 2 and
        # generation reuse them; see voxelfm.reportgen.projector)
        mean, std = model.projector.token_statistics([train_ds.tokens(i) for i in range(len(train_ds))])
        model.projector.set_input_statistics(mean, std)
    # the end-of-turn token (last target of an answer) also stops generation
    last_targets = {lab[-1] for lab in (e[1] for e in train_ds._encoded) if lab and lab[-1] != -100}
    model.config.stop_token_ids = sorted(int(t) for t in last_targets if t != tok.eos_token_id)[:4]

    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0

    def collate(b):
        return collate_reports(b, pad_token_id=pad_id)

    # no gradients to keep: larger batches validate faster (the loss is a per-token mean either way)
    val_set = val_ds
    if cfg.max_val_examples is not None and len(val_ds) > cfg.max_val_examples:
        from torch.utils.data import Subset

        val_set = Subset(val_ds, range(int(cfg.max_val_examples)))
    val_loader = (DataLoader(val_set, batch_size=max(cfg.batch_size, 16), shuffle=False, collate_fn=collate)
                  if len(val_set) else None)
    n_batches = math.ceil(len(train_ds) / cfg.batch_size)
    steps_per_epoch = math.ceil(n_batches / cfg.grad_accum)
    total_steps = steps_per_epoch * cfg.epochs
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.peak_lr)
    scheduler = get_cosine_with_min_lr_schedule_with_warmup(
        optimizer, num_warmup_steps=int(round(cfg.warmup_ratio * total_steps)), num_training_steps=total_steps,
        min_lr=cfg.min_lr)

    state: dict[str, Any] = {"step": 0, "epoch": 0, "batch": 0, "best_val": None, "best_step": None,
                             "fingerprint": _fingerprint(cfg, len(train_ds)), "seconds": 0.0, "done": False}
    best_state: dict[str, torch.Tensor] | None = None
    history: list[dict[str, Any]] = []
    ckpt = out / CHECKPOINT_DIR
    hist_path = out / "history.jsonl"
    if resume and (ckpt / "trainer_state.json").is_file():
        from safetensors.torch import load_file

        saved = json.loads((ckpt / "trainer_state.json").read_text())
        if saved.get("fingerprint") != state["fingerprint"]:
            raise CheckpointError(f"{ckpt} was written with different settings ({saved.get('fingerprint')}); "
                                  "use another output folder or pass resume=False / --no-resume")
        model.load_trainable_state_dict(_read_trainable(ckpt, model))
        opt_state = torch.load(ckpt / "optimizer.pt", map_location="cpu", weights_only=True)
        optimizer.load_state_dict(opt_state["optimizer"])
        scheduler.load_state_dict(opt_state["scheduler"])
        torch.set_rng_state(opt_state["torch_rng"])
        if (ckpt / "best_trainable.safetensors").is_file():
            best_state = load_file(str(ckpt / "best_trainable.safetensors"))
        state.update({k: saved[k] for k in ("step", "epoch", "batch", "best_val", "best_step", "seconds", "done")})
        if hist_path.is_file():
            history = [json.loads(line) for line in hist_path.read_text().splitlines() if line.strip()]
    elif not resume and ckpt.exists():
        shutil.rmtree(ckpt)

    def log(rec: dict[str, Any]) -> None:
        history.append(rec)
        atomic_write_text(hist_path, "".join(json.dumps(r) + "\n" for r in history))

    def checkpoint() -> None:
        state["seconds"] = prior_seconds + (time.perf_counter() - t0)
        _write_checkpoint(ckpt, model, optimizer, scheduler, state, best_state)

    def validate() -> float | None:
        nonlocal best_state
        if val_loader is None:
            return None
        vl = _evaluate_loss(model, val_loader)
        log({"step": state["step"], "epoch": state["epoch"], "val_loss": vl,
             "elapsed": round(prior_seconds + time.perf_counter() - t0, 2)})
        if state["best_val"] is None or vl < state["best_val"]:
            state["best_val"], state["best_step"] = vl, state["step"]
            best_state = model.trainable_state_dict()
        return vl

    t0 = time.perf_counter()
    c0 = time.process_time()
    prior_seconds = float(state["seconds"])
    deadline = None if cfg.max_minutes is None else t0 + 60.0 * cfg.max_minutes
    time_clock = cfg.lr_clock == "time" and cfg.max_minutes is not None
    budget_seconds = 60.0 * float(cfg.max_minutes or 0.0)
    stopped_by_time = False
    last_loss = math.nan
    model.train()
    bar = progress(total=total_steps, desc=f"report stage {cfg.stage}", unit="step", initial=state["step"])
    try:
        while state["epoch"] < cfg.epochs and not state["done"]:
            gen = torch.Generator().manual_seed(cfg.seed + int(state["epoch"]))
            order = torch.randperm(len(train_ds), generator=gen).tolist()
            batches = [order[i:i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
            micro = 0
            running, running_n = 0.0, 0
            while state["batch"] < len(batches):
                idx = batches[state["batch"]]
                batch = collate([train_ds[i] for i in idx])
                feats = batch["features"]
                if cfg.feature_noise > 0:
                    feats = feats + cfg.feature_noise * torch.randn_like(feats)
                out_ = model(feats, batch["input_ids"], batch["attention_mask"], batch["labels"],
                             feature_mask=batch["feature_mask"])
                loss = out_.loss
                (loss / cfg.grad_accum).backward()
                running += float(loss.detach())
                running_n += 1
                micro += 1
                state["batch"] += 1
                end_of_epoch = state["batch"] >= len(batches)
                if micro == cfg.grad_accum or end_of_epoch:
                    if cfg.max_grad_norm:
                        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad],
                                                       cfg.max_grad_norm)
                    if time_clock:
                        elapsed = prior_seconds + time.perf_counter() - t0
                        frac = max(state["step"] / total_steps, elapsed / (prior_seconds + budget_seconds))
                        for g in optimizer.param_groups:
                            g["lr"] = _cosine_lr(frac, cfg.peak_lr, cfg.min_lr, cfg.warmup_ratio)
                    used_lr = optimizer.param_groups[0]["lr"]
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    micro = 0
                    state["step"] += 1
                    last_loss = running / max(running_n, 1)
                    running, running_n = 0.0, 0
                    bar.update(1)
                    bar.set_postfix(loss=f"{last_loss:.3f}")
                    if state["step"] % cfg.log_every == 0:
                        log({"step": state["step"], "epoch": state["epoch"], "loss": last_loss,
                             "lr": used_lr,
                             "elapsed": round(prior_seconds + time.perf_counter() - t0, 2)})
                    if state["step"] % cfg.checkpoint_every == 0 and not end_of_epoch:
                        checkpoint()
                    if deadline is not None and time.perf_counter() > deadline:
                        stopped_by_time = True
                        break
            if stopped_by_time and state["batch"] < len(batches):
                break
            state["epoch"] += 1
            state["batch"] = 0
            validate()
            checkpoint()
            if deadline is not None and time.perf_counter() > deadline and state["epoch"] < cfg.epochs:
                stopped_by_time = True
                break
    finally:
        bar.close()
    if stopped_by_time:
        if state["batch"] > 0:  # mid-epoch: validate what we have
            validate()
        checkpoint()
    else:
        state["done"] = True
        checkpoint()

    if cfg.select == "best" and best_state is not None:
        model.load_trainable_state_dict(best_state)
    model.save(out)
    epochs_completed = state["epoch"] + (state["batch"] / max(n_batches, 1))
    result = TrainResult(model_dir=out, steps=int(state["step"]), epochs_completed=round(epochs_completed, 3),
                         train_loss=last_loss, val_loss=state["best_val"], best_step=state["best_step"],
                         seconds=round(prior_seconds + time.perf_counter() - t0, 2), stopped_by_time=stopped_by_time,
                         cpu_seconds=round(time.process_time() - c0, 2),
                         n_train=len(train_ds), n_val=len(val_set), history=history)
    atomic_write_text(out / "train_summary.json",
                      json.dumps({**result.to_dict(), "config": cfg.to_dict(), "init_from": str(init_from or ""),
                                  "skipped_ids": train_ds.skipped[:50]}, indent=2, default=str))
    return result


def _read_trainable(ckpt: Path, model: Any) -> dict[str, torch.Tensor]:
    """Trainable tensors of a checkpoint folder (projector + LoRA adapters) under the model's names."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    params = dict(model.named_parameters())
    for k, v in load_file(str(ckpt / "projector.safetensors")).items():
        if f"projector.{k}" in params:  # buffers (input statistics) are recomputed from the same split
            state[f"projector.{k}"] = v
    if model.config.lora is not None:
        lora_file = ckpt / "lora" / "adapter_model.safetensors"
        if not lora_file.is_file():
            raise CheckpointError(f"{ckpt} has no LoRA adapters")
        set_peft_model_state_dict(model.lm, load_file(str(lora_file)))  # adapters loaded in place
        for n, p in model.named_parameters():
            if p.requires_grad and n.startswith("lm."):
                state[n] = p.detach().clone()
    return state


def train_two_stages(store: Any, table: Any, out_dir: str | os.PathLike[str], *, lm: str | None = None,
                     stage1: TrainConfig | None = None, stage2: TrainConfig | None = None,
                     max_minutes: float | None = None, stage1_fraction: float = 0.4, resume: bool = True,
                     lm_and_tokenizer: tuple[Any, Any] | None = None, allow_download: bool = False,
                     **table_kw: Any) -> tuple[TrainResult, TrainResult]:
    """Stage 1 into ``OUT/stage1``, then stage 2 (initialised from it) into ``OUT/stage2``.

    Args:
        max_minutes: total time budget, split ``stage1_fraction`` / rest between the stages (a
            stage's own ``max_minutes`` is overridden).
    """
    out = Path(out_dir)
    s1 = stage1 or TrainConfig.cpu(stage=1)
    s2 = stage2 or TrainConfig.cpu(stage=2)
    if s1.stage != 1 or s2.stage != 2:
        raise ConfigError("stage1 must be a stage-1 config and stage2 a stage-2 config")
    t0 = time.perf_counter()
    if max_minutes is not None:
        s1 = replace(s1, max_minutes=max_minutes * stage1_fraction)
    r1 = train_report_model(store, table, out / "stage1", lm=lm, config=s1, resume=resume,
                            lm_and_tokenizer=lm_and_tokenizer, allow_download=allow_download, **table_kw)
    if max_minutes is not None:
        left = max(max_minutes - (time.perf_counter() - t0) / 60.0, 0.05)
        s2 = replace(s2, max_minutes=left)
    r2 = train_report_model(store, table, out / "stage2", lm=lm, config=s2, init_from=out / "stage1",
                            resume=resume, lm_and_tokenizer=lm_and_tokenizer, allow_download=allow_download,
                            **table_kw)
    return r1, r2
