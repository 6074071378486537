"""Probe heads, one file each: linear (torch + sklearn), MLP, attentive pooling, kNN, Cox,
localisation (positional attention regressor), segmentation (patch-to-voxel decoder)."""

from voxelfm.probes.heads.attentive import AttentivePoolingHead
from voxelfm.probes.heads.cox import CoxHead
from voxelfm.probes.heads.knn import KNNProbe
from voxelfm.probes.heads.linear import LinearHead, SklearnLinearProbe, Standardizer
from voxelfm.probes.heads.localisation import PositionalAttentionRegressor3D
from voxelfm.probes.heads.mlp import MLPHead
from voxelfm.probes.heads.segmentation import PatchToVoxelDecoder, decoder_sizes

__all__ = ["AttentivePoolingHead", "CoxHead", "KNNProbe", "LinearHead", "MLPHead", "PatchToVoxelDecoder",
           "PositionalAttentionRegressor3D", "SklearnLinearProbe", "Standardizer", "decoder_sizes"]
