"""Pre-training dataset over the prepared-volume store (REFERENCE §3.1, fixed).

Each item is the multi-crop augmentation of one volume of a
:class:`voxelfm.data.volume_store.VolumeStore` (``open(id) -> np.memmap int16 [D, H, W]`` HU,
isotropic). Crops are sliced from the memory map, so only the voxels of the crops are read.

Determinism: item ``(position, index)`` — ``position`` being the global stream position given by
:class:`~voxelfm.ssl.sampler.InfiniteShardedSampler` — is augmented with a generator seeded by
``(seed, position)``: the crops of a run are the same whatever the number of workers, their timing
or a kill-and-resume in between.

Robustness: a volume that cannot be read or augmented is logged once and replaced by another
volume chosen deterministically from ``(seed, position, attempt)``; the run never crashes on one
bad file (it stops only if ``max_retries`` consecutive replacements fail too).
Volumes with a side below ``min_side`` voxels are excluded up front (the reference drops
volumes smaller than half the global crop).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from voxelfm.errors import VoxelFMError

__all__ = ["PretrainDataset"]

logger = logging.getLogger("voxelfm.ssl")


class PretrainDataset(Dataset):
    """Multi-crop views of the volumes of a store.

    Args:
        store: an object with ``ids``, ``open(id)`` and optionally ``shape(id)`` (a
            :class:`~voxelfm.data.volume_store.VolumeStore`).
        augmentation: ``aug(volume, rng) -> dict`` (a
            :class:`~voxelfm.ssl.augmentations.DataAugmentationDINO`).
        seed: ``train.seed``.
        min_side: volumes with any side below this are excluded (0 = keep all).
        ids: restrict to these ids (default: all ids of the store).
        max_retries: replacements tried after a failure before giving up.

    Item: ``dataset[(position, index)]`` (or ``dataset[index]``, position = index) → the
    augmentation's dict plus ``position``, ``volume_index``, ``volume_id``.
    """

    def __init__(self, store: Any, augmentation: Callable[..., dict[str, Any]], *, seed: int = 0,
                 min_side: int = 0, ids: Sequence[str] | None = None, max_retries: int = 20) -> None:
        self.store = store
        self.augmentation = augmentation
        self.seed = int(seed)
        self.max_retries = int(max_retries)
        all_ids = list(store.ids if ids is None else ids)
        kept, excluded = [], []
        for vid in all_ids:
            shape = self._shape(vid)
            if shape is not None and min_side and min(shape) < min_side:
                excluded.append((vid, shape))
            else:
                kept.append(vid)
        if excluded:
            logger.warning("%d volume(s) smaller than %d voxels on a side excluded from "
                           "pre-training (e.g. %s %s)", len(excluded), min_side, excluded[0][0],
                           tuple(excluded[0][1]))
        if not kept:
            raise VoxelFMError(f"no usable volume in the store ({len(all_ids)} ids, {len(excluded)} "
                               f"smaller than {min_side} voxels); prepare larger volumes or use "
                               "smaller crops")
        self.ids = kept
        self.excluded_ids = [vid for vid, _ in excluded]
        self._bad: set[str] = set()

    def _shape(self, vid: str) -> tuple[int, ...] | None:
        shape_fn = getattr(self.store, "shape", None)
        if shape_fn is None:
            return None
        try:
            return tuple(int(s) for s in shape_fn(vid))
        except Exception:  # unreadable metadata: let __getitem__ deal with it
            return None

    def __len__(self) -> int:
        return len(self.ids)

    def _load_and_augment(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        volume = self.store.open(self.ids[index])
        if getattr(volume, "ndim", 0) != 3:
            raise ValueError(f"expected a [D, H, W] volume, got shape {getattr(volume, 'shape', None)}")
        return self.augmentation(volume, rng)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        position, index = (int(key[0]), int(key[1])) if isinstance(key, (tuple, list)) else (int(key), int(key))
        if not 0 <= index < len(self.ids):
            raise IndexError(f"index {index} out of range for {len(self.ids)} volumes")
        current = index
        for attempt in range(self.max_retries + 1):
            vid = self.ids[current]
            if vid not in self._bad:
                rng = np.random.default_rng([self.seed, position, attempt])
                try:
                    out = self._load_and_augment(current, rng)
                except Exception as exc:  # noqa: BLE001 - any unreadable volume is replaced
                    self._bad.add(vid)
                    logger.warning("volume %r could not be used (%s: %s); replaced by another "
                                   "sample", vid, type(exc).__name__, exc)
                else:
                    out.update(position=position, volume_index=current, volume_id=vid)
                    return out
            current = int(np.random.default_rng([self.seed, position, attempt, 1]).integers(len(self.ids)))
        raise VoxelFMError(f"{self.max_retries + 1} volumes in a row could not be read (last: "
                           f"{self.ids[current]!r}); check the store with `voxelfm prepare`")
