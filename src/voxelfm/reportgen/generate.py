"""Write reports for cached CT embeddings with a trained report model.

Output folder (``out_dir``)::

    reports/<safe id>.txt     one report per volume (written atomically; existing ones are kept on
                              a rerun, so an interrupted run resumes)
    generated.csv             id, split, generated, ground_truth (when a report table was given)
    generation.json           model, strategy, decoding settings, counts, time
    consistency.csv           grounded models: per scan, the probe's findings and the findings the
                              report misses or adds (see voxelfm.reportgen.consistency)
    repaired/<safe id>.txt    grounded models with ``repair``: the report made to state exactly the
                              probe's findings (``generated``; the LM's own text is ``generated_raw``)
    probe_decisions.csv       grounded models: per scan, probability and 0/1 decision of each probe

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
                     split_col: str = "split", redecode: int = 0, repair: bool = False, labeler: Any = None,
                     **generate_kwargs: Any):
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
        redecode: grounded models: up to this many extra nucleus-sampled decodings for each report
            that disagrees with the probe's findings; the decoding with the fewest disagreements
            is kept (0 = only check and report disagreements).
        repair: grounded models: make every report state exactly the probe's findings
            (:func:`voxelfm.reportgen.consistency.repair_reports`: sentences stating an undecided
            finding or denying a decided one are removed, missed findings are added on a last
            line). ``generated`` is then the repaired report and ``generated_raw`` the decoding;
            the consistency check describes the decoding.
        labeler: the labeler of the consistency check (default: rule-based).
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
    if redecode < 0:
        raise ValueError("redecode must be 0 or more")
    grounding = getattr(model, "grounding", None)
    if repair and (grounding is None or not grounding.config.uses_probe):
        raise ConfigError("repair needs a report model trained with --grounding probe or both: without "
                          "probe findings there is nothing to repair the reports against")

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
    attempts: dict[str, int] = {}
    t0 = time.perf_counter()
    cfg = model.config
    bar = progress(total=len(todo), desc=f"generate ({strategy})", unit="report")
    try:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            items = [{"id": i, "tokens": feature_tokens(store, i, cfg.feature, max_patch_tokens=cfg.max_patch_tokens),
                      "input_ids": torch.zeros(1, dtype=torch.long)} for i in chunk]
            batch = collate_reports(items)
            prompts = None
            if grounding is not None:
                prompts, _, dec = grounding.prompts(chunk, store.matrix(chunk, feature=grounding.config.feature),
                                                    cfg.prompt)
            texts = model.generate(batch["features"], batch["feature_mask"], strategy=strategy,
                                   max_new_tokens=max_new_tokens, prompts=prompts, **generate_kwargs)
            if grounding is not None and redecode:
                texts, n_tries = _redecode(model, batch, texts, prompts, dec, grounding.labels, redecode, seed + start,
                                           max_new_tokens, labeler, generate_kwargs)
                attempts.update(zip(chunk, n_tries))
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
    consistency = None
    repaired = None
    if grounding is not None:
        consistency, probe_table = _check(grounding, store, ids, [done[i] for i in ids], attempts, labeler)
        df["probe_findings"] = consistency["probe_findings"].to_numpy()
        df["n_disagreements"] = consistency["n_disagreements"].to_numpy()
        if repair:
            from voxelfm.reportgen.consistency import repair_reports

            dec = probe_table[list(grounding.labels)].to_numpy()
            repaired = repair_reports([done[i] for i in ids], dec, grounding.labels, labeler=labeler)
            df["generated_raw"] = df["generated"]
            df["generated"] = repaired
    if out is not None:
        if repaired is not None:
            (out / "repaired").mkdir(parents=True, exist_ok=True)
            for i, text in zip(ids, repaired):
                atomic_write_text(out / "repaired" / f"{safe_id(i)}.txt", text)
        if consistency is not None:
            atomic_write_text(out / "consistency.csv", consistency.to_csv(index=False))
            atomic_write_text(out / "probe_decisions.csv", probe_table.to_csv(index=False))
        df.to_csv(out / ".generated.csv.tmp", index=False)
        os.replace(out / ".generated.csv.tmp", out / "generated.csv")
        meta = {"model_dir": str(model_dir) if model_dir else "", "lm": cfg.lm, "strategy": strategy,
                "decoding": {**generation_kwargs(strategy), "max_new_tokens": max_new_tokens, **generate_kwargs},
                "n": len(ids), "n_generated_now": len(todo), "seconds": round(seconds, 2),
                "seconds_per_report": round(seconds / max(len(todo), 1), 3), "seed": seed, "split": split,
                "grounding": cfg.grounding, "redecode": redecode, "repair": bool(repaired is not None)}
        if consistency is not None:
            meta["consistency"] = {"reports_disagreeing": int((consistency["n_disagreements"] > 0).sum()),
                                   "disagreements": int(consistency["n_disagreements"].sum())}
            if repaired is not None:
                meta["consistency"]["reports_repaired"] = int(sum(a != b for a, b in zip(repaired, df["generated_raw"])))
        atomic_write_text(out / "generation.json", json.dumps(meta, indent=2, default=str))
    return df


def _redecode(model: Any, batch: dict[str, Any], texts: list[str], prompts: list[str], decisions: Any,
              labels: list[str], tries: int, seed: int, max_new_tokens: int, labeler: Any,
              generate_kwargs: dict[str, Any]) -> tuple[list[str], list[int]]:
    """Re-decode (nucleus sampling, seeded) the reports that disagree with the probe decisions; keep
    per report the decoding with the fewest disagreements. Returns the texts and decodings tried."""
    from voxelfm.reportgen.consistency import report_disagreements

    texts = list(texts)
    best = [d.count for d in report_disagreements(texts, decisions, labels, labeler=labeler)]
    n_tries = [1] * len(texts)
    for attempt in range(tries):
        todo = [j for j, b in enumerate(best) if b > 0]
        if not todo:
            break
        torch.manual_seed(seed * 1000 + attempt)
        cand = model.generate(batch["features"][todo], batch["feature_mask"][todo], strategy="nucleus",
                              max_new_tokens=max_new_tokens, prompts=[prompts[j] for j in todo], **generate_kwargs)
        counts = report_disagreements(cand, decisions[todo], labels, labeler=labeler)
        for j, text, d in zip(todo, cand, counts):
            n_tries[j] += 1
            if d.count < best[j]:
                texts[j], best[j] = text, d.count
    return texts, n_tries


def _check(grounding: Any, store: Any, ids: list[str], texts: list[str], attempts: dict[str, int],
           labeler: Any) -> tuple[Any, Any]:
    """Consistency table of the final reports and the probe decision table (id, ``<col>_prob``, ``<col>``)."""
    import pandas as pd

    from voxelfm.reportgen.consistency import consistency_table, report_disagreements

    probs = grounding.probabilities(store.matrix(ids, feature=grounding.config.feature))
    dec = grounding.decisions(probs)
    dis = report_disagreements(texts, dec, grounding.labels, labeler=labeler)
    table = consistency_table(ids, dis, dec, grounding.labels, [attempts.get(i, 1) for i in ids])
    cols: dict[str, Any] = {"id": ids}
    for k, c in enumerate(grounding.labels):
        cols[f"{c}_prob"] = probs[:, k].round(4)
        cols[c] = dec[:, k]
    return table, pd.DataFrame(cols)
