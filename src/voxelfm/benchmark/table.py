"""The paper's Table 1 over many datasets: rows = dataset / task / probe / metric, columns =
backbones (value with 95 % CI) and the paired test of each backbone against the reference.

Built from the per-dataset suite outputs (``results.csv`` and ``comparisons.csv`` of
:func:`voxelfm.probes.run_suite`): the rows are each task's primary metric at its largest
training fraction (plus, per dataset and probe, the mean over tasks that share a metric); the
p-values are the suite's paired tests (DeLong for a binary AUROC, else a
paired bootstrap) re-adjusted with Holm over the whole table — one family for the paper's table,
not one per dataset (the per-dataset adjustment is kept as ``p_holm_dataset``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

__all__ = ["paper_figures", "paper_table", "write_paper_table"]

_SEP = "\x1f"  # joins dataset and task name while the suite's table code groups rows


def _full_fraction(df: pd.DataFrame) -> pd.DataFrame:
    if not len(df):
        return df
    top = df.groupby(["dataset", "task_name"])["fraction"].transform("max")
    return df[df["fraction"] == top]


def paper_table(results: pd.DataFrame, comparisons: pd.DataFrame, backbones: Sequence[str]
                ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The Table 1 frame and the comparisons it shows (with table-wide Holm ``p_holm``).

    Args:
        results: concatenated suite ``results.csv`` rows with a ``dataset`` column.
        comparisons: concatenated suite ``comparisons.csv`` rows with a ``dataset`` column.
        backbones: column order.

    Returns:
        ``(table, comparisons)``: ``table`` has ``dataset``, ``task``, ``probe``, ``metric``, one
        ``value [CI]`` column per backbone, one ``p A vs B`` column per compared pair and
        ``_best``; ``comparisons`` the rows of the table's family with ``p_holm`` over it.
    """
    from voxelfm.probes.suite import results_table
    from voxelfm.stats import adjust_pvalues

    res = _full_fraction(results[results["primary"].astype(bool)]).copy()
    order = {b: i for i, b in enumerate(backbones)}
    res = res.sort_values("backbone", key=lambda s: s.map(order).fillna(len(order)), kind="stable")
    comp = _full_fraction(comparisons).copy()
    comp["p_holm_dataset"] = comp.get("p_holm")
    comp["p_holm"] = adjust_pvalues(comp["p_value"].to_numpy(dtype=float), "holm") if len(comp) else []
    for df in (res, comp):
        df["task_name"] = df["dataset"].astype(str) + _SEP + df["task_name"].astype(str)
    table = results_table(res, comp)
    if not len(table):
        return table, comp.assign(task_name=comp["task_name"].str.split(_SEP).str[-1])
    parts = table["task"].str.split(_SEP, n=1)
    table.insert(0, "dataset", parts.str[0])
    table["task"] = parts.str[1]
    table = table.drop(columns=["fraction"])
    present = [b for b in backbones if b in table.columns]
    others = [c for c in table.columns if c not in present and c not in ("dataset", "task", "probe", "metric")]
    table = table[["dataset", "task", "probe", "metric", *present, *others]]
    comp["task_name"] = comp["task_name"].str.split(_SEP, n=1).str[1]
    return _with_mean_rows(table, res, present), comp


def _with_mean_rows(table: pd.DataFrame, res: pd.DataFrame, backbones: Sequence[str]) -> pd.DataFrame:
    """After each dataset's rows, one row per probe whose metric two or more of the dataset's tasks
    share: the unweighted mean over the tasks every backbone finished (CT-RATE's 18 findings,
    Merlin's 30), as the paper summarises them. No CI and no test (they are per task)."""
    from voxelfm.probes.tasks import get_task

    ok = res[res["status"] == "ok"]  # task_name is "dataset<SEP>task" here, task the task type
    blocks = []
    for dataset, block in table.groupby("dataset", sort=False):
        blocks.append(block)
        d = ok[ok["dataset"] == dataset]
        for (head, feature, metric, task_type), g in d.groupby(["head", "feature", "metric", "task"], sort=False):
            wide = g.pivot_table(index="task_name", columns="backbone", values="value").dropna()
            if len(wide) < 2:
                continue
            higher = get_task(task_type).higher_is_better
            means = {b: float(wide[b].mean()) for b in backbones if b in wide.columns}
            row = {c: "—" for c in table.columns}
            row.update(dataset=dataset, task=f"mean of {len(wide)} tasks", probe=f"{head}/{feature}",
                       metric=f"{metric} {'↑' if higher else '↓'} (mean)")
            row.update({b: f"{v:.3f}" for b, v in means.items()})
            top = max(means.values()) if higher else min(means.values())
            best = tuple(b for b, v in means.items() if v == top)
            row["_best"] = () if len(best) == len(means) else best
            blocks.append(pd.DataFrame([row], columns=table.columns))
    return pd.concat(blocks, ignore_index=True)


def write_paper_table(out: Path, table: pd.DataFrame, comparisons: pd.DataFrame, *, n_datasets: int,
                      reference: str | None) -> dict[str, Path]:
    """Write ``table1.md`` / ``table1.csv`` / ``table1.tex`` and ``table1_comparisons.csv``."""
    from voxelfm.probes.suite import format_latex, format_markdown
    from voxelfm.utils import atomic_write, atomic_write_text

    vs = f"each backbone against {reference}" if reference else "every pair of backbones"
    note = (f"Primary test-split metric of every task at its full training data, with 95% CI (AUROC: DeLong; "
            f"others: percentile bootstrap). p: paired test of {vs} on the same test scans (DeLong for a "
            f"binary AUROC, paired bootstrap otherwise), Holm-adjusted over the whole table "
            f"({len(comparisons)} test{'s' if len(comparisons) != 1 else ''}, {n_datasets} dataset"
            f"{'s' if n_datasets != 1 else ''}). Best per row in bold.")
    paths = {"table_md": out / "table1.md", "table_csv": out / "table1.csv", "table_tex": out / "table1.tex",
             "table_comparisons": out / "table1_comparisons.csv"}
    atomic_write_text(paths["table_md"], format_markdown(table, title="Table 1: frozen-backbone probes", note=note))
    atomic_write_text(paths["table_tex"], format_latex(table, caption=f"Frozen-backbone probes. {note}",
                                                       label="tab:benchmark"))
    for key, df in (("table_csv", table.drop(columns=[c for c in table.columns if c.startswith("_")])),
                    ("table_comparisons", comparisons)):
        with atomic_write(paths[key]) as tmp:
            df.to_csv(tmp, index=False)
    return paths


def paper_figures(out: Path, fraction_rows: pd.DataFrame, cls_patch_rows: pd.DataFrame) -> dict[str, Path]:
    """Data-fraction curves and class-token vs patch-token bars over all datasets.

    Args:
        fraction_rows: :func:`voxelfm.probes.suite.fraction_rows` of every dataset, with ``dataset``.
        cls_patch_rows: :func:`voxelfm.probes.suite.cls_vs_patch_rows` of every dataset, with ``dataset``.
    """
    from voxelfm.probes import figures as F

    paths: dict[str, Path] = {}
    if len(fraction_rows):
        rows = fraction_rows.assign(panel=fraction_rows["dataset"] + " · " + fraction_rows["panel"])
        paths["fractions"] = F.fraction_figure(rows, out / "figures" / "fractions.png",
                                               title="Primary metric vs training fraction")
    if len(cls_patch_rows):
        rows = cls_patch_rows.assign(task_name=cls_patch_rows["dataset"] + " · " + cls_patch_rows["task_name"])
        paths["cls_vs_patch"] = F.cls_vs_patch_figure(
            rows, out / "figures" / "cls_vs_patch.png",
            title="Class token vs patch tokens (test metric of the head chosen on validation)")
    return paths
