"""Preprocessing: orientation, HU window, background crop, isotropic resampling, token budget.

``preprocess_volume`` runs the whole chain for one volume and records the geometry so that
``apply_geometry_to_labels`` / ``apply_geometry_to_points`` can map annotations onto the model
input. The ``paper`` preset reproduces the reference pipeline exactly; ``default`` uses one HU
window and the canonical SPL orientation (see ``docs/extraction.md``).
"""

from voxelfm.preprocess.background import Box, crop_to_box, foreground_box
from voxelfm.preprocess.geometry import (
    apply_geometry_to_labels,
    apply_geometry_to_points,
    labels_to_token_grid,
    model_points_to_source,
)
from voxelfm.preprocess.intensity import apply_hu_window, normalise_intensity
from voxelfm.preprocess.pipeline import Preprocessed, preprocess_volume, source_grid
from voxelfm.preprocess.presets import PRESETS, Preset, get_preset
from voxelfm.preprocess.resample import (
    isotropic_shape,
    isotropic_target_spacing,
    max_patches_shape,
    patch_crop,
    patch_crop_offsets,
    resample_isotropic,
    resize_max_patches,
    resize_trilinear,
)

__all__ = [
    "PRESETS", "Preset", "get_preset",
    "apply_hu_window", "normalise_intensity",
    "Box", "foreground_box", "crop_to_box",
    "isotropic_target_spacing", "isotropic_shape", "resample_isotropic", "max_patches_shape",
    "resize_max_patches", "patch_crop_offsets", "patch_crop", "resize_trilinear",
    "Preprocessed", "preprocess_volume", "source_grid",
    "apply_geometry_to_labels", "apply_geometry_to_points", "model_points_to_source",
    "labels_to_token_grid",
]
