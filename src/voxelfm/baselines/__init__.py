"""Other CT foundation models as voxelfm backbones: Merlin, CT-FM, FMCIB, M3D-CLIP, RadFM, CT-CLIP, 2D CLIPs.

Every family loads its released weights in their original layout, preprocesses exactly as its
authors' code and returns the DINOv2 output dict, so ``extract_features``, ``voxelfm extract
--backbone NAME`` and the probes treat it like the VoxelFM ViT. See ``docs/baselines.md``.

Public API::

    family_names()                          # ["voxelfm", "merlin", "ctfm", "fmcib", ...]
    get_family("merlin")                    # BackboneFamily (embed_dim, weights_help, ...)
    load_baseline("merlin", weights=PATH)   # = voxelfm.load_backbone("merlin", weights=PATH)

Names here are imported lazily; importing this package imports neither torch nor MONAI.
"""

from __future__ import annotations

import inspect
import os
from typing import TYPE_CHECKING, Any

from voxelfm.baselines.registry import (
    FAMILY_MODULES,
    BackboneFamily,
    MissingDependencyError,
    check_requirements,
    family_names,
    get_family,
)
from voxelfm.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from voxelfm.baselines.base import BaselineBackbone

__all__ = ["BackboneFamily", "BaselineBackbone", "FAMILY_MODULES", "MissingDependencyError", "family_names",
           "get_family", "load_baseline"]


def __getattr__(name: str) -> Any:
    if name == "BaselineBackbone":
        from voxelfm.baselines.base import BaselineBackbone

        return BaselineBackbone
    raise AttributeError(f"module 'voxelfm.baselines' has no attribute {name!r}")


def load_baseline(name: str, weights: str | os.PathLike[str] | None = None, *,
                  device: str | torch.device = "cpu", **options: Any) -> BaselineBackbone:
    """Load backbone family ``name`` (eval mode, on ``device``).

    Args:
        name: one of :func:`family_names` other than ``voxelfm`` (use :func:`voxelfm.load_backbone`).
        weights: a weights file, a folder holding the family's released file, a Hugging Face repo id
            in the local hub cache, or ``None`` for seeded random init (with a warning).
        device: where to put the model.
        options: family options (e.g. ``input_size`` for Merlin); unknown ones are an error.

    Raises:
        ConfigError: unknown family or option. MissingDependencyError: ``pip install "voxelfm[baselines]"``.
        CheckpointError: weights not found (says what to download) or not this family's.
    """
    family = get_family(name)
    check_requirements(family)
    try:
        inspect.signature(family.load).bind(None, device=device, **options)
    except TypeError:
        params = [p.name for p in inspect.signature(family.load).parameters.values()
                  if p.kind == p.KEYWORD_ONLY and p.name != "device"]
        bad = sorted(set(options) - set(params))
        raise ConfigError(f"backbone {family.name!r} has no option(s) {', '.join(bad) or options}; "
                          f"its options: {', '.join(params) or 'none'}") from None
    path: Any = weights
    if weights is not None and family.resolve:
        from voxelfm.baselines._weights import resolve_weights

        path = resolve_weights(weights, family)
    model = family.load(path, device=device, **options)
    return model.eval()
