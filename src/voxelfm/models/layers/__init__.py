"""Building blocks of the 3D ViT, one per file (DINOv2 layout), with the reference state-dict names."""

from voxelfm.models.layers.attention import ATTENTION_MODES, Attention
from voxelfm.models.layers.block import Block
from voxelfm.models.layers.dino_head import DINOHead
from voxelfm.models.layers.drop_path import DropPath, drop_add_residual_stochastic_depth, drop_path
from voxelfm.models.layers.onednn_linear import inference_linear, packed_linears
from voxelfm.models.layers.layer_scale import LayerScale
from voxelfm.models.layers.mlp import Mlp
from voxelfm.models.layers.patch_embed import PatchEmbed3D
from voxelfm.models.layers.rope import RopePositionEmbedding3D, apply_rope_3d, rope_coords
from voxelfm.models.layers.swiglu_ffn import SwiGLUFFN

__all__ = [
    "ATTENTION_MODES", "Attention", "Block", "DINOHead", "DropPath", "LayerScale", "Mlp",
    "PatchEmbed3D", "RopePositionEmbedding3D", "SwiGLUFFN", "apply_rope_3d",
    "drop_add_residual_stochastic_depth", "drop_path", "inference_linear", "packed_linears", "rope_coords",
]
