"""The :class:`Features` of one volume: CLS, patch and register tokens plus provenance."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["Features"]


@dataclass
class Features:
    """Frozen-backbone embeddings of one CT volume.

    Attributes:
        cls: ``[C]`` float32, the final-normed CLS token.
        patch: ``[d, h, w, C]`` float32, final-normed patch tokens on the token grid; axis order
            follows the model input (canonical SPL for the ``default`` preset).
        registers: ``[R, C]`` float32 register tokens (``R = 0`` for models without registers).
        patch_size_mm: physical size ``(sz, sy, sx)`` in mm of one patch (token) after
            preprocessing.
        record: the preprocessing record: preset, input spacing/shape, orientation, crop box,
            resize factors, mode (full/chunked), model name... JSON-serialisable.
    """

    cls: torch.Tensor
    patch: torch.Tensor
    registers: torch.Tensor
    patch_size_mm: tuple[float, float, float] = (float("nan"),) * 3
    record: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.cls.ndim != 1:
            raise ValueError(f"cls must be [C], got shape {tuple(self.cls.shape)}")
        if self.patch.ndim != 4 or self.patch.shape[-1] != self.cls.shape[0]:
            raise ValueError(f"patch must be [d, h, w, C] with C={self.cls.shape[0]}, "
                             f"got {tuple(self.patch.shape)}")
        if self.registers.ndim != 2 or self.registers.shape[-1] != self.cls.shape[0]:
            raise ValueError(f"registers must be [R, C], got {tuple(self.registers.shape)}")

    @property
    def grid(self) -> tuple[int, int, int]:
        """Token grid ``(d, h, w)``."""
        d, h, w, _ = self.patch.shape
        return int(d), int(h), int(w)

    @property
    def embed_dim(self) -> int:
        return int(self.cls.shape[0])

    def mean_patch(self) -> torch.Tensor:
        """``[C]`` mean of the patch tokens (an alternative global descriptor)."""
        return self.patch.reshape(-1, self.embed_dim).mean(0)

    def to_reference_dict(self) -> dict[str, torch.Tensor]:
        """The reference ``.pth`` layout: ``{"cls": [1, C], "patch": [d, h, w, C]}``."""
        return {"cls": self.cls.reshape(1, -1).contiguous(), "patch": self.patch.contiguous()}
