"""Probes on frozen embeddings: heads, tasks, training with model selection, suites and figures.

Typical use::

    from voxelfm.probes import train_probe
    run = train_probe("store/", "labels.csv", "lung_nodule", task="binary", head="mlp")
    print(run.metrics["auroc"])            # 0.912 [0.871, 0.953]

    from voxelfm.probes import run_suite
    run_suite("suite.yaml", "results/")    # tasks × backbones × heads × data fractions → tables + figures

    from voxelfm.probes import compare_backbones   # extract with each backbone + one suite + one table
    compare_backbones("voxelfm=teacher/,merlin=merlin.pt", "cohort.csv", "labels.csv", "compare/")

See ``docs/probes.md`` for tasks, heads, defaults, metrics and the suite YAML format.
"""

from __future__ import annotations

from voxelfm.utils.lazy_exports import lazy_exports

_LAZY: dict[str, str] = {
    "train_probe": "voxelfm.probes.run",
    "ProbeRun": "voxelfm.probes.run",
    "HEADS": "voxelfm.probes.run",
    "HEAD_DEFAULTS": "voxelfm.probes.run",
    "TASKS": "voxelfm.probes.tasks",
    "get_task": "voxelfm.probes.tasks",
    "TrainConfig": "voxelfm.probes.trainer",
    "Trainer": "voxelfm.probes.trainer",
    "make_splits": "voxelfm.probes.splits",
    "nested_fractions": "voxelfm.probes.splits",
    "cox_ph_loss": "voxelfm.probes.losses",
    "run_suite": "voxelfm.probes.suite",
    "compare_backbones": "voxelfm.probes.compare",
    "load_suite": "voxelfm.probes.suite",
    "SuiteResult": "voxelfm.probes.suite",
    "results_table": "voxelfm.probes.suite",
    "pca_rgb_figure": "voxelfm.probes.figures",
    "roc_figure": "voxelfm.probes.figures",
}

__all__ = [  # noqa: RUF022 (grouped like _LAZY)
    "HEADS", "HEAD_DEFAULTS", "ProbeRun", "SuiteResult", "TASKS", "TrainConfig", "Trainer", "compare_backbones",
    "cox_ph_loss",
    "get_task", "load_suite", "make_splits", "nested_fractions", "pca_rgb_figure", "results_table", "roc_figure",
    "run_suite", "train_probe",
]


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
