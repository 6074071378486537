"""Findings-consistency check: does a generated report say what the model's own probes decided?

Each generated report is labelled with the abnormality labeler and compared, finding by finding,
with the probe decisions that grounded it (:class:`~voxelfm.reportgen.grounding.Grounding`). A
finding the probe states but the report does not is *missing*; one the report states but the probe
does not is *extra*. :func:`~voxelfm.reportgen.generate.generate_reports` runs the check on every
report of a grounded model, can re-decode the reports that disagree, and writes the per-scan result
to ``consistency.csv`` — no generated report silently contradicts the model's own findings.

:func:`repair_reports` goes one step further: it removes the sentences that state a finding the
probes did not decide and adds the decided findings a report misses, so the findings of the final
report are exactly the calibrated probes' and the language model contributes the wording.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import functools
import re

import numpy as np

from voxelfm.reportgen.labeler import abnormality_name, label_report, label_reports

__all__ = ["Disagreement", "report_disagreements", "consistency_table", "repair_reports", "ADDED_PREFIX"]

#: the line a repaired report states the findings the language model left out under
ADDED_PREFIX = "Also found by the image classifiers:"

# the rule labeler's sentence boundaries (voxelfm.reportgen.labeler), kept as separate parts
_UNITS = re.compile(r"((?<!\d)\.(?!\d)|\.(?=\s|$)|[;:?!\n\r]+)")
_EMPTY_ITEM = re.compile(r"^\s*(\d+[.)]?|[-*•])?\s*[.;:]?\s*$")



@dataclass(frozen=True)
class Disagreement:
    """Findings where one report and the probe decisions differ (snake_case column names)."""

    missing: tuple[str, ...]
    extra: tuple[str, ...]

    @property
    def count(self) -> int:
        return len(self.missing) + len(self.extra)


def _checked(reports: Sequence[str], decisions: Any, labels: Sequence[str]) -> np.ndarray:
    """``decisions`` as an int ``[N, K]`` array, or a ValueError naming the expected shape."""
    decisions = np.asarray(decisions).astype(int)
    if decisions.shape != (len(reports), len(labels)):
        raise ValueError(f"decisions must be [{len(reports)}, {len(labels)}], got {decisions.shape}")
    return decisions


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
    decisions = _checked(reports, decisions, labels)
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


def _positive(text: str, labeler: Callable[[str], Mapping[str, bool]] | None) -> set[str]:
    """Abnormality names the labeler reads as present in ``text``."""
    return {k for k, v in (labeler or label_report)(text).items() if v}


@functools.lru_cache(maxsize=1)
def _rule_labeler() -> Any:
    from voxelfm.reportgen.labeler import RuleLabeler

    return RuleLabeler()


def _negated(text: str) -> set[str]:
    """Abnormality names the rule labeler reads as explicitly absent in ``text`` ("No cardiomegaly")."""
    return {m.abnormality for m in _rule_labeler().mentions(text) if m.status == "negative"}


def _drop_units(text: str, unwanted: set[str], decided: set[str],
                labeler: Callable[[str], Mapping[str, bool]] | None) -> str:
    """``text`` without the labeler-sentences that state one of ``unwanted`` (abnormality names) or,
    with the rule labeler, deny one of ``decided``; line breaks are kept and list items / lines left
    empty are removed."""
    parts = _UNITS.split(text)  # [unit, boundary, unit, boundary, ..., unit]
    kept: list[str] = []
    for k in range(0, len(parts), 2):
        unit, boundary = parts[k], parts[k + 1] if k + 1 < len(parts) else ""
        if unit.strip() and (_positive(unit, labeler) & unwanted
                             or (labeler is None and _negated(unit) & decided)):
            kept.append("\n" if "\n" in boundary or "\r" in boundary else "")
            continue
        kept.append(unit + boundary)
    lines = [ln.rstrip() for ln in "".join(kept).splitlines()]
    return "\n".join(ln for ln in lines if ln.strip() and not _EMPTY_ITEM.match(ln)).strip()


def repair_reports(reports: Sequence[str], decisions: np.ndarray, labels: Sequence[str], *,
                   labeler: Callable[[str], Mapping[str, bool]] | None = None) -> list[str]:
    """Make each report state exactly the probe's findings (see the module docstring).

    Every labeler-sentence (the rule labeler's units: split at full stops, ``;``, ``:``, ``?``,
    ``!`` and line breaks) that states a finding of ``labels`` the probe did **not** decide is
    removed, and so (with the rule labeler) is every sentence denying a decided finding ("No
    cardiomegaly."); the decided findings the report then misses are added on one last line,
    ``"Also found by the image classifiers: pleural effusion; cardiomegaly."``. Statements of
    absence that agree with the probe ("No pleural effusion.") stay, as do findings outside
    ``labels``.

    Args: as :func:`report_disagreements`.

    Returns:
        the ``N`` repaired reports; :func:`report_disagreements` finds no disagreement in them
        for a labeler that reads its own findings' names (the rule labeler does).
    """
    decisions = _checked(reports, decisions, labels)
    names = [abnormality_name(c) for c in labels]
    out = []
    for text, row in zip(reports, decisions):
        text = "" if text is None or (isinstance(text, float) and text != text) else str(text)
        decided = {n for n, d in zip(names, row) if d}
        text = _drop_units(text, set(names) - decided, decided, labeler)
        missing = [n for n in names if n in decided and n not in _positive(text, labeler)]
        if missing:
            added = f"{ADDED_PREFIX} " + "; ".join(n.lower() for n in missing) + "."
            text = f"{text}\n{added}" if text else added
        out.append(text)
    return out
