"""Whole suite mappings for the recipes of the paper's evaluation datasets, composed from the
reference's head settings in :mod:`voxelfm.datasets.protocols`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from voxelfm.datasets.protocols import SUITE_COMMON, classification_heads, regression_heads, segmentation_heads
from voxelfm.datasets.recipe import Prepared, PrepareReport

__all__ = ["REGRESSION_HPARAMS", "classification_suite", "segmentation_prepared", "segmentation_suite"]

#: task-level options turning the classification heads into the reference's regression training
#: (SGD momentum 0.9, 20 epochs) in a suite that mixes both task types.
REGRESSION_HPARAMS: dict[str, Any] = {k: v for k, v in regression_heads()["mlp"].items()
                                      if k in ("optimizer", "momentum", "epochs")}


def classification_suite(description: str, tasks: list[dict[str, Any]]) -> dict[str, Any]:
    """A suite with the reference's classification heads (MLP on CLS, attentive pooling on patch
    tokens), ROC, data-fraction and class-vs-patch figures, and ``tasks``."""
    return {"description": description, **SUITE_COMMON, "head_defaults": classification_heads(), "tasks": tasks,
            "figures": {"roc": True, "fractions": True, "cls_vs_patch": True}}


def segmentation_suite(description: str, name: str, num_classes: int) -> dict[str, Any]:
    """A suite with one segmentation task on the ``label_map`` column (label maps on each scan's own
    grid), the reference's decoder and schedule."""
    return {"description": description, **SUITE_COMMON, "head_defaults": segmentation_heads(),
            "tasks": [{"name": name, "task": "segmentation", "target": "label_map", "probes": ["segmentation:patch"],
                       "hparams": {"num_classes": num_classes, "label_space": "source"}}],
            "figures": {"roc": False, "fractions": False, "cls_vs_patch": False}}


def segmentation_prepared(manifest: pd.DataFrame, labels: list[dict[str, Any]], classes: dict[int, str], *,
                          out: Path, report: PrepareReport, seed: int, description: str, name: str,
                          counts: dict[str, Any]) -> Prepared:
    """The tables of a segmentation recipe: seeded patient splits inserted into ``labels``,
    ``classes.json`` written, and the segmentation suite."""
    from voxelfm.datasets._labelmaps import write_classes
    from voxelfm.datasets._tables import patient_splits

    table = pd.DataFrame(labels)
    if table.empty:
        return Prepared(manifest.iloc[0:0], table, {})
    table.insert(2, "split", patient_splits(list(table["id"]), list(table["patient_id"]), report,
                                            seed=seed).to_numpy())
    write_classes(out, {k: v for k, v in classes.items() if k})
    return Prepared(manifest, table, segmentation_suite(description, name, len(classes)), counts)
