"""The backbone comparison table (the layout of the paper's Table 1) from a suite's results.

One row per (task, probe, training fraction); one column per backbone holding the primary test
metric with its 95 % CI and, as letters, the backbones it is **significantly better** than
(paired test on the same test ids — DeLong for binary AUROC, paired bootstrap otherwise — with
Holm-adjusted p below ``alpha``); then one column per pair of backbones with the difference and
its Holm-adjusted p. Each backbone's letter is given in its column header (``voxelfm (a)``).

Written as Markdown (``<sup>b,c</sup>``), CSV (``>b,c``) and LaTeX (``$^{b,c}$``) by
:func:`write_comparison_table`.
"""

from __future__ import annotations

import math
import string
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from voxelfm.probes.suite import _booktabs, _esc_md, _esc_tex, _fmt_est, _fmt_p
from voxelfm.probes.tasks import get_task
from voxelfm.utils import atomic_write, atomic_write_text

__all__ = ["backbone_letters", "comparison_table", "format_comparison_latex", "format_comparison_markdown",
           "write_comparison_table"]

_KEY = ["task_name", "head", "feature", "fraction"]


def backbone_letters(backbones: Sequence[str]) -> dict[str, str]:
    """``{backbone: letter}``: a, b, c, ... in column order (aa, ab, ... past 26)."""
    letters = list(string.ascii_lowercase)
    out = {}
    for i, b in enumerate(backbones):
        out[b] = letters[i] if i < 26 else letters[i // 26 - 1] + letters[i % 26]
    return out


def _winner(row: pd.Series, higher_is_better: bool) -> tuple[str, str] | None:
    """``(better, worse)`` of a comparison row, or ``None`` when the difference is undefined/zero."""
    d = float(row["diff"])
    if not math.isfinite(d) or d == 0:
        return None
    a_better = (d > 0) == higher_is_better
    return (row["backbone_a"], row["backbone_b"]) if a_better else (row["backbone_b"], row["backbone_a"])


def comparison_table(results: pd.DataFrame, comparisons: pd.DataFrame, backbones: Sequence[str], *,
                     alpha: float = 0.05) -> pd.DataFrame:
    """The comparison table (see the module docstring) as a DataFrame of display strings.

    Args:
        results: the suite's long results (``SuiteResult.results``).
        comparisons: the suite's pairwise tests (``SuiteResult.comparisons``; ``p_holm`` column).
        backbones: column order.
        alpha: significance level for the letters (on the Holm-adjusted p).

    Returns:
        Columns ``task, probe, fraction, metric, n``, one per backbone (``"<label> (<letter>)"``)
        and one per pair (``"<a> vs <b>"``: ``"+0.034 (p 0.012)"``, difference a − b of the
        metric); hidden columns ``_best`` (labels of the best backbone(s) of the row),
        ``_better`` (``{label: [letters it beats]}``) and ``_pairs`` (``{pair column: p_holm}``).
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    letters = backbone_letters(backbones)
    head_of = {b: f"{b} ({letters[b]})" for b in backbones}
    pair_cols = {(a, b): f"{a} vs {b}" for i, a in enumerate(backbones) for b in backbones[i + 1:]}
    prim = results[results["primary"]]
    rows = []
    for (tn, head, feat, frac), g in prim.groupby(_KEY, sort=False):
        task_obj = get_task(g["task"].iloc[0])
        c = comparisons[(comparisons["task_name"] == tn) & (comparisons["head"] == head)
                        & (comparisons["feature"] == feat) & (comparisons["fraction"] == frac)]
        better: dict[str, list[str]] = {b: [] for b in backbones}
        pairs: dict[str, float] = {}
        pair_text: dict[str, str] = {col: "—" for col in pair_cols.values()}
        for _, r in c.iterrows():
            a, b = r["backbone_a"], r["backbone_b"]
            key = (a, b) if (a, b) in pair_cols else (b, a)
            if key not in pair_cols:
                continue
            sign = 1.0 if key == (a, b) else -1.0
            p = float(r["p_holm"])
            col = pair_cols[key]
            pairs[col] = p
            d = sign * float(r["diff"])
            pair_text[col] = "—" if not math.isfinite(d) else f"{d:+.3f} (p {_fmt_p(p)})"
            w = _winner(r, task_obj.higher_is_better)
            if w is not None and math.isfinite(p) and p < alpha:
                better[w[0]].append(letters[w[1]])
        n = pd.to_numeric(g["n"], errors="coerce").max()
        row: dict[str, Any] = {"task": tn, "probe": f"{head}/{feat}", "fraction": frac,
                               "metric": f"{task_obj.primary} {'↑' if task_obj.higher_is_better else '↓'}",
                               "n": int(n) if math.isfinite(n) else 0}
        values: dict[str, float] = {}
        for b in backbones:
            r = g[g["backbone"] == b]
            if len(r) == 0:
                row[head_of[b]] = "—"
                continue
            r = r.iloc[0]
            row[head_of[b]] = _fmt_est(r["value"], r["ci_low"], r["ci_high"]) if r["status"] == "ok" else "failed"
            if r["status"] == "ok" and math.isfinite(r["value"]):
                values[b] = float(r["value"])
        best: tuple[str, ...] = ()
        if len(values) > 1:
            top = max(values.values()) if task_obj.higher_is_better else min(values.values())
            best = tuple(head_of[b] for b, v in values.items() if v == top)
            if len(best) == len(values):
                best = ()
        row.update(pair_text)
        row["_best"] = best
        row["_better"] = {head_of[b]: sorted(v, key=lambda x: (len(x), x)) for b, v in better.items()}
        row["_pairs"] = pairs
        rows.append(row)
    cols = ["task", "probe", "fraction", "metric", "n", *head_of.values(), *pair_cols.values(),
            "_best", "_better", "_pairs"]
    return pd.DataFrame(rows, columns=cols)


def _visible(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if not c.startswith("_")]


def _cells(table: pd.DataFrame, mark: Any, bold: Any, esc: Any) -> list[list[str]]:
    out = []
    for _, r in table.iterrows():
        cells = []
        for c in _visible(table):
            v = r[c]
            v = f"{v:g}" if isinstance(v, float) and c == "fraction" else v
            cell = esc(v)
            letters = (r["_better"] or {}).get(c) if isinstance(r["_better"], dict) else None
            if letters:
                cell += mark(",".join(letters))
            if c in (r["_best"] or ()):
                cell = bold(cell)
            cells.append(cell)
        out.append(cells)
    return out


def format_comparison_markdown(table: pd.DataFrame, *, title: str = "", note: str = "") -> str:
    """GitHub-flavoured Markdown of :func:`comparison_table` (best in bold, letters as superscripts)."""
    cols = _visible(table)
    lines = [f"# {title}", ""] if title else []
    lines.append("| " + " | ".join(_esc_md(c) for c in cols) + " |")
    lines.append("|" + "|".join("---" for _ in cols) + "|")
    for cells in _cells(table, lambda s: f"<sup>{s}</sup>", lambda s: f"**{s}**", _esc_md):
        lines.append("| " + " | ".join(cells) + " |")
    if note:
        lines += ["", note]
    return "\n".join(lines) + "\n"


def format_comparison_latex(table: pd.DataFrame, *, caption: str = "", label: str = "tab:compare") -> str:
    """A booktabs LaTeX table of :func:`comparison_table` (best in bold, letters as superscripts)."""
    cols = _visible(table)
    rows = _cells(table, lambda s: f"$^{{{s}}}$", lambda s: r"\textbf{" + s + "}", _esc_tex)
    return _booktabs([_esc_tex(c) for c in cols], rows, col_spec="l" * 4 + "r" + "c" * (len(cols) - 5),
                    caption=caption, label=label, wide=True)


def _csv_frame(table: pd.DataFrame) -> pd.DataFrame:
    cols = _visible(table)
    rows = _cells(table, lambda s: f" >{s}", lambda s: s, lambda v: str(v))
    return pd.DataFrame(rows, columns=cols)


def write_comparison_table(table: pd.DataFrame, out_dir: str | Path, *, title: str, note: str,
                           stem: str = "table") -> dict[str, Path]:
    """Write ``OUT/<stem>.md``, ``.csv`` and ``.tex`` (atomically); returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / f"{stem}.md", "csv": out / f"{stem}.csv", "latex": out / f"{stem}.tex"}
    atomic_write_text(paths["markdown"], format_comparison_markdown(table, title=title, note=note))
    with atomic_write(paths["csv"]) as tmp:
        _csv_frame(table).to_csv(tmp, index=False)
    atomic_write_text(paths["latex"], format_comparison_latex(table, caption=f"{title}. {note}"))
    return paths
