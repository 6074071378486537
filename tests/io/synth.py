"""Tiny synthetic CT volumes and writers (pydicom / nibabel / SimpleITK) for the io tests.

Everything is independent of voxelfm.io: geometry is written with the libraries' own conventions
(DICOM LPS, NIfTI RAS, ITK LPS) so reading it back tests our reader against them.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np

SHAPE = (8, 10, 12)  # canonical (D, H, W) = (S, P, L)
SPACING = (2.5, 0.8, 0.7)  # (sz, sy, sx) mm
ORIGIN_LPS = np.array([-20.0, -30.0, 100.0])  # LPS of canonical voxel (0, 0, 0)


def phantom(shape: Sequence[int] = SHAPE) -> np.ndarray:
    """Asymmetric HU ramp (every flip or permutation changes it), integer-valued, air to bone."""
    d, h, w = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    return (-1000.0 + 150.0 * d + 20.0 * h + 3.0 * w).astype(np.float32)


def canonical_affine_lps(spacing=SPACING, origin=ORIGIN_LPS) -> np.ndarray:
    """4x4 canonical (d, h, w) index -> LPS: d -> +z, h -> +y, w -> +x."""
    a = np.zeros((4, 4))
    a[2, 0], a[1, 1], a[0, 2], a[3, 3] = spacing[0], spacing[1], spacing[2], 1.0
    a[:3, 3] = origin
    return a


# ------------------------------------------------------------------------------- DICOM
def _uid() -> str:
    from pydicom.uid import generate_uid

    return generate_uid()


def dicom_dataset(pixels: np.ndarray, *, ipp, iop, pixel_spacing, slope=1.0, intercept=-1024.0,
                  series_uid: str, study_uid: str, modality="CT", instance=1, thickness=None,
                  spacing_between=None, image_type=("ORIGINAL", "PRIMARY", "AXIAL"), description="axial",
                  signed=True, padding_value=None, extra=None):
    """One single-frame DICOM slice with stored ``pixels`` (already rescaled to stored values)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    sop = _uid()
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = 2
    ds.SeriesDescription = description
    ds.Modality = modality
    ds.ImageType = list(image_type)
    ds.Manufacturer = "SYNTH"
    ds.ConvolutionKernel = "B30f"
    ds.PatientID = "P1"
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [float(v) for v in ipp]
    ds.ImageOrientationPatient = [float(v) for v in iop]
    ds.PixelSpacing = [float(pixel_spacing[0]), float(pixel_spacing[1])]
    if thickness is not None:
        ds.SliceThickness = float(thickness)
    if spacing_between is not None:
        ds.SpacingBetweenSlices = float(spacing_between)
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    ds.RescaleType = "HU"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if signed else 0
    arr = pixels.astype(np.int16 if signed else np.uint16)
    if padding_value is not None:
        ds.PixelPaddingValue = int(padding_value)
    ds.PixelData = arr.tobytes()
    for k, v in (extra or {}).items():
        setattr(ds, k, v)
    return ds


def write_series(folder: Path, stack_hu: np.ndarray, *, ipps, iop, pixel_spacing, slope=1.0,
                 intercept=-1024.0, suffix=".dcm", shuffle=True, series_uid=None, study_uid=None,
                 modality="CT", per_slice_rescale=False, transfer_syntax=None, thickness=None,
                 spacing_between=None, description="axial", image_type=("ORIGINAL", "PRIMARY", "AXIAL"),
                 signed=True, padding=None, name_prefix="IM", seed=0) -> str:
    """Write ``stack_hu`` [N, rows, cols] as N single-frame files; return the SeriesInstanceUID.

    ``padding``: optional (mask [N, rows, cols], stored padding value) written as PixelPaddingValue.
    """
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or _uid()
    study_uid = study_uid or _uid()
    n = stack_hu.shape[0]
    idx = list(range(n))
    rng = random.Random(seed)
    names = [f"{name_prefix}{i:04d}" for i in idx]
    if shuffle:
        rng.shuffle(names)  # file names unrelated to slice order
    for i in idx:
        s, b = (slope, intercept)
        if per_slice_rescale:
            s, b = (1.0 - 0.5 * (i % 2), -1024.0 - 10 * i)
        stored = np.round((stack_hu[i] - b) / s)
        pad_val = None
        if padding is not None:
            mask, pad_val = padding
            stored = np.where(mask[i], pad_val, stored)
        ds = dicom_dataset(stored, ipp=ipps[i], iop=iop, pixel_spacing=pixel_spacing, slope=s, intercept=b,
                           series_uid=series_uid, study_uid=study_uid, modality=modality, instance=i + 1,
                           thickness=thickness, spacing_between=spacing_between, image_type=image_type,
                           description=description, signed=signed, padding_value=pad_val)
        if transfer_syntax is not None:
            ds.compress(transfer_syntax)
        ds.save_as(folder / f"{names[i]}{suffix}", enforce_file_format=True)
    return series_uid


def write_axial_series(folder: Path, canonical: np.ndarray, spacing=SPACING, origin=ORIGIN_LPS, **kw) -> str:
    """Standard axial LPS series of a canonical SPL array: slice k at z = origin_z + k sz."""
    ipps = [origin + np.array([0.0, 0.0, k * spacing[0]]) for k in range(canonical.shape[0])]
    return write_series(folder, canonical, ipps=ipps, iop=[1, 0, 0, 0, 1, 0],
                        pixel_spacing=(spacing[1], spacing[2]), **kw)


def write_enhanced_ct(path: Path, canonical: np.ndarray, spacing=SPACING, origin=ORIGIN_LPS, *,
                      per_frame_rescale=True, reverse_frames=True) -> str:
    """One multi-frame Enhanced CT file (functional groups) of a canonical SPL array."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence as Seq
    from pydicom.uid import EnhancedCTImageStorage, ExplicitVRLittleEndian

    n = canonical.shape[0]
    order = list(range(n))[::-1] if reverse_frames else list(range(n))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = EnhancedCTImageStorage
    sop = _uid()
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = EnhancedCTImageStorage
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID = _uid()
    series_uid = _uid()
    ds.SeriesInstanceUID = series_uid
    ds.Modality = "CT"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.Manufacturer = "SYNTH"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = canonical.shape[1:]
    ds.NumberOfFrames = n
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1

    shared = Dataset()
    pm = Dataset()
    pm.PixelSpacing = [spacing[1], spacing[2]]
    pm.SliceThickness = spacing[0]
    shared.PixelMeasuresSequence = Seq([pm])
    po = Dataset()
    po.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    shared.PlaneOrientationSequence = Seq([po])
    if not per_frame_rescale:
        pv = Dataset()
        pv.RescaleSlope, pv.RescaleIntercept, pv.RescaleType = 1, -1024, "HU"
        shared.PixelValueTransformationSequence = Seq([pv])
    ds.SharedFunctionalGroupsSequence = Seq([shared])

    frames, per = [], []
    for j, k in enumerate(order):
        item = Dataset()
        pp = Dataset()
        pp.ImagePositionPatient = [float(v) for v in origin + np.array([0, 0, k * spacing[0]])]
        item.PlanePositionSequence = Seq([pp])
        slope, inter = (0.5, -1000.0 - 7 * j) if per_frame_rescale else (1.0, -1024.0)
        if per_frame_rescale:
            pv = Dataset()
            pv.RescaleSlope, pv.RescaleIntercept, pv.RescaleType = slope, inter, "HU"
            item.PixelValueTransformationSequence = Seq([pv])
        per.append(item)
        frames.append(np.round((canonical[k] - inter) / slope).astype(np.int16))
    ds.PerFrameFunctionalGroupsSequence = Seq(per)
    ds.PixelData = np.stack(frames).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return series_uid


# ------------------------------------------------------------------------------- NIfTI / ITK
def reorient_canonical(canonical: np.ndarray, code: str, affine_lps=None):
    """Return (array, RAS affine) of the canonical volume stored in orientation ``code`` (e.g. "LIP")."""
    import nibabel.orientations as no

    affine_lps = canonical_affine_lps() if affine_lps is None else affine_lps
    affine_ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine_lps
    t = no.ornt_transform(no.axcodes2ornt(tuple("SPL")), no.axcodes2ornt(tuple(code)))
    data = no.apply_orientation(canonical, t)
    affine = affine_ras @ no.inv_ornt_aff(t, canonical.shape)
    assert "".join(no.aff2axcodes(affine)) == code
    return data, affine


def write_nifti(path: Path, canonical: np.ndarray, code="RAS", *, dtype=np.int16, slope=None, inter=None,
                sform=True, qform=True, affine_lps=None):
    import nibabel as nib

    data, affine = reorient_canonical(canonical, code, affine_lps)
    if slope is not None:
        data = (data - (inter or 0.0)) / slope
    if np.issubdtype(np.dtype(dtype), np.integer):
        data = np.round(data)
    img = nib.Nifti1Image(data.astype(dtype), affine)
    img.header.set_slope_inter(slope if slope is not None else 1.0, inter or 0.0)
    img.set_sform(affine if sform else None, code=1 if sform else 0)
    img.set_qform(affine if qform else None, code=1 if qform else 0)
    nib.save(img, str(path))
    return affine


def write_sitk(path: Path, canonical: np.ndarray, code="LPS", *, dtype=np.int16, affine_lps=None):
    """Write via SimpleITK; ``code`` is the (i, j, k) orientation code of the stored image."""
    import SimpleITK as sitk

    data, affine_ras = reorient_canonical(canonical, code, affine_lps)
    aff = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine_ras  # back to LPS, (i, j, k) columns
    spacing = np.linalg.norm(aff[:3, :3], axis=0)
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(data, (2, 1, 0))).astype(dtype))
    img.SetSpacing([float(s) for s in spacing])
    img.SetDirection([float(v) for v in (aff[:3, :3] / spacing).reshape(-1)])
    img.SetOrigin([float(v) for v in aff[:3, 3]])
    sitk.WriteImage(img, str(path))


def write_nifti_scaled(path: Path, canonical: np.ndarray, code: str, slope: float, inter: float) -> None:
    """Uncompressed .nii with int16 storage and an explicit scl_slope / scl_inter (nibabel would
    otherwise choose its own scaling on save)."""
    import nibabel as nib

    data, affine = reorient_canonical(canonical, code)
    raw = np.round((data - inter) / slope).astype(np.int16)
    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(np.int16)
    hdr.set_data_shape(raw.shape)
    hdr.set_sform(affine, code=1)
    hdr.set_qform(affine, code=1)
    hdr["scl_slope"], hdr["scl_inter"] = slope, inter
    hdr["vox_offset"] = 352
    with open(path, "wb") as fh:
        hdr.write_to(fh)
        fh.write(b"\0" * (352 - fh.tell()))
        fh.write(raw.tobytes(order="F"))
