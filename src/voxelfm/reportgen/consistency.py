"""Findings-consistency check: does a generated report say what the model's own probes decided?

Each generated report is labelled with the abnormality labeler and compared, finding by finding,
with the probe decisions that grounded it (:class:`~voxelfm.reportgen.grounding.Grounding`). A
finding the probe states but the report does not is *missing*; one the report states but the probe
does not is *extra*. :func:`~voxelfm.reportgen.generate.generate_reports` runs the check on every
report of a grounded model, can re-decode the reports that disagree, and writes the per-scan result
to ``consistency.csv`` — no generated report silently contradicts the model's own findings.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from voxelfm.reportgen.labeler import abnormality_name, label_reports

__all__ = ["Disagreement", "report_disagreements", "consistency_table"]



@dataclass(frozen=True)
class Disagreement:
    """Findings where one report and the probe decisions differ (snake_case column names)."""

    missing: tuple[str, ...]
    extra: tuple[str, ...]

    @property
    def count(self) -> int:
        return len(self.missing) + len(self.extra)


def report_disagreements(reports: Sequence[str], decisions: np.ndarray, labels: Sequence[str], *,
                         labeler: Callable[[str], Mapping[str, bool]] | None = None) -> list[Disagreement]:
    """Compare each report's labelled findings with the probe decisions.

    Args:
        reports: ``N`` generated reports.
        decisions: ``[N, K]`` 0/1 probe decisions.
        labels: the ``K`` snake_case finding columns of ``decisions``.
        labeler: ``text -> {abnormality: bool}`` (default: the rule labeler).

    Returns:
        one :class:`Disagreement` per report.
    """
    decisions = np.asarray(decisions).astype(int)
    if decisions.shape != (len(reports), len(labels)):
        raise ValueError(f"decisions must be [{len(reports)}, {len(labels)}], got {decisions.shape}")
    if not len(reports):
        return []
    said = label_reports(list(reports), labeler=labeler)[list(labels)].to_numpy().astype(int)
    out = []
    for s, d in zip(said, decisions):
        out.append(Disagreement(tuple(c for c, a, b in zip(labels, s, d) if b and not a),
                                tuple(c for c, a, b in zip(labels, s, d) if a and not b)))
    return out


def consistency_table(ids: Sequence[str], disagreements: Sequence[Disagreement], decisions: np.ndarray,
                      labels: Sequence[str], attempts: Sequence[int] | None = None) -> Any:
    """Per-scan table: ``id``, ``probe_findings``, ``missing``, ``extra`` (abnormality names joined
    by ``"; "``), ``n_disagreements`` and ``attempts`` (decodings tried)."""
    import pandas as pd

    def names(cols: Sequence[str]) -> str:
        return "; ".join(abnormality_name(c) for c in cols)

    dec = np.asarray(decisions).astype(int)
    return pd.DataFrame({
        "id": list(ids),
        "probe_findings": [names([c for c, v in zip(labels, row) if v]) for row in dec],
        "missing": [names(d.missing) for d in disagreements],
        "extra": [names(d.extra) for d in disagreements],
        "n_disagreements": [d.count for d in disagreements],
        "attempts": list(attempts) if attempts is not None else [1] * len(ids),
    })
