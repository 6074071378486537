"""Compare backbones on one cohort: extract with each, run one probe suite on all of them, and write
the comparison table (the layout of the paper's Table 1) with 95 % CIs and Holm-adjusted paired
tests between every pair of backbones, plus the figures.

Typical use::

    from voxelfm.probes.compare import compare_backbones
    res = compare_backbones("voxelfm=teacher/,merlin=merlin.pt,voxelfm@random", "cohort.csv",
                            "labels.csv", "compare/")
    print(res.paths["markdown"].read_text())

Folder ``OUT/``::

    stores/<label>/        one embedding store per backbone (voxelfm extract; resumable)
    probes/                the suite's runs, results.csv, comparisons.csv (raw and Holm p), figures/
    suite.yaml             the suite that was run (derived from the label table when none is given)
    table.md/.csv/.tex     the comparison table
    figures/backbones.png  primary metric with 95 % CI per task, one bar per backbone
    figures/pairwise.png   every pair's difference and Holm-adjusted p, one matrix per table row
    compare.json           backbones, extraction counts, settings
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from voxelfm.errors import ConfigError
from voxelfm.probes.comparison_table import backbone_letters, comparison_table, write_comparison_table
from voxelfm.probes.data import read_label_table
from voxelfm.probes.suite import SuiteResult, load_suite, run_suite
from voxelfm.utils import atomic_write_text

__all__ = ["CompareResult", "compare_backbones", "default_suite", "DEFAULT_PROBES"]

#: probes of each task kind in the suite derived from a label table
DEFAULT_PROBES: dict[str, list[str]] = {
    "binary": ["logistic", "knn"],
    "multiclass": ["logistic"],
    "regression": ["ridge"],
    "survival": ["cox"],
}

#: columns of a label table that are never targets of the derived suite
_NOT_TARGETS = {"path", "seg_path", "patient_id", "patient", "series_uid", "study_uid", "report", "text",
                "split", "fold", "shape", "orientation", "source"}
#: acquisition / geometry metadata, not findings (kept out of the derived suite; --targets can name them)
_ACQUISITION = re.compile(r"^(spacing|voxel_size|pixel_spacing|slice_thickness|scan_index|noise|kvp|mas|"
                          r"manufacturer|scanner|series|study|acquisition|reconstruction|kernel)",
                          re.I)
_TIME = re.compile(r"(^|_)(time|survival_time|os_time|pfs_time|duration|days|months)$", re.I)
_EVENT = re.compile(r"(^|_)(event|status|death|dead)$", re.I)
#: at most this many distinct integer / text values make a column a multiclass target
_MAX_CLASSES = 10


@dataclass
class CompareResult:
    """What :func:`compare_backbones` produced.

    Attributes:
        table: the comparison table (:func:`~voxelfm.probes.comparison_table.comparison_table`).
        suite: the suite's :class:`~voxelfm.probes.suite.SuiteResult` (long results, pairwise tests).
        extraction: ``{label: BatchSummary}`` of this run (``ok`` = newly extracted volumes).
        paths: written files by name.
    """

    table: pd.DataFrame
    suite: SuiteResult
    extraction: dict[str, Any] = field(default_factory=dict)
    paths: dict[str, Path] = field(default_factory=dict)


def _survival_pairs(cols: Sequence[str]) -> list[tuple[str, str]]:
    times = [c for c in cols if _TIME.search(c)]
    events = [c for c in cols if _EVENT.search(c)]
    pairs = []
    for t in times:
        prefix = _TIME.sub("", t)
        match = [e for e in events if _EVENT.sub("", e) == prefix] or (events if len(times) == 1 else [])
        if len(match) == 1:
            pairs.append((t, match[0]))
            events.remove(match[0])
    return pairs


def _kind(values: pd.Series) -> str | None:
    """Task kind of one fully present label column, or None (constant, free text)."""
    num = pd.to_numeric(values, errors="coerce")
    if num.notna().all():
        distinct = set(num.unique().tolist())
        if len(distinct) < 2:
            return None
        if distinct <= {0, 1}:
            return "binary"
        integer = all(float(v).is_integer() for v in distinct)
        return "multiclass" if integer and len(distinct) <= min(_MAX_CLASSES, len(values) // 5) else "regression"
    n = values.astype(str).nunique()
    return "multiclass" if 2 <= n <= _MAX_CLASSES else None


def default_suite(labels: str | os.PathLike[str] | pd.DataFrame, *, id_col: str = "id",
                  ids: Sequence[str] | None = None, targets: Sequence[str] | None = None,
                  name: str = "compare", n_resamples: int = 1000, seed: int = 4) -> dict[str, Any]:
    """A probe suite (dict, see :mod:`voxelfm.probes.suite`) derived from a label table's columns.

    Every column except the id, split and metadata columns (path, seg_path, patient_id, report, ...;
    acquisition columns such as spacing_*, slice_thickness, scan_index, noise_*, kvp, manufacturer)
    becomes a task on the rows of ``ids``: 0/1 → binary (logistic, kNN), a few integer or text
    classes → multiclass (logistic), other numbers → regression (ridge), a time column with an
    event column (``survival_time`` + ``event``, ``os_time`` + ``os_event``...) → survival (Cox).
    Columns with missing values on those rows and constant columns are left out (write a suite
    for them). Uses the table's ``split`` column when there is one, else patient-grouped splits.

    Args:
        labels: label table (CSV/TSV/Parquet or DataFrame) with an ``id_col``.
        ids: the ids to be probed (default: every row).
        targets: only these columns (each must be usable).

    Raises:
        ConfigError: no usable target column, or a requested target is unknown or unusable.
    """
    table = read_label_table(labels, id_col=id_col)
    if ids is not None:
        table = table[table[id_col].isin([str(i) for i in ids])]
        if table.empty:
            raise ConfigError(f"none of the {len(ids)} extracted ids is in the label table (id column {id_col!r})")
    if targets:
        unknown = [c for c in targets if c not in table.columns]
        if unknown:
            raise ConfigError(f"target column(s) {', '.join(unknown)} not in the label table "
                              f"(columns: {', '.join(map(str, table.columns[:20]))})")
        cols = list(dict.fromkeys(targets))
    else:
        cols = [c for c in table.columns if c != id_col and str(c).lower() not in _NOT_TARGETS
                and not _ACQUISITION.match(str(c))]
    cols = [c for c in cols if table[c].notna().all()] if not targets else cols
    tasks: list[dict[str, Any]] = []
    used: set[str] = set()
    for t, e in _survival_pairs(cols):
        if _kind(table[e]) == "binary" and pd.to_numeric(table[t], errors="coerce").notna().all():
            tasks.append({"name": t.removesuffix("_time") or "survival", "task": "survival", "target": [t, e],
                          "probes": list(DEFAULT_PROBES["survival"])})
            used |= {t, e}
    for c in cols:
        if c in used:
            continue
        kind = _kind(table[c]) if table[c].notna().all() else None
        if kind is None:
            if targets:
                raise ConfigError(f"target column {c!r} cannot be probed as given (missing values, one value "
                                  "only, or free text); write a suite YAML for it")
            continue
        tasks.append({"name": str(c), "task": kind, "target": str(c), "probes": list(DEFAULT_PROBES[kind])})
    if not tasks:
        raise ConfigError("no column of the label table can be a probe target (0/1, classes, numbers, "
                          "time + event without missing values); pass --suite SUITE.yaml")
    split = "split" if "split" in table.columns else None
    return {"name": name, "seed": int(seed), "id_col": id_col, "split_col": split, "n_resamples": int(n_resamples),
            "holm": "table", "defaults": {"epochs": 40}, "tasks": tasks,
            "figures": {"roc": True, "fractions": True, "cls_vs_patch": True}}


def _backbone_figure(results: pd.DataFrame, backbones: Sequence[str], path: Path) -> Path | None:
    """One panel per (task, probe, fraction): the primary metric with its 95 % CI per backbone."""
    from voxelfm.probes.figures import cls_vs_patch_figure
    from voxelfm.probes.tasks import get_task

    prim = results[results["primary"] & (results["status"] == "ok")]
    if prim.empty:
        return None
    rows = []
    for (tn, head, feat, frac), g in prim.groupby(["task_name", "head", "feature", "fraction"], sort=False):
        arrow = "↑" if get_task(g["task"].iloc[0]).higher_is_better else "↓"
        panel = f"{tn}\n{head}/{feat}" + (f" f={frac:g}" if frac != 1 else "")
        for b in backbones:
            r = g[g["backbone"] == b]
            if len(r):
                r = r.iloc[0]
                rows.append({"task_name": panel, "backbone": b, "kind": "test (95% CI)", "value": r["value"],
                             "ci_low": r["ci_low"], "ci_high": r["ci_high"], "metric": f"{r['metric']} {arrow}"})
    return cls_vs_patch_figure(pd.DataFrame(rows), path, title="Primary test metric per backbone")


def _note(n_resamples: int, holm: str, alpha: float, letters: Mapping[str, str]) -> str:
    scope = {"table": "over the whole table", "task": "within each task", "none": "(unadjusted)"}[holm]
    return (f"Primary test-split metric with 95% CI (AUROC: DeLong; others: percentile bootstrap, {n_resamples} "
            f"resamples). Superscript letters: the backbones this one is significantly better than (paired test "
            f"on the same test ids — DeLong for binary AUROC, paired bootstrap otherwise — Holm-adjusted {scope}, "
            f"p < {alpha:g}). Pair columns: difference of the metric (first − second) and Holm-adjusted p. "
            f"Best per row in bold. Letters: " + ", ".join(f"{v} = {k}" for k, v in letters.items()) + ".")


def compare_backbones(backbones: Any, inputs: Any, labels: str | os.PathLike[str] | pd.DataFrame,
                      output_dir: str | os.PathLike[str], *,
                      suite: str | os.PathLike[str] | Mapping[str, Any] | None = None,
                      options: Any = (), id_col: str = "id", targets: Sequence[str] | None = None,
                      holm: str | None = None, alpha: float = 0.05, n_resamples: int | None = None,
                      extract: Mapping[str, Any] | None = None, probe_workers: int = 1, resume: bool = True,
                      figures: bool = True, show_progress: bool = True) -> CompareResult | None:
    """Extract ``inputs`` with every backbone, run one suite on all stores, write the table.

    Args:
        backbones: ``"FAMILY[@LABEL][=WEIGHTS],..."``, a list of such specs, or
            :class:`~voxelfm.inference.backbones.BackboneSpec` s (≥ 2).
        inputs: volumes: files, folders, CSV manifests (``id,path``), as ``voxelfm extract -i``.
        labels: the label table (its ``id_col`` matches the input ids).
        output_dir: the comparison folder (see the module docstring); re-running resumes.
        suite: a suite YAML / dict / packaged name; its ``stores`` and ``reference`` are replaced
            (every pair of backbones is tested). Default: :func:`default_suite` of ``labels``.
        options: family options ``{label: {key: value}}`` or ``LABEL:KEY=VALUE`` strings.
        targets: columns for the derived suite (default: every usable column).
        holm: Holm family: ``"table"`` (default), ``"task"`` or ``"none"``; overrides the suite's.
        alpha: significance level of the table's letters.
        n_resamples: bootstrap resamples (overrides the suite's).
        extract: options of :func:`voxelfm.inference.extract_batch` (``preset``, ``max_patches``,
            ``crop_background``, ``mode``, ``device``, ``dtype``, ``workers``, ``spacing``...).
        probe_workers: probe runs trained at the same time (processes).
        resume: skip finished probe runs (extraction always resumes).

    Returns:
        :class:`CompareResult`; ``None`` on ranks other than 0 under ``torchrun`` (they only extract).

    Raises:
        ValueError / ConfigError: bad specs, options or suite, before any extraction.
    """
    from voxelfm.inference.backbones import BackboneSpec, check_specs, extract_backbones, parse_backbones
    from voxelfm.io import collect_inputs

    if holm is not None and holm not in ("table", "task", "none"):
        raise ConfigError(f"holm must be 'table', 'task' or 'none', got {holm!r}")
    if not 0 < alpha < 1:
        raise ConfigError(f"alpha must be in (0, 1), got {alpha}")
    specs = list(backbones) if isinstance(backbones, Sequence) and not isinstance(backbones, str) \
        and all(isinstance(b, BackboneSpec) for b in backbones) else parse_backbones(backbones, options)
    if len(specs) < 2:
        raise ValueError("a comparison needs at least two backbones")
    check_specs(specs)  # unknown family / option, missing dependency or weights: before any extraction
    out = Path(output_dir)
    raw = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    items = collect_inputs(raw) if raw and all(isinstance(i, (str, os.PathLike)) for i in raw) else raw
    if not items:
        raise ValueError(f"no volumes found in {inputs}")
    ids = [str(it["id"] if isinstance(it, Mapping) else it[0] if isinstance(it, (tuple, list)) else it.id)
           for it in items]
    stores = {s.label: out / "stores" / s.label for s in specs}
    for folder in stores.values():
        folder.mkdir(parents=True, exist_ok=True)
    # the suite is parsed before anything is extracted: a bad suite fails in seconds
    if suite is None:
        suite_data: Any = default_suite(labels, id_col=id_col, ids=ids, targets=targets,
                                        n_resamples=n_resamples or 1000)
    else:
        if targets:
            raise ConfigError("--targets selects columns of the derived suite; with --suite list the tasks there")
        suite_data = suite
    parsed = load_suite(suite_data, stores={k: str(v) for k, v in stores.items()}, labels=labels, all_pairs=True)
    if holm is not None:
        parsed.holm = holm
    if n_resamples is not None:
        parsed.n_resamples = int(n_resamples)

    rank0 = int(os.environ.get("RANK", "0")) == 0
    if suite is None and rank0:
        import yaml

        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "suite.yaml", yaml.safe_dump(suite_data, sort_keys=False))
        if show_progress:
            names = [t["name"] for t in suite_data["tasks"]]
            print(f"suite derived from the label columns: {len(names)} task(s) ({', '.join(names[:12])}"
                  f"{', ...' if len(names) > 12 else ''}); edit {out / 'suite.yaml'} and pass --suite to change it",
                  flush=True)
    summaries = extract_backbones(specs, items, out / "stores", show_progress=None if show_progress else False,
                                  **dict(extract or {}))
    if not rank0:
        return None
    for label, summ in summaries.items():
        if summ.ok + summ.skipped - summ.failed_before == 0:
            raise ValueError(f"backbone {label}: no volume could be embedded; see {stores[label] / 'index.csv'}")
    res = run_suite(parsed, out / "probes", resume=resume, show_progress=show_progress, figures=figures,
                    workers=probe_workers)
    labels_order = [s.label for s in specs]
    table = comparison_table(res.results, res.comparisons, labels_order, alpha=alpha)
    letters = backbone_letters(labels_order)
    paths = write_comparison_table(table, out, title=f"Backbone comparison: {parsed.name}",
                                   note=_note(parsed.n_resamples, parsed.holm, alpha, letters))
    if figures:
        fig = _backbone_figure(res.results, labels_order, out / "figures" / "backbones.png")
        if fig is not None:
            paths["figure_backbones"] = fig
        if len(res.comparisons):
            from voxelfm.probes.figures import pairwise_figure
            from voxelfm.probes.tasks import get_task

            comp = res.comparisons.assign(higher_is_better=[get_task(t).higher_is_better
                                                            for t in res.comparisons["task"]])
            paths["figure_pairwise"] = pairwise_figure(comp, labels_order, out / "figures" / "pairwise.png",
                                                       alpha=alpha, title="Paired tests between backbones")
    paths.update({f"suite_{k}": v for k, v in res.paths.items()})
    summary = {"backbones": [s.to_dict() for s in specs], "letters": letters, "alpha": alpha, "holm": parsed.holm,
               "n_resamples": parsed.n_resamples, "suite": parsed.name, "inputs": len(items),
               "extraction": {k: v.to_dict() for k, v in summaries.items()},
               "probe_runs": {"finished": len(res.runs), "failed": len(res.failures)},
               "random_init": [s.label for s in specs if s.weights is None]}
    atomic_write_text(out / "compare.json", json.dumps(summary, indent=2, default=str))
    paths["summary"] = out / "compare.json"
    return CompareResult(table=table, suite=res, extraction=summaries, paths=paths)
