"""k-nearest-neighbour probes with ``k`` chosen on the validation split.

* ``variant="dino"`` (default): cosine similarity on L2-normalised features, the ``k`` most similar
  training items vote with weight ``exp(sim / T)`` (DINO's weighted kNN, ``T = 0.07``). Class
  scores are the normalised weighted votes, so they are probabilities; regression targets are the
  weighted mean of the neighbours' targets.
* ``variant="sklearn"``: sklearn ``KNeighborsClassifier`` / ``KNeighborsRegressor`` with
  ``weights="distance"`` and ``metric`` (``"euclidean"`` as in the reference, or ``"cosine"``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

__all__ = ["DEFAULT_K_GRID", "KNNProbe"]

DEFAULT_K_GRID: tuple[int, ...] = (1, 3, 5, 7, 9, 11, 15, 20, 21, 31, 51, 75, 101)


class KNNProbe:
    """kNN classifier / regressor.

    Args:
        variant: ``"dino"`` or ``"sklearn"``.
        k: fixed number of neighbours, or ``None`` to select from ``k_grid`` on validation.
        k_grid: candidates (values above the training size are dropped).
        temperature: DINO vote temperature ``T``.
        metric: sklearn metric (``variant="sklearn"`` only).
        chunk: query rows per similarity block (bounds memory at ``chunk × N_train``).
    """

    def __init__(self, *, variant: str = "dino", k: int | None = None,
                 k_grid: Sequence[int] = DEFAULT_K_GRID, temperature: float = 0.07,
                 metric: str = "euclidean", chunk: int = 4096) -> None:
        if variant not in ("dino", "sklearn"):
            raise ValueError(f"kNN variant must be 'dino' or 'sklearn', got {variant!r}")
        if temperature <= 0:
            raise ValueError("temperature must be > 0")
        self.variant = variant
        self.k = k
        self.k_grid = sorted({int(v) for v in k_grid})
        self.temperature = float(temperature)
        self.metric = metric
        self.chunk = int(chunk)
        self.selected: int | None = None
        self.scores: dict[int, float] = {}
        self._mode = ""

    # ------------------------------------------------------------------ fitting
    def fit(self, x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray | None = None,
            y_val: np.ndarray | None = None, *, mode: str,
            score: Callable[[np.ndarray, np.ndarray], float] | None = None,
            num_classes: int | None = None) -> KNNProbe:
        """Store the training set and choose ``k`` by ``score(y_val, predict(x_val))``.

        Args:
            mode: ``binary``, ``multiclass``, ``multilabel`` or ``regression``.
            num_classes: for ``multiclass`` (default: ``max(y) + 1``).
        """
        self._mode = mode
        self._x = np.asarray(x_train, dtype=np.float32)
        self._y = np.asarray(y_train, dtype=np.float64)
        n = len(self._x)
        if n == 0:
            raise ValueError("kNN needs a non-empty training set")
        self._num_classes = int(num_classes or (int(np.nanmax(self._y)) + 1 if mode == "multiclass" else 0))
        if self.variant == "dino":
            t = torch.from_numpy(self._x)
            self._xn = torch.nn.functional.normalize(t, dim=1, eps=1e-8)
        candidates = [self.k] if self.k is not None else [k for k in self.k_grid if k <= n] or [n]
        if len(candidates) == 1 or x_val is None or score is None:
            self.selected = min(int(candidates[0]), n)
            return self
        best = -np.inf
        for k in candidates:
            s = float(score(np.asarray(y_val), self._predict(x_val, k)))
            self.scores[int(k)] = s
            if np.isfinite(s) and s > best:
                best, self.selected = s, int(k)
        if self.selected is None:
            self.selected = int(candidates[len(candidates) // 2])
        return self

    # ------------------------------------------------------------------ prediction
    def predict(self, x: np.ndarray) -> np.ndarray:
        """Binary ``[N]`` probability, multi-class ``[N, K]``, multi-label ``[N, L]``, regression
        ``[N]`` / ``[N, K]``."""
        if self.selected is None:
            raise RuntimeError("call fit() first")
        return self._predict(x, self.selected)

    def _predict(self, x: np.ndarray, k: int) -> np.ndarray:
        if self.variant == "sklearn":
            return self._predict_sklearn(np.asarray(x, dtype=np.float32), k)
        return self._predict_dino(np.asarray(x, dtype=np.float32), k)

    def _targets(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Vote targets ``[N, K]`` and their validity mask (missing multi-label entries)."""
        y = torch.from_numpy(self._y)
        if self._mode == "multiclass":
            onehot = torch.zeros(len(y), self._num_classes, dtype=torch.float64)
            onehot[torch.arange(len(y)), y.long()] = 1.0
            return onehot, torch.ones_like(onehot)
        y2 = y.reshape(len(y), -1)
        valid = torch.isfinite(y2).double()
        return torch.nan_to_num(y2, nan=0.0), valid

    def _predict_dino(self, x: np.ndarray, k: int) -> np.ndarray:
        q = torch.nn.functional.normalize(torch.from_numpy(x), dim=1, eps=1e-8)
        targets, valid = self._targets()
        out = []
        for start in range(0, len(q), self.chunk):
            sim = q[start:start + self.chunk] @ self._xn.T                      # [b, N]
            top, idx = sim.topk(k, dim=1)                                        # [b, k]
            w = torch.exp((top.double() - 1.0) / self.temperature)              # stable: sim <= 1
            tv = targets[idx] * valid[idx]                                       # [b, k, K]
            den = (w.unsqueeze(-1) * valid[idx]).sum(1).clamp_min(1e-300)
            out.append((w.unsqueeze(-1) * tv).sum(1) / den)
        pred = torch.cat(out).numpy()
        if self._mode in ("binary",) or (self._mode == "regression" and self._y.ndim == 1):
            return pred[:, 0]
        return pred

    def _predict_sklearn(self, x: np.ndarray, k: int) -> np.ndarray:
        from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor

        if self._mode == "regression":
            return KNeighborsRegressor(n_neighbors=k, weights="distance", metric=self.metric) \
                .fit(self._x, self._y).predict(x)
        if not np.isfinite(self._y).all():
            raise ValueError("kNN variant 'sklearn' cannot handle missing labels; use variant='dino'")
        model = KNeighborsClassifier(n_neighbors=k, weights="distance", metric=self.metric)
        y = self._y.astype(int)
        model.fit(self._x, y)
        proba = model.predict_proba(x)
        if self._mode == "multilabel":
            cols = []
            for j, p in enumerate(proba):
                classes = list(model.classes_[j])
                cols.append(p[:, classes.index(1)] if 1 in classes else np.zeros(len(x)))
            return np.stack(cols, axis=1)
        classes = list(model.classes_)
        if self._mode == "binary":
            return proba[:, classes.index(1)] if 1 in classes else np.zeros(len(x))
        full = np.zeros((len(x), self._num_classes))
        full[:, classes] = proba
        return full
