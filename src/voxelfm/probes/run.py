"""``train_probe``: one probe = (embedding store, label table, target, task, head, feature).

Pipeline: join labels to embeddings by id → patient-grouped splits (given or made) → optional
nested training fraction → targets → train the head with model selection on validation (or fit
sklearn / kNN with the hyper-parameter chosen on validation) → predict every split → test metrics
with confidence intervals → write ``config.json``, ``history.jsonl``, ``predictions.csv``,
``results.json`` and the best weights (``weights.safetensors``) to ``output_dir``.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from voxelfm.errors import ConfigError
from voxelfm.probes.data import (
    TOKEN_FEATURES,
    VECTOR_FEATURES,
    GridDataset,
    TokenDataset,
    TokenSource,
    VectorDataset,
    feature_matrix,
    join_labels,
    read_label_table,
)
from voxelfm.probes.splits import nested_fractions
from voxelfm.probes.tasks import Targets, Task, get_task, undefined
from voxelfm.probes.trainer import TrainConfig, Trainer, limit_threads
from voxelfm.utils import atomic_write, atomic_write_text

__all__ = [
    "HEADS",
    "HEAD_DEFAULTS",
    "ProbeRun",
    "allowed_hparams",
    "check_probe",
    "default_feature",
    "resolve_hparams",
    "train_probe",
]

#: head name → how it consumes features
HEADS: dict[str, str] = {
    "linear": "vector", "logistic": "vector", "ridge": "vector", "mlp": "vector", "knn": "vector",
    "cox": "vector", "attentive": "tokens", "localisation": "tokens", "segmentation": "grid",
    "cosine": "vector",
}

#: per-head defaults, sized so a phantom-cohort suite runs in minutes on 2 CPU cores. ``patience``:
#: training stops after that many epochs without a better validation score (the best epoch is
#: restored either way); generous, because small validation sets give noisy scores.
HEAD_DEFAULTS: dict[str, dict[str, Any]] = {
    "linear": {"epochs": 100, "batch_size": 32, "lr": 1e-2, "weight_decay": 1e-4, "schedule": "cosine",
               "noise_p": 0.0, "standardize": True, "patience": 25},
    "mlp": {"epochs": 60, "batch_size": 32, "lr": 1e-3, "weight_decay": 1e-4, "schedule": "cosine",
            "noise_p": 0.5, "noise_sigma": 0.1, "hidden_dim": 1024, "dropout": 0.5, "standardize": True,
            "patience": 15},
    "attentive": {"epochs": 40, "batch_size": 16, "lr": 1e-3, "weight_decay": 1e-4, "schedule": "cosine",
                  "warmup_epochs": 2, "noise_p": 0.5, "noise_sigma": 0.1, "hidden_dim": 256, "num_queries": 1,
                  "num_heads": 4, "dropout": 0.1, "attn_dropout": 0.1, "patience": 10},
    "cox": {"epochs": 300, "batch_size": None, "lr": 1e-2, "weight_decay": 1e-2, "schedule": "cosine",
            "noise_p": 0.0, "standardize": True},
    "localisation": {"epochs": 40, "batch_size": 8, "lr": 1e-3, "weight_decay": 1e-2, "schedule": "cosine",
                     "warmup_epochs": 2, "noise_p": 0.5, "noise_sigma": 0.1, "hidden_dim": 128, "n_heads": 4,
                     "patience": 10},
    "segmentation": {"epochs": 20, "batch_size": 2, "lr": 5e-3, "weight_decay": 1e-2, "schedule": "cosine",
                     "warmup_epochs": 1, "noise_p": 0.2, "noise_sigma": 0.1, "hidden_dim": 32, "min_channels": 16,
                     "num_steps": 3, "final_norm": "identity", "seg_size": 32, "patience": 5, "repeats": 1},
    "knn": {"variant": "dino", "k": None, "temperature": 0.07, "metric": "euclidean", "k_grid": None},
    "logistic": {"grid": None, "max_iter": 2000},
    "ridge": {"grid": None},
    "cosine": {},
}
_HEAD_KEYS: dict[str, set[str]] = {
    "linear": {"standardize"}, "cox": {"standardize"}, "mlp": {"hidden_dim", "dropout", "standardize"},
    "attentive": {"hidden_dim", "num_queries", "num_heads", "dropout", "attn_dropout"},
    "localisation": {"hidden_dim", "n_heads"},
    "segmentation": {"hidden_dim", "min_channels", "num_steps", "final_norm", "seg_size", "repeats"},
    "knn": {"variant", "k", "temperature", "metric", "k_grid"}, "logistic": {"grid", "max_iter"},
    "ridge": {"grid"}, "cosine": set(),
}
_TRAIN_KEYS = {f.name for f in fields(TrainConfig)} - {"seed"}
_COMMON_DEFAULTS: dict[str, Any] = {
    # data
    "patient_col": "patient_id", "split_fractions": (0.7, 0.15, 0.15), "fraction": 1.0, "cache_mb": 256.0,
    # tasks
    "class_weight": None, "standardize_targets": True, "event_col": "event", "ties": "breslow",
    "horizons": None, "threshold": 0.5, "auroc_ci": "delong", "loc_loss": "smooth_l1", "smooth_l1_beta": 1.0,
    "coords": "auto", "positions": "centre", "num_classes": None, "label_space": "source",
    "retrieval_split": "test", "ks": (1, 5, 10), "n_negatives": 99, "retrieval_method": "expected",
    "max_pairs": None,
    # evaluation protocol: "split" (train / val / test as given or made) or "cv" (``folds``-fold
    # cross-validation grouped by patient, out-of-fold predictions of every scan pooled; probes/cv.py)
    "protocol": "split", "folds": 5,
    # statistics
    "n_resamples": 1000,
    # compute: torch + BLAS/OpenMP threads for the whole run (see trainer.limit_threads)
    "threads": 1,
    # outputs
    "save_weights": True,
}


def allowed_hparams(head: str) -> set[str]:
    """Option names :func:`train_probe` accepts for ``head``."""
    if head not in HEADS:
        raise ConfigError(f"unknown head {head!r}; choose one of {', '.join(HEADS)}")
    trains = HEADS[head] != "vector" or head in ("linear", "mlp", "cox")
    return set(_COMMON_DEFAULTS) | _HEAD_KEYS[head] | (_TRAIN_KEYS if trains else set())


def check_probe(task: str, head: str | None, feature: str | None, hparams: dict[str, Any]
                ) -> tuple[Task, str, str, dict[str, Any]]:
    """Validate a (task, head, feature, options) combination; returns the task, head, feature and
    the resolved options. Raises :class:`~voxelfm.errors.ConfigError` with what to change."""
    task_obj = get_task(task)
    head = head or task_obj.default_head
    if head not in HEADS:
        raise ConfigError(f"unknown head {head!r}; choose one of {', '.join(HEADS)}")
    if head not in task_obj.heads:
        raise ConfigError(f"head {head!r} does not fit task {task_obj.name!r}; use one of "
                          f"{', '.join(task_obj.heads)}")
    feature = feature or default_feature(head)
    kind = HEADS[head]
    if kind == "vector" and feature not in VECTOR_FEATURES:
        raise ConfigError(f"head {head!r} takes one vector per scan; feature {feature!r} is not one "
                          f"(use {', '.join(VECTOR_FEATURES)}, or a token head such as attentive for patch tokens)")
    if kind in ("tokens", "grid") and feature not in TOKEN_FEATURES:
        raise ConfigError(f"head {head!r} reads token sets; use feature=patch (or registers), not {feature!r}")
    if head in ("localisation", "segmentation") and feature != "patch":
        raise ConfigError(f"head {head!r} needs feature=patch (token positions)")
    hp = resolve_hparams(head, hparams)
    if not 0 < float(hp["fraction"]) <= 1:
        raise ConfigError(f"fraction must be in (0, 1], got {hp['fraction']}")
    if hp["protocol"] not in ("split", "cv"):
        raise ConfigError(f"protocol must be 'split' or 'cv', got {hp['protocol']!r}")
    if hp["protocol"] == "cv" and int(hp["folds"]) < 3:
        raise ConfigError(f"protocol 'cv' needs folds >= 3 (one tests, one selects the model), got {hp['folds']}")
    return task_obj, head, feature, hp


def default_feature(head: str) -> str:
    """``cls`` for vector heads, ``patch`` for token / grid heads."""
    return "patch" if HEADS.get(head) in ("tokens", "grid") else "cls"


def resolve_hparams(head: str, hparams: dict[str, Any]) -> dict[str, Any]:
    """Merge ``hparams`` over the head's defaults; unknown names are an error."""
    allowed = allowed_hparams(head)
    unknown = sorted(set(hparams) - allowed)
    if unknown:
        raise ConfigError(f"unknown option(s) {', '.join(unknown)} for head {head!r}; valid: "
                          f"{', '.join(sorted(allowed))}")
    base = {k: v for k, v in TrainConfig().to_dict().items() if k != "seed"}  # the seed is train_probe's
    hp = {**base, **_COMMON_DEFAULTS, **HEAD_DEFAULTS[head]}
    hp.update({k: v for k, v in hparams.items()})
    return hp


# ------------------------------------------------------------------------------------------ result
@dataclass
class ProbeRun:
    """The outcome of :func:`train_probe`.

    Attributes:
        predictions: one row per evaluated id: ``id``, ``split``, target column(s) and prediction
            column(s) (see :mod:`voxelfm.probes.tasks`); for retrieval one row per label.
        metrics: test-split metrics, name → :class:`voxelfm.stats.Estimate`.
        best_epoch: selected epoch (1-based; ``None`` for sklearn / kNN / retrieval).
        history: per-epoch rows (train loss, val loss, val score, lr, seconds).
        val_metrics: the same metrics on the validation split.
        config: resolved settings (task, head, feature, target, hyper-parameters, n per split).
        output_dir: where files were written (``None`` if not saved).
        model: the trained head (torch module, sklearn/kNN probe or ``None``) — not serialised.
    """

    task: str
    head: str
    feature: str
    target: list[str]
    predictions: pd.DataFrame
    metrics: dict[str, Any]
    best_epoch: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    val_metrics: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    output_dir: Path | None = None
    seconds: float = 0.0
    model: Any = field(default=None, repr=False)

    @property
    def primary(self) -> str:
        """Name of the task's primary metric."""
        return get_task(self.task).primary

    def summary(self) -> str:
        """One line per test metric, ``name: value [lo, hi]``."""
        lines = [f"{self.task} / {self.head} / {self.feature} -> {', '.join(self.target)}"]
        lines += [f"  {k}: {v}" for k, v in self.metrics.items()]
        return "\n".join(lines)

    @classmethod
    def load(cls, output_dir: str | os.PathLike[str]) -> ProbeRun:
        """Reload a finished run from its folder (``results.json`` + ``predictions.csv``)."""
        from voxelfm.stats import Estimate

        out = Path(output_dir)
        res = json.loads((out / "results.json").read_text())

        def est(d: dict[str, Any]) -> Estimate:
            keep = {k: d[k] for k in ("value", "ci_low", "ci_high", "method", "n", "alpha", "name") if k in d}
            return Estimate(**{k: (math.nan if v is None else v) for k, v in keep.items()})

        hist_path = out / "history.jsonl"
        history = [json.loads(x) for x in hist_path.read_text().splitlines() if x.strip()] \
            if hist_path.exists() else []
        return cls(task=res["task"], head=res["head"], feature=res["feature"], target=res["target"],
                   predictions=pd.read_csv(out / "predictions.csv", dtype={"id": str}),
                   metrics={k: est(v) for k, v in res["metrics"].items()},
                   best_epoch=res.get("best_epoch"), history=history,
                   val_metrics={k: est(v) for k, v in res.get("val_metrics", {}).items()},
                   config=res.get("config", {}), output_dir=out, seconds=res.get("seconds", 0.0))


# ------------------------------------------------------------------------------------------ helpers
def _as_store(store: Any) -> Any:
    if isinstance(store, (str, os.PathLike)):
        from voxelfm.inference.store import EmbeddingStore

        path = Path(store)
        if not path.is_dir():
            raise FileNotFoundError(f"embedding store {path} does not exist")
        store = EmbeddingStore(path)
        if not store.ids:
            raise ValueError(f"embedding store {path} has no embeddings (run voxelfm extract first)")
    return store


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _meta(store: Any, item_id: str) -> dict[str, Any]:
    """Header-only read of one embedding file: record, patch_size_mm and the token grid."""
    from safetensors import safe_open

    path = store.file_for(item_id)
    if not path.exists():  # reference-layout .pth store: full load, no record
        f = store.load(item_id)
        return {"record": dict(f.record or {}), "grid": list(f.grid), "patch_size_mm": list(f.patch_size_mm)}
    with safe_open(str(path), framework="pt") as fh:
        meta = json.loads((fh.metadata() or {}).get("voxelfm", "{}"))
        grid = list(fh.get_slice("patch").get_shape()[:3])
    return {"record": meta.get("record", {}) or {}, "grid": grid,
            "patch_size_mm": meta.get("patch_size_mm", [math.nan] * 3)}


def _input_shape(meta: dict[str, Any]) -> np.ndarray:
    rec = meta["record"]
    if rec.get("final_shape"):
        return np.asarray(rec["final_shape"], dtype=float)
    ps = rec.get("patch_size", 14)
    return np.asarray(meta["grid"], dtype=float) * np.asarray(ps if isinstance(ps, (list, tuple)) else [ps] * 3,
                                                              dtype=float)


def _localisation_targets(store: Any, frame: pd.DataFrame, columns: list[str], hp: dict[str, Any]
                          ) -> tuple[pd.DataFrame, Targets]:
    """Relative (z, y, x) targets on the model-input grid, and each scan's extent in mm."""
    vals = frame[columns].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    keep = np.isfinite(vals).all(axis=1)
    mode = hp["coords"]
    if mode == "auto":
        mode = "relative" if (vals[keep] >= 0).all() and (vals[keep] <= 1).all() else "voxel"
    if mode not in ("relative", "voxel"):
        raise ConfigError(f"coords must be 'auto', 'relative' or 'voxel', got {hp['coords']!r}")
    rel = np.full_like(vals, np.nan)
    extent = np.full_like(vals, np.nan)
    for i, item in enumerate(frame.index):
        if not keep[i]:
            continue
        m = _meta(store, item)
        size = _input_shape(m)
        psmm = np.asarray(m["patch_size_mm"], dtype=float)
        extent[i] = np.asarray(m["grid"], dtype=float) * psmm
        if mode == "relative":
            rel[i] = vals[i]
        else:
            from voxelfm.preprocess import apply_geometry_to_points

            pts = apply_geometry_to_points(vals[i:i + 1], m["record"])[0]
            rel[i] = (pts + 0.5) / size
    inside = keep & np.isfinite(rel).all(axis=1) & (rel >= 0).all(axis=1) & (rel <= 1).all(axis=1)
    if (keep & ~inside).any():
        warnings.warn(f"{int((keep & ~inside).sum())} target point(s) fall outside the model input "
                      "(cropped away) and are skipped", stacklevel=3)
    if not inside.any():
        raise ValueError(f"no usable localisation target in {columns}")
    frame = frame[inside]
    y = rel[inside]
    return frame, Targets(y=y, model_y=y.astype(np.float32), columns=list(columns), out_dim=3,
                          extra={"mode": mode, "extent_mm": extent[inside]})


def _build_torch_head(head: str, in_dim: int, out_dim: int, hp: dict[str, Any]) -> torch.nn.Module:
    from voxelfm.probes import heads as H

    if head == "linear":
        return H.LinearHead(in_dim, out_dim, standardize=hp["standardize"])
    if head == "cox":
        return H.CoxHead(in_dim, standardize=hp["standardize"])
    if head == "mlp":
        return H.MLPHead(in_dim, out_dim, hidden_dim=int(hp["hidden_dim"]), dropout=float(hp["dropout"]),
                         standardize=hp["standardize"])
    if head == "attentive":
        return H.AttentivePoolingHead(in_dim, out_dim, hidden_dim=int(hp["hidden_dim"]),
                                      num_queries=int(hp["num_queries"]), num_heads=int(hp["num_heads"]),
                                      dropout=float(hp["dropout"]), attn_dropout=float(hp["attn_dropout"]))
    if head == "localisation":
        return H.PositionalAttentionRegressor3D(in_dim, n_heads=int(hp["n_heads"]), hidden_dim=int(hp["hidden_dim"]))
    if head == "segmentation":
        return H.PatchToVoxelDecoder(in_dim, out_dim, hidden_dim=int(hp["hidden_dim"]), num_steps=int(hp["num_steps"]),
                                     final_norm=str(hp["final_norm"]), min_channels=int(hp["min_channels"]))
    raise ConfigError(f"head {head!r} is not a torch head")


class _UnitInterval(torch.nn.Module):
    """Wraps a head so its outputs lie in (0, 1) (sigmoid): relative coordinates for localisation
    with heads other than the positional regressor (whose output is in [0, 1] by construction)."""

    def __init__(self, head: torch.nn.Module) -> None:
        super().__init__()
        self.head = head
        self.input_kind = getattr(head, "input_kind", "vector")

    @property
    def norm(self) -> torch.nn.Module | None:
        """The wrapped head's input standardiser (not a second registered copy)."""
        return getattr(self.head, "norm", None)

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return torch.sigmoid(self.head(*args, **kwargs))


def _train_config(hp: dict[str, Any], seed: int) -> TrainConfig:
    return TrainConfig(**{k: hp[k] for k in _TRAIN_KEYS if k in hp}, seed=seed)


def _epoch_bar(enabled: bool, total: int, desc: str):
    from voxelfm.utils import progress

    bar = progress(total=total, desc=desc, unit="epoch", disable=None if enabled else True, leave=False)

    def update(row: dict[str, Any]) -> None:
        bar.set_postfix(loss=f"{row['train_loss']:.4f}", val=f"{row['val_score']:.4f}")
        bar.update(1)

    return bar, update


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        return None if not math.isfinite(float(obj)) else float(obj)
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _metric_dict(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: _jsonable(v.to_dict()) for k, v in metrics.items()}


# ------------------------------------------------------------------------------------------ API
def train_probe(store: Any, labels: Any, target: str | Sequence[str], *, task: str,
                head: str | None = None, feature: str | None = None, id_col: str = "id",
                split_col: str | None = "split", seed: int = 4,
                output_dir: str | os.PathLike[str] | None = None, progress: bool = True,
                **hparams: Any) -> ProbeRun:
    """Train and evaluate one probe on frozen embeddings.

    Args:
        store: an :class:`~voxelfm.inference.store.EmbeddingStore` or its folder.
        labels: label table (CSV / TSV / Parquet path, or a DataFrame) with an id column.
        target: label column, or several (multilabel columns; survival ``[time, event]``;
            localisation ``[z, y, x]``).
        task: ``binary``, ``multilabel``, ``multiclass``, ``regression``, ``survival``,
            ``localisation``, ``segmentation`` or ``retrieval``.
        head: ``linear``, ``logistic``, ``ridge``, ``mlp``, ``attentive``, ``knn``, ``cox``,
            ``localisation``, ``segmentation`` (default: the task's usual head).
        feature: ``cls``, ``mean_patch``, ``cls+mean_patch``, ``registers`` or ``patch``
            (default: ``cls`` for vector heads, ``patch`` for token heads).
        id_col, split_col: column names; without a split column patient-grouped 70/15/15 splits
            are made with ``seed`` (``patient_col``, default ``patient_id``).
        seed: seeds splits, initialisation, shuffling and noise (reference: 4).
        output_dir: write results there (``None`` = keep in memory only).
        progress: show an epoch progress bar.
        **hparams: training options (:class:`~voxelfm.probes.trainer.TrainConfig` fields such as
            ``epochs``, ``lr``, ``batch_size``, ``accum_steps``, ``noise_p``), head options
            (``hidden_dim``, ``dropout``, ``num_queries``, ``k``...), task options
            (``class_weight``, ``event_col``, ``ties``, ``horizons``, ``coords``, ``seg_size``...),
            data options (``fraction`` of the training set, nested; ``patient_col``) and
            ``n_resamples`` for bootstrap CIs. See ``docs/probes.md``.

    Returns:
        :class:`ProbeRun`.
    """
    t_start = time.perf_counter()
    task_obj, head, feature, hp = check_probe(task, head, feature, hparams)
    with limit_threads(hp["threads"]):
        run = _train_probe(task_obj, head, feature, hp, store, labels, target, id_col=id_col,
                           split_col=split_col, seed=seed, progress=progress)
    run.seconds = time.perf_counter() - t_start
    if output_dir is not None:
        _write_outputs(run, Path(output_dir), hp)
    return run


def _train_probe(task_obj: Task, head: str, feature: str, hp: dict[str, Any], store: Any, labels: Any,
                 target: str | Sequence[str], *, id_col: str, split_col: str | None, seed: int,
                 progress: bool) -> ProbeRun:
    store = _as_store(store)
    base_dir = None if isinstance(labels, pd.DataFrame) else Path(labels).resolve().parent
    table = read_label_table(labels, id_col=id_col)
    columns = task_obj.columns(target, hp)
    strat = task_obj.stratify_column(columns)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        frame = join_labels(store.ids, table, columns, id_col=id_col, split_col=split_col,
                            patient_col=hp["patient_col"], stratify_col=strat, seed=seed,
                            split_fractions=tuple(hp["split_fractions"]))
    notes = [str(w.message) for w in caught]
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    _seed_everything(seed)
    ctx = {"n_resamples": int(hp["n_resamples"]), "seed": 0, "threshold": float(hp["threshold"]),
           "auroc_ci": hp["auroc_ci"], "horizons": hp["horizons"]}
    config = {"task": task_obj.name, "head": head, "feature": feature, "target": columns, "seed": seed,
              "id_col": id_col, "split_col": split_col, "hparams": _jsonable(hp),
              "labels": str(labels) if not isinstance(labels, pd.DataFrame) else "<DataFrame>",
              "store": str(getattr(store, "root", "")), "notes": notes}

    def run_on(f: pd.DataFrame, cfg: dict[str, Any]) -> ProbeRun:
        _seed_everything(seed)  # every cross-validation round starts from the same state
        f = _training_fraction(f, hp, strat, seed)
        if task_obj.name == "retrieval":
            return _run_retrieval(store, f, columns, feature, hp, cfg)
        if task_obj.name == "segmentation":
            return _run_segmentation(store, f, columns, hp, cfg, seed, base_dir, progress)
        return _run_supervised(task_obj, store, f, columns, head, feature, hp, cfg, seed, ctx, progress)

    if hp["protocol"] == "cv" and task_obj.trainable:
        from voxelfm.probes.cv import run_cross_validated

        return run_cross_validated(task_obj, frame, run_on, hp, config, strat, seed, ctx)
    return run_on(frame, config)


def _training_fraction(frame: pd.DataFrame, hp: dict[str, Any], strat: str | None, seed: int) -> pd.DataFrame:
    """``frame`` with its training split cut to the nested ``hp["fraction"]`` (by patient)."""
    if float(hp["fraction"]) >= 1:
        return frame
    tr = frame[frame["split"] == "train"]
    subset = nested_fractions(list(tr.index), [float(hp["fraction"])], groups=list(tr["patient"]),
                              stratify=None if strat is None else tr[strat].astype(str).tolist(),
                              seed=seed)[float(hp["fraction"])]
    return frame[(frame["split"] != "train") | frame.index.isin(subset)]


# ------------------------------------------------------------------------------------------ supervised
def _run_supervised(task_obj: Task, store: Any, frame: pd.DataFrame, columns: list[str], head: str,
                    feature: str, hp: dict[str, Any], config: dict[str, Any], seed: int,
                    ctx: dict[str, Any], progress: bool) -> ProbeRun:
    if task_obj.name == "localisation":
        frame, targets = _localisation_targets(store, frame, columns, hp)
    else:
        targets = task_obj.targets(frame, columns, (frame["split"] == "train").to_numpy(), hp)
    split = frame["split"].to_numpy()
    masks = {s: split == s for s in ("train", "val", "test")}
    n = {s: int(m.sum()) for s, m in masks.items()}
    config["n"] = n
    empty = [s for s, k in n.items() if k == 0]
    if empty:
        raise ValueError(f"no usable target in the {empty[0]} split ({n}); more labelled scans are needed")
    hp_loss = dict(hp)
    if "pos_weight" in targets.extra:
        hp_loss["_pos_weight"] = targets.extra["pos_weight"]
    ids = list(frame.index)
    kind = HEADS[head]
    classification = task_obj.mode in ("binary", "multilabel", "multiclass")

    def post(raw: np.ndarray) -> np.ndarray:
        if head in ("knn", "logistic") and classification:
            return np.asarray(raw, dtype=np.float64)
        return task_obj.predict(raw, targets)

    preds: dict[str, np.ndarray] = {}
    history: list[dict[str, Any]] = []
    best_epoch: int | None = None
    model: Any
    selection: dict[str, Any] = {}
    if kind == "vector":
        x_all = feature_matrix(store, ids, feature)
        xs = {s: x_all[m] for s, m in masks.items()}
    if head in ("knn", "logistic", "ridge"):
        y_fit = targets.model_y
        score = lambda yv, raw: task_obj.score(yv, post(raw))
        if head == "knn":
            from voxelfm.probes.heads import KNNProbe
            from voxelfm.probes.heads.knn import DEFAULT_K_GRID

            model = KNNProbe(variant=hp["variant"], k=hp["k"], k_grid=hp["k_grid"] or DEFAULT_K_GRID,
                             temperature=float(hp["temperature"]), metric=hp["metric"])
            model.fit(xs["train"], y_fit[masks["train"]], xs["val"], targets.y[masks["val"]],
                      mode=task_obj.mode, score=score,
                      num_classes=targets.out_dim if task_obj.mode == "multiclass" else None)
            selection = {"k": model.selected, "scores": model.scores}
        else:
            from voxelfm.probes.heads import SklearnLinearProbe

            if head == "logistic" and not classification:
                raise ConfigError("head 'logistic' is for classification; use 'ridge' for regression")
            if head == "ridge" and task_obj.mode != "regression":
                raise ConfigError("head 'ridge' is for regression; use 'logistic' for classification")
            from sklearn.preprocessing import StandardScaler

            scaler = StandardScaler().fit(xs["train"])
            xs = {s: scaler.transform(v) for s, v in xs.items()}
            model = SklearnLinearProbe(head, grid=hp["grid"], max_iter=int(hp.get("max_iter", 2000)), seed=seed)
            model.fit(xs["train"], y_fit[masks["train"]], xs["val"], targets.y[masks["val"]],
                      mode=task_obj.mode, score=score)
            selection = {"C" if head == "logistic" else "alpha": model.selected, "scores": model.scores}
        for s in masks:
            preds[s] = post(model.predict(xs[s]))
    else:
        cfg = _train_config(hp, seed)
        if kind == "vector":
            in_dim = xs["train"].shape[1]
            dss = {s: VectorDataset(xs[s], targets.model_y[m]) for s, m in masks.items()}
        else:
            source = TokenSource(store, feature, cache_mb=float(hp["cache_mb"]))
            in_dim = source.embed_dim(ids[0])
            dss = {s: TokenDataset(source, [i for i, k in zip(ids, m) if k], targets.model_y[m])
                   for s, m in masks.items()}
        model = _build_torch_head(head, in_dim, targets.out_dim, hp)
        if task_obj.name == "localisation" and head != "localisation":
            model = _UnitInterval(model)
        norm = getattr(model, "norm", None)
        if norm is not None and hasattr(norm, "fit"):
            norm.fit(torch.as_tensor(xs["train"]))
        trainer = Trainer(model, lambda out, y: task_obj.loss(out, y, hp_loss), cfg, convention=hp["positions"])
        y_val = targets.y[masks["val"]]
        bar, update = _epoch_bar(progress, cfg.epochs, f"{task_obj.name}/{head}")
        try:
            result = trainer.fit(dss["train"], dss["val"], lambda raw: task_obj.score(y_val, post(raw)),
                                 on_epoch=update)
        finally:
            bar.close()
        history, best_epoch = result.history, result.best_epoch
        for s in masks:
            preds[s] = post(trainer.predict(dss[s]))

    ext = targets.extra.get("extent_mm")
    metrics, val_metrics = {}, {}
    for s, store_to in (("test", metrics), ("val", val_metrics)):
        m = masks[s]
        c = dict(ctx, ci=(s == "test"))
        if ext is not None:
            c["extent_mm"] = ext[m]
        if task_obj.name == "survival":
            c["train_y"] = targets.y[masks["train"]]
        store_to.update(task_obj.metrics(targets.y[m], preds[s], targets, c))
    rows = []
    for s in ("train", "val", "test"):
        m = masks[s]
        cols = task_obj.prediction_columns(targets.y[m], preds[s], targets)
        df = pd.DataFrame({"id": [i for i, k in zip(ids, m) if k], "split": s, **cols})
        rows.append(df)
    predictions = pd.concat(rows, ignore_index=True)
    if ext is not None:
        e = np.concatenate([ext[masks[s]] for s in ("train", "val", "test")])
        d = predictions[["target_z", "target_y", "target_x"]].to_numpy() - \
            predictions[["pred_z", "pred_y", "pred_x"]].to_numpy()
        predictions["distance_mm"] = np.linalg.norm(d * e, axis=1)
        for j, axis in enumerate("zyx"):
            predictions[f"extent_{axis}_mm"] = e[:, j]
    config["selection"] = _jsonable(selection)
    config["targets"] = _jsonable({k: v for k, v in targets.extra.items() if k != "extent_mm"})
    if targets.classes is not None:
        config["classes"] = _jsonable(targets.classes)
    return ProbeRun(task=task_obj.name, head=head, feature=feature, target=columns, predictions=predictions,
                    metrics=metrics, best_epoch=best_epoch, history=history, val_metrics=val_metrics,
                    config=config, model=model)


# ------------------------------------------------------------------------------------------ retrieval
def _run_retrieval(store: Any, frame: pd.DataFrame, columns: list[str], feature: str, hp: dict[str, Any],
                   config: dict[str, Any]) -> ProbeRun:
    from voxelfm.stats import retrieval_recall

    which = hp["retrieval_split"]
    sel = frame if which == "all" else frame[frame["split"] == which]
    if which not in ("all", "train", "val", "test"):
        raise ConfigError(f"retrieval_split must be train, val, test or all, got {which!r}")
    if len(columns) == 1 and not pd.api.types.is_numeric_dtype(sel[columns[0]]):
        # one column of ';'-joined label names (the reference's storage)
        lists = sel[columns[0]].fillna("").astype(str).str.split(";")
        names = sorted({x.strip() for v in lists for x in v if x.strip()})
        lab = pd.DataFrame([[n in {x.strip() for x in v} for n in names] for v in lists], columns=names)
    else:
        lab = pd.DataFrame({c: pd.to_numeric(sel[c], errors="coerce").fillna(0).astype(int) == 1 for c in columns})
    x = feature_matrix(store, list(sel.index), feature)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = retrieval_recall(x, lab, ks=tuple(hp["ks"]), n_negatives=int(hp["n_negatives"]),
                               method=hp["retrieval_method"], seed=int(config["seed"]),
                               max_pairs=hp["max_pairs"], n_resamples=1000)
    metrics = {f"recall@{k}": res.macro[k] for k in res.ks}
    for lab_name in res.labels:
        for k in res.ks:
            metrics[f"recall@{k}/{lab_name}"] = res.per_label[lab_name][k]
    rows = [{"label": lab_name, "n_positives": res.n_positives[lab_name], "n_trials": res.n_trials[lab_name],
             **{f"recall@{k}": res.per_label[lab_name][k].value for k in res.ks}} for lab_name in res.labels]
    config["n"] = {which: len(sel)}
    config["retrieval"] = {"method": res.method, "n_negatives": res.n_negatives,
                           "skipped_labels": res.skipped_labels, "random_baseline": res.random_baseline}
    return ProbeRun(task="retrieval", head="cosine", feature=feature, target=columns,
                    predictions=pd.DataFrame(rows), metrics=metrics, config=config)


# ------------------------------------------------------------------------------------------ segmentation
def _capped_shape(shape: Sequence[int], cap: int | None) -> tuple[int, int, int]:
    if not cap:
        return tuple(int(s) for s in shape)  # type: ignore[return-value]
    f = min(1.0, float(cap) / max(shape))
    return tuple(max(1, round(s * f)) for s in shape)  # type: ignore[return-value]


def _read_label_map(path: Path, record: dict[str, Any]) -> np.ndarray:
    suffix = "".join(path.suffixes).lower()
    if suffix.endswith(".npy"):
        return np.load(path)
    if suffix.endswith(".npz"):
        with np.load(path) as z:
            return z[z.files[0]]
    from voxelfm.io import read_volume

    vol = read_volume(path, check_hu=False)  # a label map, not HU
    if record.get("orientation") == "reference_layout":
        return np.rint(vol.reference_layout()[0]).astype(np.int64)
    return np.rint(vol.array).astype(np.int64)


_GEOMETRY_KEYS = ("orientation", "input_shape", "crop_box", "final_shape", "to_source")
_LABEL_CACHE: OrderedDict[tuple, torch.Tensor] = OrderedDict()
_LABEL_CACHE_BYTES = 256 * 2**20
_label_cache_used = 0


def _label_map_on_grid(path: Path, record: dict[str, Any], space: str, cap: int | None) -> torch.Tensor:
    """The label map of one scan on the decoder's output grid ``[D', H', W']`` (int16).

    Reading a NIfTI label map and resampling it dominated short segmentation runs, and a suite
    reads the same maps for every backbone: results are cached in memory (LRU, 256 MiB) keyed by
    the file (path, size, mtime), the store record's geometry, ``label_space`` and ``seg_size``.
    """
    import torch.nn.functional as F

    global _label_cache_used
    st = path.stat()
    geometry = json.dumps({k: record.get(k) for k in _GEOMETRY_KEYS}, sort_keys=True, default=str)
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, geometry, space, cap)
    hit = _LABEL_CACHE.get(key)
    if hit is not None:
        _LABEL_CACHE.move_to_end(key)
        return hit
    lab = _read_label_map(path, record)
    if space == "source":
        from voxelfm.preprocess import apply_geometry_to_labels

        lab = apply_geometry_to_labels(lab, record)
    lab = np.asarray(lab)
    if lab.size and (lab.min() < 0 or lab.max() > np.iinfo(np.int16).max):
        raise ValueError(f"label map {path} holds labels outside [0, 32767]")
    out = torch.as_tensor(lab.astype(np.int16))
    size = _capped_shape(out.shape, cap)
    if tuple(out.shape) != size:
        out = F.interpolate(out[None, None].float(), size=size, mode="nearest-exact")[0, 0].to(torch.int16)
    nbytes = out.numel() * out.element_size()
    if nbytes <= _LABEL_CACHE_BYTES:
        _LABEL_CACHE[key] = out
        _label_cache_used += nbytes
        while _label_cache_used > _LABEL_CACHE_BYTES:
            _, old = _LABEL_CACHE.popitem(last=False)
            _label_cache_used -= old.numel() * old.element_size()
    return out


def _run_segmentation(store: Any, frame: pd.DataFrame, columns: list[str], hp: dict[str, Any],
                      config: dict[str, Any], seed: int, base_dir: Path | None, progress: bool) -> ProbeRun:

    from voxelfm.stats import dice_from_scans, dice_scores

    col = columns[0]
    cap = hp["seg_size"]
    space = hp["label_space"]
    if space not in ("source", "input"):
        raise ConfigError(f"label_space must be 'source' (label map on the scan's grid) or 'input' "
                          f"(already on the model-input grid), got {space!r}")

    def load_target(item: str) -> torch.Tensor:
        p = Path(str(frame.loc[item, col]))
        if not p.is_absolute() and base_dir is not None:
            p = base_dir / p
        if not p.exists():
            raise FileNotFoundError(f"label map {p} for id {item!r} does not exist")
        record = _meta(store, item)["record"]
        return _label_map_on_grid(p, record, space, cap)

    ids = list(frame.index)
    split = frame["split"].to_numpy()
    masks = {s: split == s for s in ("train", "val", "test")}
    config["n"] = {s: int(m.sum()) for s, m in masks.items()}
    source = TokenSource(store, "patch", cache_mb=float(hp["cache_mb"]))
    dss = {s: GridDataset(source, [i for i, k in zip(ids, m) if k], load_target) for s, m in masks.items()}
    max_label = max(int(ds.target(i).max()) for ds in dss.values() for i in range(len(ds)))
    num_classes = int(hp["num_classes"] or max_label + 1)
    if max_label >= num_classes:
        raise ValueError(f"label maps hold label {max_label} but num_classes is {num_classes}")
    in_dim = source.embed_dim(ids[0])
    repeats = int(hp["repeats"])
    if repeats < 1:
        raise ConfigError(f"repeats must be >= 1 (decoders trained per backbone), got {hp['repeats']!r}")
    seg_task = get_task("segmentation")
    argmax = lambda out: out.argmax(1).to(torch.int16).numpy()

    def split_targets(s: str) -> list[np.ndarray]:  # read on demand: label maps of big cohorts are GBs
        return [dss[s].target(i).numpy() for i in range(len(dss[s]))]

    def val_score(maps: list[np.ndarray]) -> float:
        return float(dice_scores(maps, split_targets("val"), num_classes).macro.value)

    # one decoder per repeat (seeds seed, seed + 1, ...): a decoder's Dice varies with its
    # initialisation and data order by as much as backbones differ, so the per-scan Dice that are
    # scored and compared are means over the repeats
    decoders, history, best_epochs = [], [], []
    scan_dice: dict[str, list[Any]] = {s: [] for s in dss}  # DiceResult per repeat
    for r in range(repeats):
        if r:
            _seed_everything(seed + r)  # repeat r is the decoder a run with seed + r trains
        model = _build_torch_head("segmentation", in_dim, num_classes, hp)
        cfg = _train_config(hp, seed + r)
        trainer = Trainer(model, lambda out, y: seg_task.loss(out, y, hp), cfg)
        desc = "segmentation" if repeats == 1 else f"segmentation {r + 1}/{repeats}"
        bar, update = _epoch_bar(progress, cfg.epochs, desc)
        try:
            result = trainer.fit(dss["train"], dss["val"], val_score, reduce=argmax, on_epoch=update)
        finally:
            bar.close()
        decoders.append(model)
        best_epochs.append(result.best_epoch)
        history.extend(h if repeats == 1 else {"repeat": r + 1, **h} for h in result.history)
        for s in dss:
            maps = trainer.predict(dss[s], reduce=argmax)
            scan_dice[s].append(dice_scores(maps, split_targets(s), num_classes))
    metrics, val_metrics, rows = {}, {}, []
    for s in ("train", "val", "test"):
        ci = "bootstrap" if s == "test" and int(hp["n_resamples"]) > 0 else None
        first = scan_dice[s][0]
        with warnings.catch_warnings():  # NaN where no decoder had the class in pred or target
            warnings.simplefilter("ignore", RuntimeWarning)
            d = np.nanmean(np.stack([r.per_scan for r in scan_dice[s]]), axis=0)
        res = dice_from_scans(d, first.target_voxels, first.class_ids, ci=ci,
                              n_resamples=int(hp["n_resamples"]), seed=4)
        if s in ("val", "test"):
            out = metrics if s == "test" else val_metrics
            out["macro_dice"] = res.macro
            out["micro_dice"] = res.micro
            for c, e in res.per_class.items():
                out[f"dice/{c}"] = e
        df = pd.DataFrame({"id": dss[s].ids, "split": s})
        for j, c in enumerate(res.class_ids):
            df[f"dice:{int(c)}"] = res.per_scan[:, j]
        for j, c in enumerate(res.class_ids):
            df[f"voxels:{int(c)}"] = res.target_voxels[:, j]
        rows.append(df)
    config["num_classes"] = num_classes
    config["seg_shape_example"] = list(dss["train"].target(0).shape)
    if repeats > 1:
        config["best_epochs"] = best_epochs
    return ProbeRun(task="segmentation", head="segmentation", feature="patch", target=columns,
                    predictions=pd.concat(rows, ignore_index=True), metrics=metrics,
                    best_epoch=best_epochs[0], history=history, val_metrics=val_metrics,
                    config=config, model=decoders[0] if repeats == 1 else torch.nn.ModuleList(decoders))


# ------------------------------------------------------------------------------------------ outputs
def _write_outputs(run: ProbeRun, out: Path, hp: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.json", json.dumps(_jsonable(run.config), indent=2))
    atomic_write_text(out / "history.jsonl", "".join(json.dumps(_jsonable(r)) + "\n" for r in run.history))
    with atomic_write(out / "predictions.csv") as tmp:
        run.predictions.to_csv(tmp, index=False)
    if hp.get("save_weights", True) and run.model is not None:
        tensors = None
        if isinstance(run.model, torch.nn.Module):
            tensors = {k: v.detach().cpu().contiguous() for k, v in run.model.state_dict().items()}
        elif hasattr(run.model, "state_tensors"):
            tensors = run.model.state_tensors()
        if tensors:
            with atomic_write(out / "weights.safetensors") as tmp:
                save_file(tensors, str(tmp), metadata={"head": run.head, "task": run.task})
    results = {"task": run.task, "head": run.head, "feature": run.feature, "target": run.target,
               "primary": get_task(run.task).primary, "metrics": _metric_dict(run.metrics),
               "val_metrics": _metric_dict(run.val_metrics), "best_epoch": run.best_epoch,
               "seconds": round(run.seconds, 3), "config": _jsonable(run.config)}
    # results.json last: its presence marks a finished run (the suite runner resumes on it)
    atomic_write_text(out / "results.json", json.dumps(results, indent=2))
    run.output_dir = out


def undefined_metrics(names: Sequence[str]) -> dict[str, Any]:
    """Undefined estimates for ``names`` (used when a run cannot be evaluated)."""
    return {n: undefined(n) for n in names}
