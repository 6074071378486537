"""A faithful transcription of the reference preprocessing and extraction (REFERENCE.md §2.2).

Written from ``dinov2/inference/processing.py`` of github.com/rmaguado/VoxelFM (commit fba41a3):
dense ``Conv3d`` background crop, ``resize_isotropic``, ``resize_max_patches``, ``patch_crop``,
normalisation and one forward. Used as the oracle for the O(N) / refactored implementations.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def crop_volume(img: torch.Tensor, k: int = 21) -> torch.Tensor:
    x_mask = img > -800
    vol_f = x_mask.float().unsqueeze(0).unsqueeze(0)
    kernel = torch.ones((1, 1, k, k, k), dtype=torch.float32)
    conv_sum = F.conv3d(vol_f, kernel, padding="same")
    out = conv_sum > k * k * k * 0.5
    mask = out[0, 0].bool()
    coords = mask.nonzero(as_tuple=False)
    if coords.numel() == 0:
        raise ValueError("Mask is empty — no bounding box to extract.")
    z_min, y_min, x_min = coords.min(dim=0).values
    z_max, y_max, x_max = coords.max(dim=0).values
    z_min = max(z_min.item() - k // 2, 0)
    y_min = max(y_min.item() - k // 2, 0)
    x_min = max(x_min.item() - k // 2, 0)
    z_max = min(z_max.item() + k // 2, mask.shape[0] - 1)
    y_max = min(y_max.item() + k // 2, mask.shape[1] - 1)
    x_max = min(x_max.item() + k // 2, mask.shape[2] - 1)
    return img[z_min:z_max + 1, y_min:y_max + 1, x_min:x_max + 1]


def crop_box(img: torch.Tensor, k: int = 21):
    """The half-open box ``crop_volume`` slices (same computation, returned instead of applied)."""
    mask = (F.conv3d((img > -800).float()[None, None], torch.ones(1, 1, k, k, k), padding="same")
            > k * k * k * 0.5)[0, 0]
    coords = mask.nonzero()
    if coords.numel() == 0:
        raise ValueError("Mask is empty — no bounding box to extract.")
    mn, mx = coords.min(0).values, coords.max(0).values
    return tuple((max(int(mn[i]) - k // 2, 0), min(int(mx[i]) + k // 2, mask.shape[i] - 1) + 1)
                 for i in range(3))


def resize_isotropic(img, spacing, min_spacing=0.75):
    D, H, W = img.shape
    sD, sH, sW = spacing
    if sD == sH == sW:
        return img
    ts = max(min(spacing), min_spacing)
    new_D = round(D * sD / ts)
    new_H = round(H * sH / ts)
    new_W = round(W * sW / ts)
    return F.interpolate(img.unsqueeze(0).unsqueeze(0), size=(new_D, new_H, new_W), mode="trilinear",
                         align_corners=False).squeeze(0).squeeze(0)


def patch_crop(img, patch_size):
    D, H, W = img.shape
    mod_D, mod_H, mod_W = D % patch_size, H % patch_size, W % patch_size
    return img[mod_D // 2: D - mod_D + mod_D // 2, mod_H // 2: H - mod_H + mod_H // 2,
               mod_W // 2: W - mod_W + mod_W // 2]


def max_patches_size(shape, patch_size, max_patches):
    """The size ``resize_max_patches`` resizes to (``None`` if unchanged)."""
    D, H, W = shape
    pD, pH, pW = D // patch_size, H // patch_size, W // patch_size
    num_patches = pD * pH * pW
    if num_patches <= max_patches:
        return None
    scale = (max_patches / num_patches) ** (1 / 3)

    def num_patches_for(scale):
        new_D, new_H, new_W = int(D * scale), int(H * scale), int(W * scale)
        return ((new_D // patch_size) * (new_H // patch_size) * (new_W // patch_size), new_D, new_H, new_W)

    best = None
    for delta in [0.98, 0.99, 1.0, 1.01, 1.02]:
        patches, new_D, new_H, new_W = num_patches_for(scale * delta)
        if patches <= max_patches:
            if best is None or patches > best[0]:
                best = (patches, new_D, new_H, new_W)
    if best is None:
        best = num_patches_for(scale * 0.95)
    _, new_D, new_H, new_W = best
    return new_D, new_H, new_W


def resize_max_patches(img, patch_size, max_patches):
    size = max_patches_size(img.shape, patch_size, max_patches)
    if size is None:
        return img
    return F.interpolate(img.unsqueeze(0).unsqueeze(0), size=size, mode="trilinear",
                         align_corners=False).squeeze(0).squeeze(0)


def preprocess(img, spacing, patch_size, mean, std, crop_background=False, max_patches=None):
    """Steps 4-8 of the reference ``extract_features``: returns (model input [1,D,H,W], HU img)."""
    img = torch.as_tensor(img, dtype=torch.float32)
    if crop_background:
        img = crop_volume(img, 21)
    img = resize_isotropic(img, spacing)
    if max_patches:
        img = resize_max_patches(img, patch_size, max_patches)
    img = patch_crop(img, patch_size)
    x = (img - mean) / std
    return x.unsqueeze(0).to(dtype=torch.float), img


def extract_features(model, img, spacing, patch_size, mean, std, crop_background=False, max_patches=None):
    """Reference ``extract_features`` after reading: returns ``{"cls": [1,C], "patch": [d,h,w,C]}``."""
    x, _ = preprocess(img, spacing, patch_size, mean, std, crop_background, max_patches)
    _, D, H, W = x.shape
    with torch.inference_mode():
        out = model(x)
    patch = out["x_norm_patchtokens"].reshape(D // patch_size, H // patch_size, W // patch_size, -1)
    return {"cls": out["x_norm_clstoken"], "patch": patch, "registers": out.get("x_norm_regtokens")}


def load_nifti(path):
    """Reference ``load_nifti``: file order with axes reversed (x y z → z y x), clip [-1000, 1900]."""
    import nibabel as nib
    import numpy as np

    nifti = nib.load(str(path))
    image = nifti.get_fdata()
    affine = nifti.affine
    s = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    spacing = (float(s[2]), float(s[1]), float(s[0]))
    assert abs(spacing[2] - spacing[1]) < 0.001
    image = torch.from_numpy(image).float()
    image = image.permute(2, 1, 0)
    image = image.clip(-1000, 1900)
    return image, spacing


def load_dicom(folder):
    """Reference ``load_dicom`` for one CT series: sort by IPP z, first slice's rescale, clamp ±1000."""
    import os

    import numpy as np
    import pydicom

    files = [pydicom.dcmread(os.path.join(folder, f)) for f in os.listdir(folder)
             if os.path.isfile(os.path.join(folder, f))]
    files.sort(key=lambda d: d.ImagePositionPatient[2])
    z = [d.ImagePositionPatient[2] for d in files]
    volume = np.stack([d.pixel_array for d in files]).astype(np.float32)
    volume = volume * float(getattr(files[0], "RescaleSlope", 1.0)) + float(getattr(files[0], "RescaleIntercept", 0.0))
    image = torch.clamp(torch.from_numpy(volume).float(), -1000, 1000)
    if hasattr(files[0], "SpacingBetweenSlices"):
        dz = float(files[0].SpacingBetweenSlices)
    else:
        dz = float(np.mean(np.diff(z)))
    ps = files[0].PixelSpacing
    return image, (abs(dz), float(ps[0]), float(ps[1]))
