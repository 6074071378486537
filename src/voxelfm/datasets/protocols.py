"""The reference implementation's probe settings (REFERENCE.md §4), as suite fragments the recipes
share, so every dataset's ``suite.yaml`` reproduces the paper's protocol for its task type.

Each function returns a fresh ``head_defaults`` mapping (head name → options) for
:mod:`voxelfm.probes.suite`; :data:`SUITE_COMMON` holds the statistics settings.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SUITE_COMMON", "classification_heads", "localisation_heads", "regression_heads", "segmentation_heads",
           "segmentation_suite", "survival_heads"]

#: bootstrap resamples and Holm adjustment over the whole table, seed 4 (the reference's).
SUITE_COMMON: dict[str, Any] = {"seed": 4, "n_resamples": 1000, "holm": "table"}

# the reference trains every epoch (no early stopping) without warm-up unless stated
_NOISE = {"noise_p": 1.0, "noise_sigma": 0.1, "warmup_epochs": 0, "patience": None}


def _probe_heads(**train: Any) -> dict[str, dict[str, Any]]:
    """MLP (1024, dropout 0.5) on a vector and one-query attentive pooling on patch tokens."""
    return {"mlp": {**train, "hidden_dim": 1024, "dropout": 0.5, "standardize": False},
            "attentive": {**train, "hidden_dim": 1024, "num_queries": 1, "num_heads": 4, "dropout": 0.5,
                          "attn_dropout": 0.1}}


def classification_heads() -> dict[str, dict[str, Any]]:
    """§4.2: AdamW lr 1e-3 constant, wd 0, 10 epochs, batch 16 × 4, noise p 1.0 σ 0.1; selection on
    validation AUROC."""
    return _probe_heads(epochs=10, batch_size=16, accum_steps=4, lr=1.0e-3, schedule="constant",
                        weight_decay=0.0, optimizer="adamw", **_NOISE)


def regression_heads() -> dict[str, dict[str, Any]]:
    """§4.3: SGD momentum 0.9, lr 1e-3 constant, wd 0, 20 epochs, batch 16 × 4, noise p 1.0 σ 0.1, MSE;
    selection on validation MSE."""
    return _probe_heads(epochs=20, batch_size=16, accum_steps=4, lr=1.0e-3, schedule="constant",
                        weight_decay=0.0, optimizer="sgd", momentum=0.9, **_NOISE)


def survival_heads() -> dict[str, dict[str, Any]]:
    """§4.4: as regression, Cox partial likelihood within each mini-batch; selection on C-index."""
    return regression_heads()


def localisation_heads() -> dict[str, dict[str, Any]]:
    """§4.5: attention-pooled position regressor (hidden 128, 4 heads), AdamW lr 1e-4 constant, wd 1e-2,
    20 epochs, batch 4 × 4, noise p 1.0 σ 0.1, SmoothL1; selection on validation distance."""
    return {"localisation": {"epochs": 20, "batch_size": 4, "accum_steps": 4, "lr": 1.0e-4, "schedule": "constant",
                             "weight_decay": 1.0e-2, "optimizer": "adamw", "hidden_dim": 128, "n_heads": 4,
                             **_NOISE}}


def segmentation_heads() -> dict[str, dict[str, Any]]:
    """§4.6: decoder with 64 channels and 3 upsampling steps to 112³, AdamW warm-up 1e-4 → 1e-3 over 20
    epochs then cosine back to 1e-4 (120 epochs), wd 0.01, batch 1 × 16, noise p 0.2 σ 0.1,
    cross-entropy; selection on validation macro Dice."""
    return {"segmentation": {"epochs": 120, "batch_size": 1, "accum_steps": 16, "lr": 1.0e-3, "min_lr": 1.0e-4,
                             "warmup_epochs": 20, "schedule": "cosine", "weight_decay": 1.0e-2, "optimizer": "adamw",
                             "noise_p": 0.2, "noise_sigma": 0.1, "hidden_dim": 64, "min_channels": 64, "num_steps": 3,
                             "final_norm": "identity", "seg_size": 112, "patience": None}}


def segmentation_suite(description: str, task_name: str, num_classes: int, target: str = "seg_path") -> dict[str, Any]:
    """A suite with one segmentation task (label-map paths in ``target``, ``num_classes`` including
    background) under the reference's segmentation settings."""
    return {"description": description, **SUITE_COMMON, "head_defaults": segmentation_heads(),
            "tasks": [{"name": task_name, "task": "segmentation", "target": target, "probes": ["segmentation"],
                       "hparams": {"num_classes": int(num_classes)}}]}
