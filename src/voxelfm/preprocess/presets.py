"""Preprocessing presets: plain data saved next to the weights they belong to.

Two presets ship:

* ``paper`` reproduces the reference ``extract_features`` pipeline exactly, quirks included
  (REFERENCE.md §2.1-2.2): the reader's own axis order (NIfTI in file order, DICOM by ascending z,
  no reorientation), reader-dependent HU clipping (DICOM [-1000, 1000]; NIfTI/MHA/NRRD
  [-1000, 1900]; arrays and ``.npy`` not clipped), background crop on the native grid, finest
  spacing floored at 0.75 mm with banker's rounding, skipped when already isotropic.
* ``default`` keeps those spacing / crop / token-budget rules but applies one HU window
  [-1000, 1900] to every input and works in the canonical SPL orientation of
  :class:`voxelfm.io.Volume`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

__all__ = ["Preset", "PRESETS", "get_preset"]


@dataclass(frozen=True)
class Preset:
    """How a CT volume becomes model input. All intensities in HU, lengths in mm or voxels.

    Attributes:
        name: ``"paper"`` or ``"default"`` (or a user name).
        hu_window: ``(low, high)`` clip applied to every input, or ``None`` for the reference's
            reader-dependent clipping (``paper``).
        canonical_orientation: reorient to SPL (``default``) or keep the reader's axis order
            (``paper``).
        min_spacing_mm: floor of the isotropic target spacing (target = max(min(spacing), floor)).
        skip_if_isotropic: leave volumes whose three spacings are equal untouched (reference quirk).
        crop_threshold_hu: foreground threshold of the background crop.
        crop_kernel: side of the box filter in voxels (21 in the reference).
        crop_fraction: a voxel is kept when more than this fraction of its box is foreground.
        crop_margin: voxels added on every side of the kept bounding box.
        mean: intensity normalisation mean (HU), from the weights' config.
        std: intensity normalisation standard deviation (HU).
    """

    name: str = "default"
    hu_window: tuple[float, float] | None = (-1000.0, 1900.0)
    canonical_orientation: bool = True
    min_spacing_mm: float = 0.75
    skip_if_isotropic: bool = True
    crop_threshold_hu: float = -800.0
    crop_kernel: int = 21
    crop_fraction: float = 0.5
    crop_margin: int = 10
    mean: float = -573.8
    std: float = 461.3

    def __post_init__(self) -> None:
        if self.hu_window is not None:
            lo, hi = self.hu_window
            if not lo < hi:
                raise ValueError(f"hu_window must be (low, high) with low < high, got {self.hu_window}")
            object.__setattr__(self, "hu_window", (float(lo), float(hi)))
        if self.min_spacing_mm <= 0:
            raise ValueError(f"min_spacing_mm must be > 0, got {self.min_spacing_mm}")
        if self.std <= 0:
            raise ValueError(f"std must be > 0, got {self.std}")
        if self.crop_kernel < 1 or self.crop_kernel % 2 == 0:
            raise ValueError(f"crop_kernel must be a positive odd number, got {self.crop_kernel}")

    def with_normalisation(self, mean: float, std: float) -> "Preset":
        """Return a copy with the weights' normalisation constants."""
        return dataclasses.replace(self, mean=float(mean), std=float(std))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["hu_window"] = list(self.hu_window) if self.hu_window is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Preset":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown preset fields {sorted(unknown)}; known: {sorted(known)}")
        d = dict(d)
        if d.get("hu_window") is not None:
            d["hu_window"] = tuple(d["hu_window"])
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


PRESETS: dict[str, Preset] = {
    "default": Preset(name="default"),
    "paper": Preset(name="paper", hu_window=None, canonical_orientation=False),
}


def get_preset(preset: "str | Preset") -> Preset:
    """Return a :class:`Preset` by name (``"default"``, ``"paper"``) or pass one through."""
    if isinstance(preset, Preset):
        return preset
    try:
        return PRESETS[preset]
    except KeyError:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}") from None
