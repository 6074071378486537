"""Write one canonical SPL HU array as a RAS NIfTI and as an LPS axial DICOM series (test data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_ras_nifti(path: Path, canonical: np.ndarray, spacing, origin_lps=(0.0, 0.0, 0.0)) -> None:
    """RAS+ file: voxel axes i → +R (= canonical w reversed), j → +A (h reversed), k → +S (d).

    ``origin_lps`` is the LPS position of canonical voxel (0, 0, 0); integer HU stored as int16.
    """
    import nibabel as nib

    sz, sy, sx = spacing
    # canonical axes: d → +S, h → +P, w → +L.  RAS file: i → +R, j → +A, k → +S.
    # So i = reversed w, j = reversed h, k = d.
    data = np.transpose(canonical, (2, 1, 0))[::-1, ::-1, :]
    D, H, W = canonical.shape
    ox, oy, oz = origin_lps  # LPS of canonical voxel (0, 0, 0)
    # voxel (i, j, k) = canonical (d=k, h=H-1-j, w=W-1-i); LPS = (ox + w sx, oy + h sy, oz + d sz)
    # RAS = (-LPSx, -LPSy, LPSz)
    affine = np.zeros((4, 4))
    affine[0, 0] = sx      # RAS x = -(ox + (W-1-i) sx) = -ox - (W-1) sx + i sx
    affine[1, 1] = sy
    affine[2, 2] = sz
    affine[:3, 3] = [-ox - (W - 1) * sx, -oy - (H - 1) * sy, oz]
    affine[3, 3] = 1
    img = nib.Nifti1Image(np.ascontiguousarray(np.round(data)).astype(np.int16), affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    nib.save(img, str(path))


def write_lps_dicom(folder: Path, canonical: np.ndarray, spacing, origin_lps=(0.0, 0.0, 0.0)) -> str:
    """Standard axial series: slice k at z = oz + k sz, rows → +P (y), cols → +L (x)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    series, study = generate_uid(), generate_uid()
    sz, sy, sx = spacing
    for k in range(canonical.shape[0]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.Modality = "CT"
        ds.PatientID = "P"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [float(origin_lps[0]), float(origin_lps[1]), float(origin_lps[2] + k * sz)]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [float(sy), float(sx)]
        ds.SliceThickness = float(sz)
        ds.RescaleSlope, ds.RescaleIntercept = 1.0, -1024.0
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = canonical.shape[1:]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = np.round(canonical[k] + 1024).astype(np.int16).tobytes()
        ds.save_as(folder / f"IM{k:04d}.dcm", enforce_file_format=True)
    return series
