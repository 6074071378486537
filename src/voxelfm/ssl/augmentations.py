"""Multi-crop 3D augmentation (REFERENCE §3.2, ``data/augmentations.py::DataAugmentationDINO``).

Per sample, from one HU volume (``[D, H, W]``, typically an ``int16`` memory map):

* global crop 1: RandomCrop3D(global size, global scale) → Flip → Window(p=0.5) → Norm
* global crop 2: RandomCrop3D(global size, global scale) → Flip → Norm
* ``local_crops_number`` local crops: RandomCrop3D(local size, local scale) → Norm

voxelfm adds, all off in the reference recipe: two per-view acquisition augmentations
(``blur_p`` = ``noise_p`` = 0), GaussianBlur and GaussianNoise, after the flip and before the window
on every crop, each drawn independently per crop; and two options of every RandomCrop3D, the
per-axis aspect jitter (``aspect``) and crops larger than the volume, padded (``pad_value``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from voxelfm.ssl.transforms import (Compose, Flip, GaussianBlur, GaussianNoise, Norm, RandomCrop3D, Window,
                                    default_rng_from_torch)

__all__ = ["DataAugmentationDINO"]


class DataAugmentationDINO:
    """Two global and ``local_crops_number`` local crops of one volume, normalised.

    Args:
        local_crops_number: number of local crops (8 in the reference; 0 allowed).
        local_crops_size: local crop size in voxels (int or ``(D, H, W)``).
        local_crops_scale: ``(min, max)`` linear fraction of the shortest volume side.
        global_crops_size: global crop size in voxels.
        global_crops_scale: ``(min, max)`` linear fraction of the shortest volume side.
        mean, std: intensity normalisation (HU).
        range_lower, range_upper: HU clip applied before normalising (``pixel_range``).
        window_p: probability of the HU-window perturbation on global crop 1.
        flip_p: per-axis flip probability of the global crops.
        permute_axes: give every crop a random axis order (the reference always does).
        aspect: per-axis aspect jitter of every crop (maximum stretch factor; voxelfm, ``None`` =
            off, the reference), see :class:`~voxelfm.ssl.transforms.RandomCrop3D`.
        pad_value: HU outside the volume for crops larger than the volume (voxelfm; ``None`` = crops
            stay inside, the reference), see :class:`~voxelfm.ssl.transforms.RandomCrop3D`.
        blur_p, blur_sigma: probability and ``(min, max)`` sigma in voxels of the Gaussian blur of
            every crop (voxelfm; 0 = off, the reference).
        noise_p, noise_std: probability and ``(min, max)`` standard deviation in HU of the additive
            Gaussian noise of every crop (voxelfm; 0 = off, the reference).

    Call: ``aug(volume, rng) -> {"global_crops": [2 × [*global size]], "local_crops":
    [n × [*local size]], "global_crops_size": ..., "local_crops_size": ...}`` (float32 tensors).
    """

    def __init__(self, local_crops_number: int, local_crops_size: int | Sequence[int],
                 local_crops_scale: Sequence[float], global_crops_size: int | Sequence[int],
                 global_crops_scale: Sequence[float], mean: float, std: float,
                 range_lower: float, range_upper: float, *, window_p: float = 0.5,
                 flip_p: float = 0.5, permute_axes: bool = True, blur_p: float = 0.0,
                 blur_sigma: Sequence[float] = (0.5, 1.0), noise_p: float = 0.0,
                 noise_std: Sequence[float] = (0.0, 30.0), aspect: float | None = None,
                 pad_value: float | None = None) -> None:
        if int(local_crops_number) < 0:
            raise ValueError(f"local_crops_number must be >= 0, got {local_crops_number}")
        self.local_crops_number = int(local_crops_number)
        self.norm = Norm(mean=mean, std=std, vmin=range_lower, vmax=range_upper)
        perm = bool(permute_axes)
        acquisition = [t for t in (GaussianBlur(blur_p, blur_sigma), GaussianNoise(noise_p, noise_std))
                       if t.p > 0]

        def crop(size: int | Sequence[int], scale: Sequence[float]) -> RandomCrop3D:
            return RandomCrop3D(size, scale, permute_axes=perm, aspect=aspect, pad_value=pad_value)

        self.global1 = Compose([crop(global_crops_size, global_crops_scale), Flip(flip_p), *acquisition,
                                Window(p=window_p, hist_range=(range_lower, range_upper)), self.norm])
        self.global2 = Compose([crop(global_crops_size, global_crops_scale), Flip(flip_p), *acquisition,
                                self.norm])
        self.local = Compose([crop(local_crops_size, local_crops_scale), *acquisition, self.norm])
        self.global_crops_size = self.global1.transforms[0].crop_size
        self.local_crops_size = self.local.transforms[0].crop_size

    @classmethod
    def from_config(cls, cfg: Any, *, dataset_index: int = 0) -> "DataAugmentationDINO":
        """Build from a pre-training config (``crops.*`` and ``datasets[i].norm/pixel_range``).

        voxelfm keys (reference behaviour when absent): ``crops.permute_axes`` (true),
        ``crops.flip_p`` (0.5), ``crops.window_p`` (0.5), ``crops.blur_p`` / ``crops.blur_sigma``
        and ``crops.noise_p`` / ``crops.noise_std`` (0: off), ``crops.aspect`` and ``crops.pad_hu``
        (null: off).
        """
        ds = cfg.datasets[dataset_index]
        crops = cfg.crops
        return cls(
            local_crops_number=cfg.crops.local_crops_number,
            local_crops_size=cfg.crops.local_crops_size,
            local_crops_scale=cfg.crops.local_crops_scale,
            global_crops_size=cfg.crops.global_crops_size,
            global_crops_scale=cfg.crops.global_crops_scale,
            mean=ds.norm.mean, std=ds.norm.std,
            range_lower=ds.pixel_range.lower, range_upper=ds.pixel_range.upper,
            window_p=float(crops.get("window_p", 0.5)), flip_p=float(crops.get("flip_p", 0.5)),
            permute_axes=bool(crops.get("permute_axes", True)),
            blur_p=float(crops.get("blur_p", 0.0)), blur_sigma=tuple(crops.get("blur_sigma", (0.5, 1.0))),
            noise_p=float(crops.get("noise_p", 0.0)), noise_std=tuple(crops.get("noise_std", (0.0, 30.0))),
            aspect=crops.get("aspect"), pad_value=crops.get("pad_hu"),
        )

    def __repr__(self) -> str:
        return (f"DataAugmentationDINO(global1={self.global1}, global2={self.global2}, "
                f"local={self.local} × {self.local_crops_number})")

    def __call__(self, image: Any, rng: np.random.Generator | None = None) -> dict[str, Any]:
        rng = default_rng_from_torch() if rng is None else rng
        global_crops: list[torch.Tensor] = [self.global1(image, rng), self.global2(image, rng)]
        local_crops = [self.local(image, rng) for _ in range(self.local_crops_number)]
        return {"global_crops": global_crops, "local_crops": local_crops,
                "global_crops_size": self.global_crops_size,
                "local_crops_size": self.local_crops_size}
