"""The VoxelFM 3D ViT as a registry entry (``load_backbone("voxelfm", weights=...)``).

Loading goes to :func:`voxelfm.models.load_backbone` unchanged (reference ``.pth``, run folders,
safetensors, config names); ``weights=None`` is the seeded random-init ``vit_base`` (or
``config=``) with the random-init warning.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

from voxelfm.baselines.registry import BackboneFamily

__all__ = ["FAMILY", "load"]


def load(weights: str | os.PathLike[str] | None, *, device: Any = "cpu", config: Any = None) -> Any:
    """:func:`voxelfm.models.load_backbone` with ``weights`` (``None``: random init of ``config``
    or ``vit_base``)."""
    from voxelfm.models.checkpoint import load_backbone
    from voxelfm.models.config import CONFIGS

    if weights is None:
        name = config if isinstance(config, str) and config in CONFIGS else "vit_base"
        warnings.warn("random-init voxelfm weights: a pipeline check, not a result", UserWarning, stacklevel=3)
        return load_backbone(name, config=None if name == config else config, device=device)
    return load_backbone(weights, config=config, device=device)


FAMILY = BackboneFamily(
    name="voxelfm", load=load, embed_dim=864,
    description="VoxelFM 3D ViT (DINOv2 + iBOT + KoLeo); final-normed CLS token and patch tokens",
    weights_help="https://huggingface.co/rmaguado/VoxelFM (teacher 99999.pth + config.yaml)",
    requires=(), extra=None, hub_repo="rmaguado/VoxelFM", licence="see the model card", resolve=False,
)
