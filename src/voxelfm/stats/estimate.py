"""The result type every metric returns: a point value with its confidence interval."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

__all__ = ["BootstrapEstimate", "Estimate"]


def _fmt(x: float, spec: str) -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


@dataclass(frozen=True, eq=False)
class Estimate:
    """A metric value with a two-sided ``1 - alpha`` confidence interval.

    Attributes:
        value: the point estimate on the full sample.
        ci_low, ci_high: confidence limits; ``nan`` when no interval was computed
            (``method == "point"``: call :func:`voxelfm.stats.bootstrap_ci` for one).
        method: how the interval was obtained, e.g. ``"hanley-mcneil"``, ``"delong"``,
            ``"bootstrap-percentile"``, ``"point"``.
        n: number of samples (scans, patients, trials, ...) the value was computed on.
        alpha: ``1 - confidence level`` (0.05 → 95 % CI).
        name: optional metric name (``"auroc"``, ``"c_index"``, ...).

    ``float(est)`` gives the value; ``str(est)`` gives ``"0.812 [0.771, 0.850]"`` (just ``"0.812"``
    without an interval); ``format(est, ".2f")`` uses that format spec for all three numbers;
    ``to_dict()`` gives a JSON-able dict (NaN kept as float NaN).
    """

    value: float
    ci_low: float
    ci_high: float
    method: str
    n: int
    alpha: float = 0.05
    name: str = ""

    def __post_init__(self) -> None:
        # Normalise numpy scalars so the object is JSON-able and hashes consistently.
        for attr in ("value", "ci_low", "ci_high", "alpha"):
            object.__setattr__(self, attr, float(getattr(self, attr)))
        object.__setattr__(self, "n", int(self.n))

    def __float__(self) -> float:
        return self.value

    def _key(self) -> tuple:
        # NaN-aware identity: two point estimates with NaN limits compare equal.
        return tuple(None if isinstance(v, float) and math.isnan(v) else v
                     for v in (self.value, self.ci_low, self.ci_high, self.method, self.n,
                               self.alpha, self.name))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Estimate):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    @property
    def has_ci(self) -> bool:
        """True when both confidence limits are finite numbers."""
        return not (math.isnan(self.ci_low) or math.isnan(self.ci_high))

    @property
    def level(self) -> float:
        """Confidence level, ``1 - alpha`` (e.g. 0.95)."""
        return 1.0 - self.alpha

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the public fields (floats, ints, strings) for JSON/CSV output."""
        return {k: v for k, v in asdict(self).items() if not k.startswith("_")}

    def __format__(self, spec: str) -> str:
        spec = spec or ".3f"
        if not self.has_ci:
            return _fmt(self.value, spec)
        return f"{_fmt(self.value, spec)} [{_fmt(self.ci_low, spec)}, {_fmt(self.ci_high, spec)}]"

    def __str__(self) -> str:
        return self.__format__(".3f")


@dataclass(frozen=True, eq=False)
class BootstrapEstimate(Estimate):
    """An :class:`Estimate` from :func:`~voxelfm.stats.bootstrap_ci` with the resampling details.

    Attributes:
        n_resamples: resamples drawn.
        n_skipped: resamples on which the metric was undefined (NaN, e.g. one class only) and
            which were left out of the percentiles.
        replicates: the finite bootstrap replicates ``[n_resamples - n_skipped]`` (not in
            ``to_dict()``); ``replicates.std(ddof=1)`` is the bootstrap standard error.
    """

    n_resamples: int = 0
    n_skipped: int = 0
    replicates: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False, compare=False)

    @property
    def std_error(self) -> float:
        """Bootstrap standard error (sample std of the replicates)."""
        r = self.replicates
        return float(np.std(r, ddof=1)) if r.size > 1 else float("nan")

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d.pop("replicates", None)
        return d
