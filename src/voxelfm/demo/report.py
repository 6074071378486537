"""The demo report: ``report.md`` (+ a self-contained ``report.html``) from the stages' outputs.

Sections: a banner (phantom results are not clinical evidence), the generated *Findings*
paragraph (which tasks pre-training improved, which it did not, with the numbers), the results
table (primary test metric of both backbones with 95 % CIs, the difference and the Holm-adjusted
paired p-value), figures, report generation (if run), the cohort, pre-training, the stage timing
table and how to reproduce. Everything is read back from the files of the demo folder, so the
report can be rebuilt without recomputing anything.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from voxelfm.demo.stages import DemoState, StageRunner, format_seconds
from voxelfm.demo.suite import CATEGORIES, PRETRAINED, RANDOM, category_of
from voxelfm.utils import atomic_write, atomic_write_text

__all__ = ["write_report", "compare_backbones", "findings_paragraph", "timing_rows", "BANNER"]

ALPHA = 0.05

BANNER = ("**Synthetic data — not clinical evidence.** Every scan in this report is a procedural "
          "phantom generated in seconds; the tasks, labels and effect sizes say that the pipeline works "
          "end to end, not how any model would perform on patients.")

_METRIC_NAMES = {"auroc": "AUROC", "macro_auroc": "macro AUROC", "mae": "MAE", "c_index": "C-index",
                 "recall@1": "Recall@1", "mean_distance": "mean distance", "macro_dice": "macro Dice"}
_CHANCE = {"auroc": 0.5, "macro_auroc": 0.5, "c_index": 0.5}
_UNITS = {"fev1_percent": "% predicted", "lung_volume_ml": "ml", "nodule localisation": "fraction of the input"}
_STAGE_TITLES = {"phantoms": "phantom cohort", "prepare": "prepare volumes", "pretrain": "pre-training",
                 "extract_pretrained": "extract (pre-trained)", "extract_random": "extract (random init)",
                 "probes": "probe suite", "reports": "report generation", "report": "write report"}


# ------------------------------------------------------------------------------------------ numbers
def random_backbones(results: pd.DataFrame) -> list[str]:
    """The random-init backbones of a results table: ``random_init``, ``random_init_2``, ..."""
    names = [str(b) for b in dict.fromkeys(results["backbone"]) if str(b) == RANDOM or str(b).startswith(RANDOM + "_")]
    return sorted(names, key=lambda n: (len(n), n))


def compare_backbones(results: pd.DataFrame, comparisons: pd.DataFrame) -> pd.DataFrame:
    """One row per (task, probe, fraction): both backbones' primary metric, the difference and p.

    With several random-init backbones (``random_init``, ``random_init_2``, ...) the random column
    is their mean (``rnd_lo``/``rnd_hi`` = the lowest and highest seed instead of a CI) and the row's
    p-value is an intersection-union test: the largest of the per-seed paired p-values when the
    pre-trained backbone differs from every seed in the same direction, else 1 — significant only
    if pre-training beats (or loses to) *every* random draw. Holm adjustment over the rows.

    Args:
        results: ``probes/results.csv`` (long table of :func:`voxelfm.probes.run_suite`).
        comparisons: ``probes/comparisons.csv`` (pairwise tests, ``backbone_a`` = pre-trained).

    Returns:
        DataFrame with ``category, task_name, task, head, feature, fraction, metric,
        higher_is_better, pre, pre_lo, pre_hi, rnd, rnd_lo, rnd_hi, n_random, diff, p, p_holm, method,
        n, verdict`` where ``diff`` = pre-trained − random (raw metric units) and ``verdict`` is
        ``improved`` (better, Holm p < 0.05), ``better`` (better, not significant), ``worse``
        (significantly worse), ``not better`` or ``undefined``.
    """
    from voxelfm.probes.tasks import get_task
    from voxelfm.stats import adjust_pvalues

    prim = results[results["primary"].astype(bool)]
    randoms = random_backbones(prim) or [RANDOM]
    rows = []
    for (tn, head, feat, frac), g in prim.groupby(["task_name", "head", "feature", "fraction"], sort=False):
        task = str(g["task"].iloc[0])
        hib = get_task(task).higher_is_better
        vals: dict[str, tuple[float, float, float]] = {}
        for b in (PRETRAINED, *randoms):
            r = g[(g["backbone"] == b) & (g["status"] == "ok")]
            vals[b] = ((float(r["value"].iloc[0]), float(r["ci_low"].iloc[0]), float(r["ci_high"].iloc[0]))
                       if len(r) else (math.nan, math.nan, math.nan))
        c = comparisons[(comparisons["task_name"] == tn) & (comparisons["head"] == head)
                        & (comparisons["feature"] == feat) & (comparisons["fraction"] == frac)
                        & (comparisons["backbone_a"] == PRETRAINED)]
        per_seed = [c[c["backbone_b"] == b] for b in randoms]
        ps = [float(x["p_value"].iloc[0]) if len(x) else math.nan for x in per_seed]
        diffs = [vals[PRETRAINED][0] - vals[b][0] for b in randoms]
        same_sign = all(math.isfinite(d) and d > 0 for d in diffs) or all(math.isfinite(d) and d < 0 for d in diffs)
        p = (max(ps) if same_sign else 1.0) if all(math.isfinite(x) for x in ps) else math.nan
        method = str(per_seed[0]["method"].iloc[0]) if len(per_seed[0]) else ""
        rnd_vals = [vals[b][0] for b in randoms]
        pre = vals[PRETRAINED][0]
        rnd = float(np.mean(rnd_vals)) if all(math.isfinite(v) for v in rnd_vals) else math.nan
        rnd_lo, rnd_hi = (vals[randoms[0]][1:] if len(randoms) == 1 else
                          (float(np.min(rnd_vals)), float(np.max(rnd_vals))))
        rows.append({"category": category_of(task), "task_name": tn, "task": task, "head": head, "feature": feat,
                     "fraction": float(frac), "metric": str(g["metric"].iloc[0]), "higher_is_better": hib,
                     "pre": pre, "pre_lo": vals[PRETRAINED][1], "pre_hi": vals[PRETRAINED][2],
                     "rnd": rnd, "rnd_lo": rnd_lo, "rnd_hi": rnd_hi, "n_random": len(randoms),
                     "diff": pre - rnd, "p": p, "method": method,
                     "n": int(g["n"].max()) if g["n"].notna().any() else 0, "all_better_":
                     all((d > 0) if hib else (d < 0) for d in diffs), "all_worse_":
                     all((d < 0) if hib else (d > 0) for d in diffs)})
    df = pd.DataFrame(rows)
    if not len(df):
        return df
    df["p_holm"] = np.nan
    ok = df["p"].notna()
    if ok.any():
        df.loc[ok, "p_holm"] = adjust_pvalues(df.loc[ok, "p"].to_numpy(dtype=float), "holm")
    verdicts = []
    for r in df.itertuples():
        if not (math.isfinite(r.pre) and math.isfinite(r.rnd)):
            verdicts.append("undefined")
            continue
        better = r.diff > 0 if r.higher_is_better else r.diff < 0
        sig = math.isfinite(r.p_holm) and r.p_holm < ALPHA
        verdicts.append(("improved" if sig and r.all_better_ else "better") if better
                        else ("worse" if sig and r.all_worse_ else "not better"))
    df["verdict"] = verdicts
    df = df.drop(columns=["all_better_", "all_worse_"])
    # category, then the suite's task and probe order, full data first
    order = {c: i for i, c in enumerate(CATEGORIES)}
    df["_cat"] = df["category"].map(order).fillna(len(order))
    df["_task"] = df["task_name"].map({t: i for i, t in enumerate(dict.fromkeys(df["task_name"]))})
    df = df.sort_values(["_cat", "_task", "fraction"], ascending=[True, True, False], kind="stable")
    cols = ["category", "task_name", "task", "head", "feature", "fraction", "metric", "higher_is_better", "pre",
            "pre_lo", "pre_hi", "rnd", "rnd_lo", "rnd_hi", "n_random", "diff", "p", "p_holm", "method", "n",
            "verdict"]
    return df[cols].reset_index(drop=True)


def main_rows(cmp: pd.DataFrame) -> pd.DataFrame:
    """The headline rows: full training data, and the first probe of each task."""
    if not len(cmp):
        return cmp
    full = cmp[np.isclose(cmp["fraction"], cmp.groupby("task_name")["fraction"].transform("max"))]
    return full.drop_duplicates("task_name", keep="first").reset_index(drop=True)


def _digits(v: float) -> int:
    a = abs(v)
    return 0 if a >= 100 else (1 if a >= 10 else 3)


def _num(v: float, digits: int | None = None) -> str:
    if not math.isfinite(v):
        return "—"
    return f"{v:.{_digits(v) if digits is None else digits}f}"


def _est(v: float, lo: float, hi: float) -> str:
    """``value [lo, hi]`` with the decimals the value's magnitude calls for."""
    if not math.isfinite(v):
        return "—"
    d = _digits(v)
    if math.isfinite(lo) and math.isfinite(hi):
        return f"{v:.{d}f} [{lo:.{d}f}, {hi:.{d}f}]"
    return f"{v:.{d}f}"


def _p(p: float) -> str:
    if not math.isfinite(p):
        return "—"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _metric(row: Any) -> str:
    name = _METRIC_NAMES.get(str(row["metric"]), str(row["metric"]))
    return f"{name} {'↑' if row['higher_is_better'] else '↓'}"


def _short(row: Any) -> str:
    """``lung_nodule (AUROC 0.91 vs 0.72, p = 0.003)``."""
    name = _METRIC_NAMES.get(str(row["metric"]), str(row["metric"]))
    probe = "" if row["head"] in ("linear", "cox", "cosine", "localisation", "segmentation") else \
        f", {row['head']}/{row['feature']}"
    return (f"{row['task_name']} ({name} {_num(row['pre'])} vs {_num(row['rnd'])}{probe}, "
            f"p = {_p(row['p_holm'])})")


def findings_paragraph(cmp: pd.DataFrame, *, cross_validated: bool = False) -> str:
    """The generated *Findings* text: which tasks improved with pre-training, which did not.

    Uses the headline rows (:func:`main_rows`); significance is the Holm-adjusted paired test
    (DeLong for binary AUROC, paired bootstrap otherwise) at α = 0.05, against every random-init
    seed when there are several.
    """
    rows = main_rows(cmp)
    if not len(rows):
        return "No probe finished, so there is nothing to compare; see the failures below."
    defined = rows[rows["verdict"] != "undefined"]
    n = len(defined)
    groups = {v: defined[defined["verdict"] == v] for v in ("improved", "better", "not better", "worse")}
    n_better = len(groups["improved"]) + len(groups["better"])
    n_rnd = int(rows["n_random"].max()) if "n_random" in rows.columns and len(rows) else 1
    baseline = ("the random-init backbone of the same architecture" if n_rnd <= 1 else
                f"the mean of {n_rnd} random-init backbones of the same architecture (significance: better than "
                "every one of them)")
    parts = [f"The pre-trained backbone scored better than {baseline} "
             f"on {n_better} of {n} tasks"
             + (f" ({len(groups['improved'])} significantly, Holm-adjusted p < {ALPHA:g})." if n_better else ".")]
    if len(groups["improved"]):
        parts.append("Significant improvements: "
                     + "; ".join(_short(r) for _, r in groups["improved"].iterrows()) + ".")
    if len(groups["better"]):
        parts.append("Better but not significantly: " + "; ".join(_short(r) for _, r in groups["better"].iterrows())
                     + ".")
    for _, r in groups["not better"].iterrows():
        parts.append(f"Pre-training did not help on {_short(r)}.")
    for _, r in groups["worse"].iterrows():
        parts.append(f"Pre-training made {_short(r)} significantly worse.")
    und = rows[rows["verdict"] == "undefined"]
    if len(und):
        parts.append("Not evaluable on this cohort: " + ", ".join(str(t) for t in und["task_name"]) + ".")
    cats = []
    for cat in CATEGORIES:
        sub = defined[defined["category"] == cat]
        if len(sub):
            k = int(sub["verdict"].isin(["improved", "better"]).sum())
            cats.append(f"{cat} {k}/{len(sub)}")
    if cats:
        parts.append("By category (better / tasks): " + ", ".join(cats) + ".")
    if n and n_better <= n / 2:
        parts.append("Pre-training did not help on most tasks in this run: with this budget the tiny model's "
                     "features are not (yet) better than random ones for these targets. More pre-training "
                     "(--pretrain-minutes) or more scans (--cases) may change that; the numbers above are what "
                     "this run measured.")
    if cross_validated:
        parts.append("Every scan was scored once by a probe that never saw its patient (cross-validation), so "
                     "the intervals use the whole cohort; still, a non-significant difference is not evidence of "
                     "no difference.")
    else:
        parts.append("Test sets are small (tens of scans), so confidence intervals are wide and a non-significant "
                     "difference is not evidence of no difference.")
    return " ".join(parts)


# ------------------------------------------------------------------------------------------ figures
def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return path


def summary_figure(cmp: pd.DataFrame, path: Path) -> Path | None:
    """Small multiples: each task's primary metric for both backbones with 95 % CIs."""
    rows = main_rows(cmp)
    rows = rows[rows["verdict"] != "undefined"]
    if not len(rows):
        return None
    plt = _plt()
    n = len(rows)
    cols = min(5, n)
    nrows = int(math.ceil(n / cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(2.5 * cols, 1.9 * nrows), squeeze=False)
    colours = {PRETRAINED: "#1f77b4", RANDOM: "#ff7f0e"}
    for ax, (_, r) in zip(axes.ravel(), rows.iterrows()):
        for k, (b, v, lo, hi) in enumerate(((PRETRAINED, r["pre"], r["pre_lo"], r["pre_hi"]),
                                            (RANDOM, r["rnd"], r["rnd_lo"], r["rnd_hi"]))):
            err = [[max(0.0, v - lo) if math.isfinite(lo) else 0.0], [max(0.0, hi - v) if math.isfinite(hi) else 0.0]]
            ax.errorbar([v], [1 - k], xerr=err, fmt="o", color=colours[b], capsize=3, ms=5,
                        label=b.replace("_", " "))
        if r["metric"] in _CHANCE:
            ax.axvline(_CHANCE[r["metric"]], color="grey", lw=0.8, ls="--")
        ax.set_yticks([1, 0])
        ax.set_yticklabels(["pre-trained", "random"], fontsize=7)
        ax.set_ylim(-0.6, 1.6)
        ax.tick_params(axis="x", labelsize=7)
        star = " *" if r["verdict"] in ("improved", "worse") else ""
        ax.set_title(f"{r['task_name']}{star}", fontsize=8)
        ax.set_xlabel(_metric(r), fontsize=7)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    fig.suptitle("Primary test metric, 95% CI (* Holm-adjusted p < 0.05; dashed: chance)", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def pretrain_figure(metrics_path: Path, path: Path) -> Path | None:
    """Pre-training losses per step (total and its DINO / iBOT / KoLeo terms)."""
    if not metrics_path.exists():
        return None
    rows = [json.loads(x) for x in metrics_path.read_text(encoding="utf-8").splitlines() if x.strip()]
    if not rows:
        return None
    df = pd.DataFrame(rows).sort_values("step")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.0))
    for col in ("total", "dino_global", "dino_local", "ibot", "koleo"):
        if col in df.columns and df[col].notna().any():
            y = df[col].astype(float)
            w = max(1, len(y) // 25)
            ax.plot(df["step"], y.rolling(w, min_periods=1).mean(), lw=1.4 if col == "total" else 0.9,
                    label=col)
    ax.set(xlabel="optimizer step", ylabel="loss", title="Pre-training losses (moving average)")
    ax.legend(fontsize=7, frameon=False, ncol=3)
    return _save(fig, path)


# ------------------------------------------------------------------------------------------ tables
def _md_table(header: list[str], rows: list[list[str]]) -> str:
    def esc(x: Any) -> str:
        return str(x).replace("|", "\\|")

    out = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def results_table(cmp: pd.DataFrame) -> str:
    """Markdown table of every (task, probe, fraction) with both backbones, Δ and p."""
    n_rnd = int(cmp["n_random"].max()) if "n_random" in cmp.columns and len(cmp) else 1
    rnd_head = "random init [95% CI]" if n_rnd <= 1 else f"random init, mean of {n_rnd} seeds [lowest, highest]"
    header = ["category", "task", "probe", "train fraction", "metric", "pre-trained [95% CI]",
              rnd_head, "Δ (pre − random)", "p (Holm)", "outcome"]
    rows = []
    for _, r in cmp.iterrows():
        pre, rnd = _est(r["pre"], r["pre_lo"], r["pre_hi"]), _est(r["rnd"], r["rnd_lo"], r["rnd_hi"])
        if r["verdict"] in ("improved", "better"):
            pre = f"**{pre}**"
        elif r["verdict"] in ("worse", "not better") and math.isfinite(r["diff"]) and r["diff"] != 0:
            rnd = f"**{rnd}**"
        rows.append([r["category"], r["task_name"], f"{r['head']}/{r['feature']}", f"{r['fraction']:g}",
                     _metric(r), pre, rnd, _num(r["diff"]) if math.isfinite(r["diff"]) else "—",
                     _p(r["p_holm"]) + (" (DeLong)" if r["method"] == "delong" else ""), r["verdict"]])
    return _md_table(header, rows)


TIMING_HEADER = ["stage", "this run", "status", "computed in", "CPU time"]


def timing_rows(state: DemoState, runner: StageRunner) -> list[list[str]]:
    """``[stage, this run, status, computed in, CPU time]`` for each stage of this run (*computed
    in*: the wall time the stage took over the run(s) that computed it; *CPU time*: the processor
    time of the demo and its worker processes in those runs)."""
    out = []
    for name, info in runner.this_run.items():
        rec = state.stages.get(name)
        total = rec.seconds if rec is not None else 0.0
        cpu = rec.cpu_seconds if rec is not None else 0.0
        out.append([_STAGE_TITLES.get(name, name), format_seconds(info["seconds"]), info["status"],
                    format_seconds(total), format_seconds(cpu) if cpu else "—"])
    return out


# ------------------------------------------------------------------------------------------ html
_CSS = """body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;line-height:1.45;color:#222}table{border-collapse:collapse;font-size:0.85em;margin:1em 0}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:left}th{background:#f3f3f3}img{max-width:100%}
blockquote{border-left:4px solid #c0392b;background:#fdf0ee;margin:1em 0;padding:0.5em 1em}
code{background:#f4f4f4;padding:0 3px}pre{background:#f4f4f4;padding:0.6em;overflow-x:auto}"""


def markdown_to_html(md: str, base: Path, *, title: str) -> str:
    """A self-contained HTML page of ``md``: images referenced relative to ``base`` are inlined
    as base64 data URIs. Uses the ``markdown`` package (with tables); without it the Markdown
    text is shown preformatted."""
    try:
        import markdown as _markdown
    except ImportError:  # pragma: no cover - markdown ships with tensorboard ([all] extra)
        body = f"<pre>{html.escape(md)}</pre>"
    else:
        body = _markdown.markdown(md, extensions=["tables", "fenced_code", "sane_lists"])

    def inline(m: re.Match[str]) -> str:
        src = html.unescape(m.group(2))
        p = (base / src) if not Path(src).is_absolute() else Path(src)
        if src.startswith("data:") or not p.is_file():
            return m.group(0)
        data = base64.b64encode(p.read_bytes()).decode("ascii")
        return f'{m.group(1)}data:image/png;base64,{data}{m.group(3)}'

    body = re.sub(r'(<img[^>]*?src=")([^"]+)(")', inline, body)
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body>\n{body}\n</body></html>\n")


# ------------------------------------------------------------------------------------------ report
def _rel(path: Path, root: Path) -> str:
    return path.resolve().relative_to(root.resolve()).as_posix()


def _summary(state: DemoState, name: str) -> dict[str, Any]:
    rec = state.stages.get(name)
    return dict(rec.summary) if rec is not None else {}


def _figure_section(paths: Any, cmp: pd.DataFrame, lead: str | None, cv: bool = False) -> list[str]:
    root = paths.root
    figs = paths.probes / "figures"
    lines: list[str] = []

    def add(path: Path | None, caption: str) -> None:
        if path is not None and path.exists():
            lines.extend([f"![{caption}]({_rel(path, root)})", "", f"*{caption}*", ""])

    add(paths.figures / "summary.png", "Every task: primary test metric of the pre-trained and the random-init "
                                       "backbone with 95% confidence intervals.")
    if lead:
        roc = sorted(figs.glob(f"roc_{lead}_linear-cls.png")) or sorted(figs.glob(f"roc_{lead}_*.png"))
        if roc:
            add(roc[0], f"ROC curves of the {lead} probe on the "
                        + ("pooled out-of-fold predictions." if cv else "test split."))
    add(figs / "fractions.png", "Data efficiency: primary metric vs the fraction of the training split used "
                                "(nested subsets).")
    add(figs / "cls_vs_patch.png", "Class token (linear probe) vs patch tokens (attentive pooling).")
    for p in sorted(figs.glob("pca_*.png")):
        who = "pre-trained" if p.name.startswith(f"pca_{PRETRAINED}") else "random-init"
        add(p, f"First three principal components of the {who} patch tokens as RGB over the CT "
               "(coherent anatomy-aligned colours indicate features that separate tissues).")
    add(paths.figures / "pretrain_loss.png", "Pre-training losses.")
    return lines


def _baselines_section(paths: Any, summary: dict[str, Any]) -> list[str]:
    """``--baselines``: the ``voxelfm compare`` table of the ViT and the other CT foundation models."""
    table = paths.baselines / "table.md"
    if not summary or not table.exists():
        return []
    others = [b for b in summary.get("backbones", []) if b not in ("pretrained", "random_init")]
    return ["## Other CT foundation models (random init: a pipeline check, not a result)", "",
            f"**These backbones ({', '.join(others)}) have random weights** — released weights are never "
            "downloaded — and run at reduced input sizes so the demo stays short, so this table only shows that "
            "every family goes through the same extraction, probes and paired tests as the ViT. It says nothing "
            "about how the released models compare; for that, run `voxelfm compare` with their weight files "
            "(docs/compare.md, docs/baselines.md).", "",
            # the table file's own headings sit below this section's
            re.sub(r"^(#+) ", r"\1## ", table.read_text(encoding="utf-8").strip(), flags=re.M), "",
            f"Files: `{_rel(table, paths.root)}` (also .csv and .tex) and `{_rel(paths.baselines, paths.root)}/`.", ""]


def _reports_section(paths: Any, root: Path, with_reports: bool) -> list[str]:
    """The *Report generation* section: generated reports (repaired and as decoded, when grounded and
    repaired) against the baselines and the linear probe, with the image-dependence test."""
    L: list[str] = []
    rg = paths.reports / "results.json"
    if rg.exists():
        s = json.loads(rg.read_text())

        def f1(d: dict[str, Any] | None) -> str:
            d = (d or {}).get("macro_f1") or {}

            def num(key: str) -> float:
                v = d.get(key)
                return math.nan if v is None else float(v)

            return _est(num("value"), num("ci_low"), num("ci_high"))

        base = s.get("baselines") or {}
        grounded = bool(s.get("grounding"))
        raw = s.get("generated_raw")
        perm = s.get("permutation_test") or {}
        rows = [["generated, repaired to the probe findings" if raw else
                 ("generated, grounded on the probe findings" if grounded else "generated (pre-trained embeddings)"),
                 f1(s.get("generated"))]]
        if raw:
            rows.append(["generated, as decoded", f1(raw)])
        rows += [["most common training report", f1(base.get("most_common"))],
                 ["random training report", f1(base.get("random_train"))]]
        if base.get("nearest_train"):
            rows.append(["nearest training report (embedding similarity)", f1(base.get("nearest_train"))])
        rows.append(["linear probe per abnormality", f1(s.get("probe"))])
        how = (" Its prompt held the findings of per-abnormality probes on the same embeddings (`--grounding "
               "probe`), and each report was then repaired to state exactly those findings (`--repair`): the "
               "language model writes the text, the calibrated probes decide the findings." if raw else
               " Its prompt held the findings of per-abnormality probes on the same embeddings (`--grounding probe`)."
               if grounded else "")
        dep = ""
        if perm.get("p_value") is not None:
            pv = float(perm["p_value"])
            dep = (f" Image dependence (the reports shuffled across the test scans, {perm.get('n_permutations')} "
                   f"shuffles): p = {pv:.4f} — " + ("the reports depend on their own scan." if pv < 0.05 else
                                                  "no clear dependence on the scan."))
        L += ["## Report generation", "",
              f"A Perceiver projector + LoRA on the offline LM ({s.get('lm')}) was trained on the pre-trained "
              f"embeddings to write the reports of the training scans, then wrote reports for the "
              f"{s.get('n_test')} test scans; the abnormalities each report mentions were scored against the truth."
              + how + dep, "", _md_table(["reports from", "macro F1 [95% CI]"], rows), ""]
        comp = paths.reports / "evaluation" / "comparison.png"
        if comp.exists():
            L += [f"![report generation vs probe]({_rel(comp, root)})", ""]
    elif not with_reports:
        L += ["## Report generation", "", "Not run (it needs ≈ 12 more minutes on 2 CPU cores): "
              "`voxelfm demo --with-reports` adds it.", ""]
    return L


def write_report(paths: Any, settings: Any, state: DemoState, runner: StageRunner) -> dict[str, Any]:
    """Write ``report.md`` and ``report.html`` from the files of the demo folder.

    Returns:
        a small summary (tasks compared, improved count) for ``demo.json``.
    """
    from voxelfm import __version__

    root = paths.root
    res_path, cmp_path = paths.probes / "results.csv", paths.probes / "comparisons.csv"
    if res_path.exists() and cmp_path.exists():
        cmp = compare_backbones(pd.read_csv(res_path), pd.read_csv(cmp_path))
    else:
        cmp = pd.DataFrame()
    with atomic_write(paths.probes / "pretrained_vs_random.csv") as tmp:
        cmp.to_csv(tmp, index=False)
    summary_figure(cmp, paths.figures / "summary.png")
    pretrain_figure(paths.pretrain / "metrics.jsonl", paths.figures / "pretrain_loss.png")

    ph, pt = _summary(state, "phantoms"), _summary(state, "pretrain")
    ex, pr = _summary(state, "extract_pretrained"), _summary(state, "probes")
    lead = pr.get("lead") or ("lung_nodule" if "lung_nodule" in (pr.get("findings") or []) else
                              (pr.get("findings") or [None])[0])
    when = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    L: list[str] = ["# voxelfm demo report", "", f"> {BANNER}", ""]
    L.append(f"Generated {when} by voxelfm {__version__} ({'quick' if settings.quick else 'default'} demo, "
             f"seed {settings.seed}). Folder: `{root}`.")
    L.append("")
    cv = pr.get("protocol") == "cv"
    L += ["## Findings", "", findings_paragraph(cmp, cross_validated=cv), ""]
    mains = main_rows(cmp)
    if len(mains):
        cats = [c for c in CATEGORIES if (cmp["category"] == c).any()]
        L.append(f"Task categories evaluated: {', '.join(cats)}"
                 + (", report generation" if (paths.reports / "results.json").exists() else "") + ".")
        L.append("")
    where = (f"the pooled out-of-fold predictions of every scan ({pr.get('folds')}-fold cross-validation grouped "
             "by patient: each fold is predicted by a probe selected on the next fold and trained on the "
             "others)") if cv else "the held-out test split"
    split_tasks = [t for t in (pr.get("split_tasks") or []) if len(cmp) and t in set(cmp["task_name"])]
    if cv and split_tasks:
        where += (f"; {', '.join(split_tasks)} on the held-out test split ({_summary(state, 'phantoms').get('splits', {}).get('test', '?')} "
                  "scans: per-scan paired Dice is precise there, and one decoder per fold and backbone would double "
                  "the probe time)")
    n_rnd = len(pr.get("random_stores") or [RANDOM])
    seeds = ("" if n_rnd <= 1 else
             f" The random-init column is the mean of {n_rnd} random-init backbones (seeds {settings.seed}–"
             f"{settings.seed + n_rnd - 1}) with the lowest and highest seed in brackets; Δ is against that mean, "
             "and p is the largest of the per-seed paired p-values when the pre-trained backbone differs from "
             "every seed in the same direction (an intersection-union test: significant only if it beats, or "
             "loses to, every random draw), else 1.")
    L += ["## Results: pre-trained vs random init", "",
          f"Primary metric on {where} with its 95% confidence interval (AUROC: DeLong; "
          "others: percentile bootstrap over scans), the difference pre-trained − random, and the paired "
          "test between the backbones on the same scans (DeLong for binary AUROC, paired "
          "bootstrap otherwise), Holm-adjusted over the whole table." + seeds + " ↑ higher is better, ↓ lower is "
          "better; the better backbone of each row is in bold. Outcome: *improved* = better with "
          "adjusted p < 0.05; *better* = better, not significant; *worse* = significantly worse.", ""]
    if len(cmp):
        L += [results_table(cmp), ""]
        units = [f"{k}: {v}" for k, v in _UNITS.items() if k in set(cmp["task_name"])]
        if units:
            L += ["Units of the MAE / distance rows: " + "; ".join(units) + ".", ""]
    else:
        L += ["*No probe results (the probe stage did not finish).*", ""]
    unseen = pr.get("below_resolution") or {}
    if unseen:
        L += ["Not scored — below the resolution of the model input: " + "; ".join(
            f"{k} ({v})" for k, v in unseen.items()) + ". Each scan is resized to the token budget before "
              "the backbone sees it, and a finding narrower than two voxels of that input is blurred away for "
              "*any* backbone, so scoring it would only add coin flips to the table; a finer grid "
              "(`DemoSettings(max_patches=...)`, with pre-training at that scale) is what would make them "
              "visible.", ""]
    skipped = pr.get("skipped") or {}
    if skipped:
        L += ["Left out of the suite: " + "; ".join(f"{k} ({v})" for k, v in skipped.items()) + ".", ""]
    if pr.get("failures"):
        L += ["Probe runs that failed (see `probes/runs/.../error.txt`): "
              + "; ".join(f"{' / '.join(f['run'][:4])}: {f['error']}" for f in pr["failures"]) + ".", ""]
    L += ["Full tables: `probes/results.csv` (every metric of every run), `probes/comparisons.csv` (raw and "
          "adjusted p), `probes/pretrained_vs_random.csv` (this table), `probes/results.md`/`.tex`.", ""]
    L += ["## Figures", ""] + _figure_section(paths, cmp, lead, cv)
    L += _reports_section(paths, root, bool(settings.with_reports))
    L += _baselines_section(paths, _summary(state, "baselines"))
    L += ["## Cohort and models", ""]
    if ph:
        sp = ph.get("splits", {})
        prev = ph.get("prevalence", {})
        L.append(f"- **Phantom cohort:** {ph.get('cases')} chest CT phantoms of {ph.get('patients')} patients "
                 f"(patient-grouped splits: train {sp.get('train', 0)}, val {sp.get('val', 0)}, test "
                 f"{sp.get('test', 0)}), ≈ 112×112×80–136 voxels at 2.5–4 mm; organ label maps, {len(prev)} findings, "
                 f"simulated lung function and survival. Prevalence: "
                 + ", ".join(f"{k} {100 * v:.0f}%" for k, v in prev.items()) + ".")
    prep = _summary(state, "prepare")
    if prep:
        ext = _summary(state, "extract_pretrained")
        crop = "background crop, " if settings.crop_background else ""
        L.append(f"- **Preprocessing:** HU window [-1000, 1900], {crop}"
                 f"isotropic resampling (preset `default`); {prep.get('volumes')} volumes prepared for pre-training "
                 f"(typically {'×'.join(map(str, prep.get('mean_shape') or []))} voxels). For extraction each scan is "
                 f"resized to a budget of {ext.get('max_patches', '?')} patch tokens, the scale of one global "
                 "pre-training crop.")
    if pt:
        over = [str(o) for o in settings.pretrain_overrides]
        L.append(f"- **Pre-training:** {pt.get('objectives', 'DINO + iBOT + KoLeo')}, config `{pt.get('config')}`"
                 + (f" with {', '.join(f'`{o}`' for o in over)}" if over else "") + ", "
                 f"{pt.get('steps')} optimizer "
                 f"steps (effective batch {pt.get('effective_batch_size')}) in {pt.get('minutes')} min; total loss "
                 f"{_num(float(pt.get('loss_first', math.nan)))} → {_num(float(pt.get('loss_last', math.nan)))}. "
                 "Run folder `pretrain/` (resumable checkpoints, metrics.jsonl, TensorBoard), teacher backbone "
                 "`pretrain/backbone/`.")
    if ex:
        L.append(f"- **Backbones:** ViT with {ex.get('parameters')} parameters, embedding size {ex.get('embed_dim')}, "
                 f"≈ {ex.get('tokens_per_scan')} patch tokens per scan"
                 + (f" (input voxels ≈ {ex['resolution']['voxel_mm']:g} mm, one token ≈ "
                    f"{ex['resolution']['token_mm']:g} mm)" if isinstance(ex.get('resolution'), dict) else "")
                 + "; the random-init backbone "
                 "(`random_init/`) has the same architecture and preprocessing. Embeddings in `embeddings/`.")
    L.append("")
    L += ["## Timing", "", "Wall time of each stage in this run (a reused stage costs nothing; *computed in* is the "
          "time the stage took in the run(s) that computed it) and the processor time of the demo and its worker "
          "processes in the stage. Other processes sharing the CPU slow every stage's wall time; CPU time hardly "
          "changes, and on an otherwise idle machine a stage's wall time is roughly its CPU time divided by the "
          "cores it keeps busy (pre-training is bounded by its minutes instead).", ""]
    rows = timing_rows(state, runner)
    L += [_md_table(TIMING_HEADER, rows), "",
          f"Elapsed before writing this report: {format_seconds(runner.elapsed())}.", ""]
    cmd = "voxelfm demo" + (" --quick" if settings.quick else "")
    L += ["## Reproduce", "", "```", f"{cmd} -o {root}   # re-running reuses finished stages; --fresh starts over",
          "```", "", "The same workflow with the individual commands: `voxelfm phantoms`, `voxelfm prepare`, "
          "`voxelfm pretrain`, `voxelfm extract`, `voxelfm probe` (suite: `probes/suite.yaml`). "
          "See docs/demo.md for what each stage does.", ""]
    md = "\n".join(L)
    atomic_write_text(paths.report_md, md)
    atomic_write_text(paths.report_html, markdown_to_html(md, root, title="voxelfm demo report"))
    mains = main_rows(cmp)
    improved = int(mains["verdict"].isin(["improved", "better"]).sum()) if len(mains) else 0
    return {"tasks": int(len(mains)), "better": improved,
            "significant": int((mains["verdict"] == "improved").sum()) if len(mains) else 0,
            "_line": f"pre-trained better on {improved} of {len(mains)} tasks"}
