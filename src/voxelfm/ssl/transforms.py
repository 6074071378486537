"""3D intensity and geometry transforms of the pre-training augmentation (REFERENCE §3.2).

Every transform is a callable ``transform(img, rng)`` where ``img`` is a ``[D, H, W]`` volume and
``rng`` a :class:`numpy.random.Generator`. All randomness comes from ``rng``, so a crop is a pure
function of (volume, generator state): the data loader derives one generator per sample from
``(seed, global sample position)`` and the augmentation is identical whatever the number of worker
processes or their timing. ``rng=None`` draws a generator from the torch global RNG (so
``torch.manual_seed`` makes ad-hoc use reproducible).

* :class:`RandomCrop3D` — random axis permutation, crop side = scale × shortest volume side, sliced
  from the (memory-mapped, integer) volume *before* any float conversion, trilinear resize.
* :class:`Flip` — each axis flipped with p = 0.5.
* :class:`Window` — the interquartile HU-window perturbation (saturates values, never rescales).
* :class:`GaussianBlur` — voxelfm: separable Gaussian smoothing of random width (slice thickness,
  reconstruction kernel); off in the reference recipe.
* :class:`GaussianNoise` — voxelfm: additive white noise of random level in HU (dose, patient size);
  off in the reference recipe.
* :class:`Norm` — clip to the pixel range, then ``(x - mean) / std``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["RandomCrop3D", "Flip", "Window", "GaussianBlur", "GaussianNoise", "Norm", "Compose",
           "default_rng_from_torch"]

Rng = np.random.Generator


def default_rng_from_torch() -> Rng:
    """A numpy generator seeded from the torch global RNG (used when a caller passes ``rng=None``)."""
    seed = int(torch.randint(0, 2**62, (1,)).item())
    return np.random.default_rng(seed)


def _as_size3(size: int | Sequence[int], name: str) -> tuple[int, int, int]:
    if isinstance(size, (int, np.integer)):
        size = (int(size),) * 3
    size = tuple(int(s) for s in size)
    if len(size) != 3 or any(s <= 0 for s in size):
        raise ValueError(f"{name} must be a positive int or three positive ints, got {size}")
    return size  # type: ignore[return-value]


class RandomCrop3D:
    """Random crop with the target's proportions, random axis order, resized to ``size``.

    For each call (REFERENCE §3.2, ``data/transforms.py::RandomCrop3D``):

    1. a random permutation ``perm`` of the three axes is drawn and the target size permuted;
    2. ``s ~ U(scale)``; ``alpha = min(min(D, H, W) * s / min(target), min_i n_i / target_perm_i)``;
       crop side on input axis i = ``clamp(round(alpha * target_perm_i), 1, n_i)`` — for a cubic
       target the crop is a cube of side ``round(s * min(D, H, W))``: *scale is a linear fraction of
       the shortest side*;
    3. a uniform start on every axis;
    4. the crop is sliced (from a memory map this reads only the crop), cast to float32, its axes
       permuted with the inverse permutation (each crop sees one of the 6 axis orders), then
       trilinearly resized to ``size`` (``align_corners=False``, no antialiasing).

    voxelfm option ``aspect`` (off = ``None``, the reference): after step 2 each crop side is
    multiplied by its own log-uniform factor in ``[1/aspect, aspect]``, the three factors normalised
    to a product of 1 (the crop keeps its volume, then is clamped to the volume), so the resize to
    ``size`` stretches the anatomy by up to ``aspect`` along an axis — the 3D analogue of the aspect
    ratio jitter of DINO's ``RandomResizedCrop`` (3/4–4/3). Between views it varies the apparent body
    proportions, which otherwise identify a patient's build.

    voxelfm option ``pad_value`` (off = ``None``, the reference): the crop is not clamped to the
    volume; a side longer than the volume's is placed so that it contains the whole extent of the
    volume along that axis, and the voxels outside the volume are ``pad_value`` (e.g. −1000 HU, air).
    With a ``scale`` maximum above 1 this is a random zoom-out: the amount of air around the body
    varies between views, so it stops being a cue that identifies a scan.

    Args:
        size: output size ``(D, H, W)`` in voxels, or one int for a cube.
        scale: ``(min, max)`` linear fraction of the shortest volume side (above 1 only with
            ``pad_value``).
        permute_axes: draw a random axis order (the reference always does).
        aspect: maximum stretch factor (> 1) of the per-axis aspect jitter, or ``None``.
        pad_value: value of the voxels outside the volume (HU), or ``None`` to keep crops inside.

    Call: ``crop(img, rng) -> torch.Tensor [*size] float32``. ``img`` may be a numpy array or
    memory map of any numeric dtype (HU) or a torch tensor, shape ``[D, H, W]``.
    """

    def __init__(self, size: int | Sequence[int], scale: Sequence[float] = (0.7, 1.0), *,
                 permute_axes: bool = True, aspect: float | None = None,
                 pad_value: float | None = None) -> None:
        self.crop_size = _as_size3(size, "size")
        scale = tuple(float(s) for s in scale)
        if len(scale) != 2 or not 0 < scale[0] <= scale[1]:
            raise ValueError(f"scale must be (min, max) with 0 < min <= max, got {scale}")
        self.scale = scale
        self.permute_axes = bool(permute_axes)
        if aspect is not None and not float(aspect) >= 1.0:
            raise ValueError(f"aspect must be a stretch factor >= 1 (or None for none), got {aspect}")
        self.aspect = None if aspect is None or float(aspect) == 1.0 else float(aspect)
        self.pad_value = None if pad_value is None else float(pad_value)

    def __repr__(self) -> str:
        extra = f", aspect={self.aspect}" if self.aspect else ""
        extra += f", pad_value={self.pad_value}" if self.pad_value is not None else ""
        return f"RandomCrop3D(size={self.crop_size}, scale={self.scale}{extra})"

    def sample_box(self, shape: Sequence[int], rng: Rng) -> tuple[list[int], list[int], list[int]]:
        """Draw ``(perm, starts, crop_dims)`` for a volume of ``shape`` (input axis order).

        Without ``pad_value`` the box lies inside the volume; with it a start is negative where the
        side exceeds the volume's (the box then contains the volume's whole extent on that axis).
        """
        img_shape = [int(n) for n in shape]
        if len(img_shape) != 3 or min(img_shape) < 1:
            raise ValueError(f"volume must be [D, H, W] with positive sides, got {tuple(shape)}")
        perm = [int(p) for p in rng.permutation(3)] if self.permute_axes else [0, 1, 2]
        p_perm = [float(self.crop_size[i]) for i in perm]
        s = float(rng.uniform(self.scale[0], self.scale[1]))
        desired_alpha = min(img_shape) * s / min(p_perm)
        max_alpha = min(img_shape[i] / p_perm[i] for i in range(3))
        alpha = desired_alpha if self.pad_value is not None else min(desired_alpha, max_alpha)
        sides = [alpha * p for p in p_perm]
        if self.aspect is not None:
            log_r = rng.uniform(-np.log(self.aspect), np.log(self.aspect), 3)
            sides = [side * float(np.exp(r - log_r.mean())) for side, r in zip(sides, log_r)]
        if self.pad_value is None:
            dims = [min(max(1, int(round(side))), img_shape[i]) for i, side in enumerate(sides)]
        else:
            dims = [max(1, int(round(side))) for side in sides]
        starts = [int(rng.integers(min(0, n - d), max(0, n - d), endpoint=True)) for n, d in zip(img_shape, dims)]
        return perm, starts, dims

    def _read_box(self, img: Any, starts: Sequence[int], dims: Sequence[int]) -> torch.Tensor:
        """The ``dims`` box at ``starts`` as float32; outside the volume = ``pad_value``."""
        lo = [max(0, s) for s in starts]
        hi = [min(n, s + d) for n, s, d in zip(img.shape, starts, dims)]
        region = img[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        if isinstance(region, torch.Tensor):
            region = region.to(torch.float32)
        else:  # numpy array / memmap: only the crop is read, then converted
            region = torch.from_numpy(np.asarray(region, dtype=np.float32))
        if [h - l for l, h in zip(lo, hi)] == list(dims):
            return region
        out = torch.full(tuple(dims), float(self.pad_value), dtype=torch.float32)
        out[lo[0] - starts[0]:hi[0] - starts[0], lo[1] - starts[1]:hi[1] - starts[1],
            lo[2] - starts[2]:hi[2] - starts[2]] = region
        return out

    def __call__(self, img: Any, rng: Rng | None = None) -> torch.Tensor:
        rng = default_rng_from_torch() if rng is None else rng
        if img.ndim != 3:
            raise ValueError(f"input must be a 3D volume [D, H, W], got shape {tuple(img.shape)}")
        perm, starts, dims = self.sample_box(img.shape, rng)
        crop = self._read_box(img, starts, dims)
        inv_perm = [perm.index(i) for i in range(3)]
        crop = crop.permute(inv_perm)
        if tuple(crop.shape) == self.crop_size:  # trilinear at scale 1 is the identity
            return crop.contiguous()
        out = F.interpolate(crop.contiguous()[None, None], size=self.crop_size, mode="trilinear",
                            align_corners=False)
        return out[0, 0]


def _as_range(value: Sequence[float], name: str) -> tuple[float, float]:
    lo, hi = (float(v) for v in value)
    if not 0.0 <= lo <= hi:
        raise ValueError(f"{name} must be (min, max) with 0 <= min <= max, got {tuple(value)}")
    return lo, hi


def _check_p(p: float) -> float:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    return float(p)


class Flip:
    """Flip each of the three axes independently with probability ``p`` (0.5 in the reference)."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = _check_p(p)

    def __repr__(self) -> str:
        return f"Flip(p={self.p})"

    def __call__(self, img: torch.Tensor, rng: Rng | None = None) -> torch.Tensor:
        rng = default_rng_from_torch() if rng is None else rng
        dims = [d for d in range(3) if rng.random() < self.p]
        return img.flip(dims=dims) if dims else img


class Window:
    """HU-window perturbation from the crop's own histogram (applied with probability ``p``).

    1. ``hist_bins``-bin histogram over ``hist_range`` HU (values outside are ignored), CDF,
       quantile index = ``searchsorted(cdf, q * total)`` for q in (P_low, 0.25, 0.5, 0.75, P_high),
       clamped, HU = left bin edge;
    2. IQR = Q3 - Q1; if IQR < 1 then ``max(P_high - P_low, 1)``;
    3. level ~ N(median, ``level_std_ratio`` * IQR), width ~ U(``width_range_ratio``) * IQR, at
       least 10 HU;
    4. ``clip(img, level - width/2, level + width/2)`` — values are only saturated.

    Call: ``window(img [D, H, W] float HU, rng) -> same shape``.
    """

    def __init__(self, p: float = 0.5, percentiles: tuple[float, float] = (1.0, 99.0),
                 level_std_ratio: float = 0.2, width_range_ratio: tuple[float, float] = (0.5, 2.0),
                 hist_bins: int = 512, hist_range: tuple[float, float] = (-1000.0, 1900.0),
                 min_width: float = 10.0) -> None:
        self.p = _check_p(p)
        if not hist_range[0] < hist_range[1]:
            raise ValueError(f"hist_range must be (low, high) with low < high, got {hist_range}")
        if not 0 < width_range_ratio[0] <= width_range_ratio[1]:
            raise ValueError(f"width_range_ratio must be ordered positive, got {width_range_ratio}")
        self.quantiles = torch.tensor([percentiles[0] / 100.0, 0.25, 0.50, 0.75,
                                       percentiles[1] / 100.0], dtype=torch.float32)
        self.level_std_ratio = float(level_std_ratio)
        self.width_range_ratio = (float(width_range_ratio[0]), float(width_range_ratio[1]))
        self.hist_bins = int(hist_bins)
        self.hist_range = (float(hist_range[0]), float(hist_range[1]))
        self.min_width = float(min_width)

    def __repr__(self) -> str:
        return f"Window(p={self.p}, bins={self.hist_bins}, range={self.hist_range})"

    def quantiles_hu(self, img: torch.Tensor) -> torch.Tensor:
        """``[5]`` HU values of the (P_low, Q1, median, Q3, P_high) histogram quantiles."""
        hist = torch.histogram(img.detach().float().cpu(), bins=self.hist_bins,
                               range=self.hist_range).hist
        cdf = torch.cumsum(hist, dim=0)
        idx = torch.searchsorted(cdf, self.quantiles * cdf[-1]).clamp(0, self.hist_bins - 1)
        bin_width = (self.hist_range[1] - self.hist_range[0]) / self.hist_bins
        return self.hist_range[0] + idx.to(torch.float64) * bin_width

    def sample_window(self, img: torch.Tensor, rng: Rng) -> tuple[float, float]:
        """Draw ``(low, high)`` HU bounds of the window for ``img``."""
        p_low, q1, median, q3, p_high = (float(v) for v in self.quantiles_hu(img))
        iqr = q3 - q1
        if iqr < 1.0:
            iqr = max(p_high - p_low, 1.0)
        level = float(rng.normal(median, self.level_std_ratio * iqr))
        width = float(rng.uniform(self.width_range_ratio[0] * iqr, self.width_range_ratio[1] * iqr))
        width = max(width, self.min_width)
        return level - width / 2.0, level + width / 2.0

    def __call__(self, img: torch.Tensor, rng: Rng | None = None) -> torch.Tensor:
        rng = default_rng_from_torch() if rng is None else rng
        if rng.random() > self.p:
            return img
        low, high = self.sample_window(img, rng)
        return img.clamp(low, high)


class GaussianBlur:
    """Separable Gaussian smoothing with ``sigma ~ U(sigma_range)`` voxels, with probability ``p``.

    The same sigma on the three axes of the (already resized) crop, kernel truncated at 3 sigma,
    edges replicated, so the mean HU of a homogeneous region is unchanged. Between the two views of a
    volume it varies the resolution and the noise texture (slice thickness, soft or sharp
    reconstruction kernel), so those stop being cues that identify a scan.

    Call: ``blur(img [D, H, W] float HU, rng) -> same shape``.
    """

    def __init__(self, p: float = 0.5, sigma_range: Sequence[float] = (0.5, 1.0)) -> None:
        self.p = _check_p(p)
        self.sigma_range = _as_range(sigma_range, "sigma_range")

    def __repr__(self) -> str:
        return f"GaussianBlur(p={self.p}, sigma={self.sigma_range})"

    def __call__(self, img: torch.Tensor, rng: Rng | None = None) -> torch.Tensor:
        rng = default_rng_from_torch() if rng is None else rng
        if self.p == 0.0 or rng.random() >= self.p:
            return img
        sigma = float(rng.uniform(*self.sigma_range))
        radius = int(np.ceil(3.0 * sigma))
        if sigma <= 0.0 or radius == 0:
            return img
        t = torch.arange(-radius, radius + 1, dtype=torch.float32)
        kernel = torch.exp(-0.5 * (t / sigma) ** 2)
        kernel = kernel / kernel.sum()
        out = img.to(torch.float32)[None, None]
        for axis in range(3):
            shape = [1, 1, 1, 1, 1]
            shape[2 + axis] = kernel.numel()
            pad = [0, 0, 0, 0, 0, 0]
            pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = radius
            out = F.conv3d(F.pad(out, pad, mode="replicate"), kernel.view(shape))
        return out[0, 0]


class GaussianNoise:
    """Add white Gaussian noise ``N(0, s^2)`` with ``s ~ U(std_range)`` HU, with probability ``p``.

    Applied before clipping and normalisation. On CT the noise level follows dose and patient size;
    when both views of a volume keep the same noise level, the level identifies the scan (and the
    patient's build) — drawing it per view makes the features invariant to it.

    Call: ``noise(img [D, H, W] float HU, rng) -> same shape``.
    """

    def __init__(self, p: float = 0.5, std_range: Sequence[float] = (0.0, 30.0)) -> None:
        self.p = _check_p(p)
        self.std_range = _as_range(std_range, "std_range")

    def __repr__(self) -> str:
        return f"GaussianNoise(p={self.p}, std={self.std_range} HU)"

    def __call__(self, img: torch.Tensor, rng: Rng | None = None) -> torch.Tensor:
        rng = default_rng_from_torch() if rng is None else rng
        if self.p == 0.0 or rng.random() >= self.p:
            return img
        std = float(rng.uniform(*self.std_range))
        if std == 0.0:
            return img
        noise = rng.standard_normal(tuple(img.shape), dtype=np.float32) * np.float32(std)
        return img + torch.from_numpy(noise)


class Norm:
    """Clip to ``[vmin, vmax]`` HU then normalise: ``(clip(x) - mean) / std``."""

    def __init__(self, mean: float, std: float, vmin: float, vmax: float) -> None:
        if std <= 0:
            raise ValueError(f"std must be > 0, got {std}")
        if not vmin < vmax:
            raise ValueError(f"pixel range must satisfy lower < upper, got ({vmin}, {vmax})")
        self.mean, self.std = float(mean), float(std)
        self.vmin, self.vmax = float(vmin), float(vmax)

    def __repr__(self) -> str:
        return f"Norm(mean={self.mean}, std={self.std}, range=({self.vmin}, {self.vmax}))"

    def __call__(self, img: torch.Tensor, rng: Rng | None = None) -> torch.Tensor:
        return (img.clamp(self.vmin, self.vmax) - self.mean) / self.std


class Compose:
    """Apply transforms in order, passing the same generator to each."""

    def __init__(self, transforms: Sequence[Callable[..., torch.Tensor]]) -> None:
        self.transforms = list(transforms)

    def __repr__(self) -> str:
        return "Compose(" + ", ".join(repr(t) for t in self.transforms) + ")"

    def __call__(self, img: Any, rng: Rng | None = None) -> torch.Tensor:
        rng = default_rng_from_torch() if rng is None else rng
        for t in self.transforms:
            img = t(img, rng)
        return img
