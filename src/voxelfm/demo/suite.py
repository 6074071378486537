"""The probe suite of the demo: every task category the phantom cohort supports.

=================  ==============================================  =============================
category           tasks (targets of ``cohort.csv``)               probe
=================  ==============================================  =============================
classification     each finding with both classes in every split   linear on the CLS token;
                   (binary, AUROC); all of them together           lung nodule also attentive
                   (multilabel, macro AUROC)                       pooling on patch tokens and
                                                                   a data-fraction curve
regression         ``fev1_percent``, ``lung_volume_ml`` (MAE)      linear on CLS
survival           ``survival_time`` / ``event`` (C-index)         Cox on CLS
retrieval          the finding labels (Recall@1 of 1 + 99)         cosine on CLS
localisation       largest nodule ``nodule_d/h/w`` (distance)      positional attention on patches
segmentation       organ label maps ``seg_path`` (macro Dice)      patch-to-voxel decoder
=================  ==============================================  =============================

:func:`build_suite` returns the suite as a dict for :func:`voxelfm.probes.run_suite`; the task
list adapts to the cohort (a finding too rare to have positives and negatives in the train,
validation and test splits is left out and listed in ``skipped``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from voxelfm.demo.settings import REGRESSION_TARGETS, DemoSettings

__all__ = ["CATEGORIES", "SuitePlan", "below_resolution", "build_suite", "category_of"]

#: task category → the suite tasks' ``task`` values it covers (report order)
CATEGORIES: dict[str, tuple[str, ...]] = {
    "classification": ("binary", "multilabel"),
    "regression": ("regression",),
    "survival": ("survival",),
    "retrieval": ("retrieval",),
    "localisation": ("localisation",),
    "segmentation": ("segmentation",),
}

PRETRAINED = "pretrained"
RANDOM = "random_init"
NODULE_TASK = "lung_nodule"
_MIN_PER_CLASS = 2
_MIN_LOCALISATION = 3


def category_of(task: str) -> str:
    """The report category of a probe task type (``binary`` → ``classification``)."""
    for cat, tasks in CATEGORIES.items():
        if task in tasks:
            return cat
    return task


@dataclass
class SuitePlan:
    """The suite dict plus what was left out and why.

    ``skipped``: tasks the cohort cannot support (too few positives...); ``below_resolution``:
    findings drawn smaller than one patch token of the extraction grid — no backbone at this
    token size can see them, so they are reported as such instead of being scored.
    """

    suite: dict[str, Any]
    findings: list[str]
    skipped: dict[str, str] = field(default_factory=dict)
    below_resolution: dict[str, str] = field(default_factory=dict)
    lead: str | None = None


def _usable_finding(table: pd.DataFrame, col: str, folds: int | None = None) -> str | None:
    """``None`` if ``col`` has enough positives and negatives, else the reason: ≥ 2 of each in every
    split, or with cross-validation (``folds``) ≥ 2 per fold of each over the cohort."""
    if folds:
        v = pd.to_numeric(table[col], errors="coerce").dropna()
        pos, neg = int((v == 1).sum()), int((v == 0).sum())
        need = _MIN_PER_CLASS * int(folds)
        if pos < need or neg < need:
            return f"{pos} positive / {neg} negative scans (need {need} of each for {folds} folds)"
        return None
    for split in ("train", "val", "test"):
        v = pd.to_numeric(table.loc[table["split"] == split, col], errors="coerce").dropna()
        pos, neg = int((v == 1).sum()), int((v == 0).sum())
        if pos < _MIN_PER_CLASS or neg < _MIN_PER_CLASS:
            return f"{pos} positive / {neg} negative in the {split} split (need {_MIN_PER_CLASS} of each)"
    return None


#: a finding is scored only if it is drawn at least this many model-input voxels across
MIN_VOXELS_ACROSS = 2.0


def below_resolution(findings: list[str], resolution: dict[str, float] | None) -> dict[str, str]:
    """Findings drawn narrower than :data:`MIN_VOXELS_ACROSS` voxels of the model input, with the
    reason as a phrase.

    Extraction resizes each scan to the token budget, so the model input's voxel (``voxel_mm``,
    ≈ 5.3 mm for the default demo's 16-voxel patches on a 64-voxel grid) is what blurs a small
    finding away: structures narrower than two voxels (the sampling limit) no longer exist in the
    input of *any* backbone. A patch token (``token_mm``, 16 voxels there) is wider still, but its
    linear patch embedding sees every voxel inside it, so the token is not the limit.
    """
    from voxelfm.data.phantoms import FINDING_SIZE_MM

    if not resolution:
        return {}
    voxel, token = float(resolution["voxel_mm"]), float(resolution["token_mm"])
    limit = MIN_VOXELS_ACROSS * voxel
    return {f: (f"drawn from {FINDING_SIZE_MM[f]:g} mm across; the model input has {voxel:.0f}-mm voxels, "
                f"one token spans ≈ {token:.0f} mm")
            for f in findings if f in FINDING_SIZE_MM and FINDING_SIZE_MM[f] < limit}


def build_suite(table: pd.DataFrame, settings: DemoSettings, *, findings: list[str] | None = None,
                resolution: dict[str, float] | None = None) -> SuitePlan:
    """The demo's probe suite for a phantom cohort table (``cohort.csv``).

    Args:
        table: the cohort table (``split``, finding columns, targets).
        settings: demo settings (bootstrap resamples, epochs, fractions, PCA cases, protocol).
        findings: candidate finding columns (default :data:`voxelfm.data.phantoms.FINDINGS`).
        resolution: ``{"voxel_mm", "token_mm"}`` of the extracted embeddings' model input; findings
            drawn narrower than two of its voxels (:func:`below_resolution`) are not scored;
            ``None`` scores all.

    Returns:
        :class:`SuitePlan`; ``stores`` and ``labels`` are given to ``run_suite`` separately.
    """
    if findings is None:
        from voxelfm.data.phantoms import FINDINGS

        findings = list(FINDINGS)
    skipped: dict[str, str] = {}
    unseen = below_resolution([f for f in findings if f in table.columns], resolution)
    folds = int(settings.folds) if settings.protocol == "cv" else None
    usable = []
    for f in findings:
        if f not in table.columns:
            skipped[f] = "not in the cohort table"
            continue
        if f in unseen:
            continue
        why = _usable_finding(table, f, folds)
        if why is None:
            usable.append(f)
        else:
            skipped[f] = why
    if not usable:
        raise ValueError("no finding visible at the token grid has enough positives and negatives; generate "
                         "more cases (--cases) or extract with more tokens (max_patches)")
    # the nodule task carries the extra probes; fall back to the most prevalent usable finding
    lead = NODULE_TASK if NODULE_TASK in usable else max(usable, key=lambda c: float(table[c].mean()))
    fractions = sorted({float(f) for f in settings.fractions} | {1.0})
    tasks: list[dict[str, Any]] = []
    for f in usable:
        t: dict[str, Any] = {"name": f, "task": "binary", "target": f, "probes": ["linear"]}
        if f == lead:
            t["probes"] = ["linear", {"head": "attentive", "feature": "patch"}]
            t["fractions"] = fractions
        tasks.append(t)
    if len(usable) > 1:
        tasks.append({"name": "all findings", "task": "multilabel", "target": list(usable), "probes": ["linear"]})
    for col in REGRESSION_TARGETS:
        if col in table.columns:
            tasks.append({"name": col, "task": "regression", "target": col, "probes": ["linear"]})
        else:
            skipped[col] = "not in the cohort table"
    tasks.append({"name": "survival", "task": "survival", "target": ["survival_time", "event"], "probes": ["cox"]})
    # Recall@k among 1 positive + n negatives (99 in the paper; fewer when the cohort is small)
    negatives = min(int((pd.to_numeric(table[f], errors="coerce") == 0).sum()) for f in usable)
    tasks.append({"name": "retrieval", "task": "retrieval", "target": list(usable), "probes": ["cosine"],
                  "hparams": {"retrieval_split": "all", "n_negatives": int(min(99, negatives))}})
    loc_cols = ["nodule_d", "nodule_h", "nodule_w"]
    if NODULE_TASK in unseen:
        unseen["nodule localisation"] = unseen[NODULE_TASK]
    elif all(c in table.columns for c in loc_cols):
        has = table[loc_cols].notna().all(axis=1)
        per_split = {s: int((has & (table["split"] == s)).sum()) for s in ("train", "val", "test")}
        if min(per_split.values()) >= 1 and sum(per_split.values()) >= _MIN_LOCALISATION:
            tasks.append({"name": "nodule localisation", "task": "localisation", "target": loc_cols,
                          "probes": ["localisation"], "hparams": {"coords": "voxel"}})
        else:
            skipped["nodule localisation"] = f"scans with a nodule per split: {per_split}"
    if "seg_path" in table.columns:
        # per-scan Dice pairs are precise on the test split alone; a decoder per fold and backbone
        # would double the demo's probe time
        tasks.append({"name": "organ segmentation", "task": "segmentation", "target": "seg_path",
                      "probes": ["segmentation"], "hparams": {"protocol": "split"}})
    head_defaults: dict[str, dict[str, Any]] = {head: {"epochs": int(ep)}
                                                for head, ep in sorted(settings.probe_epochs.items())}
    head_defaults.setdefault("segmentation", {})["repeats"] = int(settings.segmentation_repeats)
    pca_ids = _pca_ids(table, settings.pca_cases)
    suite = {
        "name": "voxelfm demo (phantoms)",
        "description": "pre-trained vs random-init backbone of the same architecture on the phantom cohort",
        "seed": int(settings.seed) + 4,
        "reference": PRETRAINED,
        "n_resamples": int(settings.n_resamples),
        "protocol": str(settings.protocol),
        "folds": int(settings.folds),
        "holm": "table",
        "head_defaults": head_defaults,
        "tasks": tasks,
        "figures": {"roc": True, "fractions": True, "cls_vs_patch": True,
                    "pca": {"ids": pca_ids, "path_col": "path", "foreground": True} if pca_ids else None},
    }
    return SuitePlan(suite=suite, findings=usable, skipped=skipped, below_resolution=unseen, lead=lead)


def _pca_ids(table: pd.DataFrame, n: int) -> list[str]:
    """Test-split scans for the PCA figures, preferring ones with a nodule."""
    if n <= 0:
        return []
    test = table[table["split"] == "test"]
    if "lung_nodule" in test.columns:
        test = test.sort_values("lung_nodule", ascending=False, kind="stable")
    return [str(i) for i in test["id"].head(n)]
