"""Rewrite a radiology report into its abnormal findings only (rule-based).

The reference trained its report generator on CT-RATE findings rewritten by a large LLM
(``mllm/preprocessing/restructure_reports.py``, prompt ``v1``: abnormal findings only, telegraphic,
a fixed sentence when nothing is abnormal). This does the same with the rule-based labeler: the
report is split into sentences, and a sentence is kept when it states (positively, or as
uncertain under the labeler's policy) an abnormality that no earlier kept sentence stated —
so a finding repeated in the impression appears once, with the measurements and location of
its first mention. A report without abnormal findings becomes :data:`NORMAL_SENTENCE`.

Shorter targets make training far cheaper (a phantom report of ~200 tokens becomes ~10–40) and
concentrate the loss on what the evaluation scores.
"""

from __future__ import annotations

import re

from voxelfm.reportgen.labeler import RuleLabeler

__all__ = ["NORMAL_SENTENCE", "restructure_report"]

#: The answer for a report without abnormal findings.
NORMAL_SENTENCE = "No abnormal findings."

_SPLIT = re.compile(r"(?<=[.;!?])\s+|\n+|(?<=:)\s+")
_HEADER = re.compile(r"^\s*(?:\d+\.\s*|[A-Za-z][A-Za-z /&-]{0,40}:\s*)")
_DEFAULT = RuleLabeler()


def _pieces(text: str) -> list[str]:
    text = re.sub(r"</?\s*report\s*>", " ", str(text), flags=re.IGNORECASE)
    out = []
    for p in _SPLIT.split(text):
        p = _HEADER.sub("", p.strip()).strip()
        if p and not p.endswith(":"):
            out.append(p)
    return out


def restructure_report(text: str | None, *, labeler: RuleLabeler | None = None) -> str:
    """Abnormal findings of ``text`` as a short report (original wording, one sentence per new finding).

    Args:
        text: a free-text report.
        labeler: the :class:`~voxelfm.reportgen.labeler.RuleLabeler` deciding what is abnormal
            (default: all 18 CT-RATE abnormalities, uncertain counted as present).

    Returns:
        The kept sentences joined by spaces (each ending with a period), or :data:`NORMAL_SENTENCE`.

    Example::

        >>> restructure_report("Lungs: No nodule. Small right pleural effusion.\\nImpression: Pleural effusion.")
        'Small right pleural effusion.'
    """
    if text is None or (isinstance(text, float) and text != text):
        return NORMAL_SENTENCE
    lab = labeler or _DEFAULT
    kept: list[str] = []
    covered: set[str] = set()
    for sentence in _pieces(text):
        present = {k for k, v in lab(sentence).items() if v}
        if present - covered:
            covered |= present
            s = sentence.rstrip(" ;,")
            if not s.endswith((".", "!", "?")):
                s += "."
            kept.append(s[0].upper() + s[1:])
    return " ".join(kept) if kept else NORMAL_SENTENCE
