"""Prepared-volume store: CT volumes resampled once to isotropic HU, stored as memory-mappable int16.

Pre-training samples many random crops per volume per epoch; reading and resampling DICOM/NIfTI each
time would dominate. :func:`prepare_volumes` (CLI ``voxelfm prepare``) reads every input once
(:func:`voxelfm.io.collect_inputs` + :func:`voxelfm.io.read_volume`), applies the preset's HU window,
optionally crops the background (:func:`voxelfm.preprocess.foreground_box`), resamples to the preset's
isotropic spacing (:func:`voxelfm.preprocess.resample_isotropic`: finest spacing floored at 0.75 mm for
``default``/``paper``) and writes one ``int16`` ``.npy`` per volume. :class:`VolumeStore` opens them
with ``np.load(mmap_mode="r")``, so a data loader slices crops without loading whole volumes.

Layout of a store folder::

    STORE/store.json                 preset and options the store was made with
    STORE/volumes/<safe_id>.npy      int16 [D, H, W], HU, isotropic, canonical SPL (paper: reader layout)
    STORE/index/prepare.jsonl        append-only log, one JSON record per processed input (last wins)
    STORE/index.csv                  the index as a table (id, path, shape_final, spacing, source,
                                     status, error, ...), rewritten atomically after every run

Resumable and atomic: each array is written to a temporary file and renamed, then logged; a killed
run leaves at most a temporary file (removed on the next run) and the next run skips every id
already logged ``ok`` or ``skipped`` (``failed`` ids are retried only with ``retry_failed=True``).
One writer per store at a time.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from voxelfm.errors import VoxelFMError
from voxelfm.utils import append_jsonl, atomic_write, atomic_write_text, read_jsonl_folder, safe_id
from voxelfm.utils.pool import process_pool

__all__ = ["VolumeStore", "prepare_volumes", "PrepareSummary", "INDEX_COLUMNS"]

INDEX_COLUMNS = (
    "id",
    "path",
    "shape_final",
    "spacing",
    "source",
    "series_uid",
    "status",
    "error",
    "input_shape",
    "input_spacing",
    "crop_box",
    "seconds",
)
_LOG = Path("index") / "prepare.jsonl"
_INT16 = (-32768, 32767)


# ---- the store -----------------------------------------------------------------------------------


class VolumeStore:
    """Read access to a prepared-volume store.

    Args:
        root: the store folder written by :func:`prepare_volumes`.

    Attributes:
        root: the folder. ids: ids whose status is ``ok``, in index order. preset: the preset dict
        the store was made with (``store.json``).

    Example::

        store = VolumeStore("prepared")
        vol = store.open(store.ids[0])      # np.memmap int16 [D, H, W], HU, isotropic
        crop = np.asarray(vol[10:66, 20:76, 20:76], dtype=np.float32)
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"volume store {self.root} does not exist; create it with `voxelfm prepare`")
        self._records = _read_log(self.root)
        if not self._records and not (self.root / "store.json").exists():
            raise VoxelFMError(
                f"{self.root} is not a prepared-volume store (no store.json / index); create it with `voxelfm prepare`"
            )
        meta = self.root / "store.json"
        self.meta: dict[str, Any] = json.loads(meta.read_text()) if meta.exists() else {}
        self.preset: dict[str, Any] = self.meta.get("preset", {})
        self._ok = {r["id"]: r for r in self._records.values() if r.get("status") == "ok"}
        self.ids: list[str] = list(self._ok)

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._ok

    def __repr__(self) -> str:
        return f"VolumeStore({str(self.root)!r}, {len(self)} volumes)"

    def _rec(self, item_id: str) -> dict[str, Any]:
        try:
            return self._ok[item_id]
        except KeyError:
            status = self._records.get(item_id, {}).get("status")
            hint = f" (status {status!r}: {self._records[item_id].get('error', '')})" if status else ""
            raise KeyError(f"no prepared volume {item_id!r} in {self.root}{hint}") from None

    def path(self, item_id: str) -> Path:
        """The ``.npy`` file of ``item_id``."""
        return self.root / self._rec(item_id)["path"]

    def open(self, item_id: str) -> np.memmap:
        """Memory-map volume ``item_id``: ``np.memmap`` int16 ``[D, H, W]`` in HU (read-only; nothing
        is read from disk until sliced)."""
        arr = np.load(self.path(item_id), mmap_mode="r")
        if arr.dtype != np.int16 or arr.ndim != 3:
            raise VoxelFMError(
                f"{self.path(item_id)}: expected an int16 [D, H, W] array, got "
                f"{arr.dtype} {arr.shape}; re-run `voxelfm prepare`"
            )
        return arr

    def spacing(self, item_id: str) -> tuple[float, float, float]:
        """Voxel spacing ``(sz, sy, sx)`` in mm (isotropic up to the rounding of the size)."""
        return tuple(float(v) for v in self._rec(item_id)["spacing"])  # type: ignore[return-value]

    def shape(self, item_id: str) -> tuple[int, int, int]:
        """Array shape ``(D, H, W)`` (from the index; no file access)."""
        return tuple(int(v) for v in self._rec(item_id)["shape"])  # type: ignore[return-value]

    def status(self, item_id: str) -> str | None:
        """``"ok"``, ``"skipped"``, ``"failed"`` or None when the id was never processed."""
        rec = self._records.get(item_id)
        return None if rec is None else rec.get("status")

    def records(self) -> list[dict[str, Any]]:
        """Every processed input (ok, skipped and failed), one dict per id, in processing order."""
        return [dict(r) for r in self._records.values()]


def _read_log(root: Path) -> dict[str, dict[str, Any]]:
    """Last record per id from the append-only log(s), ordered by each id's latest record; a line
    cut by a crash is ignored."""
    out: dict[str, dict[str, Any]] = {}
    for rec in read_jsonl_folder(root / "index"):
        if "id" in rec:
            out.pop(rec["id"], None)  # keep processing order of the latest record
            out[rec["id"]] = rec
    return out


# ---- preparing ---------------------------------------------------------------------------------


@dataclass
class PrepareSummary:
    """Counts of one :func:`prepare_volumes` run (``already`` = found done from an earlier run)."""

    ok: int = 0
    skipped: int = 0
    failed: int = 0
    already: int = 0
    seconds: float = 0.0

    def __str__(self) -> str:
        return (
            f"{self.ok} prepared, {self.skipped} skipped, {self.failed} failed, "
            f"{self.already} already done ({self.seconds:.1f} s)"
        )


def _write_npy(path: Path, arr: np.ndarray) -> None:
    with atomic_write(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, np.ascontiguousarray(arr), allow_pickle=False)


def _prepare_array(
    path: str, series_uid: str | None, preset_dict: dict, crop_background: bool, overrides: Any = None
) -> tuple[Any, tuple[float, float, float], dict[str, Any]]:
    """Read → HU window → optional background crop → isotropic resampling (float32 HU tensor)."""
    from voxelfm.io import read_volume
    from voxelfm.preprocess import Preset, apply_hu_window, crop_to_box, foreground_box, resample_isotropic, source_grid

    preset = Preset.from_dict(preset_dict)
    vol = read_volume(path, series_uid=series_uid, overrides=overrides)  # overrides: manifest override_* columns
    x, sp, info = source_grid(vol, preset)
    meta = {"input_shape": list(x.shape), "input_spacing": [round(float(s), 6) for s in sp], "crop_box": None}
    if info["hu_clip"] is not None:
        x = apply_hu_window(x, tuple(info["hu_clip"]))
    if crop_background:
        box = foreground_box(
            x,
            threshold_hu=preset.crop_threshold_hu,
            kernel=preset.crop_kernel,
            fraction=preset.crop_fraction,
            margin=preset.crop_margin,
        )
        x = crop_to_box(x, box)
        meta["crop_box"] = [list(map(int, b)) for b in box]
    y, sp_iso, _ = resample_isotropic(x, sp, preset)
    return y, tuple(float(s) for s in sp_iso), meta


def _to_int16(y) -> np.ndarray:
    """Round float HU to int16 (values outside the int16 range are clipped)."""
    import torch

    t = torch.as_tensor(y, dtype=torch.float32)
    return torch.round(t).clamp_(*_INT16).to(torch.int16).numpy()


def _process(job: tuple) -> dict[str, Any]:
    """Prepare one input; never raises (failures become records)."""
    item_id, path, series_uid, root, preset_dict, crop_background, min_side, overrides = job
    t0 = time.perf_counter()
    rec: dict[str, Any] = {
        "id": item_id,
        "path": "",
        "source": str(path),
        "series_uid": series_uid,
        "status": "failed",
        "error": "",
        "shape": None,
        "spacing": None,
    }
    try:
        y, sp, meta = _prepare_array(path, series_uid, preset_dict, crop_background, overrides)
        rec.update(meta)
        shape = tuple(int(v) for v in y.shape)
        rec["shape"], rec["spacing"] = list(shape), [round(s, 6) for s in sp]
        if min(shape) < min_side:
            rec["status"] = "skipped"
            rec["error"] = (
                f"too small for the crops: prepared shape {list(shape)} has a side < min_side={min_side} voxels"
            )
        else:
            rel = f"volumes/{safe_id(item_id)}.npy"
            _write_npy(Path(root) / rel, _to_int16(y))
            rec["path"], rec["status"] = rel, "ok"
    except Exception as exc:  # noqa: BLE001 - recorded and skipped, the run goes on
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        rec["error"] = f"{type(exc).__name__}: {msg}"[:500]
    rec["seconds"] = round(time.perf_counter() - t0, 3)
    return rec


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)


def _write_index_csv(root: Path, records: Iterable[dict[str, Any]]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(INDEX_COLUMNS)
    for r in records:
        shape = r.get("shape")
        w.writerow(
            [
                r.get("id", ""),
                r.get("path", ""),
                "" if shape is None else "[" + ", ".join(str(int(v)) for v in shape) + "]",
                "" if r.get("spacing") is None else json.dumps(r["spacing"]),
                r.get("source", ""),
                r.get("series_uid") or "",
                r.get("status", ""),
                r.get("error", ""),
                json.dumps(r.get("input_shape")) if r.get("input_shape") else "",
                json.dumps(r.get("input_spacing")) if r.get("input_spacing") else "",
                json.dumps(r.get("crop_box")) if r.get("crop_box") else "",
                r.get("seconds", ""),
            ]
        )
    atomic_write_text(root / "index.csv", buf.getvalue())


def prepare_volumes(
    inputs: Sequence[str | os.PathLike] | str | os.PathLike,
    out: str | os.PathLike,
    *,
    preset: Any = "default",
    crop_background: bool = False,
    workers: int | None = None,
    min_side: int = 56,
    retry_failed: bool = False,
    progress: bool = True,
) -> PrepareSummary:
    """Prepare CT volumes for pre-training into the store folder ``out``.

    Args:
        inputs: files, DICOM folders, zips or CSV manifests (``id,path``), see
            :func:`voxelfm.io.collect_inputs`.
        out: store folder (created; an existing store is resumed).
        preset: ``"default"``, ``"paper"`` or a :class:`~voxelfm.preprocess.Preset`: HU window,
            orientation and isotropic-spacing rule.
        crop_background: crop each volume to its body box (reference ``crop_volume``) before resampling.
        workers: processes (default: CPU count; 1 = in this process). Worker processes import the
            calling script again (forkserver/spawn start), so a script that calls this with
            ``workers > 1`` must keep its top-level code under ``if __name__ == "__main__":``.
        min_side: volumes whose prepared shape has a side smaller than this many voxels are recorded
            as ``skipped`` (the reference drops volumes smaller than the local crop, 56).
        retry_failed: process ids recorded as ``failed`` by an earlier run again.
        progress: show a progress bar.

    Returns:
        :class:`PrepareSummary` of this run. Open the result with :class:`VolumeStore`.

    Raises:
        VoxelFMError: the store was made with a different preset / options (resume would mix them);
            or a worker process died — most often the missing ``__main__`` guard above (the message
            says so), else a killed worker (out of memory). Volumes finished before are kept.
    """
    from voxelfm.io import collect_inputs
    from voxelfm.preprocess import get_preset
    from voxelfm.utils import progress as progress_bar

    t0 = time.perf_counter()
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    if int(min_side) < 1:
        raise ValueError(f"min_side must be >= 1 voxel, got {min_side}")
    workers = int(workers) if workers else (os.cpu_count() or 1)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    p = get_preset(preset)
    preset_dict = p.to_dict()
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    (root / "index").mkdir(exist_ok=True)
    (root / "volumes").mkdir(exist_ok=True)
    options = {
        "preset": preset_dict,
        "crop_background": bool(crop_background),
        "dtype": "int16",
        "layout": "SPL" if p.canonical_orientation else "reference_layout",
        "format_version": 1,
    }
    meta_path = root / "store.json"
    if meta_path.exists():
        old = json.loads(meta_path.read_text())
        if {k: old.get(k) for k in ("preset", "crop_background")} != {
            k: options[k] for k in ("preset", "crop_background")
        }:
            raise VoxelFMError(
                f"{root} was prepared with other settings (preset {old.get('preset', {}).get('name')!r}, "
                f"crop_background={old.get('crop_background')}); use a new output folder"
            )
    else:
        atomic_write_text(meta_path, json.dumps(options, indent=2, sort_keys=True) + "\n")
    for stale in (root / "volumes").glob(".*.tmp"):  # left by a killed run
        stale.unlink(missing_ok=True)

    items = collect_inputs(list(inputs))
    done = _read_log(root)
    summary = PrepareSummary()
    jobs = []
    for it in items:
        rec = done.get(it.id)
        if rec is not None:
            st = rec.get("status")
            if (
                (st == "ok" and (root / rec.get("path", "")).is_file())
                or st == "skipped"
                or (st == "failed" and not retry_failed)
            ):
                summary.already += 1
                continue
        jobs.append((it.id, str(it.path), it.series_uid, str(root), preset_dict, bool(crop_background), int(min_side),
                     it.overrides))
    log = root / _LOG
    bar = progress_bar(total=len(jobs), desc="prepare", unit="vol", disable=None if progress else True)
    try:

        def handle(rec: dict[str, Any]) -> None:
            append_jsonl(log, rec, sort_keys=True)
            setattr(summary, rec["status"], getattr(summary, rec["status"]) + 1)
            bar.update(1)

        if workers == 1 or len(jobs) <= 1:
            for job in jobs:
                handle(_process(job))
        else:
            with process_pool(min(workers, len(jobs)), initializer=_worker_init, what="prepare_volumes") as ex:
                for rec in ex.map(_process, jobs, chunksize=1):
                    handle(rec)
    finally:
        bar.close()
        order = [it.id for it in items]
        recs = _read_log(root)
        ranked = [recs[i] for i in order if i in recs] + [r for i, r in recs.items() if i not in set(order)]
        _write_index_csv(root, ranked)
    summary.seconds = time.perf_counter() - t0
    return summary
