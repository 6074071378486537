"""``voxelfm benchmark paper``: every dataset × backbone → embeddings → the dataset's probe suite
→ the paper's Table 1, data-fraction curves and class-vs-patch figures.

One *cell* is a dataset × backbone: extraction of every scan of the dataset's ``manifest.csv``
with :func:`voxelfm.inference.extract_batch` into ``OUT/stores/<dataset>/<backbone>/``, then the
dataset's ``suite.yaml`` run for that backbone with :func:`voxelfm.probes.run_suite` into
``OUT/suites/<dataset>/`` (runs of different backbones live side by side there). When every cell
of a dataset is done, the suite runs once more over all its backbones: the probe runs are reused
and the paired tests against the reference backbone, the dataset's tables and figures are made.
Finally the datasets are combined into ``OUT/table1.{md,csv,tex}`` and ``OUT/figures/``.

``OUT/benchmark.json`` records, per cell, its settings signature, status, wall and processor time
(extraction and probes apart), the scans embedded, the probe runs, the hardware (processor and GPU
names, threads, torch version) and the load average before and after. A cell finished with the
same settings is skipped on a re-run without loading its backbone; an interrupted cell resumes
(extraction and probe runs resume from their own files); a cell whose extraction settings
changed starts its store afresh.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import shutil
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from voxelfm.benchmark.backbones import BackboneSpec, load_backbone_spec, parse_backbones
from voxelfm.benchmark.hardware import hardware_info, load_average
from voxelfm.benchmark.roots import EXTRACT_OPTIONS, DatasetEntry, read_roots, read_yaml_mapping
from voxelfm.errors import ConfigError
from voxelfm.utils import atomic_write_text, safe_id

__all__ = ["BenchmarkResult", "PAPER_EXTRACTION", "plan_paper_benchmark", "run_paper_benchmark"]

STATE_FILE = "benchmark.json"
_FORMAT = "voxelfm-benchmark-paper"

#: extraction of the paper (REFERENCE §2.3, §4.8): the reference pipeline, background crop and a
#: 25,000-token budget; a dataset's ROOTS.yaml ``extract:`` entry overrides any of them.
PAPER_EXTRACTION: dict[str, Any] = {"preset": "paper", "crop_background": True, "max_patches": 25000,
                                    "mode": "auto", "window": None, "overlap": 0.25, "dtype": "fp32",
                                    "memory_budget_gb": None}
_PREPARED_FILES = ("manifest.csv", "labels.csv", "splits.csv", "suite.yaml", "classes.json")


def _now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def _hash(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def _say(msg: str, quiet: bool) -> None:
    if not quiet:
        print(f"voxelfm benchmark: {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------- state
@dataclass
class _State:
    path: Path
    data: dict[str, Any]

    @classmethod
    def load(cls, out: Path) -> "_State":
        path = out / STATE_FILE
        data: dict[str, Any] = {"format": _FORMAT, "version": 1, "cells": {}, "datasets": {}}
        if path.exists():
            try:
                old = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                raise ConfigError(f"{path} is not valid JSON; move it away to start this benchmark afresh") from None
            if old.get("format") != _FORMAT:
                raise ConfigError(f"{out} holds something else than a voxelfm benchmark ({path}); use another -o")
            data.update(old)
        return cls(path, data)

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, json.dumps(self.data, indent=1, default=str))


# ------------------------------------------------------------------------------------------- prepared data
def _fingerprint(folder: Path) -> str:
    """Hash of the prepared folder's tables (a re-prepared dataset invalidates its cells)."""
    h = hashlib.sha1()
    for name in _PREPARED_FILES:
        f = folder / name
        if f.is_file():
            h.update(name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _manifest_items(folder: Path) -> list[Any]:
    """The scans of a prepared folder's ``manifest.csv`` as batch items."""
    from voxelfm.io import collect_inputs

    return collect_inputs([folder / "manifest.csv"])


def _suite_dict(folder: Path, stores: Mapping[str, Path], *, reference: str | None,
                n_resamples: int | None) -> dict[str, Any]:
    """The dataset's ``suite.yaml`` with our stores and reference, label paths made absolute."""
    data = read_yaml_mapping(folder / "suite.yaml", "a suite: a mapping with tasks")

    def absolute(v: Any) -> Any:
        if isinstance(v, str):
            p = Path(os.path.expanduser(v))
            return str(p if p.is_absolute() else (folder / p).resolve())
        return v

    data = dict(data)
    if data.get("labels") is not None:
        data["labels"] = absolute(data["labels"])
    data["tasks"] = [dict(t, labels=absolute(t["labels"])) if isinstance(t, dict) and t.get("labels") else t
                     for t in (data.get("tasks") or [])]
    data["stores"] = {b: str(p) for b, p in stores.items()}
    data["reference"] = reference if reference in stores else None
    if n_resamples is not None:
        data["n_resamples"] = int(n_resamples)
    return data


def _prepare(entry: DatasetEntry, quiet: bool) -> None:
    """Prepare a dataset from its download root with its recipe (:func:`voxelfm.datasets.prepare_dataset`)."""
    from voxelfm.datasets import prepare_dataset

    _say(f"preparing {entry.name} from {entry.root} into {entry.prepared}", quiet)
    result = prepare_dataset(entry.name, entry.root, entry.prepared, **entry.options)
    _say(result.summary(), quiet)


# ------------------------------------------------------------------------------------------- cells
@dataclass
class _Cell:
    dataset: DatasetEntry
    backbone: BackboneSpec
    extract: dict[str, Any]

    @property
    def key(self) -> str:
        return f"{self.dataset.name}/{self.backbone.name}"

    def store(self, out: Path) -> Path:
        return out / "stores" / safe_id(self.dataset.name) / safe_id(self.backbone.name)

    def extract_signature(self) -> str:
        return _hash({"data": _fingerprint(self.dataset.prepared), "backbone": self.backbone.fingerprint(),
                      "extract": self.extract})

    def signature(self, n_resamples: int | None) -> str:
        return _hash({"extract": self.extract_signature(), "n_resamples": n_resamples})


def _cells(entries: Sequence[DatasetEntry], specs: Sequence[BackboneSpec], global_extract: Mapping[str, Any],
           overrides: Mapping[str, Any]) -> list[_Cell]:
    base = {**PAPER_EXTRACTION, **global_extract, **overrides}
    return [_Cell(e, b, {**base, **e.extract}) for b in specs for e in entries]


def _clear_cell(cell: _Cell, out: Path) -> None:
    """Remove a cell's embeddings and its probe runs (the suite runner keys finished runs by the
    store's folder, which stays the same when the embeddings in it are remade)."""
    shutil.rmtree(cell.store(out), ignore_errors=True)
    for rdir in (out / "suites" / safe_id(cell.dataset.name) / "runs").glob(f"*/*/{safe_id(cell.backbone.name)}"):
        shutil.rmtree(rdir, ignore_errors=True)


def _run_cell(cell: _Cell, out: Path, model: Any, *, device: str | None, read_workers: int, probe_workers: int,
              n_resamples: int | None, quiet: bool) -> dict[str, Any]:
    """Extract and probe one cell; returns its record (raises on failure)."""
    from voxelfm.inference import extract_batch
    from voxelfm.probes import run_suite
    from voxelfm.utils.cpu_time import cpu_seconds

    store = cell.store(out)
    t0, c0, load0 = time.monotonic(), cpu_seconds(), load_average()
    ex = {k: v for k, v in cell.extract.items() if k in EXTRACT_OPTIONS}
    summary = extract_batch(model, _manifest_items(cell.dataset.prepared), store, device=device,
                            workers=read_workers, show_progress=None if not quiet else False, **ex)
    t1, c1 = time.monotonic(), cpu_seconds()
    _say(f"{cell.key}: {summary.ok} embedded, {summary.skipped} already there, {summary.failed} failed "
         f"({t1 - t0:.1f} s)", quiet)
    suite = _suite_dict(cell.dataset.prepared, {cell.backbone.name: store}, reference=None, n_resamples=n_resamples)
    res = run_suite(suite, out / "suites" / safe_id(cell.dataset.name), figures=False, workers=probe_workers,
                    show_progress=not quiet)
    t2, c2 = time.monotonic(), cpu_seconds()
    return {"n_scans": summary.total, "embedded": summary.ok + summary.skipped - summary.failed_before,
            "failed_scans": summary.failed + summary.failed_before, "failed_ids": summary.failed_ids[:50],
            "extract_seconds": round(t1 - t0, 3), "extract_cpu_seconds": round(c1 - c0, 3),
            "probe_runs": len(res.runs) + len(res.failures),
            "probe_failures": [{"run": list(map(str, k)), "error": e} for k, e in res.failures],
            "probe_seconds": round(t2 - t1, 3), "probe_cpu_seconds": round(c2 - c1, 3),
            "seconds": round(t2 - t0, 3), "cpu_seconds": round(c2 - c0, 3),
            "load_before": load0, "load_after": load_average()}


# ------------------------------------------------------------------------------------------- results
@dataclass
class BenchmarkResult:
    """What :func:`run_paper_benchmark` did.

    Attributes:
        table: the Table 1 frame (``table1.csv`` plus the ``_best`` column).
        cells: ``{"dataset/backbone": record}`` as in ``benchmark.json``.
        ran, skipped, failed: cell keys run now, reused from an earlier run, failed.
        paths: written files by name.
    """

    table: Any
    cells: dict[str, dict[str, Any]]
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    paths: dict[str, Path] = field(default_factory=dict)


def _combine_dataset(entry: DatasetEntry, stores: Mapping[str, Path], out: Path, *, reference: str | None,
                     n_resamples: int | None, probe_workers: int, figures: bool, quiet: bool) -> None:
    """Run the dataset's suite over all its finished backbones (runs reused): comparisons, the
    dataset's tables and figures, and the rows of the benchmark's figures."""
    from voxelfm.probes import run_suite
    from voxelfm.probes.suite import cls_vs_patch_rows, fraction_rows, load_suite
    from voxelfm.utils import atomic_write

    folder = out / "suites" / safe_id(entry.name)
    s = load_suite(_suite_dict(entry.prepared, stores, reference=reference, n_resamples=n_resamples))
    res = run_suite(s, folder, figures=figures, workers=probe_workers, show_progress=not quiet)
    for name, df in (("fraction_rows", fraction_rows(s, res.results)),
                     ("cls_vs_patch_rows", cls_vs_patch_rows(s, res.runs, res.results))):
        with atomic_write(folder / f"{name}.csv") as tmp:
            df.to_csv(tmp, index=False)


def _collect(out: Path, entries: Sequence[DatasetEntry], name: str) -> Any:
    import pandas as pd

    frames = []
    for e in entries:
        f = out / "suites" / safe_id(e.name) / f"{name}.csv"
        if f.is_file() and f.stat().st_size > 0:
            try:
                df = pd.read_csv(f)
            except pd.errors.EmptyDataError:
                continue
            frames.append(df.assign(dataset=e.name))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _write_benchmark_outputs(out: Path, entries: Sequence[DatasetEntry], specs: Sequence[BackboneSpec],
                             reference: str | None, figures: bool) -> tuple[Any, dict[str, Path]]:
    import pandas as pd

    from voxelfm.benchmark.table import paper_figures, paper_table, write_paper_table
    from voxelfm.utils import atomic_write

    results = _collect(out, entries, "results")
    comparisons = _collect(out, entries, "comparisons")
    paths: dict[str, Path] = {}
    for name, df in (("results", results), ("comparisons", comparisons)):
        with atomic_write(out / f"{name}.csv") as tmp:
            df.to_csv(tmp, index=False)
        paths[name] = out / f"{name}.csv"
    if not len(results):
        return pd.DataFrame(), paths
    if not len(comparisons):
        comparisons = pd.DataFrame(columns=["dataset", "task_name", "task", "head", "feature", "fraction", "metric",
                                            "backbone_a", "backbone_b", "n", "diff", "p_value", "method", "p_holm"])
    table, comp = paper_table(results, comparisons, [s.name for s in specs])
    paths.update(write_paper_table(out, table, comp, n_datasets=len(set(results["dataset"])), reference=reference))
    if figures:
        paths.update(paper_figures(out, _collect(out, entries, "fraction_rows"),
                                   _collect(out, entries, "cls_vs_patch_rows")))
    return table, paths


def _resolve(data: str | os.PathLike[str], backbones: str | Sequence[str] | Sequence[BackboneSpec], out: Path,
             reference: str | None, only: Sequence[str] | None
             ) -> tuple[list[DatasetEntry], dict[str, Any], list[BackboneSpec], str | None]:
    entries, global_extract = read_roots(data, out)
    if only:
        unknown = sorted(set(only) - {e.name for e in entries})
        if unknown:
            raise ConfigError(f"--only: {', '.join(unknown)} not in {data} ({', '.join(e.name for e in entries)})")
        entries = [e for e in entries if e.name in set(only)]
    specs = (list(backbones) if backbones and all(isinstance(b, BackboneSpec) for b in backbones)
             else parse_backbones(backbones))  # type: ignore[arg-type]
    names = [s.name for s in specs]
    if reference is not None and reference not in names:
        raise ConfigError(f"--reference {reference!r} is not one of the backbones ({', '.join(names)})")
    return entries, global_extract, specs, reference if reference is not None else names[0]


def run_paper_benchmark(data: str | os.PathLike[str], backbones: str | Sequence[str] | Sequence[BackboneSpec],
                        output_dir: str | os.PathLike[str], *, reference: str | None = None,
                        extract: Mapping[str, Any] | None = None, device: str | None = None,
                        read_workers: int = 0, probe_workers: int = 1, n_resamples: int | None = None,
                        only: Sequence[str] | None = None, figures: bool = True, quiet: bool = False,
                        load: Callable[[BackboneSpec], Any] | None = None) -> BenchmarkResult:
    """Run the benchmark (see the module docstring); resumable per cell.

    Args:
        data: ROOTS.yaml (dataset → prepared folder or download root; :mod:`voxelfm.benchmark.roots`).
        backbones: ``"voxelfm=W,random=vit_base"`` or specs (:mod:`voxelfm.benchmark.backbones`).
        output_dir: the benchmark folder.
        reference: backbone every other is tested against (default: the first).
        extract: extraction options for every dataset (over :data:`PAPER_EXTRACTION`; a dataset's
            own ``extract:`` entry in ROOTS.yaml wins).
        device: where the backbones run (default: CUDA if available).
        read_workers: background processes reading + preprocessing scans.
        probe_workers: probe runs trained at once (one process each).
        n_resamples: override the suites' bootstrap resamples (CIs and paired tests).
        only: run these datasets of ROOTS.yaml only.
        figures: draw figures.
        quiet: no progress output.
        load: how to load a backbone (default :func:`load_backbone_spec`).

    Returns:
        :class:`BenchmarkResult`.
    """
    out = Path(output_dir)
    entries, global_extract, specs, ref = _resolve(data, backbones, out, reference, only)
    overrides = dict(extract or {})
    bad = sorted(set(overrides) - set(EXTRACT_OPTIONS))
    if bad:
        raise ConfigError(f"unknown extraction option(s) {', '.join(bad)}; valid: {', '.join(EXTRACT_OPTIONS)}")
    state = _State.load(out)
    state.data["hardware"] = hardware_info(device)
    state.save()
    for e in entries:
        if e.needs_preparation:
            _prepare(e, quiet)
    cells = _cells(entries, specs, global_extract, overrides)
    loader = load or (lambda spec: load_backbone_spec(spec, device=device or "cpu"))
    models: dict[str, Any] = {}
    result = BenchmarkResult(table=None, cells=state.data["cells"])
    t_start = time.monotonic()
    for i, cell in enumerate(cells, 1):
        sig = cell.signature(n_resamples)
        rec = state.data["cells"].get(cell.key, {})
        if rec.get("status") == "finished" and rec.get("signature") == sig and cell.store(out).is_dir():
            result.skipped.append(cell.key)
            continue
        ex_sig = cell.extract_signature()
        if rec.get("extract_signature") not in (None, ex_sig):
            _say(f"{cell.key}: data, weights or extraction settings changed; embedding and probing again", quiet)
            _clear_cell(cell, out)
        run_times = [float(state.data["cells"][k]["seconds"]) for k in result.ran if "seconds" in state.data["cells"][k]]
        eta = (f", about {_minutes(sum(run_times) / len(run_times) * (len(cells) - i + 1))} left"
               if run_times else "")
        _say(f"[{i}/{len(cells)}] {cell.key} ({_minutes(time.monotonic() - t_start)} elapsed{eta})", quiet)
        rec = {"dataset": cell.dataset.name, "backbone": cell.backbone.name, "spec": cell.backbone.text,
               "prepared": str(cell.dataset.prepared), "extract": cell.extract, "signature": sig,
               "extract_signature": ex_sig, "status": "started", "started_at": _now(),
               "hardware": state.data["hardware"]}
        state.data["cells"][cell.key] = rec
        state.save()
        try:
            if cell.backbone.name not in models:
                models.clear()  # cells come backbone by backbone: one model in memory at a time
                models[cell.backbone.name] = loader(cell.backbone)
            rec.update(_run_cell(cell, out, models[cell.backbone.name], device=device, read_workers=read_workers,
                                 probe_workers=probe_workers, n_resamples=n_resamples, quiet=quiet))
            rec["status"] = "finished" if rec["embedded"] > 0 else "failed"
            if rec["status"] == "failed":
                rec["error"] = f"no scan could be embedded ({rec['failed_scans']} failed; see {cell.store(out)}/index.csv)"
        except (KeyboardInterrupt, SystemExit):
            rec["status"] = "interrupted"
            state.save()
            raise
        except Exception as exc:  # noqa: BLE001 - one failing cell must not stop the others
            rec["status"] = "failed"
            rec["error"] = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
            rec["traceback"] = traceback.format_exc()
        rec["finished_at"] = _now()
        state.save()
        (result.ran if rec["status"] == "finished" else result.failed).append(cell.key)
        if rec["status"] != "finished":
            _say(f"{cell.key} failed: {rec['error']}", quiet)
    for e in entries:
        done = [c for c in cells if c.dataset.name == e.name
                and state.data["cells"].get(c.key, {}).get("status") == "finished"]
        if not done:
            continue
        stores = {c.backbone.name: c.store(out) for c in done}
        dsig = _hash({"cells": [state.data["cells"][c.key]["signature"] for c in done], "reference": ref,
                      "figures": figures, "n_resamples": n_resamples})
        drec = state.data["datasets"].get(e.name, {})
        folder = out / "suites" / safe_id(e.name)
        ran_now = any(c.key in result.ran for c in done)  # a cell's own suite run rewrote the dataset's tables
        if not ran_now and drec.get("signature") == dsig and (folder / "fraction_rows.csv").is_file():
            continue
        t0 = time.monotonic()
        _combine_dataset(e, stores, out, reference=ref, n_resamples=n_resamples, probe_workers=probe_workers,
                         figures=figures, quiet=quiet)
        state.data["datasets"][e.name] = {"signature": dsig, "backbones": list(stores),
                                          "seconds": round(time.monotonic() - t0, 3), "finished_at": _now()}
        state.save()
    result.table, result.paths = _write_benchmark_outputs(out, entries, specs, ref, figures)
    result.paths["state"] = state.path
    return result


# ------------------------------------------------------------------------------------------- dry run
def _sample(items: Sequence[Any], n: int) -> list[Any]:
    if len(items) <= n:
        return list(items)
    step = len(items) / n
    return [items[int(i * step)] for i in range(n)]


def plan_paper_benchmark(data: str | os.PathLike[str], backbones: str | Sequence[str] | Sequence[BackboneSpec],
                         output_dir: str | os.PathLike[str], *, reference: str | None = None,
                         extract: Mapping[str, Any] | None = None, device: str | None = None,
                         n_resamples: int | None = None, only: Sequence[str] | None = None, sample: int = 5,
                         load: Callable[[BackboneSpec], Any] | None = None) -> dict[str, Any]:
    """The plan of :func:`run_paper_benchmark` without running it: cells, disk space and
    estimated compute time per cell on this machine (:mod:`voxelfm.benchmark.estimate`).

    Args:
        sample: scans per dataset whose geometry is read to estimate token counts.
        Others: as :func:`run_paper_benchmark`.

    Returns:
        ``{"hardware", "reference", "calibration": {backbone: ...}, "cells": [{dataset, backbone,
        status, estimate | note}], "total_disk_bytes", "total_extract_seconds"}``.
    """
    from voxelfm.benchmark.estimate import (
        CellEstimate,
        calibrate,
        embedding_bytes,
        estimate_tokens,
        forward_seconds,
        scan_geometry,
    )

    out = Path(output_dir)
    entries, global_extract, specs, ref = _resolve(data, backbones, out, reference, only)
    cells = _cells(entries, specs, global_extract, dict(extract or {}))
    dev = device or "cpu"
    loader = load or (lambda spec: load_backbone_spec(spec, device=dev))
    state = _State.load(out).data if (out / STATE_FILE).exists() else {"cells": {}}
    models: dict[str, Any] = {}
    calibrations: dict[str, Any] = {}
    geometries: dict[str, tuple[int, list[Any], list[str]]] = {}
    plan_cells = []
    for cell in cells:
        row: dict[str, Any] = {"dataset": cell.dataset.name, "backbone": cell.backbone.name, "extract": cell.extract}
        if cell.dataset.needs_preparation:
            row.update(status="to prepare", note=f"prepared from {cell.dataset.root} on the first run; "
                                                 "no estimate before that")
            plan_cells.append(row)
            continue
        rec = state["cells"].get(cell.key, {})
        done = rec.get("status") == "finished" and rec.get("signature") == cell.signature(n_resamples)
        row["status"] = "done" if done else ("resume" if rec else "to run")
        b = cell.backbone.name
        if b not in models:
            models.clear()  # backbone by backbone, as the run
            models[b] = loader(cell.backbone)
            calibrations[b] = calibrate(models[b], device=dev)
        model, calib = models[b], calibrations[b]
        name = cell.dataset.name
        if name not in geometries:
            items = _manifest_items(cell.dataset.prepared)
            geo, notes = [], []
            for it in _sample(items, sample):
                try:
                    geo.append(scan_geometry(it.path, it.series_uid, it.overrides))
                except Exception as exc:  # noqa: BLE001 - reported in the plan
                    notes.append(f"{it.id}: unreadable ({' '.join(str(exc).split())[:120]})")
            geometries[name] = (len(items), geo, notes)
        n_scans, geo, notes = geometries[name]
        grids = estimate_tokens(model, [g for g in geo], preset=cell.extract.get("preset", "paper"),
                                max_patches=cell.extract.get("max_patches"), calibration=calib)
        tokens = [math.prod(g) for g in grids]
        mean_tokens = float(sum(tokens) / len(tokens)) if tokens else math.nan
        per_scan_s = (sum(forward_seconds(model, g, calib, memory_budget_gb=cell.extract.get("memory_budget_gb"),
                                          device=dev) for g in grids) / len(grids)) if grids else math.nan
        bps = embedding_bytes(mean_tokens, model) if tokens else math.nan
        probe_runs = _probe_run_count(cell.dataset.prepared)
        cell_notes = list(notes)
        if cell.extract.get("crop_background") and calib.kind == "vit-flops":
            cell_notes.append("background crop not applied to the estimate (upper bound)")
        row["estimate"] = CellEstimate(n_scans=n_scans, n_sampled=len(geo), mean_tokens=mean_tokens,
                                       grid_example=tuple(grids[0]) if grids else None, bytes_per_scan=bps,
                                       disk_bytes=bps * n_scans, seconds_per_scan=per_scan_s,
                                       extract_seconds=per_scan_s * n_scans, probe_runs=probe_runs,
                                       notes=cell_notes).to_dict()
        plan_cells.append(row)
    est = [c["estimate"] for c in plan_cells if "estimate" in c and c["status"] != "done"]
    existing = next(p for p in (out.resolve(), *out.resolve().parents) if p.exists())
    return {"hardware": hardware_info(dev), "reference": ref,
            "calibration": {b: c.to_dict() for b, c in calibrations.items()}, "cells": plan_cells,
            "total_disk_bytes": sum(e["disk_bytes"] for e in est if math.isfinite(e["disk_bytes"])),
            "free_disk_bytes": shutil.disk_usage(existing).free,
            "total_extract_seconds": sum(e["extract_seconds"] for e in est if math.isfinite(e["extract_seconds"]))}


def _probe_run_count(folder: Path) -> int:
    """Probe runs of one backbone on a dataset: tasks × probes × fractions of its suite."""
    data = _suite_dict(folder, {}, reference=None, n_resamples=None)
    fr = data.get("fractions") or [1.0]
    return sum(len(t.get("probes", t.get("heads")) or [None]) * len(t.get("fractions") or fr)
               for t in data["tasks"] if isinstance(t, dict))
