"""iBOT 3D block masking (REFERENCE §3.3, ``data/masking.py::MaskingGenerator3D``).

Same distribution as the reference generator: blocks of random volume and log-uniform aspect
ratios are added until the requested count is reached (blocks never overshoot it), then uniformly
random extra tokens complete the mask so that **exactly** the requested number of tokens is masked.
The block fill is one numpy slice assignment instead of the reference's Python triple loop.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["MaskingGenerator3D"]


class MaskingGenerator3D:
    """Random block masks on a ``(depth, height, width)`` token grid.

    Args:
        input_size: token grid ``(d, h, w)`` (global crop size // patch size).
        num_masking_patches: if given, the per-block cap (reference behaviour); else
            ``max_num_patches`` is.
        min_num_patches: smallest block volume drawn (4).
        max_num_patches: largest block volume (0.5 · N in the reference set-up).
        min_aspect: smallest aspect ratio; ratios are log-uniform in ``[min_aspect, max_aspect]``.
        max_aspect: defaults to ``1 / min_aspect``.

    Call: ``gen(n, rng) -> np.ndarray [d, h, w] bool`` with exactly ``min(n, N)`` True entries.
    """

    def __init__(self, input_size: Sequence[int], num_masking_patches: int | None = None,
                 min_num_patches: int = 4, max_num_patches: float | None = None,
                 min_aspect: float = 0.3, max_aspect: float | None = None) -> None:
        size = tuple(int(s) for s in input_size)
        if len(size) != 3 or min(size) < 1:
            raise ValueError(f"input_size must be three positive ints (d, h, w), got {input_size}")
        self.depth, self.height, self.width = size
        self.num_patches = self.depth * self.height * self.width
        self.num_masking_patches = num_masking_patches
        self.min_num_patches = min_num_patches
        if num_masking_patches is not None:
            self.max_num_patches = num_masking_patches
        elif max_num_patches is not None:
            self.max_num_patches = max_num_patches
        else:
            raise ValueError("give num_masking_patches or max_num_patches")
        if min_aspect <= 0:
            raise ValueError(f"min_aspect must be > 0, got {min_aspect}")
        max_aspect = 1.0 / min_aspect if max_aspect is None else max_aspect
        self.log_aspect_ratio = (math.log(min_aspect), math.log(max_aspect))

    def __repr__(self) -> str:
        return (f"MaskingGenerator3D(D={self.depth}, H={self.height}, W={self.width}, "
                f"log_aspect={self.log_aspect_ratio[0]:.3f}..{self.log_aspect_ratio[1]:.3f})")

    def get_shape(self) -> tuple[int, int, int]:
        return self.depth, self.height, self.width

    def _mask(self, mask: np.ndarray, max_mask_patches: float, rng: np.random.Generator) -> int:
        """Try (up to 10 times) to add one block of at most ``max_mask_patches`` new tokens."""
        delta = 0
        for _ in range(10):
            # Python's random.uniform(a, b) semantics (b < a allowed when few tokens remain)
            target_volume = self.min_num_patches + (max_mask_patches - self.min_num_patches) * rng.random()
            ar_hw = math.exp(rng.uniform(*self.log_aspect_ratio))
            ar_dw = math.exp(rng.uniform(*self.log_aspect_ratio))
            w = int(round((target_volume / (ar_hw * ar_dw)) ** (1.0 / 3.0)))
            h = int(round(w * ar_hw))
            d = int(round(w * ar_dw))
            if 0 < w < self.width and 0 < h < self.height and 0 < d < self.depth:
                top = int(rng.integers(0, self.height - h, endpoint=True))
                left = int(rng.integers(0, self.width - w, endpoint=True))
                front = int(rng.integers(0, self.depth - d, endpoint=True))
                block = mask[front:front + d, top:top + h, left:left + w]
                new = d * h * w - int(block.sum())
                if 0 < new <= max_mask_patches:
                    block[...] = True  # a view: fills the block in place
                    delta += new
            if delta > 0:
                break
        return delta

    def __call__(self, num_masking_patches: int = 0,
                 rng: np.random.Generator | None = None) -> np.ndarray:
        rng = np.random.default_rng() if rng is None else rng
        mask = np.zeros(self.get_shape(), dtype=bool)
        count = 0
        while count < num_masking_patches:
            max_mask_patches = min(num_masking_patches - count, self.max_num_patches)
            delta = self._mask(mask, max_mask_patches, rng)
            if delta == 0:
                break
            count += delta
        return self.complete_mask_randomly(mask, num_masking_patches, rng)

    @staticmethod
    def complete_mask_randomly(mask: np.ndarray, num_masking_patches: int,
                               rng: np.random.Generator) -> np.ndarray:
        """Mask uniformly random extra tokens until exactly ``num_masking_patches`` are masked."""
        flat = mask.reshape(-1)
        missing = int(num_masking_patches) - int(flat.sum())
        if missing <= 0:
            return mask
        unmasked = np.flatnonzero(~flat)
        missing = min(missing, unmasked.size)
        flat[rng.choice(unmasked, size=missing, replace=False)] = True
        return flat.reshape(mask.shape)
