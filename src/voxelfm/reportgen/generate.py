"""Write reports for cached CT embeddings with a trained report model.

Output folder (``out_dir``)::

    reports/<safe id>.txt     one report per volume (written atomically; existing ones are kept on
                              a rerun, so an interrupted run resumes)
    generated.csv             id, split, generated, ground_truth (when a report table was given)
    generation.json           model, strategy, decoding settings, counts, time

Decoding strategies (reference ``mllm/inference``): ``greedy``; ``nucleus`` (temperature 0.7,
top-p 0.9, top-k 50; the reference evaluated these); ``beam`` (4 beams).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from voxelfm.errors import CheckpointError, ConfigError
from voxelfm.utils import atomic_write_text, progress, safe_id

__all__ = ["resolve_model_dir", "generate_reports"]


def resolve_model_dir(path: str | os.PathLike[str]) -> Path:
    """A model folder, or a training folder holding ``stage2/`` (preferred) or ``stage1/``."""
    p = Path(path)
    for cand in (p, p / "stage2", p / "stage1"):
        if (cand / "report_model.json").is_file():
            return cand
    raise CheckpointError(f"{p} holds no report model (report_model.json); pass the output folder of "
                          "`voxelfm report train`")


def _select_ids(store: Any, ids: Sequence[str] | None, table: Any, split: str | None, id_col: str,
                report_col: str, split_col: str) -> tuple[list[str], dict[str, str], dict[str, str]]:
    from voxelfm.reportgen.dataset import normalise_split, read_table

    truth: dict[str, str] = {}
    splits: dict[str, str] = {}
    if table is not None:
        df = read_table(table, id_col=id_col)
        if split is not None and split_col in df.columns:
            df = df[df[split_col].map(normalise_split) == normalise_split(split)]
        elif split is not None:
            raise ConfigError(f"the table has no {split_col!r} column; pass split=None to use every row")
        if report_col in df.columns:
            truth = {i: ("" if r is None or (isinstance(r, float) and r != r) else str(r))
                     for i, r in zip(df[id_col], df[report_col])}
        if split_col in df.columns:
            splits = {i: normalise_split(s) for i, s in zip(df[id_col], df[split_col])}
        table_ids = list(df[id_col])
        ids = [i for i in (ids if ids is not None else table_ids) if i in set(table_ids)]
    elif ids is None:
        ids = list(store.ids)
    ids = [str(i) for i in ids]
    missing = [i for i in ids if not store.has(i)]
    if missing:
        raise ConfigError(f"{len(missing)} ids have no embedding in the store {store.root} "
                          f"(first: {missing[0]!r}); run `voxelfm extract` for them")
    if not ids:
        raise ConfigError("nothing to generate: no ids selected")
    return ids, truth, splits


def generate_reports(model: Any, store: Any, *, ids: Sequence[str] | None = None, table: Any = None,
                     split: str | None = "test", strategy: str = "greedy", max_new_tokens: int = 256,
                     batch_size: int = 8, out_dir: str | os.PathLike[str] | None = None, resume: bool = True,
                     seed: int = 4, device: Any = "cpu", id_col: str = "id", report_col: str = "report",
                     split_col: str = "split", **generate_kwargs: Any):
    """Generate a report for each selected volume.

    Args:
        model: a :class:`~voxelfm.reportgen.model.ReportModel` or a model/training folder (loaded
            with LoRA merged for speed).
        store: an :class:`~voxelfm.inference.store.EmbeddingStore` or its folder.
        ids: which ids (default: the table's rows of ``split``, or every id of the store).
        table: optional report table; restricts to ``split`` and adds the ``ground_truth`` column.
        split: split to generate for when a table is given (``None`` = all rows).
        strategy: ``greedy``, ``nucleus`` or ``beam``.
        max_new_tokens: report length limit (reference 1024).
        batch_size: volumes per ``generate`` call.
        out_dir: write ``reports/``, ``generated.csv``, ``generation.json`` here (see module docs).
        resume: keep reports already in ``out_dir/reports``.
        seed: torch seed (nucleus sampling is reproducible for equal seeds and batch sizes).
        **generate_kwargs: passed to ``generate`` (e.g. ``repetition_penalty=1.1``).

    Returns:
        ``pandas.DataFrame`` with ``id``, ``split``, ``generated`` (+ ``ground_truth``).
    """
    import pandas as pd

    from voxelfm.inference.store import EmbeddingStore
    from voxelfm.reportgen.dataset import collate_reports, feature_tokens
    from voxelfm.reportgen.model import ReportModel, generation_kwargs

    generation_kwargs(strategy)  # validates the name
    if batch_size < 1 or max_new_tokens < 1:
        raise ValueError("batch_size and max_new_tokens must be at least 1")
    store = store if isinstance(store, EmbeddingStore) else EmbeddingStore(store)
    model_dir = None
    if not isinstance(model, ReportModel):
        model_dir = resolve_model_dir(model)
        model = ReportModel.load(model_dir, device=device, merge_lora=True)
    ids, truth, splits = _select_ids(store, ids, table, split, id_col, report_col, split_col)

    out = Path(out_dir) if out_dir is not None else None
    done: dict[str, str] = {}
    if out is not None:
        (out / "reports").mkdir(parents=True, exist_ok=True)
        if resume:
            for i in ids:
                f = out / "reports" / f"{safe_id(i)}.txt"
                if f.is_file():
                    done[i] = f.read_text(encoding="utf-8")
    todo = [i for i in ids if i not in done]
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    cfg = model.config
    bar = progress(total=len(todo), desc=f"generate ({strategy})", unit="report")
    try:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            items = [{"id": i, "tokens": feature_tokens(store, i, cfg.feature, max_patch_tokens=cfg.max_patch_tokens),
                      "input_ids": torch.zeros(1, dtype=torch.long)} for i in chunk]
            batch = collate_reports(items)
            texts = model.generate(batch["features"], batch["feature_mask"], strategy=strategy,
                                   max_new_tokens=max_new_tokens, **generate_kwargs)
            for i, text in zip(chunk, texts):
                done[i] = text
                if out is not None:
                    atomic_write_text(out / "reports" / f"{safe_id(i)}.txt", text)
            bar.update(len(chunk))
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    rows = []
    for i in ids:
        row = {"id": i, "split": splits.get(i, ""), "generated": done[i]}
        if truth:
            row["ground_truth"] = truth.get(i, "")
        rows.append(row)
    df = pd.DataFrame(rows)
    if out is not None:
        df.to_csv(out / ".generated.csv.tmp", index=False)
        os.replace(out / ".generated.csv.tmp", out / "generated.csv")
        meta = {"model_dir": str(model_dir) if model_dir else "", "lm": cfg.lm, "strategy": strategy,
                "decoding": {**generation_kwargs(strategy), "max_new_tokens": max_new_tokens, **generate_kwargs},
                "n": len(ids), "n_generated_now": len(todo), "seconds": round(seconds, 2),
                "seconds_per_report": round(seconds / max(len(todo), 1), 3), "seed": seed, "split": split}
        atomic_write_text(out / "generation.json", json.dumps(meta, indent=2, default=str))
    return df
