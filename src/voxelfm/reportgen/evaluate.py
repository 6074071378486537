"""Score generated reports by the CT-RATE abnormalities they state, and compare with a probe.

* :func:`evaluate_reports`: label every generated report (rule-based labeler by default, or any
  ``text -> {abnormality: bool}`` callable such as an :class:`~voxelfm.reportgen.llm_labeler.LLMLabeler`),
  compare with the truth — the table's 0/1 finding columns (snake_case names, as in the phantom
  cohort and CT-RATE's label files) or, if it has none, the labels of its ``report`` text (what
  the reference did) — and compute per-label TP/FP/FN/TN, precision, recall, F1 (0 when
  undefined, like sklearn's ``zero_division=0`` and the reference) and accuracy, each F1 with a
  percentile bootstrap CI, plus the **macro F1** (unweighted mean over the labels that have at least
  one positive in the truth) with a bootstrap CI over cases. 1000 resamples, seed 4, as the
  reference ``mllm/evaluation/combine.py``.
* :func:`compare_with_probes`: for each label, a binary probe (:func:`voxelfm.probes.train_probe`)
  on the same embeddings, thresholded at 0.5 on the test split (the reference ``combine.py``), F1
  with a CI next to the generated reports' F1 — the paper's Figure 3.
* :func:`most_common_report`, :func:`baseline_reports`: the trivial baseline of always writing the
  most common training report, the "random training report" baseline, and the retrieval baseline
  (the report of the nearest training scan by embedding similarity).
* :func:`permutation_test`: do the reports match *their own* scan better than another test scan's?
* :func:`write_evaluation`: ``per_label.csv``, ``results.md``, ``results.json`` and
  ``comparison.png``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from voxelfm.errors import ConfigError
from voxelfm.reportgen.labeler import ABNORMALITIES, FINDING_COLUMNS, label_reports

__all__ = [
    "ReportEvaluation",
    "evaluate_reports",
    "evaluate_findings",
    "macro_f1",
    "read_generated",
    "most_common_report",
    "baseline_reports",
    "BASELINES",
    "permutation_test",
    "ProbeComparison",
    "compare_with_probes",
    "plot_comparison",
    "write_evaluation",
]

Labeler = Callable[[str], Mapping[str, bool]]


# --------------------------------------------------------------------------------------------- metrics
def _f1_matrix(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    den = 2 * tp + fp + fn
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, 2 * tp / np.maximum(den, 1), 0.0)


def macro_f1(y_true: Any, y_pred: Any) -> float:
    """Unweighted mean over columns of F1 (0 when undefined). ``y_true``, ``y_pred``: ``[N, K]`` 0/1."""
    y = np.asarray(y_true).astype(bool)
    p = np.asarray(y_pred).astype(bool)
    if y.shape != p.shape or y.ndim != 2:
        raise ValueError(f"y_true and y_pred must both be [N, K], got {y.shape} and {p.shape}")
    tp = (y & p).sum(0)
    fp = (~y & p).sum(0)
    fn = (y & ~p).sum(0)
    return float(_f1_matrix(tp, fp, fn).mean())


def _macro_f1_batched(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """``[B, N, K]`` resampled arrays → ``[B]`` macro F1 (vectorised bootstrap path)."""
    y = y.astype(bool)
    p = p.astype(bool)
    tp = (y & p).sum(1)
    fp = (~y & p).sum(1)
    fn = (y & ~p).sum(1)
    return _f1_matrix(tp, fp, fn).mean(1)


macro_f1.batched = _macro_f1_batched  # type: ignore[attr-defined]


@dataclass
class ReportEvaluation:
    """Abnormality scores of a set of generated reports.

    Attributes:
        per_label: ``pandas.DataFrame`` indexed by abnormality name with ``column``, ``n``,
            ``support`` (positives in the truth), ``predicted`` (positives in the reports), ``tp``,
            ``fp``, ``fn``, ``tn``, ``precision``, ``recall``, ``f1``, ``f1_ci_low``,
            ``f1_ci_high``, ``accuracy``, ``evaluated`` (support > 0).
        macro_f1: :class:`voxelfm.stats.Estimate` over the evaluated labels.
        labels: evaluated abnormality names.
        predictions: 0/1 table (ids × snake_case columns) read from the generated reports.
        truth: 0/1 truth table, same layout.
        truth_source: ``"columns"`` or ``"report"``.
    """

    per_label: Any
    macro_f1: Any
    labels: list[str]
    predictions: Any
    truth: Any
    truth_source: str
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        pl = self.per_label.reset_index().rename(columns={"index": "abnormality"})
        return {"macro_f1": self.macro_f1.to_dict(), "labels": self.labels, "n": int(len(self.truth)),
                "truth_source": self.truth_source,
                "per_label": json.loads(pl.to_json(orient="records")), **self.extra}

    def summary(self) -> str:
        lines = [f"macro F1 over {len(self.labels)} labels (n={len(self.truth)}): {self.macro_f1}"]
        for name in self.labels:
            r = self.per_label.loc[name]
            lines.append(f"  {name}: F1 {r.f1:.3f} [{r.f1_ci_low:.3f}, {r.f1_ci_high:.3f}] "
                         f"P {r.precision:.3f} R {r.recall:.3f} (support {int(r.support)})")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------- inputs
def read_generated(generated: Any, *, id_col: str = "id", text_col: str = "generated"):
    """Generated reports as a DataFrame with ``id`` and ``generated`` columns.

    ``generated`` may be a DataFrame, a CSV path, or the output folder of
    :func:`~voxelfm.reportgen.generate.generate_reports` (its ``generated.csv``).
    """
    import pandas as pd

    from voxelfm.reportgen.dataset import read_table

    if isinstance(generated, pd.DataFrame):
        df = generated.copy()
    else:
        p = Path(generated)
        if p.is_dir():
            p = p / "generated.csv"
        df = read_table(p, id_col=id_col)
    if id_col not in df.columns or text_col not in df.columns:
        raise ConfigError(f"generated reports need columns {id_col!r} and {text_col!r}; got {list(df.columns)}")
    df[id_col] = df[id_col].astype(str)
    df[text_col] = df[text_col].fillna("").astype(str)
    return df[[id_col, text_col]].rename(columns={id_col: "id", text_col: "generated"})


def _truth_table(truth: Any, ids: Sequence[str], source: str, labeler: Labeler | None, id_col: str,
                 report_col: str) -> tuple[Any, str]:
    from voxelfm.reportgen.dataset import read_table

    df = read_table(truth, id_col=id_col).drop_duplicates(id_col).set_index(id_col)
    df = df.loc[[i for i in ids if i in df.index]]
    cols = [c for c in FINDING_COLUMNS.values() if c in df.columns]
    if source == "auto":
        source = "columns" if cols else "report"
    if source == "columns":
        if not cols:
            raise ConfigError("the truth table has none of the 18 CT-RATE finding columns "
                              f"({', '.join(FINDING_COLUMNS.values())}); use truth_source='report'")
        t = df[cols].apply(lambda s: s.fillna(0).astype(float).round().astype(int).clip(0, 1))
    elif source == "report":
        if report_col not in df.columns:
            raise ConfigError(f"the truth table has no {report_col!r} column to label")
        t = label_reports(df[report_col], labeler=labeler)
    else:
        raise ValueError(f"truth_source must be auto, columns or report, got {source!r}")
    return t, source


def evaluate_reports(generated: Any, truth: Any, *, labeler: Labeler | None = None,
                     truth_source: Literal["auto", "columns", "report"] = "auto", id_col: str = "id",
                     report_col: str = "report", split: str | None = None, split_col: str = "split",
                     n_resamples: int = 1000, seed: int = 4, alpha: float = 0.05) -> ReportEvaluation:
    """Per-label precision / recall / F1 and macro F1 of generated reports.

    Args:
        generated: DataFrame / CSV / generation folder with ``id`` and ``generated`` columns.
        truth: table (path or DataFrame) with ``id`` and either 0/1 finding columns or ``report``.
        labeler: ``text -> {abnormality: bool}`` (default: rule-based :func:`label_report`).
        truth_source: ``columns`` (finding columns), ``report`` (label the truth reports with the
            same labeler), ``auto`` (columns if present).
        split: evaluate only ids of this split of the truth table.
        n_resamples, seed, alpha: bootstrap settings (reference: 1000, seed 4, 95 %).

    Returns:
        :class:`ReportEvaluation`.
    """
    from voxelfm.reportgen.dataset import normalise_split, read_table

    gen = read_generated(generated)
    ids = list(dict.fromkeys(gen["id"]))
    if split is not None:
        tdf = read_table(truth, id_col=id_col)
        if split_col not in tdf.columns:
            raise ConfigError(f"the truth table has no {split_col!r} column")
        keep = set(tdf.loc[tdf[split_col].map(normalise_split) == normalise_split(split), id_col])
        ids = [i for i in ids if i in keep]
    t, source = _truth_table(truth, ids, truth_source, labeler, id_col, report_col)
    ids = [i for i in ids if i in t.index]
    if len(ids) < 2:
        raise ConfigError(f"only {len(ids)} generated reports have a truth row; check the ids")
    t = t.loc[ids]
    gen = gen.drop_duplicates("id").set_index("id").loc[ids]
    pred = label_reports(gen["generated"], labeler=labeler)
    pred.index = ids
    return _score(pred[list(t.columns)], t, source, n_resamples=n_resamples, seed=seed, alpha=alpha)


def evaluate_findings(predictions: Any, truth: Any, *, truth_source: Literal["auto", "columns", "report"] = "auto",
                      labeler: Labeler | None = None, id_col: str = "id", report_col: str = "report",
                      n_resamples: int = 1000, seed: int = 4, alpha: float = 0.05) -> ReportEvaluation:
    """The metrics of :func:`evaluate_reports` for 0/1 finding decisions instead of report text
    (e.g. a probe's decisions): ``predictions`` is a DataFrame indexed by id (or with an ``id``
    column) with snake_case finding columns; a truth finding it lacks counts as never predicted."""
    pred = predictions.copy()
    if "id" in pred.columns:
        pred = pred.set_index("id")
    pred.index = pred.index.astype(str)
    ids = list(dict.fromkeys(pred.index))
    t, source = _truth_table(truth, ids, truth_source, labeler, id_col, report_col)
    ids = [i for i in ids if i in t.index]
    if len(ids) < 2:
        raise ConfigError(f"only {len(ids)} predictions have a truth row; check the ids")
    t = t.loc[ids]
    pred = pred[~pred.index.duplicated()].reindex(index=ids, columns=list(t.columns)).fillna(0).astype(int)
    return _score(pred, t, source, n_resamples=n_resamples, seed=seed, alpha=alpha)


def _score(pred: Any, t: Any, source: str, *, n_resamples: int, seed: int, alpha: float) -> ReportEvaluation:
    """Per-label and macro metrics of 0/1 ``pred`` against 0/1 truth ``t`` (same index and columns)."""
    import pandas as pd

    from voxelfm.stats import Estimate, bootstrap_ci, f1_at

    ids = list(t.index)
    cols = list(t.columns)

    rows = []
    for col in cols:
        name = ABNORMALITIES[list(FINDING_COLUMNS.values()).index(col)]
        y = t[col].to_numpy().astype(int)
        p = pred[col].to_numpy().astype(int)
        tp = int(((y == 1) & (p == 1)).sum())
        fp = int(((y == 0) & (p == 1)).sum())
        fn = int(((y == 1) & (p == 0)).sum())
        tn = int(((y == 0) & (p == 0)).sum())
        prec = tp / (tp + fp) if tp + fp else 0.0
        rec = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else 0.0
        lo = hi = float("nan")
        if y.sum() > 0:
            est = bootstrap_ci(f1_at, y, p.astype(float), n_resamples=n_resamples, seed=seed, alpha=alpha)
            lo, hi = est.ci_low, est.ci_high
        rows.append({"abnormality": name, "column": col, "n": len(y), "support": int(y.sum()),
                     "predicted": int(p.sum()), "tp": tp, "fp": fp, "fn": fn, "tn": tn, "precision": prec,
                     "recall": rec, "f1": f1, "f1_ci_low": lo, "f1_ci_high": hi,
                     "accuracy": (tp + tn) / len(y), "evaluated": bool(y.sum() > 0)})
    per_label = pd.DataFrame(rows).set_index("abnormality")
    evaluated = [n for n in per_label.index if per_label.loc[n, "evaluated"]]
    if not evaluated:
        raise ConfigError("no abnormality has a positive case in the truth; macro F1 is undefined")
    ev_cols = [per_label.loc[n, "column"] for n in evaluated]
    y_m = t[ev_cols].to_numpy().astype(int)
    p_m = pred[ev_cols].to_numpy().astype(int)
    value = macro_f1(y_m, p_m)
    boot = bootstrap_ci(macro_f1, y_m, p_m, n_resamples=n_resamples, seed=seed, alpha=alpha)
    est = Estimate(value, boot.ci_low, boot.ci_high, "bootstrap-percentile", len(ids), alpha, "macro_f1")
    return ReportEvaluation(per_label, est, evaluated, pred, t, source)


# --------------------------------------------------------------------------------------------- baselines
def most_common_report(table: Any, *, split: str | None = "train", id_col: str = "id", report_col: str = "report",
                       split_col: str = "split", labeler: Labeler | None = None) -> str:
    """The most common training report, judged by what it says: among the reports whose abnormality
    label vector is the most frequent one (on a normal-dominated cohort, the normal reports), the
    most frequent text (ties: the first). Used as the trivial baseline."""
    from voxelfm.reportgen.dataset import normalise_split, read_table

    df = read_table(table, id_col=id_col)
    if split is not None and split_col in df.columns:
        df = df[df[split_col].map(normalise_split) == normalise_split(split)]
    texts = [str(r) for r in df[report_col].fillna("") if str(r).strip()]
    if not texts:
        raise ConfigError("no reports to choose a baseline from")
    lab = label_reports(texts, labeler=labeler)
    keys = [tuple(r) for r in lab.to_numpy()]
    counts: dict[tuple, int] = {}
    for k in keys:
        counts[k] = counts.get(k, 0) + 1
    top = max(counts.items(), key=lambda kv: kv[1])[0]
    candidates = [t for t, k in zip(texts, keys) if k == top]
    freq: dict[str, int] = {}
    for t in candidates:
        freq[" ".join(t.split())] = freq.get(" ".join(t.split()), 0) + 1
    best = max(freq.items(), key=lambda kv: kv[1])[0]
    return next(t for t in candidates if " ".join(t.split()) == best)


#: Baseline kinds of :func:`baseline_reports` (``nearest_train`` needs the embedding store).
BASELINES = ("most_common", "random_train", "nearest_train")


def baseline_reports(ids: Sequence[str], table: Any, *,
                     kind: Literal["most_common", "random_train", "nearest_train"] = "most_common",
                     seed: int = 4, id_col: str = "id", report_col: str = "report", split_col: str = "split",
                     labeler: Labeler | None = None, store: Any = None, feature: str = "cls"):
    """Baseline "generated" reports for ``ids``: the most common training report for everyone, the
    report of a random training case (drawn with ``seed``; F1 ≈ prevalence, no image used), or the
    report of the nearest training scan (``nearest_train``: cosine similarity of the standardised
    ``feature`` vectors of ``store``; retrieval instead of generation)."""
    import pandas as pd

    from voxelfm.reportgen.dataset import normalise_split, read_table

    if kind == "nearest_train":
        if store is None:
            raise ConfigError("the nearest-training-report baseline needs the embedding store (--store)")
        from voxelfm.reportgen.grounding import nearest_train_reports

        return nearest_train_reports(store, table, ids, feature=feature, id_col=id_col, report_col=report_col,
                                     split_col=split_col)
    if kind == "most_common":
        text = most_common_report(table, id_col=id_col, report_col=report_col, split_col=split_col, labeler=labeler)
        return pd.DataFrame({"id": list(ids), "generated": [text] * len(ids)})
    if kind == "random_train":
        df = read_table(table, id_col=id_col)
        if split_col in df.columns:
            df = df[df[split_col].map(normalise_split) == "train"]
        pool = [str(r) for r in df[report_col].fillna("") if str(r).strip()]
        if not pool:
            raise ConfigError("no training reports for the random baseline")
        rng = np.random.default_rng(seed)
        return pd.DataFrame({"id": list(ids), "generated": [pool[k] for k in rng.integers(0, len(pool), len(ids))]})
    raise ValueError(f"kind must be one of {', '.join(BASELINES)}, got {kind!r}")


def permutation_test(evaluation: ReportEvaluation, *, n_permutations: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Do the reports match *their own* scan better than another test scan's?

    The reports are shuffled across the evaluated cases (each keeps its findings, so the label
    frequencies stay the same; only the link to the scan is broken) and macro F1 is recomputed. A
    generator that writes the same text for everyone, or plausible reports without reading the
    image, sits inside this null distribution. ``p_value = (1 + #{null >= observed}) / (1 + n)``.
    """
    cols = [evaluation.per_label.loc[name, "column"] for name in evaluation.labels]
    truth = evaluation.truth[cols].to_numpy().astype(bool)
    pred = evaluation.predictions.loc[evaluation.truth.index, cols].to_numpy().astype(bool)
    observed = macro_f1(truth, pred)
    rng = np.random.default_rng(seed)
    perms = np.stack([pred[rng.permutation(len(pred))] for _ in range(n_permutations)])
    null = _macro_f1_batched(np.broadcast_to(truth, perms.shape), perms)
    return {"observed_macro_f1": round(observed, 4), "null_mean": round(float(null.mean()), 4),
            "null_95th_percentile": round(float(np.quantile(null, 0.95)), 4),
            "p_value": round(float((1 + (null >= observed - 1e-12).sum()) / (1 + n_permutations)), 4),
            "n_permutations": n_permutations}


# --------------------------------------------------------------------------------------------- probes
@dataclass
class ProbeComparison:
    """Generated reports vs probe, per label.

    Attributes:
        table: ``pandas.DataFrame`` indexed by abnormality with ``column``, ``support``,
            ``report_f1`` (+ ``_ci_low/_ci_high``), ``probe_f1`` (+ CI), ``probe_auroc``, ``note``.
        macro_f1: the probes' macro F1 :class:`~voxelfm.stats.Estimate` over the same labels and
            cases as the reports' (a label whose probe failed counts as predicting no positive).
        predictions: probe 0/1 decisions (ids × columns).
    """

    table: Any
    macro_f1: Any
    predictions: Any


def compare_with_probes(store: Any, table: Any, evaluation: ReportEvaluation, *, feature: str = "cls",
                        head: str = "linear", threshold: float = 0.5, n_resamples: int = 1000, seed: int = 4,
                        id_col: str = "id", split_col: str = "split", output_dir: str | os.PathLike[str] | None = None,
                        **probe_hparams: Any) -> ProbeComparison:
    """Per-label F1 of a binary probe on the same embeddings next to the generated reports' F1.

    For each evaluated label with a truth column in ``table``, a probe is trained with
    :func:`voxelfm.probes.train_probe` (``train`` split; model selection on ``val``) and its
    probability is thresholded at ``threshold`` (0.5, the reference ``combine.py``) on the ids of
    ``evaluation`` (which should be the test split).

    Returns:
        :class:`ProbeComparison`.
    """
    import functools

    import pandas as pd

    from voxelfm.probes import train_probe
    from voxelfm.reportgen.dataset import read_table
    from voxelfm.stats import Estimate, bootstrap_ci, f1_at

    df = read_table(table, id_col=id_col)
    ids = list(evaluation.truth.index)
    f1_thr = functools.partial(f1_at, threshold=threshold)
    rows = []
    decisions = pd.DataFrame(0, index=ids, columns=[evaluation.per_label.loc[n, "column"] for n in evaluation.labels])
    for name in evaluation.labels:
        r = evaluation.per_label.loc[name]
        col = r["column"]
        row = {"abnormality": name, "column": col, "support": int(r["support"]), "report_f1": float(r["f1"]),
               "report_f1_ci_low": float(r["f1_ci_low"]), "report_f1_ci_high": float(r["f1_ci_high"]),
               "probe_f1": 0.0, "probe_f1_ci_low": float("nan"), "probe_f1_ci_high": float("nan"),
               "probe_auroc": float("nan"), "note": ""}
        if col not in df.columns:
            row["note"] = "no truth column in the table: probe not trained (counted as F1 0)"
            rows.append(row)
            continue
        try:
            run = train_probe(store, df, col, task="binary", head=head, feature=feature, id_col=id_col,
                              split_col=split_col, seed=seed, progress=False,
                              output_dir=None if output_dir is None else Path(output_dir) / col, **probe_hparams)
        except Exception as exc:  # e.g. no positive training case for this label
            row["note"] = f"probe failed (counted as F1 0): {str(exc).splitlines()[0][:160]}"
            rows.append(row)
            continue
        pr = run.predictions.copy()
        pr["id"] = pr["id"].astype(str)
        pr = pr.drop_duplicates("id").set_index("id")
        common = [i for i in ids if i in pr.index]
        if len(common) < len(ids):
            row["note"] = f"probe predictions for {len(common)} of {len(ids)} ids (others count as negative)"
        prob = pd.Series(0.0, index=ids)
        prob.loc[common] = pr.loc[common, "prob"].to_numpy(dtype=float)
        y = evaluation.truth[col].to_numpy().astype(int)
        p = prob.to_numpy()
        decisions[col] = (p >= threshold).astype(int)
        row["probe_f1"] = float(f1_at(y, p, threshold=threshold))
        if y.sum() > 0:
            est = bootstrap_ci(f1_thr, y, p, n_resamples=n_resamples, seed=seed)
            row["probe_f1_ci_low"], row["probe_f1_ci_high"] = est.ci_low, est.ci_high
        auc = run.metrics.get("auroc")
        if auc is not None:
            row["probe_auroc"] = float(auc)
        rows.append(row)
    out = pd.DataFrame(rows).set_index("abnormality")
    y_m = evaluation.truth[list(decisions.columns)].to_numpy().astype(int)
    p_m = decisions.to_numpy().astype(int)
    boot = bootstrap_ci(macro_f1, y_m, p_m, n_resamples=n_resamples, seed=seed)
    macro = Estimate(macro_f1(y_m, p_m), boot.ci_low, boot.ci_high, "bootstrap-percentile", len(ids), 0.05,
                     "probe_macro_f1")
    return ProbeComparison(out, macro, decisions)


def plot_comparison(table: Any, path: str | os.PathLike[str], *, title: str = "Generated reports vs probe",
                    series: Sequence[tuple[str, str]] | None = None) -> Path:
    """Horizontal grouped bar chart of per-label F1 with CI whiskers (the paper's Figure 3).

    Args:
        table: DataFrame indexed by abnormality with ``<prefix>_f1``, ``<prefix>_f1_ci_low``,
            ``<prefix>_f1_ci_high`` columns.
        path: PNG to write (atomically).
        series: ``[(prefix, legend label), ...]`` (default: report and probe, when present).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from voxelfm.utils import atomic_write

    if series is None:
        series = [(p, lab) for p, lab in (("report", "generated reports"), ("probe", "probe (threshold 0.5)"),
                                           ("baseline", "most common report"))
                  if f"{p}_f1" in table.columns]
    names = list(table.index)
    k = max(len(series), 1)
    height = 0.8 / k
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(names) + 1.6))
    ypos = np.arange(len(names))
    colors = ["#3b6ea5", "#d9822b", "#8a8a8a", "#5a9e6f"]
    for j, (prefix, label) in enumerate(series):
        vals = table[f"{prefix}_f1"].to_numpy(dtype=float)
        lo = table.get(f"{prefix}_f1_ci_low")
        hi = table.get(f"{prefix}_f1_ci_high")
        err = None
        if lo is not None and hi is not None:
            lo_v = np.nan_to_num(vals - lo.to_numpy(dtype=float), nan=0.0).clip(0)
            hi_v = np.nan_to_num(hi.to_numpy(dtype=float) - vals, nan=0.0).clip(0)
            err = np.vstack([lo_v, hi_v])
        ax.barh(ypos + (j - (k - 1) / 2) * height, np.nan_to_num(vals), height=height, xerr=err,
                color=colors[j % len(colors)], label=label, capsize=2, error_kw={"elinewidth": 0.8})
    ax.set_yticks(ypos)
    ax.set_yticklabels(names)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("F1 (95% bootstrap CI)")
    ax.set_title(title)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=3, fontsize=8, frameon=False)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return path


def _fmt(v: float, lo: float | None = None, hi: float | None = None) -> str:
    if v != v:
        return "–"
    if lo is None or lo != lo:
        return f"{v:.3f}"
    return f"{v:.3f} [{lo:.3f}, {hi:.3f}]"


def write_evaluation(evaluation: ReportEvaluation, out_dir: str | os.PathLike[str], *,
                     comparison: ProbeComparison | None = None,
                     baselines: Mapping[str, ReportEvaluation] | None = None,
                     extra: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """Write ``per_label.csv``, ``results.md``, ``results.json`` and ``comparison.png`` into ``out_dir``.

    Args:
        evaluation: the generated reports' :class:`ReportEvaluation`.
        comparison: optional output of :func:`compare_with_probes` (adds probe columns and bars).
        baselines: optional ``{name: ReportEvaluation}`` (e.g. most common report) for the summary.
        extra: more JSON-able facts for ``results.json`` (timings, settings).
    """
    import pandas as pd

    from voxelfm.utils import atomic_write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = evaluation.per_label.copy()
    table = table.rename(columns={"f1": "report_f1", "f1_ci_low": "report_f1_ci_low",
                                  "f1_ci_high": "report_f1_ci_high", "precision": "report_precision",
                                  "recall": "report_recall"})
    probe_macro = None
    if comparison is not None:
        probe_macro = comparison.macro_f1
        for c in ("probe_f1", "probe_f1_ci_low", "probe_f1_ci_high", "probe_auroc", "note"):
            if c in comparison.table.columns:
                table[c] = comparison.table[c].reindex(table.index)
    if baselines and "most_common" in baselines:
        b = baselines["most_common"].per_label
        table["baseline_f1"] = b["f1"].reindex(table.index)
        table["baseline_f1_ci_low"] = b["f1_ci_low"].reindex(table.index)
        table["baseline_f1_ci_high"] = b["f1_ci_high"].reindex(table.index)
    paths = {"per_label": out / "per_label.csv", "markdown": out / "results.md", "json": out / "results.json",
             "figure": out / "comparison.png"}
    atomic_write_text(paths["per_label"], table.reset_index().to_csv(index=False))

    lines = ["# Report generation: abnormality F1", ""]
    lines.append(f"Truth: {evaluation.truth_source}; n = {len(evaluation.truth)} reports; macro F1 over the "
                 f"{len(evaluation.labels)} labels with a positive case.")
    lines.append("")
    lines.append("| | macro F1 [95% CI] |")
    lines.append("|---|---|")
    m = evaluation.macro_f1
    lines.append(f"| generated reports | {_fmt(m.value, m.ci_low, m.ci_high)} |")
    for name, ev in (baselines or {}).items():
        mb = ev.macro_f1
        lines.append(f"| baseline: {name.replace('_', ' ')} | {_fmt(mb.value, mb.ci_low, mb.ci_high)} |")
    if probe_macro is not None:
        lines.append(f"| probe (threshold 0.5) | {_fmt(probe_macro.value, probe_macro.ci_low, probe_macro.ci_high)} |")
    lines += ["", "| abnormality | support | report F1 [95% CI] | precision | recall |"
              + (" probe F1 [95% CI] |" if comparison is not None else ""),
              "|---|---|---|---|---|" + ("---|" if comparison is not None else "")]
    for name, r in table.iterrows():
        if not r["evaluated"]:
            continue
        line = (f"| {name} | {int(r['support'])} | {_fmt(r['report_f1'], r['report_f1_ci_low'], r['report_f1_ci_high'])}"
                f" | {r['report_precision']:.3f} | {r['report_recall']:.3f} |")
        if comparison is not None:
            line += f" {_fmt(r.get('probe_f1', float('nan')), r.get('probe_f1_ci_low'), r.get('probe_f1_ci_high'))} |"
        lines.append(line)
    not_eval = [n for n, r in table.iterrows() if not r["evaluated"]]
    if not_eval:
        lines += ["", f"Not evaluated (no positive case in the truth): {', '.join(not_eval)}."]
    atomic_write_text(paths["markdown"], "\n".join(lines) + "\n")

    payload: dict[str, Any] = {"generated": evaluation.to_dict()}
    if baselines:
        payload["baselines"] = {k: {"macro_f1": v.macro_f1.to_dict()} for k, v in baselines.items()}
    if comparison is not None:
        payload["comparison"] = json.loads(comparison.table.reset_index().to_json(orient="records"))
    if probe_macro is not None:
        payload["probe_macro_f1"] = probe_macro.to_dict()
    if extra:
        payload.update(dict(extra))
    atomic_write_text(paths["json"], json.dumps(payload, indent=2, default=str))

    fig_table = table.loc[[n for n in table.index if table.loc[n, "evaluated"]]]
    fig_table = pd.DataFrame(fig_table)
    plot_comparison(fig_table, paths["figure"])
    return paths
