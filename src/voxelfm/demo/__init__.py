"""``voxelfm demo``: the whole workflow on a synthetic phantom cohort, in minutes, with a report.

Phantom CT cohort → prepared volumes → short self-supervised pre-training (the ``tiny`` recipe:
iBOT) of a tiny 3D ViT →
embeddings from the pre-trained backbone and from a random-init backbone of the same architecture →
the probe suite on every task category (classification, regression, survival, retrieval,
localisation, segmentation; report generation on request) → ``report.md`` / ``report.html`` with
the results table, 95 % confidence intervals, p-values (pre-trained vs random init), figures and
a generated *Findings* paragraph. Re-running on the same folder reuses finished stages.

Example::

    from voxelfm.demo import run_demo

    if __name__ == "__main__":  # in a script: worker processes import it again
        report = run_demo("voxelfm-demo", quick=True)    # ≈ 2 minutes on 2 CPU cores
        print(report.read_text())

Modules: ``settings`` (what runs, the default and quick presets), ``stages`` (headers, timings,
reuse), ``suite`` (the phantom probe suite), ``workflow`` (the stages), ``report`` (report.md/html).
Phantom results exercise the pipeline; they are not clinical evidence.
"""

from __future__ import annotations

from voxelfm.utils.lazy_exports import lazy_exports

_LAZY: dict[str, str] = {
    "run_demo": "voxelfm.demo.workflow",
    "DemoPaths": "voxelfm.demo.workflow",
    "DemoSettings": "voxelfm.demo.settings",
    "STAGES": "voxelfm.demo.settings",
    "DEFAULT_OUTPUT": "voxelfm.demo.settings",
    "build_suite": "voxelfm.demo.suite",
    "write_report": "voxelfm.demo.report",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
