"""Grounded report generation: tell the language model what the frozen features are known to support.

A pure LLaVA-style generator (the paper's method) must learn, from a few hundred reports, both to
read the projected image tokens and to write; on small cohorts it writes fluent text that ignores
the scan. Grounding puts the evidence into the prompt as text, next to the image tokens:

* ``probe``: one logistic-regression probe per finding on the same embeddings (standardised
  vectors, ``C`` chosen on the ``val`` split by log-loss, so the probabilities are calibrated on
  held-out data), written as ``Image findings (classifier probability): pleural effusion 0.93,
  lung nodule 0.61.`` — the findings whose probability reaches the decision threshold;
* ``retrieval``: the ``top_k`` training reports whose scans are nearest by cosine similarity of
  the standardised embeddings (``Most similar training report: ...``);
* ``both``: findings, then similar reports.

The LM writes the narrative; the findings come from calibrated heads. Training prompts never
contain a case's own report: probe probabilities of training cases are **out of fold**
(``folds``-fold cross-fitting on the training split) and a training case's neighbours exclude
itself. With ``train_findings="truth"`` (default) the findings listed in a *training* prompt are
the case's true findings (from the table's finding columns, else the labeler on its report),
shown with the out-of-fold probabilities: the LM learns to state exactly the findings it is given.
At generation the listed findings are the probe's decisions. ``train_findings="probe"`` lists the
out-of-fold decisions in training too (the LM then learns how far to trust the probe).

Files in a model folder (written by :meth:`Grounding.save`)::

    grounding.json           GroundingConfig, labels, thresholds, training ids and reports
    grounding.safetensors    scaler mean / std, probe weights, the training embedding matrix
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from voxelfm.errors import CheckpointError, ConfigError
from voxelfm.reportgen.labeler import FINDING_COLUMNS, abnormality_name

__all__ = ["GROUNDING_MODES", "GroundingConfig", "Grounding", "grounded_prompt", "nearest_train_reports"]

GROUNDING_MODES = ("none", "probe", "retrieval", "both")
GROUNDING_JSON = "grounding.json"
GROUNDING_TENSORS = "grounding.safetensors"
_C_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
FINDINGS_PREFIX = "Image findings (classifier probability):"


@dataclass
class GroundingConfig:
    """How prompts are grounded.

    Attributes:
        mode: ``none`` (pure LLaVA prompt), ``probe``, ``retrieval`` or ``both``.
        feature: vector feature of the store for the probes and the retrieval (``cls``,
            ``mean_patch``, ``cls+mean_patch``).
        top_k: similar training reports in a retrieval prompt.
        threshold: probability at which a finding is stated (0.5: the reference's probe decision),
            or ``"f1"``: per finding, the threshold maximising F1 on the out-of-fold training
            probabilities.
        train_findings: which findings a training prompt lists: ``truth`` or ``probe`` (see module).
        folds: cross-fitting folds for the out-of-fold training probabilities.
        seed: fold assignment seed.
    """

    mode: Literal["none", "probe", "retrieval", "both"] = "none"
    feature: str = "cls"
    top_k: int = 1
    threshold: float | str = 0.5
    train_findings: Literal["truth", "probe"] = "truth"
    folds: int = 5
    seed: int = 4

    def __post_init__(self) -> None:
        if self.mode not in GROUNDING_MODES:
            raise ConfigError(f"grounding must be one of {', '.join(GROUNDING_MODES)}, got {self.mode!r}")
        if self.feature not in ("cls", "mean_patch", "cls+mean_patch"):
            raise ConfigError(f"grounding feature must be cls, mean_patch or cls+mean_patch, got {self.feature!r}")
        if int(self.top_k) < 1:
            raise ConfigError(f"top_k must be at least 1, got {self.top_k}")
        if self.threshold != "f1" and not (isinstance(self.threshold, (int, float)) and 0 < float(self.threshold) < 1):
            raise ConfigError(f"threshold must be in (0, 1) or 'f1', got {self.threshold!r}")
        if self.train_findings not in ("truth", "probe"):
            raise ConfigError(f"train_findings must be 'truth' or 'probe', got {self.train_findings!r}")
        if int(self.folds) < 2:
            raise ConfigError(f"folds must be at least 2, got {self.folds}")

    @property
    def uses_probe(self) -> bool:
        return self.mode in ("probe", "both")

    @property
    def uses_retrieval(self) -> bool:
        return self.mode in ("retrieval", "both")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> GroundingConfig:
        d = dict(d or {})
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def grounded_prompt(prompt: str, findings: Sequence[tuple[str, float]] | None = None,
                    similar_reports: Sequence[str] | None = None) -> str:
    """Insert the grounding text after the ``<image>`` line of ``prompt``.

    Args:
        prompt: user prompt with one ``<image>`` placeholder (``"<image>\\nGenerate ..."``).
        findings: ``[(abnormality name, probability), ...]`` to state (``[]`` → "none";
            ``None`` → no findings line).
        similar_reports: texts of similar training reports (``None`` → no retrieval line).
    """
    from voxelfm.reportgen.conversation import IMAGE_PLACEHOLDER

    lines = []
    if findings is not None:
        body = ", ".join(f"{name.lower()} {p:.2f}" for name, p in findings) if findings else "none"
        lines.append(f"{FINDINGS_PREFIX} {body}.")
    if similar_reports is not None:
        texts = [" ".join(str(t).split()) for t in similar_reports]
        if len(texts) == 1:
            lines.append(f"Most similar training report: {texts[0]}")
        else:
            lines.append("Similar training reports: " + " ".join(f"({i + 1}) {t}" for i, t in enumerate(texts)))
    if not lines:
        return prompt
    head, sep, tail = prompt.partition(IMAGE_PLACEHOLDER)
    tail = tail.lstrip("\n")
    return f"{head}{IMAGE_PLACEHOLDER}\n" + "\n".join(lines) + ("\n" + tail if tail else "")


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))


def _fit_logistic(x_tr: np.ndarray, y_tr: np.ndarray, x_va: np.ndarray | None, y_va: np.ndarray | None,
                  seed: int) -> tuple[np.ndarray, float, float]:
    """One binary probe: (weights [C], bias, C) with C chosen by validation log-loss (constant-label
    training data: the log-odds of the training rate)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    rate = float(np.clip(y_tr.mean() if len(y_tr) else 0.5, 1e-3, 1 - 1e-3))
    if len(np.unique(y_tr)) < 2:
        return np.zeros(x_tr.shape[1]), float(np.log(rate / (1 - rate))), float("nan")
    best = None
    for c in _C_GRID:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            m = LogisticRegression(C=c, max_iter=2000, random_state=seed).fit(x_tr, y_tr)
        w, b = m.coef_[0].astype(np.float64), float(m.intercept_[0])
        if x_va is None or len(x_va) == 0:
            return w, b, c
        p = np.clip(_sigmoid(x_va @ w + b), 1e-6, 1 - 1e-6)
        loss = float(-np.mean(y_va * np.log(p) + (1 - y_va) * np.log(1 - p)))
        if best is None or loss < best[0] - 1e-9:
            best = (loss, w, b, c)
    return best[1], best[2], best[3]


def _f1_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """The probability threshold maximising F1 of ``p >= t`` against ``y`` (0.5 if ``y`` has no positive)."""
    if y.sum() == 0:
        return 0.5
    best_t, best_f = 0.5, -1.0
    for t in np.unique(p):
        pred = p >= t
        tp = float((pred & (y == 1)).sum())
        f = 2 * tp / (pred.sum() + y.sum())
        if f > best_f + 1e-12:
            best_t, best_f = float(t), f
    return best_t


@dataclass
class Grounding:
    """A fitted grounding: probes, thresholds and the retrieval index (see module docs).

    Attributes:
        config: the :class:`GroundingConfig`.
        labels: snake_case finding columns the probes cover (``[K]``).
        mean, std: ``[C]`` standardisation of the embedding vectors (training split).
        weights: ``[K, C]`` and ``bias`` ``[K]``: the probes on standardised vectors.
        thresholds: ``[K]`` decision thresholds.
        train_ids: training ids (retrieval index rows); ``train_reports``: their reports (as trained on).
        train_matrix: ``[N_train, C]`` standardised, L2-normalised training vectors.
        oof: ``{training id: [K] out-of-fold probabilities}``; ``truth``: ``{id: [K] 0/1}`` for
            training and validation ids (training prompts with ``train_findings="truth"``).
    """

    config: GroundingConfig
    labels: list[str]
    mean: np.ndarray
    std: np.ndarray
    weights: np.ndarray
    bias: np.ndarray
    thresholds: np.ndarray
    train_ids: list[str]
    train_reports: list[str]
    train_matrix: np.ndarray
    oof: dict[str, np.ndarray] = field(default_factory=dict)
    truth: dict[str, np.ndarray] = field(default_factory=dict)

    # ---------------------------------------------------------------------------------- fitting
    @classmethod
    def fit(cls, store: Any, table: Any, config: GroundingConfig, *, id_col: str = "id",
            report_col: str = "report", split_col: str = "split",
            report_style: str = "abnormal") -> Grounding:
        """Fit probes (train split, ``C`` on val) and the retrieval index on ``store`` + ``table``.

        Truth per finding: the table's 0/1 finding columns, or (without any) the rule labeler
        on the report column. Findings with no positive training case are left out.

        Raises:
            ConfigError: no training rows with embeddings, or no finding with a positive case.
        """
        from voxelfm.reportgen.dataset import normalise_split, read_table
        from voxelfm.reportgen.labeler import label_reports

        df = read_table(table, id_col=id_col)
        if split_col not in df.columns:
            raise ConfigError(f"grounding needs a {split_col!r} column (train/val/test) in the report table")
        df = df.drop_duplicates(id_col)
        df = df[[store.has(i) for i in df[id_col]]]
        split = df[split_col].map(normalise_split)
        tr, va = df[split == "train"], df[split == "val"]
        if len(tr) < max(2, int(config.folds)):
            raise ConfigError(f"grounding needs at least {max(2, config.folds)} training cases with embeddings, "
                              f"found {len(tr)}")
        cols = [c for c in FINDING_COLUMNS.values() if c in df.columns]
        if cols:
            truth_all = df.set_index(id_col)[cols].fillna(0).astype(float).round().clip(0, 1).astype(int)
        else:
            truth_all = label_reports(dict(zip(df[id_col], df[report_col].fillna("").astype(str))))
        cols = [c for c in truth_all.columns if truth_all.loc[list(tr[id_col]), c].sum() > 0]
        if config.uses_probe and not cols:
            raise ConfigError("no finding has a positive training case; probe grounding needs finding columns "
                              "or reports that state abnormalities")
        truth_all = truth_all[cols]
        ids_tr, ids_va = list(tr[id_col]), list(va[id_col])
        x_tr = store.matrix(ids_tr, feature=config.feature).astype(np.float64)
        x_va = store.matrix(ids_va, feature=config.feature).astype(np.float64) if ids_va else None
        mean = x_tr.mean(0)
        std = x_tr.std(0)
        std = np.where(std > 1e-8, std, 1.0)
        z_tr = (x_tr - mean) / std
        z_va = None if x_va is None else (x_va - mean) / std
        y_tr = truth_all.loc[ids_tr].to_numpy()
        y_va = truth_all.loc[ids_va].to_numpy() if ids_va else None
        K = len(cols)
        weights = np.zeros((K, z_tr.shape[1]))
        bias = np.zeros(K)
        oof = np.zeros((len(ids_tr), K))
        if config.uses_probe:
            rng = np.random.default_rng(config.seed)
            fold = rng.permutation(len(ids_tr)) % int(config.folds)
            for k in range(K):
                yv = None if y_va is None else y_va[:, k]
                weights[k], bias[k], c = _fit_logistic(z_tr, y_tr[:, k], z_va, yv, config.seed)
                for f in range(int(config.folds)):
                    inner = fold != f
                    # the fold's C is the full-data choice (no nested search: keeps fitting fast)
                    w, b, _ = _fit_with_c(z_tr[inner], y_tr[inner, k], c, config.seed)
                    oof[fold == f, k] = _sigmoid(z_tr[fold == f] @ w + b)
        if config.threshold == "f1":
            thresholds = np.array([_f1_threshold(y_tr[:, k], oof[:, k]) for k in range(K)])
        else:
            thresholds = np.full(K, float(config.threshold))
        reports = [str(r) if r == r else "" for r in tr[report_col]]
        if report_style == "abnormal":
            from voxelfm.reportgen.restructure import restructure_report

            reports = [restructure_report(r) for r in reports]
        norm = np.linalg.norm(z_tr, axis=1, keepdims=True)
        matrix = z_tr / np.maximum(norm, 1e-12)
        truth = {i: truth_all.loc[i].to_numpy().astype(int) for i in ids_tr + ids_va}
        return cls(config, cols, mean, std, weights, bias, thresholds, ids_tr, reports, matrix,
                   {i: oof[j] for j, i in enumerate(ids_tr)}, truth)

    # ---------------------------------------------------------------------------------- inference
    def standardise(self, x: np.ndarray) -> np.ndarray:
        """``[N, C]`` raw vectors → standardised with the training statistics."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.mean.shape[0]:
            raise ConfigError(f"grounding expects [N, {self.mean.shape[0]}] {self.config.feature} vectors, got "
                              f"{tuple(x.shape)}; use the store of the backbone the model was trained on")
        return (x - self.mean) / self.std

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """``[N, C]`` raw vectors → ``[N, K]`` probe probabilities."""
        return _sigmoid(self.standardise(x) @ self.weights.T + self.bias)

    def decisions(self, probs: np.ndarray) -> np.ndarray:
        """``[N, K]`` probabilities → 0/1 decisions at the thresholds."""
        return (np.asarray(probs) >= self.thresholds[None, :]).astype(int)

    def neighbours(self, x: np.ndarray, *, exclude: Sequence[str | None] | None = None) -> list[list[int]]:
        """Indices into the training set of the ``top_k`` nearest training scans of each row of
        ``x`` (cosine of standardised vectors); ``exclude[i]`` is an id never returned for row i."""
        z = self.standardise(x)
        z = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
        sim = z @ self.train_matrix.T
        pos = {i: j for j, i in enumerate(self.train_ids)}
        k = int(self.config.top_k)
        out = []
        for r in range(len(sim)):
            s = sim[r].copy()
            if exclude is not None and exclude[r] in pos:
                s[pos[exclude[r]]] = -np.inf
            out.append([int(j) for j in np.argsort(-s, kind="stable")[:k]])
        return out

    def _findings(self, probs: np.ndarray, listed: np.ndarray) -> list[tuple[str, float]]:
        return [(abnormality_name(c), float(probs[k])) for k, c in enumerate(self.labels) if listed[k]]

    def prompts(self, ids: Sequence[str], x: np.ndarray, prompt: str, *, training: bool = False
                ) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Grounded prompts for ``ids`` with raw vectors ``x`` ``[N, C]``.

        Args:
            training: prompts for training / validation examples: out-of-fold probabilities of
                training ids, neighbours without the case itself, and (``train_findings="truth"``)
                the true findings listed.

        Returns:
            ``(prompts, probabilities [N, K], decisions [N, K])`` — the probe's own decisions
            (what a generated report is checked against), whatever the prompt lists.
        """
        probs = self.probabilities(x) if len(ids) else np.zeros((0, len(self.labels)))
        if training:
            probs = np.stack([self.oof.get(i, probs[j]) for j, i in enumerate(ids)]) if len(ids) else probs
        dec = self.decisions(probs)
        nbrs = self.neighbours(x, exclude=list(ids) if training else None) if self.config.uses_retrieval else None
        out = []
        for j, i in enumerate(ids):
            findings = None
            if self.config.uses_probe:
                listed = dec[j]
                if training and self.config.train_findings == "truth" and i in self.truth:
                    listed = self.truth[i]
                findings = self._findings(probs[j], listed)
            similar = None if nbrs is None else [self.train_reports[n] for n in nbrs[j]]
            out.append(grounded_prompt(prompt, findings, similar))
        return out, probs, dec

    # ---------------------------------------------------------------------------------- files
    def save(self, model_dir: str | os.PathLike[str]) -> None:
        """Write ``grounding.json`` and ``grounding.safetensors`` into ``model_dir`` (atomically)."""
        import torch
        from safetensors.torch import save_file

        from voxelfm.utils import atomic_write, atomic_write_text

        d = Path(model_dir)
        d.mkdir(parents=True, exist_ok=True)
        tensors = {"mean": self.mean, "std": self.std, "weights": self.weights, "bias": self.bias,
                   "thresholds": self.thresholds, "train_matrix": self.train_matrix}
        with atomic_write(d / GROUNDING_TENSORS) as tmp:
            save_file({k: torch.as_tensor(np.ascontiguousarray(v), dtype=torch.float64) for k, v in tensors.items()},
                      str(tmp))
        meta = {"format": "voxelfm.reportgen.grounding/1", "config": self.config.to_dict(), "labels": self.labels,
                "train_ids": self.train_ids, "train_reports": self.train_reports,
                "oof": {i: [round(float(v), 6) for v in p] for i, p in self.oof.items()},
                "truth": {i: [int(v) for v in t] for i, t in self.truth.items()}}
        atomic_write_text(d / GROUNDING_JSON, json.dumps(meta))

    @classmethod
    def load(cls, model_dir: str | os.PathLike[str]) -> Grounding:
        """Read a grounding written by :meth:`save`."""
        from safetensors.numpy import load_file

        d = Path(model_dir)
        if not (d / GROUNDING_JSON).is_file() or not (d / GROUNDING_TENSORS).is_file():
            raise CheckpointError(f"{d} is a grounded report model but lacks {GROUNDING_JSON} / {GROUNDING_TENSORS}; "
                                  "retrain it or copy the files from its training folder")
        meta = json.loads((d / GROUNDING_JSON).read_text())
        t = load_file(str(d / GROUNDING_TENSORS))
        return cls(GroundingConfig.from_dict(meta["config"]), list(meta["labels"]), t["mean"], t["std"],
                   t["weights"], t["bias"], t["thresholds"], list(meta["train_ids"]), list(meta["train_reports"]),
                   t["train_matrix"], {i: np.asarray(p) for i, p in meta.get("oof", {}).items()},
                   {i: np.asarray(v, dtype=int) for i, v in meta.get("truth", {}).items()})


def _fit_with_c(x: np.ndarray, y: np.ndarray, c: float, seed: int) -> tuple[np.ndarray, float, float]:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    if len(np.unique(y)) < 2:
        return _fit_logistic(x, y, None, None, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        m = LogisticRegression(C=c, max_iter=2000, random_state=seed).fit(x, y)
    return m.coef_[0].astype(np.float64), float(m.intercept_[0]), c


def nearest_train_reports(store: Any, table: Any, ids: Sequence[str], *, feature: str = "cls",
                          id_col: str = "id", report_col: str = "report", split_col: str = "split"):
    """The retrieval baseline: each id gets the report of its nearest training scan (cosine of the
    standardised ``feature`` vectors; a training id never gets its own report).

    Returns:
        ``pandas.DataFrame`` with ``id``, ``generated`` (the retrieved report, as written) and ``source_id``.
    """
    import pandas as pd

    from voxelfm.inference.store import EmbeddingStore

    store = store if isinstance(store, EmbeddingStore) else EmbeddingStore(store)
    g = Grounding.fit(store, table, GroundingConfig(mode="retrieval", feature=feature, top_k=1), id_col=id_col,
                      report_col=report_col, split_col=split_col, report_style="original")
    ids = [str(i) for i in ids]
    nb = g.neighbours(store.matrix(ids, feature=feature), exclude=ids)
    return pd.DataFrame({"id": ids, "generated": [g.train_reports[n[0]] for n in nb],
                         "source_id": [g.train_ids[n[0]] for n in nb]})
