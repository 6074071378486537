"""Batch extraction: many volumes → one :class:`EmbeddingStore`, resumable, overlapped, sharded.

* Reading and preprocessing run in background workers (a ``torch.utils.data.DataLoader`` with
  ``workers`` processes), so the next volumes are read while the model runs on the current one.
* Every embedding file is written atomically and logged in ``index/<writer>.jsonl``; a re-run
  skips ids already ``ok`` (and, unless ``retry_failed``, ids that failed before). A failing
  volume is logged as ``failed`` with its error and the run goes on.
* Under ``torchrun`` (or any initialised ``torch.distributed`` group) rank ``r`` of ``W`` takes
  items ``r, r+W, r+2W, ...``, logs to ``index/rank<r>.jsonl``; after a barrier rank 0 writes
  the merged ``index.csv``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from voxelfm.inference.chunked import parse_window
from voxelfm.inference.extract import (
    MODES,
    check_baseline_options,
    extract_preprocessed,
    inference_scope,
    is_baseline,
    resolve_device,
    resolve_dtype,
    resolve_preset,
)
from voxelfm.inference.heap import restore_malloc_defaults
from voxelfm.inference.store import EmbeddingStore
from voxelfm.preprocess import Preset, preprocess_volume
from voxelfm.utils import atomic_write_text, progress, safe_id

__all__ = ["BatchSummary", "BatchItem", "extract_batch", "weights_fingerprint", "FORMATS"]

FORMATS: tuple[str, ...] = ("safetensors", "pth", "both")


@dataclass(frozen=True)
class BatchItem:
    """One volume of a batch: ``id`` plus a path (``series_uid`` picks a DICOM series;
    ``overrides`` replace the header's spacing / orientation / rescale, see
    :mod:`voxelfm.io.overrides`) or an in-memory source (``Volume`` / array); ``columns``: extra
    manifest columns (or extra dict keys) that a baseline backbone turns into preprocess options
    (``options_from_columns``)."""

    id: str
    source: Any
    series_uid: str | None = None
    overrides: Any = None
    columns: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def source_text(self) -> str:
        if isinstance(self.source, (str, os.PathLike)):
            return os.fspath(self.source) + (f"#{self.series_uid}" if self.series_uid else "")
        return f"<{type(self.source).__name__}>"


@dataclass
class BatchSummary:
    """Outcome of one :func:`extract_batch` call (all ranks together under ``torchrun``).

    ``skipped`` counts ids already done or failed before (without ``retry_failed``);
    ``failed_before`` is how many of those skipped ids failed in an earlier run.
    """

    ok: int = 0
    failed: int = 0
    skipped: int = 0
    total: int = 0
    out: str = ""
    seconds: float = 0.0
    failed_ids: list[str] = field(default_factory=list)
    failed_before: int = 0
    model_seconds: float = 0.0

    @property
    def model_busy(self) -> float:
        """Fraction of the wall time the model was computing (forward passes, this process)."""
        return self.model_seconds / self.seconds if self.seconds > 0 else 0.0

    @property
    def all_ok(self) -> bool:
        """Every item has an embedding: nothing failed now, and no earlier failure was skipped."""
        return self.failed == 0 and self.failed_before == 0

    def __str__(self) -> str:
        skipped = f"{self.skipped} skipped"
        if self.failed_before:
            skipped += (f" ({self.failed_before} of them failed before and were not retried; "
                        f"--retry-failed re-tries them)")
        busy = f", model busy {100 * self.model_busy:.0f} %" if self.model_seconds > 0 else ""
        return (f"voxelfm extract: {self.ok} ok, {self.failed} failed, {skipped} "
                f"of {self.total} in {self.seconds:.1f} s{busy} -> {self.out}")

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "failed": self.failed, "skipped": self.skipped, "total": self.total,
                "failed_before": self.failed_before, "out": self.out, "seconds": round(self.seconds, 3),
                "model_seconds": round(self.model_seconds, 3), "model_busy": round(self.model_busy, 4),
                "failed_ids": list(self.failed_ids)}


def _from_input_item(it: Any) -> BatchItem:
    """A :class:`voxelfm.io.InputItem` (manifest row, file or series) as a batch item, with its reading
    overrides and extra manifest columns."""
    return BatchItem(str(it.id), it.path, getattr(it, "series_uid", None), getattr(it, "overrides", None),
                     dict(getattr(it, "columns", {})))


def _as_items(items: Iterable[Any]) -> list[BatchItem]:
    if isinstance(items, (str, os.PathLike)):  # one path, not an iterable of characters
        items = [items]
    items = list(items)
    from voxelfm.io import collect_inputs

    if items and all(isinstance(i, (str, os.PathLike)) for i in items):
        items = collect_inputs(items)
    out: list[BatchItem] = []
    seen: set[str] = set()
    for pos, it in enumerate(items):
        if isinstance(it, (str, os.PathLike)):
            # a plain path among (id, source) pairs: expanded as on its own (a folder may hold
            # several series); its id comes from the file name, as for a list of paths
            expanded = [_from_input_item(x) for x in collect_inputs([it])]
        elif isinstance(it, BatchItem):
            expanded = [it]
        elif hasattr(it, "id") and hasattr(it, "path"):  # voxelfm.io.InputItem
            expanded = [_from_input_item(it)]
        elif isinstance(it, dict) and "id" in it and ("path" in it or "source" in it):
            extra = {k: v for k, v in it.items() if k not in ("id", "path", "source", "series_uid", "overrides")}
            expanded = [BatchItem(str(it["id"]), it.get("path", it.get("source")), it.get("series_uid"),
                                  it.get("overrides"), extra)]
        elif isinstance(it, (tuple, list)) and len(it) in (2, 3) and isinstance(it[0], (str, int)):
            expanded = [BatchItem(str(it[0]), it[1], it[2] if len(it) == 3 else None)]
        else:
            raise ValueError(
                f"batch item {pos} ({type(it).__name__}: {_short(it)}) is not a path, an (id, source) "
                "pair, an (id, path, series_uid) triple, a {'id', 'path'} dict or a voxelfm.io.InputItem; "
                "an array needs an id: pass (id, array)")
        for bi in expanded:
            if not bi.id.strip():
                raise ValueError(f"empty id for batch item {pos} ({bi.source_text})")
            if bi.id in seen:
                raise ValueError(f"duplicate id {bi.id!r} in the batch (item {pos}, {bi.source_text}); "
                                 "ids must be unique: give (id, source) pairs with distinct ids")
            seen.add(bi.id)
            out.append(bi)
    return out


def _short(obj: Any, limit: int = 60) -> str:
    text = f"shape {tuple(obj.shape)}" if hasattr(obj, "shape") else repr(obj)
    return text if len(text) <= limit else text[:limit - 3] + "..."


class _ReadPreprocess(torch.utils.data.Dataset):
    """Reads and preprocesses one item; errors are returned, not raised (the run goes on)."""

    def __init__(self, items: Sequence[BatchItem], preset: Preset, crop_background: bool,
                 max_patches: int | None, patch_size: int,
                 spacing: tuple[float, float, float] | None = None, baseline: Any = None) -> None:
        self.items = list(items)
        self.preset = preset
        self.crop_background = crop_background
        self.max_patches = max_patches
        self.patch_size = patch_size
        self.spacing = spacing
        self.baseline = baseline  # a baseline backbone: its own preprocess (+ options from columns)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[int, Any, str | None, float]:
        item = self.items[i]
        t0 = time.perf_counter()
        try:
            src = item.source
            if isinstance(src, (str, os.PathLike)):
                from voxelfm.io import read_volume
                from voxelfm.io.read import detect_format

                # --spacing applies to numpy files only (other formats store their own geometry)
                sp = self.spacing if self.spacing is not None and detect_format(src) in ("npy", "npz") else None
                src = read_volume(src, series_uid=item.series_uid, spacing=sp, overrides=item.overrides)
            if self.baseline is not None:
                options = self.baseline.options_from_columns(item.columns)
                arr_spacing = self.spacing if not hasattr(src, "spacing") else None
                pre = self.baseline.preprocess(src, spacing=arr_spacing, **options)
            else:
                pre = preprocess_volume(src, self.preset, crop_background=self.crop_background,
                                        max_patches=self.max_patches, patch_size=self.patch_size, normalise=True)
            return i, pre, None, time.perf_counter() - t0
        except Exception as exc:  # noqa: BLE001 - recorded as a failure of this item
            return i, None, _error_text(exc), time.perf_counter() - t0


def _error_text(exc: BaseException) -> str:
    msg = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def _identity(x: Any) -> Any:
    return x


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)
    restore_malloc_defaults()  # a reader returns its freed volumes to the system (forked inside the scope)


def _embed_and_write(model: torch.nn.Module, pre: Any, item: BatchItem, read_s: float, store: EmbeddingStore,
                     formats: Sequence[str], **forward: Any) -> tuple[str | None, float]:
    """One item's forward and store write: ``(error text or None, forward seconds)``."""
    t0 = time.perf_counter()
    forward_s = 0.0
    try:
        feats = extract_preprocessed(model, pre, **forward)
        forward_s = float(feats.record["forward_seconds"])
        feats.record["read_preprocess_seconds"] = round(read_s, 4)
        seconds = read_s + time.perf_counter() - t0
        if "pth" in formats:
            store.write_reference_pth(item.id, feats, log="safetensors" not in formats, source=item.source_text,
                                      seconds=seconds)
        if "safetensors" in formats:
            store.write(item.id, feats, source=item.source_text, seconds=seconds)
        return None, forward_s
    except torch.cuda.OutOfMemoryError as exc:
        torch.cuda.empty_cache()
        return _error_text(exc) + " (try --mode chunked or a smaller --max-patches)", forward_s
    except Exception as exc:  # noqa: BLE001 - recorded, the run goes on
        return _error_text(exc), forward_s


def _dist_context(device: str | torch.device | None) -> tuple[int, int, bool]:
    """``(rank, world_size, we_initialised)``; initialises a group from torchrun's env if needed."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), False
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and "RANK" in os.environ and dist.is_available():
        use_cuda = torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda")
        if use_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        return dist.get_rank(), dist.get_world_size(), True
    return 0, 1, False


def _clean_stale_tmp(store: EmbeddingStore, ids: Iterable[str]) -> int:
    """Remove temporary files a killed run left for ``ids`` (never another item's)."""
    folder = store.root / "embeddings"
    if not folder.is_dir():
        return 0
    n = 0
    for item_id in ids:
        sid = safe_id(item_id)
        for ext in ("safetensors", "pth"):
            for tmp in folder.glob(f".{sid}.{ext}.*.tmp"):
                tmp.unlink(missing_ok=True)
                n += 1
    return n


def weights_fingerprint(model: torch.nn.Module) -> str:
    """A short hash of a model's weights (names, shapes, dtypes and up to 4,096 evenly spaced values
    of every tensor): two different checkpoints of one architecture get different fingerprints.
    Cheap (milliseconds for ViT-B)."""
    h = hashlib.blake2b(digest_size=12)
    for name, t in model.state_dict().items():
        flat = t.detach().reshape(-1)
        if flat.numel() > 4096:
            # float32 linspace can round the last index up to numel for > 2^24 values: clamp (same
            # indices as before for every tensor that worked)
            idx = torch.linspace(0, flat.numel() - 1, 4096, device=flat.device).long().clamp_(max=flat.numel() - 1)
            flat = flat[idx]
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(flat.to("cpu", torch.float64).numpy().tobytes())
    return h.hexdigest()


def _settings(model: Any, preset: Preset, crop_background: bool, max_patches: int | None,
              dtype: torch.dtype | None) -> dict[str, Any]:
    cfg = getattr(model, "config", None)
    if is_baseline(model):
        desc = model.describe() if hasattr(model, "describe") else {"family": getattr(model, "family", "")}
        return {"preset": desc.get("family"), "crop_background": False, "max_patches": None,
                "model": {k: v for k, v in desc.items() if k != "source"}, "weights": weights_fingerprint(model),
                "dtype": "fp32" if dtype is None else str(dtype).removeprefix("torch.")}
    return {"preset": preset.to_dict(), "crop_background": bool(crop_background),
            "max_patches": max_patches, "model": cfg.to_dict() if hasattr(cfg, "to_dict") else None,
            "weights": weights_fingerprint(model),
            "dtype": "fp32" if dtype is None else str(dtype).removeprefix("torch.")}


def _check_settings(root: Path, settings: dict[str, Any], write: bool) -> None:
    path = root / "extraction.json"
    if path.exists():
        old = json.loads(path.read_text(encoding="utf-8"))
        # keys an older store did not record are not compared
        diff = sorted(k for k in settings if k in old and json.dumps(old[k], sort_keys=True)
                      != json.dumps(settings[k], sort_keys=True))
        if diff:
            raise ValueError(f"{root} holds embeddings made with different settings ({', '.join(diff)}); "
                             "use a new output folder or the same settings (see its extraction.json)")
    elif write:
        from voxelfm import __version__

        root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({**settings, "voxelfm_version": __version__}, indent=1))


def extract_batch(model: torch.nn.Module, items: Iterable[Any], out: str | os.PathLike[str], *,
                  preset: str | Preset = "default", crop_background: bool = False,
                  max_patches: int | None = None, mode: str = "auto",
                  window: int | str | Sequence[int] | None = None, overlap: float = 0.25,
                  device: str | torch.device | None = None, dtype: str | torch.dtype | None = None,
                  memory_budget_gb: float | None = None, workers: int = 0, format: str = "safetensors",
                  retry_failed: bool = False, writer: str | None = None,
                  show_progress: bool | None = None,
                  spacing: Sequence[float] | None = None) -> BatchSummary:
    """Extract features of many volumes into the store at ``out`` (resumable).

    Args:
        model: the backbone (same as :func:`voxelfm.extract_features`); a baseline backbone uses its
            own preprocessing, with options from each item's extra manifest columns
            (``model.options_from_columns``, e.g. FMCIB seed points).
        items: paths (files, folders, CSV manifests — expanded by :func:`voxelfm.io.collect_inputs`),
            :class:`voxelfm.io.InputItem` s, ``(id, path_or_array)`` tuples or ``{"id", "path"}``
            dicts, also mixed (a path's id is its file name). Ids become file names only through
            :func:`voxelfm.utils.safe_id`.
        out: the store folder (:class:`EmbeddingStore`).
        preset, crop_background, max_patches, mode, window, overlap, device, dtype,
            memory_budget_gb: as :func:`voxelfm.extract_features`.
        workers: background processes that read + preprocess (0 = in this process).
        format: ``"safetensors"`` (the store format), ``"pth"`` (reference layout
            ``{"cls": [1,C], "patch": [d,h,w,C]}`` only) or ``"both"``.
        retry_failed: also retry ids whose last attempt failed (default: skip them).
        writer: name of this process's status log (default ``main``; ``rank<r>`` under torchrun).
        show_progress: progress bar with ETA (default: on, rank 0 only; ``VOXELFM_NO_PROGRESS=1``
            silences it).
        spacing: ``(sz, sy, sx)`` mm for ``.npy``/``.npz`` paths (default: an ``.npz`` ``spacing``
            entry, else 1 mm with a warning); other formats carry their own spacing.

    Returns:
        :class:`BatchSummary` (ok / failed / skipped counts summed over ranks; ``model_busy`` =
        forward time / wall time of this process).

    Raises:
        ValueError: bad arguments, duplicate ids, or ``out`` written with different settings.
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {list(FORMATS)}, got {format!r}")
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if not hasattr(model, "patch_size"):
        raise TypeError("model must be a voxelfm backbone (see voxelfm.load_backbone / build_backbone)")
    # Options that would fail every item are usage errors, raised before anything is read.
    if mode not in MODES:
        raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be a fraction in [0, 1), got {overlap}")
    if memory_budget_gb is not None and not memory_budget_gb > 0:
        raise ValueError(f"memory_budget_gb must be > 0, got {memory_budget_gb}")
    if max_patches is not None and max_patches < 1:
        raise ValueError(f"max_patches must be a positive number of tokens, got {max_patches}")
    baseline = is_baseline(model)
    if baseline:
        check_baseline_options(model, preset=preset, crop_background=crop_background, max_patches=max_patches,
                               mode=mode, window=window)
    else:
        parse_window(window, int(model.patch_size))
    ac_dtype = resolve_dtype(dtype)
    if spacing is not None:
        spacing = tuple(float(v) for v in spacing)
        if len(spacing) != 3 or not all(v > 0 and v < float("inf") for v in spacing):
            raise ValueError(f"spacing must be three positive numbers (sz, sy, sx) in mm, got {spacing}")
    root = Path(out)
    if root.exists() and not root.is_dir():
        raise ValueError(f"{root} exists and is not a folder; -o/--output names the embedding store folder")
    formats = {"safetensors": ("safetensors",), "pth": ("pth",), "both": ("safetensors", "pth")}[format]
    t_start = time.perf_counter()
    all_items = _as_items(items)
    rank, world, owns_group = _dist_context(device)
    if world > 1 and device is None and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    dev = resolve_device(device, model)
    resolved = resolve_preset(model, preset)
    settings = _settings(model, resolved, crop_background, max_patches, ac_dtype)
    _check_settings(root, settings, write=rank == 0)
    store = EmbeddingStore(root, writer=writer or (f"rank{rank}" if world > 1 else "main"))
    store.records(refresh=True)

    mine = all_items[rank::world]
    todo: list[BatchItem] = []
    skipped = failed_before = 0
    for it in mine:
        st = store.status(it.id)
        done = st == "ok" and all(
            (store.file_for(it.id) if f == "safetensors" else store.pth_file_for(it.id)).exists() for f in formats)
        if done or (st == "failed" and not retry_failed):
            skipped += 1
            failed_before += int(not done)
        else:
            todo.append(it)
    _clean_stale_tmp(store, (it.id for it in todo))

    ok = failed = 0
    model_seconds = 0.0
    failed_ids: list[str] = []
    ds = _ReadPreprocess(todo, resolved, crop_background, max_patches, 0 if baseline else int(model.patch_size),
                         spacing, baseline=model if baseline else None)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, shuffle=False, num_workers=workers,
                                         collate_fn=_identity, worker_init_fn=_worker_init if workers else None,
                                         prefetch_factor=2 if workers else None,
                                         persistent_workers=False)
    disable = None if show_progress is None else not show_progress
    if rank != 0:
        disable = True
    # The bar is updated by hand: tqdm.auto's asyncio variant calls iter() on what it wraps, and
    # every iter() of a DataLoader starts its own workers, which then read the first volumes twice.
    bar = progress(total=len(todo), desc="extract", unit="vol", disable=disable)
    forward = dict(mode=mode, window=window, overlap=overlap, device=dev, dtype=dtype,
                   memory_budget_gb=memory_budget_gb)
    with inference_scope(dev):  # linear weights packed once, freed activations reused, for the whole run
        try:
            for i, pre, err, read_s in loader:
                item = todo[i]
                if err is None:
                    err, forward_s = _embed_and_write(model, pre, item, read_s, store, formats, **forward)
                    model_seconds += forward_s
                if err is None:
                    ok += 1
                else:
                    store.record_failure(item.id, source=item.source_text, error=err)
                    failed += 1
                    failed_ids.append(item.id)
                bar.update(1)  # counted when done, so the rate and ETA are of finished volumes
        except BaseException:
            if world == 1:  # interrupted (Ctrl-C, an error): the table still shows what is done
                store.write_index()
            raise
        finally:
            bar.close()
            del loader
    counts = [ok, failed, skipped, len(mine), failed_before]
    if world > 1:
        import torch.distributed as dist

        t = torch.tensor(counts, dtype=torch.int64,
                         device=dev if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(t)
        counts = [int(v) for v in t.tolist()]
        dist.barrier()
    if rank == 0:
        store.write_index()
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
        if owns_group:
            dist.destroy_process_group()
    return BatchSummary(ok=counts[0], failed=counts[1], skipped=counts[2], total=counts[3], out=str(root),
                        seconds=time.perf_counter() - t_start, failed_ids=failed_ids, failed_before=counts[4],
                        model_seconds=model_seconds)
