"""``run_demo``: phantoms → prepare → pre-train → extract (pre-trained and random init) → probes →
(report generation) → ``report.md``.

Folder ``OUT/``::

    demo.json                      stage records (settings signature, status, timings)
    phantoms/                      cohort.csv, volumes/, segmentations/ (voxelfm phantoms)
    prepared/                      the prepared-volume store pre-training reads (voxelfm prepare)
    pretrain/                      the pre-training run; pretrain/backbone = the teacher (voxelfm pretrain)
    random_init/                   the random-init backbone of the same architecture
    embeddings/pretrained/         embedding stores (voxelfm extract)
    embeddings/random_init/
    probes/                        the probe suite: results.csv, comparisons.csv, figures/ (voxelfm probe)
    reports/                       report generation (only with --with-reports)
    figures/                       the demo's own figures (summary, pre-training loss)
    report.md, report.html         the report
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from voxelfm.demo.settings import DEFAULT_OUTPUT, DemoSettings
from voxelfm.demo.stages import DemoState, StageRunner, format_seconds, signature
from voxelfm.errors import VoxelFMError
from voxelfm.utils.jsonl import read_jsonl

__all__ = ["run_demo", "DemoPaths", "extraction_budget", "compute_threads"]

#: smallest prepared side kept (voxels); the tiny config's global crop
MIN_SIDE = 32

#: minutes of report-generation training with --with-reports (default demo / quick)
REPORT_MINUTES = {False: 10.0, True: 1.0}
#: how the demo's report generator is grounded (docs/reportgen.md, "Grounded generation"): the prompt
#: holds the findings of per-abnormality probes at F1-chosen thresholds, and each report is repaired to
#: state exactly those findings; the pure LLaVA prompt (the paper's method) is ``voxelfm report``'s
#: ``--grounding none``. Measured on the demo's embeddings: macro F1 0.428 repaired and 0.291 as decoded
#: against 0.052 for pure LLaVA and 0.300 for a linear probe (benchmarks/results/reportgen_evidence_demo.json)
REPORT_GROUNDING: dict[str, Any] = {"grounding": "probe", "grounding_threshold": "f1", "repair": True}


@dataclasses.dataclass(frozen=True)
class DemoPaths:
    """Where each stage writes, under one output folder."""

    root: Path

    @property
    def phantoms(self) -> Path:
        return self.root / "phantoms"

    @property
    def cohort(self) -> Path:
        return self.phantoms / "cohort.csv"

    @property
    def prepared(self) -> Path:
        return self.root / "prepared"

    @property
    def pretrain(self) -> Path:
        return self.root / "pretrain"

    @property
    def backbone(self) -> Path:
        return self.pretrain / "backbone"

    @property
    def baselines(self) -> Path:
        return self.root / "baselines"

    @property
    def random_backbone(self) -> Path:
        return self.root / "random_init"

    def random_backbone_of(self, name: str) -> Path:
        """Folder of the random-init backbone called ``name`` (``random_init``, ``random_init_2``...)."""
        return self.root / name

    def store(self, which: str) -> Path:
        return self.root / "embeddings" / which

    @property
    def probes(self) -> Path:
        return self.root / "probes"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    @property
    def report_md(self) -> Path:
        return self.root / "report.md"

    @property
    def report_html(self) -> Path:
        return self.root / "report.html"


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Run with ``n`` torch intra-op threads (restored afterwards)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def compute_threads(workers: int) -> int:
    """Intra-op threads of the process that runs the model, leaving the other cores to the
    background processes (data loading, reading). On 2 cores: 1 thread + 1 reader. Parallelism by
    processes rather than threads also keeps a shared (oversubscribed) machine efficient: a
    2-thread forward pass waits on a descheduled thread at every small operation."""
    return max(1, int(workers) // 2)


def extraction_budget(run_dir: Path, max_patches: int | None) -> int:
    """``max_patches``, or the tokens of one global crop of the pre-training run in ``run_dir``
    (``prod(crops.global_crops_size // student.patch_size)``): whole scans seen at the scale
    of the crops the model was trained on."""
    if max_patches is not None:
        return int(max_patches)
    import yaml

    cfg = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    g = cfg["crops"]["global_crops_size"]
    g = [g] * 3 if isinstance(g, int) else list(g)
    ps = int(cfg["student"]["patch_size"])
    return int(np.prod([int(s) // ps for s in g]))


# ------------------------------------------------------------------------------------------ stages
def _stage_phantoms(paths: DemoPaths, s: DemoSettings) -> dict[str, Any]:
    from voxelfm.data.phantoms import FINDINGS, generate_cohort

    if paths.phantoms.exists():  # a partial earlier attempt: cases are regenerated bit-identically
        shutil.rmtree(paths.phantoms)
    table = generate_cohort(paths.phantoms, int(s.cases), seed=int(s.seed), format="nifti", size="demo",
                            workers=s.n_workers)
    splits = {k: int(v) for k, v in table["split"].value_counts().items()}
    prevalence = {f: round(float(table[f].mean()), 3) for f in FINDINGS if f in table.columns}
    return {"cases": len(table), "patients": int(table["patient_id"].nunique()), "splits": splits,
            "prevalence": prevalence,
            "_line": f"{len(table)} scans of {table['patient_id'].nunique()} patients "
                     f"(train {splits.get('train', 0)} / val {splits.get('val', 0)} / test {splits.get('test', 0)})"}


def _stage_prepare(paths: DemoPaths, s: DemoSettings) -> dict[str, Any]:
    from voxelfm.data.volume_store import VolumeStore, prepare_volumes

    result = prepare_volumes([paths.cohort], paths.prepared, preset="default",
                             crop_background=bool(s.crop_background), workers=s.n_workers, min_side=MIN_SIDE)
    store = VolumeStore(paths.prepared)
    n = len(store)
    if n == 0:
        raise VoxelFMError(f"no volume could be prepared into {paths.prepared}; see its log")
    shapes = []
    for vid in list(store.ids)[:50]:
        try:
            shapes.append(tuple(int(v) for v in store.open(vid).shape))
        except Exception:  # noqa: BLE001 - a summary only
            continue
    mean_shape = [round(sum(sh[i] for sh in shapes) / len(shapes)) for i in range(3)] if shapes else None
    problems = f" ({result.skipped} skipped, {result.failed} failed: see prepared/index.csv)" \
        if (result.skipped or result.failed) else ""
    return {"volumes": n, "mean_shape": mean_shape, "skipped": int(result.skipped), "failed": int(result.failed),
            "_line": f"{n} volumes" + (f", typically {'×'.join(map(str, mean_shape))} voxels" if mean_shape else "")
                     + problems}


def _pretrain_elapsed(run_dir: Path) -> float:
    """Seconds of pre-training already done in ``run_dir`` (from its newest checkpoint)."""
    from voxelfm.ssl.checkpoint import find_latest_checkpoint, load_checkpoint

    latest = find_latest_checkpoint(run_dir) if run_dir.exists() else None
    if latest is None:
        return 0.0
    try:
        return float(load_checkpoint(latest).get("elapsed_seconds", 0.0))
    except Exception:  # noqa: BLE001 - unreadable: the trainer will say so
        return 0.0


#: optimizer steps per second of the ``tiny`` recipe on 2 quiet CPU cores (benchmarks/pretrain_evidence.py)
TINY_STEPS_PER_SECOND = 5.5


#: wall minutes of the first piece of pre-training, whose measured speed fits the schedule
CALIBRATION_MINUTES = 0.75

#: file in the pre-training folder recording the fitted schedule (reused when the run resumes)
SCHEDULE_FILE = "demo_schedule.json"


def _fits_schedule(s: DemoSettings) -> bool:
    """Whether the demo fits the schedule (``tiny`` without a user ``optim.epochs``)."""
    return s.pretrain_config == "tiny" and not any(o.split("=", 1)[0].strip() == "optim.epochs"
                                                    for o in s.pretrain_overrides)


def _epochs_for(steps: float) -> int:
    from voxelfm.ssl.config import load_config

    epoch_length = int(load_config("tiny").train.official_epoch_length)
    return max(2, int(steps // epoch_length))


def _schedule_overrides(s: DemoSettings, steps_per_second: float = TINY_STEPS_PER_SECOND) -> list[str]:
    """Fit the ``tiny`` schedule (warm-up + cosine decays) to the wall-time budget at
    ``steps_per_second``.

    The packaged ``tiny`` schedule is 3,500 steps (≈ 10 quiet minutes); a shorter demo budget would
    stop it mid-decay. Other configs, or a user's own ``optim.epochs``, are left alone.
    """
    if not _fits_schedule(s):
        return []
    return [f"optim.epochs={_epochs_for(60.0 * float(s.pretrain_minutes) * steps_per_second)}"]


def _measured_speed(run_dir: Path, run: dict[str, Any]) -> float:
    """Steps per second of a short run: from the median step time of its steps after the first (the
    first one carries the start-up: model build, data-loader processes), else from its wall time."""
    times = [float(m["step_time"]) for m in read_jsonl(run_dir / "metrics.jsonl", missing_ok=True)[1:]
             if isinstance(m.get("step_time"), (int, float)) and m["step_time"] > 0]
    if len(times) >= 3:
        return 1.0 / float(np.median(times))
    return float(run["steps_this_run"]) / max(60.0 * float(run["minutes_this_run"]), 1e-6)


def _fit_schedule_to_machine(paths: DemoPaths, s: DemoSettings, base: list[str], loader_workers: int) -> list[str]:
    """The schedule override for this machine as it is now: the first :data:`CALIBRATION_MINUTES`
    of pre-training run on the quiet-machine schedule, their measured speed (startup included)
    sets the number of steps the rest of the budget will fit, and the run continues from its
    checkpoint with that schedule (the learning-rate and teacher schedules are functions of the
    step and the total, so the change at the switch is small). On a machine shared with other jobs
    this keeps the cosine decay complete instead of stopping the run early in its schedule. The
    fit is recorded in ``pretrain/demo_schedule.json`` and reused when the run resumes."""
    from voxelfm.ssl import pretrain

    from voxelfm.ssl.config import load_config
    from voxelfm.utils import atomic_write_text

    record = paths.pretrain / SCHEDULE_FILE
    fit = json.loads(record.read_text()) if record.exists() else None
    if fit is not None and float(fit["minutes"]) == float(s.pretrain_minutes):
        return [f"optim.epochs={int(fit['epochs'])}"]
    quiet = _schedule_overrides(s)
    budget = 60.0 * float(s.pretrain_minutes)
    if fit is None:
        if budget < 4 * 60.0 * CALIBRATION_MINUTES:  # too short to measure first (the quick demo)
            return quiet
        pretrain(s.pretrain_config, paths.prepared, paths.pretrain, overrides=[*base, *quiet, *s.pretrain_overrides],
                 resume=True,
                 num_workers=loader_workers, show_progress=True, max_minutes=CALIBRATION_MINUTES)
        run = json.loads((paths.pretrain / "run.json").read_text())
        fit = {"steps_per_second": _measured_speed(paths.pretrain, run),
               "calibration_steps": int(run["steps_this_run"]), "quiet_schedule": quiet}
    # a budget changed since the fit (a longer --pretrain-minutes continues the run): refit from the speed
    steps_done = int(json.loads((paths.pretrain / "run.json").read_text())["steps_done"])
    total = steps_done + float(fit["steps_per_second"]) * max(budget - _pretrain_elapsed(paths.pretrain), 0.0)
    epoch_length = int(load_config("tiny").train.official_epoch_length)
    fit.update(epochs=max(_epochs_for(total), steps_done // epoch_length + 1), minutes=float(s.pretrain_minutes),
               steps_per_second=round(float(fit["steps_per_second"]), 3))
    atomic_write_text(record, json.dumps(fit, indent=2) + "\n")
    return [f"optim.epochs={int(fit['epochs'])}"]


def _objectives(s: DemoSettings) -> str:
    """The losses the demo's pre-training config optimises (``"iBOT"`` for ``tiny``)."""
    from voxelfm.ssl.config import load_config, objective_names

    return objective_names(load_config(s.pretrain_config, list(s.pretrain_overrides)))


def _stage_pretrain(paths: DemoPaths, s: DemoSettings, resuming: bool, base_signature: str) -> dict[str, Any]:
    from voxelfm.ssl import pretrain

    budget = 60.0 * float(s.pretrain_minutes)
    if not resuming and paths.pretrain.exists():
        shutil.rmtree(paths.pretrain)
    loader_workers = max(0, s.n_workers - compute_threads(s.n_workers))
    base = [f"train.seed={int(s.seed)}"]
    schedule = _fit_schedule_to_machine(paths, s, base, loader_workers) if _fits_schedule(s) else []
    overrides = [*base, *schedule, *s.pretrain_overrides]
    done = _pretrain_elapsed(paths.pretrain)
    remaining = max(budget - done, 0.0)
    kwargs: dict[str, Any] = {"max_minutes": remaining / 60.0} if remaining > 1.0 else {"max_steps": 0}
    if "max_steps" in kwargs:
        # the budget is spent: only export the newest checkpoint's teacher
        from voxelfm.ssl.checkpoint import find_latest_checkpoint

        latest = find_latest_checkpoint(paths.pretrain)
        kwargs["max_steps"] = int(latest.stem.split("_")[-1]) if latest is not None else 1
    pretrain(s.pretrain_config, paths.prepared, paths.pretrain, overrides=overrides, resume=True,
             num_workers=loader_workers, show_progress=True, **kwargs)
    run_json = paths.pretrain / "run.json"
    run = json.loads(run_json.read_text()) if run_json.exists() else {}
    if run and "max_minutes" in kwargs and int(run.get("steps_done", 0)) < int(run.get("max_steps", 0)) \
            and float(run.get("minutes_this_run", 0.0)) < kwargs["max_minutes"] - 0.05:
        # the trainer stops early (with a checkpoint) on SIGINT/SIGTERM: stop the demo too
        raise KeyboardInterrupt("pre-training interrupted (checkpoint kept; re-run to resume)")
    metrics = read_jsonl(paths.pretrain / "metrics.jsonl", missing_ok=True)
    losses = [float(m["total"]) for m in metrics if "total" in m and math.isfinite(float(m["total"]))]
    k = max(1, min(20, len(losses) // 5))
    first = sum(losses[:k]) / k if losses else math.nan
    last = sum(losses[-k:]) / k if losses else math.nan
    steps = int(run.get("steps_done", len(metrics)))
    fit = paths.pretrain / SCHEDULE_FILE
    fitted = json.loads(fit.read_text()) if fit.exists() else {}
    return {"steps": steps, "max_steps": int(run.get("max_steps", 0)), "config": s.pretrain_config,
            "schedule_fit": fitted,
            "objectives": _objectives(s),
            "budget_minutes": float(s.pretrain_minutes), "base_signature": base_signature,
            "effective_batch_size": run.get("effective_batch_size"), "volumes_per_s": run.get("volumes_per_s"),
            "minutes": round((done + 60.0 * float(run.get("minutes_this_run", 0.0))) / 60.0, 2),
            "loss_first": first, "loss_last": last,
            "_line": f"{steps} steps, loss {first:.3f} → {last:.3f}"}


def _cohort_items(paths: DemoPaths) -> list[tuple[str, str]]:
    import pandas as pd

    table = pd.read_csv(paths.cohort, dtype={"id": str})
    return [(str(i), str((paths.phantoms / p).resolve())) for i, p in zip(table["id"], table["path"])]


def _random_backbone(folder: Path, paths: DemoPaths, pretrained: Any, seed: int) -> Any:
    """The random-init backbone of the pre-trained one's architecture (saved in ``folder``, so a
    resumed extraction uses the very same weights), with the pre-trained preprocessing."""
    import torch

    from voxelfm.models import build_backbone, load_backbone, save_backbone

    if (folder / "config.json").exists():
        model = load_backbone(folder)
    else:
        with torch.random.fork_rng():
            torch.manual_seed(int(seed))
            model = build_backbone(pretrained.config)
        model.preset = pretrained.preset
        model.eval()
        save_backbone(model, folder,
                      provenance={"format": "random-init", "seed": int(seed),
                                  "architecture_of": str(paths.backbone)})
        model = load_backbone(folder)
    return model


def random_store_names(n: int) -> list[str]:
    """Names of the ``n`` random-init backbones and their stores: ``random_init`` (seed ``seed``),
    then ``random_init_2`` (``seed + 1``), ``random_init_3`` ..."""
    from voxelfm.demo.suite import RANDOM

    return [RANDOM if i == 0 else f"{RANDOM}_{i + 1}" for i in range(int(n))]


def _stage_extract(paths: DemoPaths, s: DemoSettings, which: str) -> dict[str, Any]:
    from voxelfm.models import load_backbone

    pretrained = load_backbone(paths.backbone)
    if which == "pretrained":
        return _extract_one(paths, s, pretrained, pretrained, "pretrained")
    summaries = [_extract_one(paths, s, _random_backbone(paths.random_backbone_of(name), paths, pretrained,
                                                         int(s.seed) + i), pretrained, name)
                 for i, name in enumerate(random_store_names(s.random_seeds))]
    out = dict(summaries[0])
    if len(summaries) > 1:
        out["stores"] = random_store_names(s.random_seeds)
        out["_line"] = f"{len(summaries)} random-init backbones (seeds {s.seed}–{int(s.seed) + len(summaries) - 1}): " \
                       + out["_line"]
    return out


def _extract_one(paths: DemoPaths, s: DemoSettings, model: Any, pretrained: Any, which: str) -> dict[str, Any]:
    """Embed every scan with ``model`` into the store ``which``; a summary for ``demo.json``."""
    from voxelfm.inference import EmbeddingStore, extract_batch
    from voxelfm.inference.extract import resolve_preset

    budget = extraction_budget(paths.pretrain, s.max_patches)
    preset = resolve_preset(pretrained, "default")  # the pre-trained normalisation, for every backbone
    summary = extract_batch(model, _cohort_items(paths), paths.store(which), preset=preset,
                            crop_background=bool(s.crop_background), max_patches=budget,
                            workers=max(0, s.n_workers - compute_threads(s.n_workers)))
    store = EmbeddingStore(paths.store(which))
    if not store.ids:
        raise VoxelFMError(f"no embedding could be extracted into {paths.store(which)} "
                           f"(e.g. {summary.failed_ids[:1]}); see {paths.store(which) / 'index.csv'}")
    grids = []
    for vid in store.ids[:50]:
        try:
            grids.append(store.load_tensor(vid, "patch").shape[:3])
        except Exception:  # noqa: BLE001 - a summary only
            continue
    tokens = round(sum(g[0] * g[1] * g[2] for g in grids) / len(grids)) if grids else None
    n_params = sum(p.numel() for p in model.parameters())
    return {"ok": len(store.ids), "failed": int(summary.failed), "failed_ids": list(summary.failed_ids)[:10],
            "tokens_per_scan": tokens, "max_patches": budget, "embed_dim": int(model.embed_dim),
            "parameters": int(n_params), "resolution": grid_resolution(store),
            "_line": f"{len(store.ids)} scans embedded" + (f", {summary.failed} failed" if summary.failed else "")
                     + (f", ≈ {tokens} patch tokens per scan" if tokens else "")}


def grid_resolution(store: Any, n: int = 50) -> dict[str, float] | None:
    """Median over (up to ``n``) scans of the model input's voxel side and one patch token's side
    (mm, mean over the three axes): ``{"voxel_mm": ..., "token_mm": ...}`` (``None`` if unknown)."""
    voxel, token = [], []
    for vid in list(store.ids)[:n]:
        try:
            f = store.load(vid)
        except Exception:  # noqa: BLE001 - a summary only
            continue
        mm = [float(v) for v in f.patch_size_mm]
        sp = [float(v) for v in (f.record or {}).get("spacing") or []]
        if len(sp) == 3 and all(math.isfinite(v) and v > 0 for v in mm + sp):
            token.append(float(np.mean(mm)))
            voxel.append(float(np.mean(sp)))
    if not token:
        return None
    return {"voxel_mm": round(float(np.median(voxel)), 1), "token_mm": round(float(np.median(token)), 1)}


def _stage_probes(paths: DemoPaths, s: DemoSettings) -> dict[str, Any]:
    import pandas as pd

    from voxelfm.demo.suite import PRETRAINED, RANDOM, build_suite
    from voxelfm.probes import run_suite

    from voxelfm.inference import EmbeddingStore

    table = pd.read_csv(paths.cohort, dtype={"id": str})
    resolution = grid_resolution(EmbeddingStore(paths.store(PRETRAINED)))
    plan = build_suite(table, s, resolution=resolution)
    import yaml

    paths.probes.mkdir(parents=True, exist_ok=True)
    stores = {PRETRAINED: str(paths.store(PRETRAINED).resolve())}
    stores.update({name: str(paths.store(name).resolve()) for name in random_store_names(s.random_seeds)})
    suite_yaml = dict(plan.suite, labels=str(paths.cohort.resolve()), stores=stores)
    from voxelfm.utils import atomic_write_text

    atomic_write_text(paths.probes / "suite.yaml", yaml.safe_dump(suite_yaml, sort_keys=False))
    result = run_suite(paths.probes / "suite.yaml", paths.probes, resume=True, workers=s.n_probe_workers)
    n_runs = int(len(result.runs) + len(result.failures))
    return {"tasks": len(plan.suite["tasks"]), "runs": n_runs, "failed": len(result.failures),
            "failures": [{"run": list(map(str, k)), "error": e} for k, e in result.failures][:10],
            "findings": plan.findings, "lead": plan.lead, "skipped": plan.skipped,
            "below_resolution": plan.below_resolution,
            "resolution": resolution, "random_stores": random_store_names(s.random_seeds),
            "protocol": s.protocol, "folds": int(s.folds),
            "split_tasks": [t["name"] for t in plan.suite["tasks"] if (t.get("hparams") or {}).get("protocol") == "split"],
            "_line": f"{len(plan.suite['tasks'])} tasks, {n_runs} probe runs"
                     + (f", {len(result.failures)} failed" if result.failures else "")}


def _stage_baselines(paths: DemoPaths, s: DemoSettings) -> dict[str, Any]:
    """``voxelfm compare`` of the pre-trained and random-init ViT with random-init other CT foundation
    models (:data:`~voxelfm.demo.settings.DEMO_BASELINES`) on the demo's findings and regressions."""
    import pandas as pd

    from voxelfm.demo.settings import DEMO_BASELINES, REGRESSION_TARGETS
    from voxelfm.demo.suite import PRETRAINED, build_suite
    from voxelfm.inference import EmbeddingStore
    from voxelfm.probes.compare import compare_backbones, default_suite

    table = pd.read_csv(paths.cohort, dtype={"id": str})
    plan = build_suite(table, s, resolution=grid_resolution(EmbeddingStore(paths.store(PRETRAINED))))
    targets = [f for f in plan.findings if f in table.columns] + [t for t in REGRESSION_TARGETS if t in table.columns]
    suite = default_suite(paths.cohort, targets=targets, name="demo-baselines", n_resamples=int(s.n_resamples),
                          seed=int(s.seed))
    suite.update(protocol=str(s.protocol), folds=int(s.folds))
    specs = [f"voxelfm@pretrained={paths.backbone}",
             f"voxelfm@random_init={paths.random_backbone_of(random_store_names(1)[0])}"]
    specs += list(s.baselines)
    options = {name: dict(DEMO_BASELINES[name]) for name in s.baselines}
    import warnings

    with warnings.catch_warnings():  # each random-init family warns once; the report says it plainly
        warnings.filterwarnings("ignore", message=".*random-init.*")
        result = compare_backbones(specs, str(paths.cohort), paths.cohort, paths.baselines, suite=suite,
                                   options=options, extract={"crop_background": bool(s.crop_background),
                                                             "max_patches": extraction_budget(paths.pretrain,
                                                                                              s.max_patches),
                                                             "workers": min(2, s.n_workers)},
                                   probe_workers=s.n_probe_workers, show_progress=False)
    assert result is not None  # a single process is always rank 0
    return {"backbones": ["pretrained", "random_init"] + list(s.baselines), "targets": targets,
            "options": options, "table": str((paths.baselines / "table.md").relative_to(paths.root)),
            "_line": f"{len(s.baselines)} other CT foundation models (random init) in one table "
                     f"with the pre-trained and random-init ViT, {len(targets)} targets"}


def _stage_reports(paths: DemoPaths, s: DemoSettings) -> dict[str, Any]:
    from voxelfm.reportgen import run_report_experiment

    summary = run_report_experiment(paths.store("pretrained"), paths.cohort, paths.reports,
                                    minutes=REPORT_MINUTES[bool(s.quick)], seed=int(s.seed) + 4,
                                    n_resamples=int(s.n_resamples), resume=True, **REPORT_GROUNDING)
    gen = summary.get("generated", {}).get("macro_f1", {})
    return {"summary": summary,
            "_line": f"macro F1 of generated reports {gen.get('value', math.nan):.3f}"}


# ------------------------------------------------------------------------------------------ runner
def _check_folder(root: Path, fresh: bool) -> None:
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"{root} exists and is not a folder; choose another -o")
    state_file = root / "demo.json"
    if root.is_dir() and any(root.iterdir()) and not state_file.exists():
        raise VoxelFMError(f"{root} is not empty and holds no demo (demo.json); choose an empty or new folder with -o")
    if fresh and state_file.exists():
        for child in root.iterdir():
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()


def run_demo(output_dir: str | os.PathLike[str] = DEFAULT_OUTPUT, *, quick: bool = False, cases: int | None = None,
             pretrain_minutes: float | None = None, with_reports: bool | None = None, workers: int | None = None,
             seed: int = 0, fresh: bool = False, settings: DemoSettings | None = None,
             stream: TextIO | None = None) -> Path:
    """Run the whole voxelfm workflow on a synthetic phantom cohort and write a report.

    Stages: phantom cohort → prepared-volume store → short pre-training of a tiny 3D ViT →
    embeddings with the pre-trained backbone and with a random-init backbone of the same
    architecture → the probe suite on every task category (classification, regression, survival,
    retrieval, localisation, segmentation; report generation with ``with_reports``) → ``report.md``
    (+ ``report.html``) with the results table, 95 % CIs, p-values (pre-trained vs random init) and
    figures. Re-running on the same folder reuses finished stages and resumes unfinished ones.

    Args:
        output_dir: the demo folder (created; must be empty or a previous demo folder).
        quick: the ≈ 2-minute version (48 cases, 45 s of pre-training, lighter probes).
        cases: phantom scans (default 200; quick 48).
        pretrain_minutes: pre-training budget (default 7; quick 0.75).
        with_reports: also train and evaluate report generation (adds ≈ 12 minutes; quick ≈ 1.5).
        workers: processes for generation / preparation / reading (default: CPU count).
        seed: cohort, random-init and probe seed.
        fresh: delete the folder's earlier results first.
        settings: full :class:`DemoSettings` instead of the arguments above.
        stream: where stage header lines go (default stdout).

    Returns:
        the path of ``report.md``.
    """
    s = settings or DemoSettings.create(quick=quick, cases=cases, pretrain_minutes=pretrain_minutes,
                                        with_reports=with_reports, workers=workers, seed=seed)
    root = Path(output_dir).expanduser().resolve()
    _check_folder(root, fresh)
    root.mkdir(parents=True, exist_ok=True)
    paths = DemoPaths(root)
    state = DemoState.load(root)
    state.settings = s.to_dict()
    names = ["phantoms", "prepare", "pretrain", "extract_pretrained", "extract_random", "probes"]
    if s.baselines:
        names.append("baselines")
    if s.with_reports:
        names.append("reports")
    names.append("report")
    runner = StageRunner(state, len(names), stream=stream)
    out = stream or sys.stdout
    print(f"voxelfm demo → {root} ({'quick' if s.quick else 'default'}: {s.cases} phantom scans, "
          f"{s.pretrain_minutes:g} min pre-training{', report generation' if s.with_reports else ''}; "
          f"{s.n_workers} worker(s))", file=out, flush=True)
    with _torch_threads(compute_threads(s.n_workers)):
        _run_stages(paths, s, runner)
    total = runner.elapsed()
    from voxelfm.demo.report import TIMING_HEADER, timing_rows

    rows = [TIMING_HEADER] + timing_rows(state, runner)
    widths = [max(len(r[i]) for r in rows) for i in range(len(TIMING_HEADER))]
    for r in rows:
        print("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)), file=out, flush=True)
    print(f"voxelfm demo finished in {format_seconds(total)}", file=out, flush=True)
    print(f"report: {paths.report_md}", file=out, flush=True)
    if paths.report_html.exists():
        print(f"        {paths.report_html}", file=out, flush=True)
    return paths.report_md


def _pretrain_base_signature(s: DemoSettings, prepare_sig: str) -> str:
    settings = {k: v for k, v in s.stage_settings("pretrain").items() if k != "minutes"}
    return signature(settings, {"prepare": prepare_sig})


def _extend_pretraining(runner: StageRunner, s: DemoSettings, base: str, sig: str) -> None:
    """A larger ``--pretrain-minutes`` than the finished run's continues that run (same schedule,
    from its last checkpoint) instead of starting over; a smaller one starts over."""
    rec = runner.state.stages.get("pretrain")
    if rec is None or rec.signature == sig:
        return
    if rec.summary.get("base_signature") == base and float(rec.summary.get("budget_minutes", math.inf)) \
            < float(s.pretrain_minutes):
        rec.signature = sig
        rec.status = "started"
        runner.state.save()


def _run_stages(paths: DemoPaths, s: DemoSettings, runner: StageRunner) -> None:
    """Every stage in order; each is reused, resumed or run by ``runner``."""
    from voxelfm.demo.report import write_report

    sigs: dict[str, str] = {}
    sigs["phantoms"] = signature(s.stage_settings("phantoms"))
    runner.run("phantoms", f"generate {s.cases} synthetic chest CTs with labels, reports and targets",
               sigs["phantoms"], lambda r: _stage_phantoms(paths, s), folders=[paths.phantoms])
    sigs["prepare"] = signature(s.stage_settings("prepare"), {"phantoms": sigs["phantoms"]})
    runner.run("prepare", "isotropic int16 volumes for pre-training (voxelfm prepare)",
               sigs["prepare"], lambda r: _stage_prepare(paths, s), folders=[paths.prepared])
    sigs["pretrain"] = signature(s.stage_settings("pretrain"), {"prepare": sigs["prepare"]})
    base = _pretrain_base_signature(s, sigs["prepare"])
    _extend_pretraining(runner, s, base, sigs["pretrain"])
    runner.run("pretrain", f"{_objectives(s)} pre-training of the {s.pretrain_config} ViT for "
                           f"{s.pretrain_minutes:g} min",
               sigs["pretrain"], lambda r: _stage_pretrain(paths, s, r, base), folders=[paths.pretrain])
    for which, stage in (("pretrained", "extract_pretrained"), ("random_init", "extract_random")):
        sigs[stage] = signature(s.stage_settings(stage), {"pretrain": sigs["pretrain"]})
        folders = [paths.store(which)] if which == "pretrained" else \
            [f(name) for name in random_store_names(s.random_seeds) for f in (paths.store, paths.random_backbone_of)]
        runner.run(stage, f"embed every scan with the {'pre-trained' if which == 'pretrained' else 'random-init'} "
                          "backbone (CLS + patch tokens)",
                   sigs[stage], lambda r, w=which: _stage_extract(paths, s, w), folders=folders)
    sigs["probes"] = signature(s.stage_settings("probes"), {k: sigs[k] for k in ("extract_pretrained",
                                                                                  "extract_random")})
    runner.run("probes", "probe suite: classification, regression, survival, retrieval, localisation, "
                         "segmentation (pre-trained vs random init)",
               sigs["probes"], lambda r: _stage_probes(paths, s), folders=[paths.probes])
    if s.baselines:
        sigs["baselines"] = signature(s.stage_settings("baselines"), {k: sigs[k] for k in ("extract_pretrained",
                                                                                          "extract_random")})
        runner.run("baselines", f"other CT foundation models, random init ({', '.join(s.baselines)}): "
                                "one voxelfm compare table (a pipeline check, not a result)",
                   sigs["baselines"], lambda r: _stage_baselines(paths, s), folders=[paths.baselines])
    if s.with_reports:
        sigs["reports"] = signature(s.stage_settings("reports"), {"extract_pretrained": sigs["extract_pretrained"]})
        runner.run("reports", "report generation: projector + LoRA on SmolLM2, scored by abnormality F1",
                   sigs["reports"], lambda r: _stage_reports(paths, s), folders=[paths.reports])
    runner.run("report", "write report.md and report.html", "-",
               lambda r: write_report(paths, s, runner.state, runner), always=True)
