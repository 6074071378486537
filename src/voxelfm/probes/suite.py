"""Probe suites: tasks × embedding stores (backbones) × probes (head, feature) × data fractions,
one results table with confidence intervals and pairwise tests between backbones, and figures.

A suite is a YAML file (or the same structure as a dict)::

    name: my-benchmark
    seed: 4
    labels: labels.csv              # default label table (paths relative to this file)
    id_col: id
    split_col: split
    stores:                         # backbone name -> embedding store folder
      voxelfm: stores/voxelfm
      random_init: stores/random
    reference: voxelfm              # compare the others against this one (default: all pairs)
    fractions: [1.0]                # default training fractions (nested subsets)
    n_resamples: 1000               # bootstrap resamples for CIs and paired tests
    protocol: split                 # split (the test split) | cv (k-fold by patient, pooled
    folds: 5                        #   out-of-fold predictions of every scan; probes/cv.py)
    holm: table                     # Holm adjustment over the whole table | task | none
    defaults: {epochs: 40}          # options for every run (ignored where a head has no such option)
    head_defaults: {mlp: {hidden_dim: 512}}
    tasks:
      - name: nodule                # row label (default: the target)
        task: binary
        target: lung_nodule
        probes: [linear, knn, {head: attentive, feature: patch, num_queries: 4}]
        fractions: [0.1, 0.25, 0.5, 1.0]
        hparams: {class_weight: balanced}
    figures:
      roc: true
      fractions: true
      cls_vs_patch: true
      pca: {ids: [case_001], path_col: path, foreground: true}

:func:`run_suite` writes ``OUT/runs/<task>/<head>-<feature>/<backbone>/frac-<f>/`` (one
:func:`~voxelfm.probes.train_probe` output folder each; finished runs are skipped on re-run),
``OUT/results.csv`` (every metric of every run), ``OUT/comparisons.csv`` (pairwise tests),
``OUT/results.md`` / ``results.csv`` / ``results.tex`` (the primary-metric table) and
``OUT/figures/*.png``.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import math
import os
import traceback
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from voxelfm.errors import ConfigError
from voxelfm.probes.run import (
    HEADS,
    ProbeRun,
    allowed_hparams,
    check_probe,
    train_probe,
)
from voxelfm.probes.tasks import get_task
from voxelfm.utils import atomic_write, atomic_write_text, progress, safe_id

__all__ = [
    "ProbeSpec",
    "Suite",
    "SuiteResult",
    "TaskSpec",
    "cls_vs_patch_rows",
    "format_latex",
    "fraction_rows",
    "format_markdown",
    "load_suite",
    "packaged_suite_path",
    "packaged_suites",
    "results_table",
    "run_suite",
]

_SUITE_KEYS = {"name", "seed", "labels", "id_col", "split_col", "stores", "reference", "fractions",
               "n_resamples", "protocol", "folds", "holm", "defaults", "head_defaults", "tasks", "figures", "description"}
_TASK_KEYS = {"name", "task", "target", "probes", "heads", "fractions", "hparams", "labels", "id_col",
              "split_col"}


@dataclass
class ProbeSpec:
    """One probe of a task: head, feature and its own options."""

    head: str
    feature: str
    hparams: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.head}/{self.feature}"


@dataclass
class TaskSpec:
    """One row group of the suite: a task on a target with several probes and fractions."""

    name: str
    task: str
    target: str | list[str]
    probes: list[ProbeSpec]
    fractions: list[float]
    hparams: dict[str, Any] = field(default_factory=dict)
    labels: Any = None
    id_col: str = "id"
    split_col: str | None = "split"


@dataclass
class Suite:
    """A parsed suite (see the module docstring)."""

    name: str
    stores: dict[str, Any]
    tasks: list[TaskSpec]
    seed: int = 4
    reference: str | None = None
    n_resamples: int = 1000
    protocol: str = "split"
    folds: int = 5
    holm: str = "table"
    defaults: dict[str, Any] = field(default_factory=dict)
    head_defaults: dict[str, dict[str, Any]] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    base_dir: Path = Path(".")


def _parse_probe(p: Any, where: str) -> ProbeSpec:
    from voxelfm.probes.run import default_feature

    if isinstance(p, str):
        head, _, feat = p.partition(":")
        head = head.strip()
        return ProbeSpec(head, feat.strip() or default_feature(head))
    if isinstance(p, Mapping):
        d = dict(p)
        if "head" not in d:
            raise ConfigError(f"{where}: a probe needs a 'head'")
        head = str(d.pop("head"))
        feat = d.pop("feature", None) or default_feature(head)
        hp = dict(d.pop("hparams", {}) or {})
        hp.update(d)
        return ProbeSpec(head, str(feat), hp)
    raise ConfigError(f"{where}: a probe is a head name ('mlp', 'attentive:patch') or a mapping")


def _resolve_path(value: Any, base: Path) -> Any:
    if isinstance(value, (str, os.PathLike)):
        p = Path(value).expanduser()
        return p if p.is_absolute() else (base / p)
    return value


def load_suite(suite: str | os.PathLike[str] | Mapping[str, Any] | Suite, *,
               stores: Mapping[str, Any] | None = None, labels: Any = None, all_pairs: bool = False) -> Suite:
    """Parse and validate a suite YAML file or dict.

    Args:
        suite: YAML path, mapping, or an already parsed :class:`Suite`.
        stores: override / provide the ``stores`` mapping (backbone name → store folder or
            :class:`~voxelfm.inference.store.EmbeddingStore`).
        labels: override the default label table.
        all_pairs: ignore the suite's ``reference`` and compare every pair of backbones
            (``voxelfm compare``, whose backbones replace the suite's stores).

    Raises:
        ConfigError: unknown keys, unknown tasks/heads, head/feature mismatches, unknown options,
            missing stores or label columns — before anything is trained.
    """
    if isinstance(suite, Suite):
        s = suite
        if stores is not None:
            s.stores = dict(stores)
        if all_pairs:
            s.reference = None
        return s
    base = Path(".")
    if isinstance(suite, (str, os.PathLike)):
        import yaml

        path = Path(suite)
        if not path.exists() and packaged_suite_path(str(suite)) is not None:
            path = packaged_suite_path(str(suite))  # type: ignore[assignment]
        if not path.exists():
            names = ", ".join(packaged_suites())
            raise FileNotFoundError(f"suite file {path} does not exist (packaged suites: {names})")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
        base = path.resolve().parent
    else:
        data = dict(suite)
    if not isinstance(data, Mapping):
        raise ConfigError("a suite must be a mapping with 'stores' and 'tasks'")
    unknown = sorted(set(data) - _SUITE_KEYS)
    if unknown:
        raise ConfigError(f"unknown suite key(s) {', '.join(unknown)}; valid: {', '.join(sorted(_SUITE_KEYS))}")
    # folders in the YAML are relative to the YAML; folders passed here to the current directory
    st = ({str(k): _resolve_path(v, Path(".")) for k, v in stores.items()} if stores is not None
          else {str(k): _resolve_path(v, base) for k, v in (data.get("stores") or {}).items()})
    if not st:
        raise ConfigError("the suite lists no embedding stores: add 'stores: {name: folder}' or pass "
                          "--store NAME=FOLDER (stores={...} in Python)")
    default_labels = labels if labels is not None else _resolve_path(data.get("labels"), base)
    fr_default = [float(f) for f in (data.get("fractions") or [1.0])]
    tasks: list[TaskSpec] = []
    names: set[str] = set()
    for i, t in enumerate(data.get("tasks") or []):
        where = f"tasks[{i}]"
        if not isinstance(t, Mapping):
            raise ConfigError(f"{where}: must be a mapping with task and target")
        bad = sorted(set(t) - _TASK_KEYS)
        if bad:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(bad)}; valid: {', '.join(sorted(_TASK_KEYS))}")
        if "task" not in t or "target" not in t:
            raise ConfigError(f"{where}: needs 'task' and 'target'")
        task_obj = get_task(str(t["task"]))
        target = t["target"] if isinstance(t["target"], str) else [str(c) for c in t["target"]]
        name = str(t.get("name") or (target if isinstance(target, str) else "+".join(target)))
        if name in names:
            raise ConfigError(f"{where}: duplicate task name {name!r}; give each task a unique 'name'")
        names.add(name)
        raw_probes = t.get("probes", t.get("heads")) or [task_obj.default_head]
        probes = [_parse_probe(p, where) for p in raw_probes]
        tl = _resolve_path(t.get("labels"), base) if t.get("labels") is not None else default_labels
        if tl is None:
            raise ConfigError(f"{where}: no label table (set 'labels' in the suite or the task, or pass --labels)")
        tasks.append(TaskSpec(name=name, task=task_obj.name, target=target, probes=probes,
                              fractions=[float(f) for f in (t.get("fractions") or fr_default)],
                              hparams=dict(t.get("hparams") or {}), labels=tl,
                              id_col=str(t.get("id_col", data.get("id_col", "id"))),
                              split_col=t.get("split_col", data.get("split_col", "split"))))
    if not tasks:
        raise ConfigError("the suite lists no tasks")
    s = Suite(name=str(data.get("name", "suite")), stores=st, tasks=tasks, seed=int(data.get("seed", 4)),
              reference=None if all_pairs else data.get("reference"),
              n_resamples=int(data.get("n_resamples", 1000)),
              protocol=str(data.get("protocol", "split")), folds=int(data.get("folds", 5)),
              holm=str(data.get("holm", "table")), defaults=dict(data.get("defaults") or {}),
              head_defaults={str(k): dict(v or {}) for k, v in (data.get("head_defaults") or {}).items()},
              figures=dict(data.get("figures") or {}), base_dir=base)
    _validate(s)
    return s


def packaged_suites() -> list[str]:
    """Names of the example suites shipped in ``voxelfm/configs/probes/``."""
    from importlib import resources

    folder = resources.files("voxelfm") / "configs" / "probes"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def packaged_suite_path(name: str) -> Path | None:
    """Path of the packaged suite ``name`` (e.g. ``"phantom"``), or ``None``."""
    from importlib import resources

    if os.sep in name or "/" in name:
        return None
    stem = name.removesuffix(".yaml")
    p = resources.files("voxelfm") / "configs" / "probes" / f"{stem}.yaml"
    return Path(str(p)) if p.is_file() else None


def _hparams_for(s: Suite, t: TaskSpec, p: ProbeSpec, fraction: float) -> dict[str, Any]:
    """defaults (filtered to the head) < head_defaults < task hparams (filtered) < probe hparams."""
    allowed = allowed_hparams(p.head)
    hp = {k: v for k, v in s.defaults.items() if k in allowed}
    hp.update({k: v for k, v in s.head_defaults.get(p.head, {}).items()})
    hp.update({k: v for k, v in t.hparams.items() if k in allowed})
    hp.update(p.hparams)
    hp.setdefault("n_resamples", s.n_resamples)
    hp.setdefault("protocol", s.protocol)
    hp.setdefault("folds", s.folds)
    hp["fraction"] = fraction
    return hp


def _validate(s: Suite) -> None:
    from voxelfm.probes.data import read_label_table

    if s.protocol not in ("split", "cv"):
        raise ConfigError(f"protocol must be split or cv, got {s.protocol!r}")
    if s.protocol == "cv" and s.folds < 3:
        raise ConfigError(f"protocol cv needs folds >= 3, got {s.folds}")
    if s.holm not in ("table", "task", "none"):
        raise ConfigError(f"holm must be table, task or none, got {s.holm!r}")
    if s.reference is not None and s.reference not in s.stores:
        raise ConfigError(f"reference {s.reference!r} is not one of the stores ({', '.join(s.stores)})")
    for name, st in s.stores.items():
        if isinstance(st, (str, os.PathLike)) and not Path(st).is_dir():
            raise ConfigError(f"store {name!r}: folder {st} does not exist")
    for h, opts in s.head_defaults.items():
        if h not in HEADS:
            raise ConfigError(f"head_defaults: unknown head {h!r}")
        bad = sorted(set(opts) - allowed_hparams(h))
        if bad:
            raise ConfigError(f"head_defaults.{h}: unknown option(s) {', '.join(bad)}")
    tables: dict[str, pd.DataFrame] = {}
    for t in s.tasks:
        for f in t.fractions:
            if not 0 < f <= 1:
                raise ConfigError(f"task {t.name!r}: fractions must be in (0, 1], got {f}")
        for p in t.probes:
            try:
                check_probe(t.task, p.head, p.feature, _hparams_for(s, t, p, 1.0))
            except (ConfigError, ValueError) as exc:
                raise ConfigError(f"task {t.name!r}, probe {p.label}: {exc}") from None
        key = str(t.labels) if not isinstance(t.labels, pd.DataFrame) else f"df{id(t.labels)}"
        if key not in tables:
            tables[key] = read_label_table(t.labels, id_col=t.id_col)
        cols = get_task(t.task).columns(t.target, {**t.hparams})
        missing = [c for c in cols if c not in tables[key].columns]
        if missing:
            raise ConfigError(f"task {t.name!r}: label table has no column {missing[0]!r}")


# ------------------------------------------------------------------------------------------- running
@dataclass
class SuiteResult:
    """Everything :func:`run_suite` produced.

    Attributes:
        results: long table, one row per (task, probe, fraction, backbone, metric).
        comparisons: pairwise tests of the primary metric between backbones (raw and Holm p).
        table: the wide primary-metric table (what ``results.md`` shows).
        runs: ``{(task, head, feature, backbone, fraction): ProbeRun}`` of successful runs.
        failures: ``[(run key, error)]``.
        paths: written files by name.
    """

    results: pd.DataFrame
    comparisons: pd.DataFrame
    table: pd.DataFrame
    runs: dict[tuple, ProbeRun] = field(default_factory=dict)
    failures: list[tuple[tuple, str]] = field(default_factory=list)
    paths: dict[str, Path] = field(default_factory=dict)


@contextlib.contextmanager
def _quiet_progress():
    """Silence nested progress bars (per-run bootstraps) under the suite's own bar."""
    old = os.environ.get("VOXELFM_NO_PROGRESS")
    os.environ["VOXELFM_NO_PROGRESS"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("VOXELFM_NO_PROGRESS", None)
        else:
            os.environ["VOXELFM_NO_PROGRESS"] = old


def _run_dir(out: Path, key: tuple) -> Path:
    task_name, head, feature, backbone, fraction = key
    return (out / "runs" / safe_id(task_name) / safe_id(f"{head}-{feature.replace('+', '_')}")
            / safe_id(backbone) / f"frac-{fraction:g}")


def _signature(store: Any, t: TaskSpec, p: ProbeSpec, hp: dict[str, Any], seed: int) -> str:
    """Settings of a run: a finished run is reused only when this matches. The options are the
    *resolved* ones (head defaults included), so a run made under other defaults is re-run."""
    from voxelfm.probes.run import resolve_hparams

    hp = resolve_hparams(p.head, hp)
    labels = t.labels
    lab = f"df:{pd.util.hash_pandas_object(labels, index=True).sum()}" if isinstance(labels, pd.DataFrame) \
        else str(Path(labels).resolve())
    blob = json.dumps({"store": str(getattr(store, "root", store)), "labels": lab, "task": t.task,
                       "target": t.target, "head": p.head, "feature": p.feature, "hparams": hp,
                       "seed": seed, "id_col": t.id_col, "split_col": t.split_col},
                      sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()


def _execute(store: Any, t: TaskSpec, p: ProbeSpec, hp: dict[str, Any], seed: int, rdir: Path,
             sig: str) -> str | None:
    """Train one run of a suite into ``rdir``; ``None`` on success, else a one-line error (the
    traceback goes to ``rdir/error.txt``). Runs in the suite's process or in a worker."""
    try:
        with warnings.catch_warnings(), _quiet_progress():
            warnings.simplefilter("ignore")
            train_probe(store, t.labels, t.target, task=t.task, head=p.head, feature=p.feature,
                        id_col=t.id_col, split_col=t.split_col, seed=seed, output_dir=rdir,
                        progress=False, **hp)
        atomic_write_text(rdir / "signature.txt", sig + "\n")
        return None
    except Exception as exc:  # noqa: BLE001 - keep going; failures are reported at the end
        rdir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(rdir / "error.txt", traceback.format_exc())
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


#: rough relative cost of a head, to start the longest runs first when runs go to several workers
_HEAD_COST = {"segmentation": 5, "localisation": 4, "attentive": 3, "mlp": 1, "linear": 1, "cox": 1}


def _pool(workers: int):
    """A process pool of ``workers`` (fork where the platform has it: no re-import of ``__main__``,
    the stores and label tables are inherited; each run limits its own threads)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    return ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context(method))


def run_suite(suite: str | os.PathLike[str] | Mapping[str, Any] | Suite, output_dir: str | os.PathLike[str], *,
              stores: Mapping[str, Any] | None = None, labels: Any = None, resume: bool = True,
              show_progress: bool = True, figures: bool = True, workers: int = 1) -> SuiteResult:
    """Run every (task, probe, fraction, backbone) of a suite and write tables and figures.

    Args:
        suite: YAML path, dict or :class:`Suite` (see the module docstring).
        output_dir: results folder.
        stores, labels: override the suite's stores / default label table (used by ``voxelfm demo``).
        resume: skip runs whose folder already holds results for the same settings.
        show_progress: a progress bar over runs (with ETA).
        figures: draw the figures.
        workers: runs trained at the same time, each in its own process on ``threads`` threads
            (default 1). Probe heads are too small to use several threads well, so on a machine
            with N free cores ``workers=N`` is the way to use them. Results are identical to
            ``workers=1`` (every run is seeded on its own).

    Returns:
        :class:`SuiteResult`.
    """
    s = load_suite(suite, stores=stores, labels=labels)
    if int(workers) < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    plan = [(t, p, f, b) for t in s.tasks for p in t.probes for f in t.fractions for b in s.stores]
    done: dict[tuple, ProbeRun | str] = {}  # run key -> finished run, or the error of a failed one
    from voxelfm.probes.run import _as_store

    store_objs = {b: _as_store(v) for b, v in s.stores.items()}
    bar = progress(total=len(plan), desc=f"probe suite {s.name}", unit="run",
                   disable=None if show_progress else True)
    n_skipped = 0
    todo = []
    for t, p, f, b in plan:
        key = (t.name, p.head, p.feature, b, f)
        rdir = _run_dir(out, key)
        hp = _hparams_for(s, t, p, f)
        sig = _signature(store_objs[b], t, p, hp, s.seed)
        if resume and (rdir / "results.json").exists() and (rdir / "signature.txt").exists() \
                and (rdir / "signature.txt").read_text().strip() == sig:
            try:
                done[key] = ProbeRun.load(rdir)
                n_skipped += 1
                bar.update(1)
                continue
            except Exception as exc:  # noqa: BLE001 - an unreadable old run is simply run again
                warnings.warn(f"re-running {rdir}: could not read its results ({exc})", stacklevel=2)
        (rdir / "results.json").unlink(missing_ok=True)  # a stale result must not be read back
        todo.append((key, (store_objs[b], t, p, hp, s.seed, rdir, sig)))

    def finish(key: tuple, error: str | None, rdir: Path) -> None:
        if error is None:
            try:
                done[key] = ProbeRun.load(rdir)
            except Exception as exc:  # noqa: BLE001
                done[key] = f"{type(exc).__name__}: could not read the finished run ({exc})"
        else:
            done[key] = error
        bar.update(1)

    if int(workers) == 1 or len(todo) <= 1:
        for key, args in todo:
            bar.set_postfix_str(f"{key[0]} {key[1]}/{key[2]} {key[3]} f={key[4]:g}")
            finish(key, _execute(*args), args[5])
    else:
        from concurrent.futures import as_completed

        order = sorted(todo, key=lambda kv: -_HEAD_COST.get(kv[0][1], 1))  # longest first
        with _pool(min(int(workers), len(todo))) as pool:
            futures = {pool.submit(_execute, *args): (key, args[5]) for key, args in order}
            for fut in as_completed(futures):
                key, rdir = futures[fut]
                bar.set_postfix_str(f"{key[0]} {key[1]}/{key[2]} {key[3]} f={key[4]:g}")
                try:
                    error = fut.result()
                except Exception as exc:  # noqa: BLE001 - a worker died (e.g. out of memory)
                    error = f"{type(exc).__name__}: worker failed ({exc})"
                finish(key, error, rdir)
    plan_keys = [(t.name, p.head, p.feature, b, f) for t, p, f, b in plan]
    runs = {k: done[k] for k in plan_keys if isinstance(done.get(k), ProbeRun)}
    failures = [(k, done[k]) for k in plan_keys if isinstance(done.get(k), str)]
    bar.close()
    results = _long_results(s, runs, failures)
    from voxelfm.probes.trainer import limit_threads

    threads = s.defaults.get("threads", 1)
    with _quiet_progress(), limit_threads(threads):
        comparisons = _comparisons(s, runs)
    table = results_table(results, comparisons, s)
    paths = _write_tables(out, results, comparisons, table, s)
    if figures:
        try:
            with limit_threads(threads):
                paths.update(_figures(s, runs, results, out / "figures", store_objs))
        except Exception as exc:  # noqa: BLE001 - figures must not lose the numbers
            warnings.warn(f"figures failed: {exc}", stacklevel=2)
            atomic_write_text(out / "figures-error.txt", traceback.format_exc())
    summary = {"suite": s.name, "runs": len(plan), "finished": len(runs), "resumed": n_skipped,
               "failed": [{"run": list(map(str, k)), "error": e} for k, e in failures]}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    paths["summary"] = out / "summary.json"
    return SuiteResult(results=results, comparisons=comparisons, table=table, runs=runs,
                       failures=failures, paths=paths)


# ------------------------------------------------------------------------------------------- tables
def _long_results(s: Suite, runs: dict[tuple, ProbeRun], failures: list[tuple[tuple, str]]) -> pd.DataFrame:
    rows = []
    task_of = {t.name: t for t in s.tasks}
    for key, run in runs.items():
        task_name, head, feature, backbone, fraction = key
        t = task_of[task_name]
        for metric, est in run.metrics.items():
            rows.append({"task_name": task_name, "task": t.task, "head": head, "feature": feature,
                         "fraction": fraction, "backbone": backbone, "metric": metric,
                         "primary": metric == get_task(t.task).primary, "value": est.value,
                         "ci_low": est.ci_low, "ci_high": est.ci_high, "method": est.method, "n": est.n,
                         "best_epoch": run.best_epoch, "seconds": round(run.seconds, 3), "status": "ok"})
    for key, err in failures:
        task_name, head, feature, backbone, fraction = key
        rows.append({"task_name": task_name, "task": task_of[task_name].task, "head": head, "feature": feature,
                     "fraction": fraction, "backbone": backbone, "metric": get_task(task_of[task_name].task).primary,
                     "primary": True, "value": math.nan, "ci_low": math.nan, "ci_high": math.nan,
                     "method": "", "n": 0, "best_epoch": None, "seconds": math.nan, "status": f"failed: {err}"})
    cols = ["task_name", "task", "head", "feature", "fraction", "backbone", "metric", "primary", "value",
            "ci_low", "ci_high", "method", "n", "best_epoch", "seconds", "status"]
    return pd.DataFrame(rows, columns=cols)


def _test_rows(run: ProbeRun) -> pd.DataFrame:
    df = run.predictions
    if run.task == "retrieval":
        return df.set_index("label")
    return df[df["split"] == "test"].set_index("id")


def _comparisons(s: Suite, runs: dict[tuple, ProbeRun]) -> pd.DataFrame:
    from voxelfm.stats import adjust_pvalues

    rows = []
    backbones = list(s.stores)
    if s.reference is not None:
        pairs = [(s.reference, b) for b in backbones if b != s.reference]
    else:
        pairs = list(itertools.combinations(backbones, 2))
    for t in s.tasks:
        task_obj = get_task(t.task)
        for p in t.probes:
            for f in t.fractions:
                for a, b in pairs:
                    ra, rb = runs.get((t.name, p.head, p.feature, a, f)), runs.get((t.name, p.head, p.feature, b, f))
                    if ra is None or rb is None:
                        continue
                    da, db = _test_rows(ra), _test_rows(rb)
                    common = da.index.intersection(db.index)
                    if len(common) == 0:
                        continue
                    ya, pa = task_obj.from_predictions(da.loc[common].reset_index())
                    _, pb = task_obj.from_predictions(db.loc[common].reset_index())
                    res = task_obj.compare(ya, pa, pb, n_resamples=s.n_resamples, seed=s.seed)
                    rows.append({"task_name": t.name, "task": t.task, "head": p.head, "feature": p.feature,
                                 "fraction": f, "metric": task_obj.primary, "backbone_a": a, "backbone_b": b,
                                 "n": len(common), "diff": res["diff"], "p_value": res["p_value"],
                                 "method": res["method"]})
    df = pd.DataFrame(rows, columns=["task_name", "task", "head", "feature", "fraction", "metric", "backbone_a",
                                     "backbone_b", "n", "diff", "p_value", "method"])
    df["p_holm"] = np.nan
    if len(df) and s.holm != "none":
        groups = [df.index] if s.holm == "table" else [g.index for _, g in df.groupby("task_name", sort=False)]
        for idx in groups:
            df.loc[idx, "p_holm"] = adjust_pvalues(df.loc[idx, "p_value"].to_numpy(dtype=float), "holm")
    elif len(df):
        df["p_holm"] = df["p_value"]
    return df


def _fmt_est(v: float, lo: float, hi: float, digits: int = 3) -> str:
    if not math.isfinite(v):
        return "—"
    if math.isfinite(lo) and math.isfinite(hi):
        return f"{v:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"
    return f"{v:.{digits}f}"


def _fmt_p(p: float) -> str:
    if not math.isfinite(p):
        return "—"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def results_table(results: pd.DataFrame, comparisons: pd.DataFrame, suite: Suite | None = None) -> pd.DataFrame:
    """Wide table of the primary metric: one row per (task, probe, fraction); one column per
    backbone (``value [CI]``) and one per compared pair (Holm-adjusted p, raw p in ``comparisons``).

    The extra column ``_best`` (the best backbones of the row: several when tied, none when all are
    tied) supports bold formatting.
    """
    prim = results[results["primary"]]
    backbones = list(dict.fromkeys(prim["backbone"])) if suite is None else list(suite.stores)
    pair_cols = list(dict.fromkeys(f"p {a} vs {b}" for a, b in zip(comparisons["backbone_a"], comparisons["backbone_b"])))
    rows = []
    for (tn, head, feat, frac), g in prim.groupby(["task_name", "head", "feature", "fraction"], sort=False):
        task_obj = get_task(g["task"].iloc[0])
        row: dict[str, Any] = {"task": tn, "probe": f"{head}/{feat}", "fraction": frac,
                               "metric": f"{task_obj.primary} {'↑' if task_obj.higher_is_better else '↓'}"}
        values: dict[str, float] = {}
        for b in backbones:
            r = g[g["backbone"] == b]
            if len(r) == 0:
                row[b] = "—"
                continue
            r = r.iloc[0]
            row[b] = _fmt_est(r["value"], r["ci_low"], r["ci_high"]) if r["status"] == "ok" else "failed"
            if math.isfinite(r["value"]):
                values[b] = float(r["value"])
        best: tuple[str, ...] = ()
        if values:
            top = max(values.values()) if task_obj.higher_is_better else min(values.values())
            best = tuple(b for b, v in values.items() if v == top)
            if len(best) == len(values) and len(values) > 1:
                best = ()  # all tied: nothing to highlight
        c = comparisons[(comparisons["task_name"] == tn) & (comparisons["head"] == head)
                        & (comparisons["feature"] == feat) & (comparisons["fraction"] == frac)]
        for col in pair_cols:
            row[col] = "—"
        for _, r in c.iterrows():
            row[f"p {r['backbone_a']} vs {r['backbone_b']}"] = _fmt_p(r["p_holm"]) + \
                (" (DeLong)" if r["method"] == "delong" else "")
        row["_best"] = best
        rows.append(row)
    return pd.DataFrame(rows)


def _esc_md(x: Any) -> str:
    return str(x).replace("|", "\\|")


def format_markdown(table: pd.DataFrame, *, title: str = "", note: str = "") -> str:
    """GitHub-flavoured Markdown of :func:`results_table` (best backbone per row in bold)."""
    cols = [c for c in table.columns if not c.startswith("_")]
    lines = [f"# {title}", ""] if title else []
    lines.append("| " + " | ".join(_esc_md(c) for c in cols) + " |")
    lines.append("|" + "|".join("---" for _ in cols) + "|")
    for _, r in table.iterrows():
        cells = []
        for c in cols:
            v = r[c]
            v = f"{v:g}" if isinstance(v, float) and c == "fraction" else v
            cell = _esc_md(v)
            if c in (r.get("_best") or ()):
                cell = f"**{cell}**"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    if note:
        lines += ["", note]
    return "\n".join(lines) + "\n"


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
        "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "↑": r"$\uparrow$",
        "↓": r"$\downarrow$", "—": "--", "<": r"$<$", ">": r"$>$"}


def _esc_tex(x: Any) -> str:
    return "".join(_TEX.get(ch, ch) for ch in str(x))


def _booktabs(header: list[str], rows: list[list[str]], *, col_spec: str, caption: str = "", label: str = "",
             wide: bool = False) -> str:
    """A booktabs LaTeX ``table`` of already escaped cells (``wide``: scaled to the text width)."""
    out = [r"% needs \usepackage{booktabs,graphicx}"] if wide else []
    out += [r"\begin{table}[t]", r"\centering", r"\small"] + ([r"\resizebox{\textwidth}{!}{%"] if wide else [])
    out += [r"\begin{tabular}{" + col_spec + "}", r"\toprule", " & ".join(header) + r" \\", r"\midrule"]
    out += [" & ".join(cells) + r" \\" for cells in rows]
    out += [r"\bottomrule", r"\end{tabular}" + ("}" if wide else "")]
    if caption:
        out.append(r"\caption{" + _esc_tex(caption) + "}")
    out += [r"\label{" + label + "}", r"\end{table}"]
    return "\n".join(out) + "\n"


def format_latex(table: pd.DataFrame, *, caption: str = "", label: str = "tab:probes") -> str:
    """A booktabs LaTeX table of :func:`results_table` (best backbone per row in bold)."""
    cols = [c for c in table.columns if not c.startswith("_")]
    rows = []
    for _, r in table.iterrows():
        cells = []
        for c in cols:
            v = r[c]
            v = f"{v:g}" if isinstance(v, float) and c == "fraction" else v
            cell = _esc_tex(v)
            if c in (r.get("_best") or ()):
                cell = r"\textbf{" + cell + "}"
            cells.append(cell)
        rows.append(cells)
    return _booktabs([_esc_tex(c) for c in cols], rows, col_spec="l" * 4 + "c" * (len(cols) - 4), caption=caption,
                    label=label)


def _write_tables(out: Path, results: pd.DataFrame, comparisons: pd.DataFrame, table: pd.DataFrame,
                  s: Suite) -> dict[str, Path]:
    paths = {}
    for name, df in (("results", results), ("comparisons", comparisons)):
        with atomic_write(out / f"{name}.csv") as tmp:
            df.to_csv(tmp, index=False)
        paths[name] = out / f"{name}.csv"
    with atomic_write(out / "table.csv") as tmp:
        table.drop(columns=[c for c in table.columns if c.startswith("_")]).to_csv(tmp, index=False)
    paths["table_csv"] = out / "table.csv"
    holm = {"table": "Holm-adjusted over the whole table", "task": "Holm-adjusted within each task",
            "none": "unadjusted"}[s.holm]
    where = (f"pooled out-of-fold predictions of every scan ({s.folds}-fold cross-validation grouped by "
             "patient)") if s.protocol == "cv" else "test split"
    note = (f"Primary metric on the {where} with 95% CI (AUROC: DeLong; others: percentile bootstrap, "
            f"{s.n_resamples} resamples). p: paired comparison between backbones on the same ids "
            f"(DeLong for AUROC of binary tasks, paired bootstrap otherwise), {holm}. Best per row in bold.")
    atomic_write_text(out / "results.md", format_markdown(table, title=f"Probe results: {s.name}", note=note))
    atomic_write_text(out / "results.tex", format_latex(table, caption=f"Probe results ({s.name}). {note}"))
    paths["markdown"] = out / "results.md"
    paths["latex"] = out / "results.tex"
    return paths


# ------------------------------------------------------------------------------------------- figures
def _with_direction(metric: str, task: str) -> str:
    """``"auroc ↑"`` / ``"mae ↓"``: axis labels say which way is better."""
    return f"{metric} {'↑' if get_task(task).higher_is_better else '↓'}"


def _val_score(run: ProbeRun | None, task_obj: Any) -> float:
    """The run's validation primary metric, oriented so that higher is better (NaN if unknown)."""
    est = None if run is None else run.val_metrics.get(task_obj.primary)
    v = math.nan if est is None else float(est.value)
    return v if task_obj.higher_is_better else -v


def fraction_rows(s: Suite, results: pd.DataFrame) -> pd.DataFrame:
    """Rows of :func:`voxelfm.probes.figures.fraction_figure` for the tasks run at several
    training fractions: the successful primary-metric rows of ``results`` plus ``panel``
    (``"task · head/feature"``) and ``metric`` with its direction (``"auroc ↑"``)."""
    multi = [t.name for t in s.tasks if len(t.fractions) > 1]
    rows = results[results["primary"].astype(bool) & (results["status"] == "ok")
                   & results["task_name"].isin(multi)].copy()
    rows["panel"] = rows["task_name"] + " · " + rows["head"] + "/" + rows["feature"]
    rows["metric"] = [_with_direction(m, tk) for m, tk in zip(rows["metric"], rows["task"])]
    return rows


def cls_vs_patch_rows(s: Suite, runs: dict[tuple, ProbeRun], results: pd.DataFrame) -> pd.DataFrame:
    """Rows of :func:`voxelfm.probes.figures.cls_vs_patch_figure`: for every task with both
    class-token and patch-token probes, per backbone and kind, the test metric of the head chosen
    on the *validation* metric at the task's largest fraction (choosing on the test value would
    bias the comparison towards the kind with more heads). Columns ``task_name``, ``backbone``,
    ``kind``, ``value``, ``ci_low``, ``ci_high``, ``metric``, ``head``."""
    prim = results[results["primary"].astype(bool) & (results["status"] == "ok")]
    rows = []
    for t in s.tasks:
        task_obj = get_task(t.task)
        sub = prim[(prim["task_name"] == t.name) & (prim["fraction"] == max(t.fractions))]
        kinds = {"class token": sub[sub["feature"] == "cls"], "patch tokens": sub[sub["feature"] == "patch"]}
        if any(len(v) == 0 for v in kinds.values()):
            continue
        for kind, g in kinds.items():
            for b, gb in g.groupby("backbone", sort=False):
                val = [_val_score(runs.get((t.name, h, ft, b, fr)), task_obj)
                       for h, ft, fr in zip(gb["head"], gb["feature"], gb["fraction"])]
                best = gb.iloc[int(np.nanargmax(val)) if np.isfinite(val).any() else 0]
                rows.append({"task_name": t.name, "backbone": b, "kind": kind, "value": best["value"],
                             "ci_low": best["ci_low"], "ci_high": best["ci_high"],
                             "metric": _with_direction(best["metric"], t.task),
                             "head": f"{best['head']}/{best['feature']}"})
    return pd.DataFrame(rows, columns=["task_name", "backbone", "kind", "value", "ci_low", "ci_high", "metric",
                                       "head"])


def _figures(s: Suite, runs: dict[tuple, ProbeRun], results: pd.DataFrame, fig_dir: Path,
             stores: dict[str, Any]) -> dict[str, Path]:
    from voxelfm.probes import figures as F

    cfg = {"roc": True, "fractions": True, "cls_vs_patch": True, "pca": None, **s.figures}
    paths: dict[str, Path] = {}
    if cfg.get("roc"):
        for t in s.tasks:
            if t.task != "binary":
                continue
            for p in t.probes:
                f = max(t.fractions)
                curves, labels = {}, {}
                for b in s.stores:
                    run = runs.get((t.name, p.head, p.feature, b, f))
                    if run is None:
                        continue
                    test = run.predictions[run.predictions["split"] == "test"]
                    curves[b] = (test["label"].to_numpy(), test["prob"].to_numpy())
                    labels[b] = f"{b}: AUROC {run.metrics['auroc']}"
                if curves:
                    name = f"roc_{safe_id(t.name)}_{p.head}-{p.feature.replace('+', '_')}"
                    paths[name] = F.roc_figure(curves, fig_dir / f"{name}.png", labels=labels,
                                               title=f"{t.name} ({p.label}, fraction {f:g})")
    if cfg.get("fractions"):
        rows = fraction_rows(s, results)
        if len(rows):
            paths["fractions"] = F.fraction_figure(rows, fig_dir / "fractions.png",
                                                   title="Primary metric vs training fraction")
    if cfg.get("cls_vs_patch"):
        rows = cls_vs_patch_rows(s, runs, results)
        if len(rows):
            paths["cls_vs_patch"] = F.cls_vs_patch_figure(
                rows, fig_dir / "cls_vs_patch.png",
                title="Class token vs patch tokens (test metric of the head chosen on validation)")
    pca = cfg.get("pca")
    if pca:
        pca = dict(pca) if isinstance(pca, Mapping) else {}
        path_col = pca.get("path_col", "path")
        t0 = s.tasks[0]
        from voxelfm.probes.data import read_label_table

        table = read_label_table(t0.labels, id_col=t0.id_col).set_index(t0.id_col)
        base = None if isinstance(t0.labels, pd.DataFrame) else Path(t0.labels).resolve().parent
        for b, st in stores.items():
            ids = [str(i) for i in (pca.get("ids") or st.ids[: int(pca.get("n", 1))])]
            for item in ids:
                vol = None
                if path_col in table.columns and item in table.index and isinstance(table.loc[item, path_col], str):
                    vp = Path(table.loc[item, path_col])
                    vol = vp if vp.is_absolute() or base is None else base / vp
                name = f"pca_{safe_id(b)}_{safe_id(item)}"
                paths[name] = F.pca_rgb_figure(st, item, fig_dir / f"{name}.png", volume=vol,
                                               foreground=bool(pca.get("foreground", True)),
                                               title=f"{b}: {item}")
    return paths
