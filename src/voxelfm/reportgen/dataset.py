"""Training examples: cached CT embeddings (an :class:`~voxelfm.inference.store.EmbeddingStore`) paired
with report text from a table.

The table (CSV, TSV, Parquet or JSON lines) needs an ``id`` column matching the store's ids, a
``report`` column and, for splits, a ``split`` column with ``train`` / ``val`` / ``test``
(``valid``/``validation`` are read as ``val``). The phantom cohort's ``cohort.csv`` is such a table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from voxelfm.reportgen.conversation import IGNORE_INDEX, build_messages, tokenize_conversation

__all__ = ["read_table", "feature_tokens", "ReportDataset", "collate_reports", "normalise_split"]

_SPLIT_ALIASES = {"valid": "val", "validation": "val", "dev": "val", "training": "train", "testing": "test"}


def normalise_split(value: Any) -> str:
    """``"Valid"`` → ``"val"`` etc.; unknown values are lower-cased."""
    s = str(value).strip().lower()
    return _SPLIT_ALIASES.get(s, s)


def read_table(table: Any, *, id_col: str = "id"):
    """Read a table (path to CSV/TSV/Parquet/JSON lines, or a DataFrame) with string ids.

    Raises:
        FileNotFoundError / ValueError: unreadable file or no ``id_col`` column.
    """
    import pandas as pd

    if isinstance(table, pd.DataFrame):
        df = table.copy()
    else:
        path = Path(table)
        if not path.is_file():
            raise FileNotFoundError(f"table not found: {path}")
        suffix = "".join(path.suffixes[-2:]).lower()
        if suffix.endswith(".parquet"):
            df = pd.read_parquet(path)
        elif suffix.endswith((".jsonl", ".ndjson")):
            df = pd.read_json(path, lines=True, dtype={id_col: str})
        elif suffix.endswith(".json"):
            df = pd.read_json(path, dtype={id_col: str})
        elif suffix.endswith((".tsv", ".tab")):
            df = pd.read_csv(path, sep="\t", dtype={id_col: str}, keep_default_na=False, na_values=[""])
        else:
            df = pd.read_csv(path, dtype={id_col: str}, keep_default_na=False, na_values=[""])
    if id_col not in df.columns:
        raise ValueError(f"the table has no {id_col!r} column (columns: {', '.join(map(str, df.columns))})")
    df[id_col] = df[id_col].astype(str)
    return df


def feature_tokens(store: Any, item_id: str, feature: str = "cls", *,
                   max_patch_tokens: int | None = None) -> torch.Tensor:
    """The CT tokens of ``item_id`` that feed the projector, ``[N, C]`` float32.

    Args:
        store: an :class:`~voxelfm.inference.store.EmbeddingStore`.
        feature: ``"cls"`` (``N = 1``), ``"patch"`` (``N = d·h·w`` in (d h w) order) or
            ``"cls+patch"`` (CLS first).
        max_patch_tokens: if the patch grid has more tokens, it is average-pooled
            (``adaptive_avg_pool3d``) to the largest grid of the same proportions with at most
            this many tokens.
    """
    if feature not in ("cls", "patch", "cls+patch"):
        raise ValueError(f"feature must be cls, patch or cls+patch, got {feature!r}")
    parts = []
    if feature in ("cls", "cls+patch"):
        parts.append(store.load_tensor(item_id, "cls").reshape(1, -1))
    if feature in ("patch", "cls+patch"):
        p = store.load_tensor(item_id, "patch")  # d, h, w, C
        if p.ndim != 4:
            raise ValueError(f"patch tokens of {item_id!r} must be [d, h, w, C], got {tuple(p.shape)}")
        d, h, w, c = p.shape
        if max_patch_tokens is not None and d * h * w > max_patch_tokens:
            scale = (max_patch_tokens / (d * h * w)) ** (1.0 / 3.0)
            grid = [max(1, int(s * scale)) for s in (d, h, w)]
            pooled = F.adaptive_avg_pool3d(p.permute(3, 0, 1, 2).unsqueeze(0), grid)[0]  # C, d', h', w'
            p = pooled.permute(1, 2, 3, 0)
        parts.append(p.reshape(-1, c))
    return torch.cat(parts, 0).float()


class ReportDataset(Dataset):
    """(CT tokens, tokenised conversation) pairs for one split.

    Args:
        store: an :class:`~voxelfm.inference.store.EmbeddingStore` (or a folder path).
        table: report table (path or DataFrame) with ``id_col``, ``report_col`` and ``split_col``.
        tokenizer: the LM tokenizer.
        split: keep rows of this split (``None`` = all rows).
        feature, max_patch_tokens: see :func:`feature_tokens`.
        prompt, system_prompt, chat_template_kwargs: the conversation (see
            :mod:`voxelfm.reportgen.conversation`).
        max_length: truncate conversations to this many tokens (reference ``model_max_length`` 1024).
        cache_features: keep loaded tokens in memory (small cohorts, several epochs).
        report_style: ``"original"`` (the report as written) or ``"abnormal"`` (abnormal findings
            only, :func:`~voxelfm.reportgen.restructure.restructure_report`, as the reference's
            LLM-restructured training reports).
        prompts: ``{id: user prompt}`` overriding ``prompt`` per case (grounded prompts,
            :meth:`~voxelfm.reportgen.grounding.Grounding.prompts`).

    Rows whose id has no embedding in the store, or whose report is empty, are left out; their ids
    are listed in :attr:`skipped`.

    Each item is ``{"id", "tokens" [N, C], "input_ids" [L], "labels" [L]}``.
    """

    def __init__(self, store: Any, table: Any, tokenizer: Any, *, split: str | None = None,
                 feature: str = "cls", max_patch_tokens: int | None = None, prompt: str | None = None,
                 system_prompt: str = "", chat_template_kwargs: dict[str, Any] | None = None,
                 max_length: int | None = 1024, id_col: str = "id", report_col: str = "report",
                 split_col: str = "split", cache_features: bool = False, report_style: str = "original",
                 prompts: Mapping[str, str] | None = None) -> None:
        from voxelfm.inference.store import EmbeddingStore
        from voxelfm.reportgen.conversation import DEFAULT_PROMPT

        self.store = store if isinstance(store, EmbeddingStore) else EmbeddingStore(store)
        df = read_table(table, id_col=id_col)
        if report_col not in df.columns:
            raise ValueError(f"the report table has no {report_col!r} column")
        if split is not None:
            if split_col not in df.columns:
                raise ValueError(f"the report table has no {split_col!r} column; add train/val/test splits")
            df = df[df[split_col].map(normalise_split) == normalise_split(split)]
        self.feature = feature
        self.max_patch_tokens = max_patch_tokens
        self.cache_features = cache_features
        self._cache: dict[str, torch.Tensor] = {}
        self.skipped: list[str] = []
        self.ids: list[str] = []
        self.reports: list[str] = []
        self._encoded: list[tuple[list[int], list[int]]] = []
        if report_style not in ("original", "abnormal"):
            raise ValueError(f"report_style must be 'original' or 'abnormal', got {report_style!r}")
        prompt = prompt or DEFAULT_PROMPT
        for item_id, report in zip(df[id_col], df[report_col]):
            text = "" if report is None or (isinstance(report, float) and report != report) else str(report).strip()
            if not text or not self.store.has(item_id):
                self.skipped.append(item_id)
                continue
            if report_style == "abnormal":
                from voxelfm.reportgen.restructure import restructure_report

                text = restructure_report(text)
            msgs = build_messages(text, prompt=(prompts or {}).get(item_id, prompt), system_prompt=system_prompt)
            tc = tokenize_conversation(tokenizer, msgs, chat_template_kwargs=chat_template_kwargs,
                                       max_length=max_length)
            self.ids.append(item_id)
            self.reports.append(text)
            self._encoded.append((tc.input_ids, tc.labels))

    def __len__(self) -> int:
        return len(self.ids)

    def tokens(self, index: int) -> torch.Tensor:
        """``[N, C]`` CT tokens of item ``index``."""
        item_id = self.ids[index]
        if item_id in self._cache:
            return self._cache[item_id]
        t = feature_tokens(self.store, item_id, self.feature, max_patch_tokens=self.max_patch_tokens)
        if self.cache_features:
            self._cache[item_id] = t
        return t

    def __getitem__(self, index: int) -> dict[str, Any]:
        ids, labels = self._encoded[index]
        return {"id": self.ids[index], "tokens": self.tokens(index),
                "input_ids": torch.tensor(ids, dtype=torch.long), "labels": torch.tensor(labels, dtype=torch.long)}

    def num_target_tokens(self) -> int:
        return sum(sum(1 for t in lab if t != IGNORE_INDEX) for _, lab in self._encoded)


def collate_reports(batch: Sequence[dict[str, Any]], *, pad_token_id: int = 0) -> dict[str, Any]:
    """Pad a list of items into a batch.

    Returns:
        ``{"ids": list, "features": [B, N_max, C], "feature_mask": [B, N_max] bool (True = padding),
        "input_ids": [B, L_max] (right-padded with ``pad_token_id``), "attention_mask": [B, L_max],
        "labels": [B, L_max] (padding = -100)}``.
    """
    if not batch:
        raise ValueError("empty batch")
    B = len(batch)
    n_max = max(b["tokens"].shape[0] for b in batch)
    c = batch[0]["tokens"].shape[1]
    feats = torch.zeros(B, n_max, c)
    fmask = torch.ones(B, n_max, dtype=torch.bool)
    l_max = max(len(b["input_ids"]) for b in batch)
    input_ids = torch.full((B, l_max), int(pad_token_id), dtype=torch.long)
    attn = torch.zeros(B, l_max, dtype=torch.long)
    labels = torch.full((B, l_max), IGNORE_INDEX, dtype=torch.long)
    for i, b in enumerate(batch):
        n = b["tokens"].shape[0]
        feats[i, :n] = b["tokens"]
        fmask[i, :n] = False
        L = len(b["input_ids"])
        input_ids[i, :L] = b["input_ids"]
        attn[i, :L] = 1
        if "labels" in b:
            labels[i, :L] = b["labels"]
    return {"ids": [b["id"] for b in batch], "features": feats, "feature_mask": fmask,
            "input_ids": input_ids, "attention_mask": attn, "labels": labels}
