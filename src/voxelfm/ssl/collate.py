"""Batch collation with iBOT masks (REFERENCE §3.3, ``data/collate.py::collate_data_and_cast``).

Crops are stacked **crop-major** (index = crop · B + sample). Of the ``B_g = 2 B`` global crops,
``int(B_g · mask_probability)`` get a mask; masked crop i masks ``int(N · U(p_i, p_{i+1}))`` tokens
with ``p = linspace(ratio_min, ratio_max, n_masked + 1)``; the others get empty masks; the list is
shuffled. ``upperbound = Σ int(N · p_{i+1})`` bounds the number of masked tokens of the batch (the
fixed buffer length the heads see).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from voxelfm.ssl.masking import MaskingGenerator3D

__all__ = ["collate_data_and_cast", "SSLCollator"]


def _crops(sample: Any) -> Mapping[str, Any]:
    # DINOv2 datasets return (crops_dict, target); ours returns the dict itself.
    return sample[0] if isinstance(sample, (tuple, list)) else sample


def collate_data_and_cast(samples_list: Sequence[Any], mask_ratio_tuple: Sequence[float],
                          mask_probability: float, dtype: torch.dtype | None = None,
                          n_tokens: int | None = None,
                          mask_generator: MaskingGenerator3D | None = None,
                          rng: np.random.Generator | None = None) -> dict[str, Any]:
    """Stack the crops of a batch and draw its iBOT masks.

    Returns a dict with
        ``collated_global_crops`` ``[2B, *global]``, ``collated_local_crops`` ``[nL·B, *local]``
        (crop-major, cast to ``dtype``), ``collated_masks`` ``[2B, N]`` bool,
        ``mask_indices_list`` ``[M]`` long (flat indices into ``2B · N``), ``masks_weight`` ``[M]``
        (1 / #masked tokens of the token's crop), ``upperbound`` int, ``n_masked_patches`` ``[1]``
        long, plus ``positions`` / ``volume_indices`` ``[B]`` long when the samples carry them.
    """
    if not samples_list:
        raise ValueError("cannot collate an empty batch")
    rng = np.random.default_rng() if rng is None else rng
    crops = [_crops(s) for s in samples_list]
    n_global = len(crops[0]["global_crops"])
    n_local = len(crops[0]["local_crops"])
    collated_global = torch.stack([c["global_crops"][i] for i in range(n_global) for c in crops])
    if n_local:
        collated_local = torch.stack([c["local_crops"][i] for i in range(n_local) for c in crops])
    else:
        collated_local = collated_global.new_zeros((0, *collated_global.shape[1:]))
    if dtype is not None:
        collated_global, collated_local = collated_global.to(dtype), collated_local.to(dtype)

    B = len(collated_global)
    if mask_generator is None:
        raise ValueError("collate_data_and_cast needs a mask_generator")
    N = int(n_tokens) if n_tokens is not None else mask_generator.num_patches
    n_samples_masked = int(B * mask_probability)
    probs = torch.linspace(float(mask_ratio_tuple[0]), float(mask_ratio_tuple[1]),
                           n_samples_masked + 1)  # float32, as the reference
    upperbound = 0
    masks_list: list[np.ndarray] = []
    for i in range(n_samples_masked):
        lo, hi = float(probs[i]), float(probs[i + 1])
        masks_list.append(mask_generator(int(N * (lo + (hi - lo) * rng.random())), rng))
        upperbound += int(N * probs[i + 1])
    for _ in range(n_samples_masked, B):
        masks_list.append(mask_generator(0, rng))
    order = rng.permutation(len(masks_list))
    collated_masks = torch.from_numpy(np.stack([masks_list[i] for i in order]).reshape(B, -1))
    mask_indices_list = collated_masks.flatten().nonzero().flatten()
    masks_weight = (1 / collated_masks.sum(-1).clamp(min=1.0)).unsqueeze(-1) \
        .expand_as(collated_masks)[collated_masks]
    out: dict[str, Any] = {
        "collated_global_crops": collated_global,
        "collated_local_crops": collated_local,
        "collated_masks": collated_masks,
        "mask_indices_list": mask_indices_list,
        "masks_weight": masks_weight,
        "upperbound": upperbound,
        "n_masked_patches": torch.full((1,), fill_value=mask_indices_list.shape[0], dtype=torch.long),
    }
    for key in ("position", "volume_index"):
        if all(key in c for c in crops):
            out[key + "s" if key == "position" else "volume_indices"] = torch.tensor(
                [int(c[key]) for c in crops], dtype=torch.long)
    return out


class SSLCollator:
    """Picklable collate function for the pre-training DataLoader.

    The masks of a batch are drawn from a generator seeded by ``(seed, first sample position of
    the batch)`` so they do not depend on which worker collates the batch or when.

    Args:
        mask_generator: the iBOT block-mask generator of the global-crop token grid.
        mask_ratio_tuple: ``ibot.mask_ratio_min_max``.
        mask_probability: ``ibot.mask_sample_probability``.
        seed: ``train.seed``.
        dtype: optional cast of the crops.
    """

    def __init__(self, mask_generator: MaskingGenerator3D, mask_ratio_tuple: Sequence[float],
                 mask_probability: float, seed: int = 0, dtype: torch.dtype | None = None) -> None:
        self.mask_generator = mask_generator
        self.mask_ratio_tuple = (float(mask_ratio_tuple[0]), float(mask_ratio_tuple[1]))
        self.mask_probability = float(mask_probability)
        self.seed = int(seed)
        self.dtype = dtype

    def __call__(self, samples_list: Sequence[Any]) -> dict[str, Any]:
        positions = [int(_crops(s).get("position", 0)) for s in samples_list]
        rng = np.random.default_rng([self.seed, 0x6D61736B, min(positions)])  # "mask"
        return collate_data_and_cast(samples_list, self.mask_ratio_tuple, self.mask_probability,
                                     dtype=self.dtype, n_tokens=self.mask_generator.num_patches,
                                     mask_generator=self.mask_generator, rng=rng)
