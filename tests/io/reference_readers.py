"""Transcription of the reference readers (REFERENCE.md §2.1, ``dinov2/inference/loaders.py``) without
the clipping and asserts, used as the oracle of ``Volume.reference_layout()``.

Each returns ``(array [D, H, W] float32, (sz, sy, sx))`` in the reference's axis order.
"""

from __future__ import annotations

import os

import numpy as np


def load_nifti(path):
    import nibabel as nib

    img = nib.load(str(path))
    image = img.get_fdata()
    s = np.sqrt((img.affine[:3, :3] ** 2).sum(axis=0))
    return np.transpose(image, (2, 1, 0)).astype(np.float32), (float(s[2]), float(s[1]), float(s[0]))


def load_dicom(folder):
    import pydicom

    files = []
    for f in os.listdir(folder):
        p = os.path.join(folder, f)
        if os.path.isfile(p):
            try:
                files.append(pydicom.dcmread(p))
            except Exception:
                continue
    series = {}
    fallback = []
    for ds in files:
        m = getattr(ds, "Modality", None)
        if m and m != "CT":
            continue
        uid = getattr(ds, "SeriesInstanceUID", None)
        if uid:
            series.setdefault(uid, []).append(ds)
        else:
            fallback.append(ds)
    sds = max(series.values(), key=len) if series else fallback
    if hasattr(sds[0], "ImagePositionPatient"):
        sds.sort(key=lambda d: d.ImagePositionPatient[2])
    else:
        sds.sort(key=lambda d: int(d.InstanceNumber))
    z = [d.ImagePositionPatient[2] for d in sds if hasattr(d, "ImagePositionPatient")]
    vol = np.stack([d.pixel_array for d in sds]).astype(np.float32)
    vol = vol * float(getattr(sds[0], "RescaleSlope", 1.0)) + float(getattr(sds[0], "RescaleIntercept", 0.0))
    ps = sds[0].PixelSpacing
    if hasattr(sds[0], "SpacingBetweenSlices"):
        dz = float(sds[0].SpacingBetweenSlices)
    else:
        dz = float(np.mean(np.diff(z)))
    return vol.astype(np.float32), (abs(dz), float(ps[0]), float(ps[1]))


def load_mhd(path):
    import SimpleITK as sitk

    img = sitk.ReadImage(str(path))
    sp = list(np.array(img.GetSpacing())[::-1])
    return sitk.GetArrayFromImage(img).astype(np.float32), tuple(float(s) for s in sp)


def load_npy(path):
    return np.load(path).astype(np.float32), (1.0, 1.0, 1.0)
