"""The whole report-generation experiment in one call: train (two stages) → generate → evaluate,
with the trivial baselines and the probe comparison of the paper.

    from voxelfm.reportgen import run_report_experiment
    results = run_report_experiment("store/", "cohort.csv", "out/report", minutes=8)
    results["generated"]["macro_f1"], results["baselines"]["most_common"]["macro_f1"]

Output folder::

    OUT/model/stage1, OUT/model/stage2    trained models (see voxelfm.reportgen.train)
    OUT/generated/                         test-split reports (see voxelfm.reportgen.generate)
    OUT/evaluation/                        per_label.csv, results.md, results.json, comparison.png
    OUT/results.json                       summary: macro F1 of reports / baselines / probe, timings
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from voxelfm.utils import atomic_write_text

__all__ = ["run_report_experiment", "auto_max_new_tokens"]


def auto_max_new_tokens(tokenizer: Any, reports: list[str], *, factor: float = 1.25, cap: int = 512) -> int:
    """A generation length limit from the training reports: ``factor`` × the longest, at most ``cap``."""
    longest = max((len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in reports), default=64)
    return int(min(cap, max(16, round(factor * (longest + 1)))))


def run_report_experiment(store: Any, table: Any, out: str | os.PathLike[str], *, minutes: float = 10.0,
                          lm: str | None = None, feature: str = "cls", stage1: Any = None, stage2: Any = None,
                          strategy: str = "greedy", max_new_tokens: int | None = None, batch_size: int = 8,
                          with_probes: bool = True, probe_head: str = "linear", probe_feature: str | None = None,
                          n_resamples: int = 1000, seed: int = 4, device: str = "cpu", resume: bool = True,
                          stage1_fraction: float = 0.35, lm_and_tokenizer: tuple[Any, Any] | None = None) -> dict[str, Any]:
    """Train, generate for the ``test`` split, and score against the truth, baselines and probes.

    Args:
        store: embedding store (or folder) with the cohort's embeddings.
        table: cohort table with ``id``, ``split``, ``report`` and 0/1 finding columns.
        out: output folder (see module docstring); rerunning resumes training and generation.
        minutes: **training** time budget for both stages together (generation and evaluation come
            on top; their times are reported).
        lm: base LM (default: offline SmolLM2-135M-Instruct).
        feature: ``cls``, ``patch`` or ``cls+patch`` tokens into the projector.
        stage1, stage2: :class:`~voxelfm.reportgen.train.TrainConfig` overrides (default CPU settings).
        strategy, max_new_tokens, batch_size: generation settings (``max_new_tokens=None``: 1.25 ×
            the longest training report).
        with_probes: also train one binary probe per label on the same embeddings.
        probe_head, probe_feature: probe settings (feature default: ``cls`` for ``feature="cls"``,
            else ``mean_patch``).
        n_resamples, seed: bootstrap settings (reference 1000, 4).

    Returns:
        the summary dict also written to ``OUT/results.json``.
    """
    import torch

    from voxelfm.inference.store import EmbeddingStore
    from voxelfm.reportgen.dataset import normalise_split, read_table
    from voxelfm.reportgen.evaluate import (
        baseline_reports,
        compare_with_probes,
        evaluate_reports,
        write_evaluation,
    )
    from voxelfm.reportgen.generate import generate_reports
    from voxelfm.reportgen.model import ReportModel
    from voxelfm.reportgen.train import TrainConfig, train_two_stages

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    store = store if isinstance(store, EmbeddingStore) else EmbeddingStore(store)
    df = read_table(table)
    if "split" not in df.columns:
        raise ValueError("the table needs a split column (train/val/test)")
    t_all = time.perf_counter()

    s1 = stage1 or TrainConfig.cpu(stage=1)
    s2 = stage2 or TrainConfig.cpu(stage=2)
    s1 = replace(s1, feature=feature, seed=seed, device=device)
    s2 = replace(s2, feature=feature, seed=seed, device=device)
    t0 = time.perf_counter()
    r1, r2 = train_two_stages(store, df, out / "model", lm=lm, stage1=s1, stage2=s2, max_minutes=minutes,
                              stage1_fraction=stage1_fraction, resume=resume, lm_and_tokenizer=lm_and_tokenizer)
    train_seconds = time.perf_counter() - t0

    t0 = time.perf_counter()
    model = ReportModel.load(out / "model" / "stage2", device=device, merge_lora=True)
    if max_new_tokens is None:
        train_reports = [str(r) for r, s in zip(df["report"], df["split"]) if normalise_split(s) == "train"]
        if s2.report_style == "abnormal":
            from voxelfm.reportgen.restructure import restructure_report

            train_reports = [restructure_report(r) for r in train_reports]
        max_new_tokens = auto_max_new_tokens(model.tokenizer, train_reports)
    with torch.no_grad():
        gen = generate_reports(model, store, table=df, split="test", strategy=strategy, max_new_tokens=max_new_tokens,
                               batch_size=batch_size, out_dir=out / "generated", resume=resume, seed=seed)
    generate_seconds = time.perf_counter() - t0
    del model

    t0 = time.perf_counter()
    evaluation = evaluate_reports(gen, df, n_resamples=n_resamples, seed=seed)
    test_ids = list(evaluation.truth.index)
    baselines = {kind: evaluate_reports(baseline_reports(test_ids, df, kind=kind, seed=seed), df,
                                        n_resamples=n_resamples, seed=seed)
                 for kind in ("most_common", "random_train")}
    comparison = None
    if with_probes:
        pf = probe_feature or ("cls" if feature == "cls" else "mean_patch")
        comparison = compare_with_probes(store, df, evaluation, feature=pf, head=probe_head,
                                         n_resamples=n_resamples, seed=seed)
    eval_seconds = time.perf_counter() - t0

    summary: dict[str, Any] = {
        "n_test": len(test_ids),
        "labels": evaluation.labels,
        "generated": {"macro_f1": evaluation.macro_f1.to_dict()},
        "baselines": {k: {"macro_f1": v.macro_f1.to_dict()} for k, v in baselines.items()},
        "probe": None if comparison is None else {"macro_f1": comparison.macro_f1.to_dict(), "head": probe_head},
        "training": {"stage1": r1.to_dict(), "stage2": r2.to_dict(), "minutes_budget": minutes},
        "generation": {"strategy": strategy, "max_new_tokens": max_new_tokens, "n": len(gen)},
        "seconds": {"train": round(train_seconds, 1), "generate": round(generate_seconds, 1),
                    "evaluate": round(eval_seconds, 1), "total": round(time.perf_counter() - t_all, 1)},
        "lm": str(lm or "default"), "feature": feature,
    }
    write_evaluation(evaluation, out / "evaluation", comparison=comparison, baselines=baselines,
                     extra={"summary": summary})
    atomic_write_text(out / "results.json", json.dumps(summary, indent=2, default=str))
    return summary
