"""The paper's probe protocol (REFERENCE §4.2-4.6) as suite settings shared by the recipes of the
evaluation datasets: classification and regression heads on CLS / patch tokens, and the
segmentation decoder."""

from __future__ import annotations

from typing import Any

__all__ = ["classification_suite", "segmentation_suite"]

#: MLP 1024 / dropout 0.5 on CLS and one-query attentive pooling on patch tokens; noise p 1.0 σ 0.1
#: on training embeddings; batch 16 × accumulation 4; constant lr 1e-3; selection on validation.
_CLASSIFICATION: dict[str, Any] = {
    "defaults": {"epochs": 10, "batch_size": 16, "accum_steps": 4, "lr": 1.0e-3, "schedule": "constant",
                 "weight_decay": 0.0, "noise_p": 1.0, "noise_sigma": 0.1},
    "head_defaults": {"mlp": {"hidden_dim": 1024, "dropout": 0.5, "standardize": False},
                      "attentive": {"hidden_dim": 1024, "num_queries": 1, "num_heads": 4, "dropout": 0.5,
                                    "attn_dropout": 0.1}},
}
#: regression and survival: SGD (momentum 0.9), 20 epochs (REFERENCE §4.3-4.4)
REGRESSION_HPARAMS: dict[str, Any] = {"optimizer": "sgd", "momentum": 0.9, "epochs": 20}


def classification_suite(description: str, tasks: list[dict[str, Any]]) -> dict[str, Any]:
    """A suite mapping with the paper's classification / regression settings and ``tasks``."""
    return {"description": description, "seed": 4, "n_resamples": 1000, "holm": "table", **_CLASSIFICATION,
            "tasks": tasks, "figures": {"roc": True, "fractions": True, "cls_vs_patch": True}}


def segmentation_suite(description: str, name: str, num_classes: int) -> dict[str, Any]:
    """A suite with one segmentation task (label map path in column ``label_map``): the paper's
    decoder (hidden 64, three upsampling steps), AdamW with 1e-4 → 1e-3 warm-up over 20 epochs and a
    cosine decay back to 1e-4 (120 epochs), weight decay 0.01, batch 1 × accumulation 16, noise
    p 0.2 σ 0.1, cross-entropy with background, selection on validation macro Dice."""
    return {
        "description": description, "seed": 4, "n_resamples": 1000, "holm": "table",
        "head_defaults": {"segmentation": {"hidden_dim": 64, "num_steps": 3, "final_norm": "identity",
                                           "epochs": 120, "warmup_epochs": 20, "lr": 1.0e-3, "min_lr": 1.0e-4,
                                           "schedule": "cosine", "weight_decay": 0.01, "batch_size": 1,
                                           "accum_steps": 16, "noise_p": 0.2, "noise_sigma": 0.1,
                                           "patience": None}},
        "tasks": [{"name": name, "task": "segmentation", "target": "label_map", "probes": ["segmentation:patch"],
                   "hparams": {"num_classes": num_classes, "label_space": "source"}}],
        "figures": {"roc": False, "fractions": False, "cls_vs_patch": False},
    }
