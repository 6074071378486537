"""The VoxelFM 3D ViT backbone: building, loading (reference checkpoints, safetensors), saving.

Public API::

    build_backbone("vit_base", drop_path_rate=0.1)        # random init, named config + overrides
    load_backbone("99999.pth", config="config.yaml")      # released / reference weights, eval mode
    save_backbone(model, "out/")                          # model.safetensors + config.json + README.md
    read_reference_config("config.yaml")                  # -> (ViTConfig, mean, std)

Model input ``[B, D, H, W]`` (normalised with ``model.preset``), output dict ``x_norm_clstoken``,
``x_norm_regtokens``, ``x_norm_patchtokens``, ``x_prenorm``, ``masks``. See ``docs/models.md``.
"""

from voxelfm.models.checkpoint import load_backbone, save_backbone, save_reference_teacher
from voxelfm.models.config import CONFIGS, ViTConfig, config_names, get_config
from voxelfm.models.factory import build_backbone, resolve_config
from voxelfm.models.reference_config import read_reference_config, write_reference_config
from voxelfm.models.vit import VisionTransformer3D

__all__ = [
    "CONFIGS", "ViTConfig", "VisionTransformer3D", "build_backbone", "config_names", "get_config",
    "load_backbone", "read_reference_config", "resolve_config", "save_backbone", "save_reference_teacher",
    "write_reference_config",
]
