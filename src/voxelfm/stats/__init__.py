"""Metrics with honest uncertainty for evaluating frozen-feature probes (numpy/scipy only).

Every metric returns an :class:`Estimate` (value, CI, method, n). Closed-form intervals where they
are cheap (AUROC: Hanley–McNeil by default, DeLong on request); otherwise a point estimate
(``method="point"``) and :func:`bootstrap_ci` (vectorised for the common metrics) gives the CI.

Survival convention: **higher risk = shorter survival** (see :func:`c_index`).

This package never imports torch: pass numpy arrays (``tensor.numpy()``).
"""

from voxelfm.stats._validate import DegenerateDataError
from voxelfm.stats.auroc import auroc, hanley_mcneil_se
from voxelfm.stats.bootstrap import PairedTest, bootstrap_ci, paired_bootstrap_test
from voxelfm.stats.delong import DeLongResult, delong_ci, delong_covariance, delong_test
from voxelfm.stats.estimate import BootstrapEstimate, Estimate
from voxelfm.stats.multilabel import (
    MultiLabelAUROC,
    auroc_multilabel,
    auroc_ovr,
    macro_auroc,
    micro_auroc,
)
from voxelfm.stats.multiple_testing import adjust_pvalues
from voxelfm.stats.regression import mae, mean_euclidean_error, mse, r2, rmse
from voxelfm.stats.retrieval import RetrievalResult, recall_at_k, retrieval_recall
from voxelfm.stats.segmentation import DiceResult, dice_from_scans, dice_scores
from voxelfm.stats.survival import (
    Concordance,
    KaplanMeier,
    c_index,
    concordance_counts,
    kaplan_meier,
    time_dependent_auroc,
)
from voxelfm.stats.thresholded import (
    accuracy_at,
    confusion_at,
    f1_at,
    precision_at,
    recall_at,
)

__all__ = [
    "BootstrapEstimate",
    "Concordance",
    "DeLongResult",
    "DegenerateDataError",
    "DiceResult",
    "Estimate",
    "KaplanMeier",
    "MultiLabelAUROC",
    "PairedTest",
    "RetrievalResult",
    "accuracy_at",
    "adjust_pvalues",
    "auroc",
    "auroc_multilabel",
    "auroc_ovr",
    "bootstrap_ci",
    "c_index",
    "concordance_counts",
    "confusion_at",
    "delong_ci",
    "delong_covariance",
    "delong_test",
    "dice_from_scans",
    "dice_scores",
    "f1_at",
    "hanley_mcneil_se",
    "kaplan_meier",
    "macro_auroc",
    "mae",
    "mean_euclidean_error",
    "micro_auroc",
    "mse",
    "paired_bootstrap_test",
    "precision_at",
    "r2",
    "recall_at",
    "recall_at_k",
    "retrieval_recall",
    "rmse",
    "time_dependent_auroc",
]
