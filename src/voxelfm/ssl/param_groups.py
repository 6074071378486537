"""Optimizer parameter groups (REFERENCE §3.5, ``utils/param_groups.py``).

* layer-wise lr decay ``rate ** (num_layers + 1 − layer_id)``: tokens (``cls_token``,
  ``register_tokens``, ``mask_token``, ``pos_embed``) and ``patch_embed.*`` are layer 0,
  ``blocks.i.*`` layer i + 1, everything else (final ``norm``, heads) layer ``num_layers + 1`` → 1.0;
* ``patch_embed`` lr additionally × ``patch_embed_lr_mult`` (0.2);
* no weight decay for names ending in ``.bias`` or containing ``norm`` or ``gamma``;
* ``last_layer`` parameters (the DINO head's weight-normed prototypes) flagged ``is_last_layer``
  (their lr follows the last-layer schedule, 0 during the first epoch);
* groups fused by ``(lr_multiplier, wd_multiplier, is_last_layer)``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from torch import nn

__all__ = ["get_vit_lr_decay_rate", "get_params_groups_with_decay", "fuse_params_groups",
           "apply_optim_scheduler"]

_LAYER0 = ("pos_embed", "patch_embed", "mask_token", "cls_token", "register_tokens")


def get_vit_lr_decay_rate(name: str, lr_decay_rate: float = 1.0, num_layers: int = 12,
                          force_is_backbone: bool = False) -> float:
    """lr multiplier of parameter ``name`` (relative to the backbone, or prefixed ``backbone.``)."""
    layer_id = num_layers + 1
    if name.startswith("backbone") or force_is_backbone:
        if any(key in name for key in _LAYER0):
            layer_id = 0
        elif "blocks." in name and "residual." not in name:
            layer_id = int(name[name.find("blocks."):].split(".")[1]) + 1
    return lr_decay_rate ** (num_layers + 1 - layer_id)


def get_params_groups_with_decay(model: nn.Module, lr_decay_rate: float = 1.0,
                                 patch_embed_lr_mult: float = 1.0) -> list[dict[str, Any]]:
    """One dict per trainable parameter: ``params``, ``lr_multiplier``, ``wd_multiplier``,
    ``is_last_layer``, ``name``. ``model`` is a backbone (has ``blocks``), a module holding a
    ``backbone``, or a head (no blocks → multiplier 1)."""
    if hasattr(model, "blocks"):
        n_blocks = len(model.blocks)  # type: ignore[arg-type]
    elif hasattr(model, "backbone") and hasattr(model.backbone, "blocks"):
        n_blocks = len(model.backbone.blocks)  # type: ignore[arg-type,union-attr]
    else:
        n_blocks = 0
    groups = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        d = {"params": param, "is_last_layer": "last_layer" in name,
             "lr_multiplier": get_vit_lr_decay_rate(name, lr_decay_rate, num_layers=n_blocks,
                                                    force_is_backbone=n_blocks > 0),
             "wd_multiplier": 1.0, "name": name}
        if name.endswith(".bias") or "norm" in name or "gamma" in name:
            d["wd_multiplier"] = 0.0
        if "patch_embed" in name:
            d["lr_multiplier"] *= patch_embed_lr_mult
        groups.append(d)
    return groups


def fuse_params_groups(all_params_groups: Iterable[dict[str, Any]],
                       keys: tuple[str, ...] = ("lr_multiplier", "wd_multiplier", "is_last_layer")
                       ) -> list[dict[str, Any]]:
    """Merge parameter dicts with equal ``keys`` into optimizer groups (order of first appearance)."""
    fused: dict[str, dict[str, Any]] = defaultdict(lambda: {"params": [], "names": []})
    for d in all_params_groups:
        ident = "_".join(f"{k}{d[k]}" for k in keys)
        for k in keys:
            fused[ident][k] = d[k]
        fused[ident]["params"].append(d["params"])
        fused[ident]["names"].append(d.get("name", ""))
    return list(fused.values())


def apply_optim_scheduler(optimizer: Any, lr: float, wd: float, last_layer_lr: float) -> None:
    """Set every group's ``lr`` / ``weight_decay`` from the schedules and its multipliers."""
    for group in optimizer.param_groups:
        group["weight_decay"] = wd * group["wd_multiplier"]
        group["lr"] = (last_layer_lr if group["is_last_layer"] else lr) * group["lr_multiplier"]
