"""Preprocessing: orientation, HU window, background crop, isotropic resampling, token budget."""

from voxelfm.preprocess.presets import PRESETS, Preset, get_preset

__all__ = ["PRESETS", "Preset", "get_preset"]
