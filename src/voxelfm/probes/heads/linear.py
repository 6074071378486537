"""Linear probes: a torch linear layer, and the closed-form / sklearn standards.

* :class:`LinearHead` — ``Linear(C, K)`` on a (standardised) vector, trained by the probe trainer
  with the task's loss (BCE, cross-entropy, MSE, Cox...).
* :class:`SklearnLinearProbe` — the honest classical standard: sklearn ``LogisticRegression``
  (L2, lbfgs) for classification or ``Ridge`` for regression on standardised features, with the
  regularisation strength chosen on the validation split from a log grid.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

__all__ = ["LinearHead", "SklearnLinearProbe", "Standardizer"]


class Standardizer(nn.Module):
    """Fixed z-scoring ``(x - mean) / std`` with statistics of the training split (buffers, saved
    with the weights). Constant features get std 1."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> Standardizer:
        """Set the statistics from ``x [N, C]``."""
        x = torch.as_tensor(x, dtype=torch.float32)
        self.mean.copy_(x.mean(0))
        std = x.std(0, unbiased=False)
        self.std.copy_(torch.where(std > 1e-8, std, torch.ones_like(std)))
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class LinearHead(nn.Module):
    """``[B, C] -> [B, K]`` (``K = 1`` squeezed to ``[B]``): optional standardisation then Linear.

    Args:
        in_dim: feature width ``C``.
        out_dim: outputs ``K``.
        bias: include a bias (the Cox head sets ``False``: a constant cancels in the partial likelihood).
        standardize: z-score inputs with training statistics (call ``.norm.fit(x_train)``).
    """

    input_kind = "vector"

    def __init__(self, in_dim: int, out_dim: int = 1, *, bias: bool = True, standardize: bool = True) -> None:
        super().__init__()
        self.out_dim = out_dim
        self.norm = Standardizer(in_dim) if standardize else nn.Identity()
        self.linear = nn.Linear(in_dim, out_dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.linear(self.norm(x))
        return out.squeeze(-1) if self.out_dim == 1 else out


class SklearnLinearProbe:
    """Logistic regression / ridge regression with the penalty chosen on validation.

    Args:
        kind: ``"logistic"`` (binary, multi-class: multinomial; multi-label: one model per label)
            or ``"ridge"`` (regression, any number of outputs).
        grid: candidate ``C`` (logistic, inverse strength) or ``alpha`` (ridge) values; default a
            log grid of 9 values ``1e-4, 1e-3, …, 1e4``.
        max_iter: lbfgs iterations.
    """

    def __init__(self, kind: str, *, grid: Sequence[float] | None = None, max_iter: int = 2000,
                 seed: int = 4) -> None:
        if kind not in ("logistic", "ridge"):
            raise ValueError(f"kind must be 'logistic' or 'ridge', got {kind!r}")
        self.kind = kind
        self.grid = list(grid) if grid is not None else list(np.logspace(-4, 4, 9))
        self.max_iter = max_iter
        self.seed = seed
        self.selected: float | None = None
        self.scores: dict[float, float] = {}
        self._models: list = []
        self._mode = ""

    # ------------------------------------------------------------------ fitting
    def _fit_one(self, value: float, x: np.ndarray, y: np.ndarray, mode: str) -> list:
        from sklearn.linear_model import LogisticRegression, Ridge

        if self.kind == "ridge":
            return [Ridge(alpha=value).fit(x, y)]
        if mode == "multilabel":
            models = []
            for j in range(y.shape[1]):
                ok = np.isfinite(y[:, j])
                yj = y[ok, j].astype(int)
                if len(np.unique(yj)) < 2:  # constant label in training: predict its rate
                    models.append(float(yj.mean()) if len(yj) else 0.5)
                else:
                    models.append(LogisticRegression(C=value, max_iter=self.max_iter,
                                                     random_state=self.seed).fit(x[ok], yj))
            return models
        return [LogisticRegression(C=value, max_iter=self.max_iter, random_state=self.seed)
                .fit(x, y.astype(int))]

    def fit(self, x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, *,
            mode: str, score: Callable[[np.ndarray, np.ndarray], float]) -> SklearnLinearProbe:
        """Fit one model per grid value and keep the best by ``score(y_val, predict(x_val))``
        (higher is better; ties keep the stronger regularisation).

        Args:
            mode: ``binary``, ``multiclass``, ``multilabel`` or ``regression``.
        """
        import warnings

        from scipy.linalg import LinAlgWarning
        from sklearn.exceptions import ConvergenceWarning

        self._mode = mode
        best, best_models = -np.inf, None
        order = sorted(self.grid) if self.kind == "logistic" else sorted(self.grid, reverse=True)
        for value in order:  # from strongest to weakest regularisation
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                warnings.simplefilter("ignore", LinAlgWarning)  # weak penalties with N < C: expected
                models = self._fit_one(float(value), x_train, y_train, mode)
            self._models = models
            s = float(score(y_val, self.predict(x_val)))
            self.scores[float(value)] = s
            if np.isfinite(s) and s > best:
                best, best_models, self.selected = s, models, float(value)
        if best_models is None:  # every score NaN (e.g. one-class validation): middle of the grid
            self.selected = float(order[len(order) // 2])
            best_models = self._fit_one(self.selected, x_train, y_train, mode)
        self._models = best_models
        return self

    # ------------------------------------------------------------------ prediction
    def predict(self, x: np.ndarray) -> np.ndarray:
        """Probabilities (binary ``[N]``, multi-class ``[N, K]``, multi-label ``[N, L]``) or
        regression values (``[N]`` / ``[N, K]``)."""
        if self.kind == "ridge":
            return np.asarray(self._models[0].predict(x), dtype=np.float64)
        if self._mode == "multilabel":
            cols = [np.full(len(x), m) if isinstance(m, float) else m.predict_proba(x)[:, 1]
                    for m in self._models]
            return np.stack(cols, axis=1)
        p = self._models[0].predict_proba(x)
        return p[:, 1] if self._mode == "binary" else p

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Coefficients as tensors (for safetensors): ``coef_<j>``, ``intercept_<j>``."""
        out: dict[str, torch.Tensor] = {}
        for j, m in enumerate(self._models):
            if isinstance(m, float):
                out[f"constant_{j}"] = torch.tensor([m])
                continue
            out[f"coef_{j}"] = torch.as_tensor(np.atleast_2d(m.coef_), dtype=torch.float32).contiguous()
            out[f"intercept_{j}"] = torch.as_tensor(np.atleast_1d(m.intercept_), dtype=torch.float32).contiguous()
        return out
