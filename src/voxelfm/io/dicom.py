"""DICOM: series discovery from headers, series choice, slice ordering, decoding of one series.

Reading a folder is two passes: every file's *header* is read (pydicom ``stop_before_pixels`` +
``specific_tags``; files that are not DICOM, DICOMDIR, thumbnails and text files are skipped), the
files are grouped by SeriesInstanceUID and one series is chosen; then only that series' pixels are
decoded (compressed transfer syntaxes through pydicom's pixel decoders: pylibjpeg for JPEG
baseline/extended/lossless, JPEG-LS and JPEG 2000, pydicom's own RLE decoder). Single-frame slices
and multi-frame (Enhanced CT) files are both turned into a list of frames with their own position,
orientation, pixel spacing and rescale, ordered by position along the slice normal.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from voxelfm.errors import VolumeReadError
from voxelfm.io._source import SourceImage
from voxelfm.io.orientation import AxisMap
from voxelfm.io.validation import check_slice_positions

__all__ = [
    "DicomSeriesInfo",
    "find_dicom_series",
    "read_dicom",
    "is_dicom_file",
    "DICOM_REFERENCE_CLIP",
    "MIN_SLICES",
]

#: HU clamp of the reference's ``load_dicom``.
DICOM_REFERENCE_CLIP = (-1000.0, 1000.0)
#: Series with fewer slices are scouts / localizers / single images and are never picked automatically.
MIN_SLICES = 4

_HEADER_TAGS = [
    "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "SeriesNumber",
    "SeriesDescription", "Modality", "ImageType", "Manufacturer", "ManufacturerModelName",
    "ConvolutionKernel", "ImagePositionPatient", "ImageOrientationPatient", "InstanceNumber",
    "Rows", "Columns", "PixelSpacing", "NumberOfFrames", "SliceThickness", "SpacingBetweenSlices",
    "RescaleSlope", "RescaleIntercept", "SamplesPerPixel", "PixelRepresentation", "BitsAllocated",
]
# Files with these suffixes are never DICOM; skipping them avoids opening thumbnails, reports, ...
_NOT_DICOM = {
    ".txt", ".xml", ".json", ".csv", ".tsv", ".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff",
    ".db", ".ini", ".log", ".md", ".pdf", ".html", ".htm", ".py", ".nii", ".gz", ".zip", ".nrrd",
    ".nhdr", ".mha", ".mhd", ".raw", ".npy", ".npz", ".exe", ".dll", ".inf", ".js", ".css", ".yaml",
    ".yml", ".pth", ".safetensors", ".tar", ".7z", ".bz2", ".xz", ".lock", ".tmp",
}
# Suffixes worth a forced read when the 128-byte preamble + "DICM" is missing (old exports).
_HEADERLESS_OK = {"", ".dcm", ".dicom", ".dic", ".ima", ".img"}
_LOCALIZER_WORDS = ("LOCALIZER", "SCOUT", "TOPOGRAM", "SURVIEW", "SCANOGRAM")


# ----------------------------------------------------------------------------------- discovery
@dataclass(frozen=True)
class DicomSeriesInfo:
    """One DICOM series found by :func:`find_dicom_series` (from headers only, no pixels decoded).

    Attributes:
        uid: SeriesInstanceUID.
        folder: deepest folder containing all its files.
        files: its files (one per SOPInstanceUID), sorted by name.
        modality: Modality (``"CT"``, ``"MR"``, ...) or None when missing.
        description: SeriesDescription or None.
        n_slices: number of 2-D images (frames of multi-frame files counted).
        study_uid, series_number, image_type, multiframe, rows, columns: more header facts.
    """

    uid: str
    folder: Path
    files: tuple[Path, ...]
    modality: str | None
    description: str | None
    n_slices: int
    study_uid: str | None = None
    series_number: int | None = None
    image_type: tuple[str, ...] = ()
    multiframe: bool = False
    rows: int | None = None
    columns: int | None = None

    @property
    def is_localizer(self) -> bool:
        """ImageType or description marks a scout / localizer / topogram."""
        words = " ".join(self.image_type).upper() + " " + (self.description or "").upper()
        return any(w in words for w in _LOCALIZER_WORDS)

    @property
    def is_ct(self) -> bool:
        """Modality CT, or no Modality at all (accepted like the reference does)."""
        return self.modality in (None, "", "CT")

    @property
    def is_volume_candidate(self) -> bool:
        """A CT series that :func:`read_volume` may pick automatically."""
        return self.is_ct and not self.is_localizer and self.n_slices >= MIN_SLICES

    def to_dict(self) -> dict[str, Any]:
        return {
            "uid": self.uid, "folder": str(self.folder), "n_files": len(self.files),
            "modality": self.modality, "description": self.description, "n_slices": self.n_slices,
            "series_number": self.series_number, "image_type": list(self.image_type),
            "multiframe": self.multiframe, "rows": self.rows, "columns": self.columns,
            "localizer": self.is_localizer,
        }


@dataclass
class _Header:
    path: Path
    ds: Any  # pydicom Dataset without pixel data
    forced: bool

    @property
    def n_frames(self) -> int:
        try:
            return max(1, int(self.ds.get("NumberOfFrames", 1) or 1))
        except (TypeError, ValueError):
            return 1


@dataclass
class _Scan:
    groups: dict[str, list[_Header]] = field(default_factory=dict)
    n_files: int = 0
    unreadable: list[Path] = field(default_factory=list)
    skipped: int = 0  # files skipped by name (non-DICOM suffix, hidden, DICOMDIR)
    duplicates: int = 0
    corrupt: list[tuple[Path, str]] = field(default_factory=list)  # DICOM image files that cannot be parsed


def _looks_headerless_ok(path: Path) -> bool:
    suffix = path.suffix.lower()
    return suffix in _HEADERLESS_OK or suffix[1:].isdigit()


def _iter_files(root: Path, recursive: bool) -> Iterator[Path]:
    if root.is_file():
        yield root
        return
    if recursive:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                yield Path(dirpath) / name
    else:
        for p in sorted(root.iterdir()):
            if p.is_file():
                yield p


def _skip_name(path: Path) -> bool:
    name = path.name
    return name.startswith(".") or name.upper() == "DICOMDIR" or path.suffix.lower() in _NOT_DICOM


def _read_header(path: Path, corrupt: list[tuple[Path, str]] | None = None) -> tuple[Any, bool] | None:
    """``(dataset without pixels, forced)`` for an image DICOM file; None for anything else.

    A file that announces itself as a DICOM image (preamble + file meta with an image storage
    SOP class) but cannot be parsed, or whose header ends before Rows / Columns (a truncated
    file: pydicom then returns a partial dataset without raising), is appended to ``corrupt`` as
    ``(path, reason)``. Images without SeriesInstanceUID are accepted (see :func:`_series_key`).
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
        forced = False
    except InvalidDicomError:
        if not _looks_headerless_ok(path):
            return None
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS, force=True)
        except Exception:
            return None
        forced = True
    except Exception as exc:  # a DICOM preamble, then a parse error
        if corrupt is not None:
            corrupt.append((path, f"{type(exc).__name__}: {' '.join(str(exc).split())[:120]}"))
        return None
    if "Rows" not in ds or "Columns" not in ds:
        if corrupt is not None and not forced and _is_image_sop(ds):
            corrupt.append((path, "the header ends before Rows/Columns (truncated)"))
        return None
    if "SeriesInstanceUID" not in ds and "PixelSpacing" not in ds and "ImagePositionPatient" not in ds:
        return None  # no series and no geometry: not a slice of a volume
    return ds, forced


#: Prefix of the stand-in series UID of images that have no SeriesInstanceUID.
NO_UID_PREFIX = "NOUID."


def _series_key(ds: Any, path: Path) -> str:
    """SeriesInstanceUID; for images without one (stripped by some anonymisers) one stand-in per
    folder, stable across calls (``NOUID.<hash of the folder>``), as the reference groups them."""
    uid = str(ds.get("SeriesInstanceUID", "") or "").strip()
    if uid:
        return uid
    import hashlib

    return NO_UID_PREFIX + hashlib.sha1(str(path.parent.resolve()).encode()).hexdigest()[:16]


def _is_image_sop(ds: Any) -> bool:
    """The file meta names an image storage SOP class (CT, Enhanced CT, MR, ...)."""
    meta = getattr(ds, "file_meta", None)
    uid = meta.get("MediaStorageSOPClassUID") if meta is not None else None
    return uid is not None and "Image Storage" in str(getattr(uid, "name", ""))


def is_dicom_file(path: str | Path) -> bool:
    """True when ``path`` is a DICOM image file (header check only)."""
    p = Path(path)
    return p.is_file() and not _skip_name(p) and _read_header(p) is not None


def _scan(root: Path, recursive: bool = True) -> _Scan:
    scan = _Scan()
    seen_sop: set[str] = set()
    for path in _iter_files(root, recursive):
        if _skip_name(path) and path != root:
            scan.skipped += 1
            continue
        scan.n_files += 1
        got = _read_header(path, scan.corrupt)
        if got is None:
            scan.unreadable.append(path)
            continue
        ds, forced = got
        sop = str(ds.get("SOPInstanceUID", "") or "")
        if sop:
            if sop in seen_sop:
                scan.duplicates += 1
                continue
            seen_sop.add(sop)
        scan.groups.setdefault(_series_key(ds, path), []).append(_Header(path, ds, forced))
    return scan


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = "\\".join(str(v) for v in value)
    s = str(value).strip()
    return s or None


def _info(uid: str, headers: Sequence[_Header]) -> DicomSeriesInfo:
    ds0 = headers[0].ds
    files = tuple(sorted(h.path for h in headers))
    folder = Path(os.path.commonpath([str(p.parent) for p in files]))
    try:
        number = int(ds0.get("SeriesNumber")) if ds0.get("SeriesNumber") not in (None, "") else None
    except (TypeError, ValueError):
        number = None
    image_type = tuple(str(v).upper() for v in (ds0.get("ImageType") or ()))
    return DicomSeriesInfo(
        uid=uid, folder=folder, files=files, modality=_text(ds0.get("Modality")),
        description=_text(ds0.get("SeriesDescription")), n_slices=sum(h.n_frames for h in headers),
        study_uid=_text(ds0.get("StudyInstanceUID")), series_number=number, image_type=image_type,
        multiframe=any(h.n_frames > 1 for h in headers),
        rows=int(ds0.Rows) if ds0.get("Rows") is not None else None,
        columns=int(ds0.Columns) if ds0.get("Columns") is not None else None,
    )


def _sorted_infos(scan: _Scan) -> list[DicomSeriesInfo]:
    infos = [_info(uid, hs) for uid, hs in scan.groups.items()]
    infos.sort(key=lambda s: (str(s.folder), s.series_number if s.series_number is not None else 1 << 30, s.uid))
    return infos


def find_dicom_series(root: str | Path, *, recursive: bool = True) -> list[DicomSeriesInfo]:
    """List the DICOM image series under ``root`` (a folder, or one DICOM file) from headers only.

    Non-DICOM files (DICOMDIR, text, thumbnails, NIfTI, ...) are ignored; files are de-duplicated by
    SOPInstanceUID. Every series is listed (any modality, scouts included); see
    :attr:`DicomSeriesInfo.is_volume_candidate` for the ones :func:`read_volume` would pick.

    Returns:
        Series sorted by folder, SeriesNumber, UID.

    Raises:
        FileNotFoundError: ``root`` does not exist.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such file or folder")
    return _sorted_infos(_scan(root, recursive))


# ----------------------------------------------------------------------------------- frames
@dataclass
class _Frame:
    file: int  # index into the series' header list
    frame: int | None  # frame number in a multi-frame file, None for single-frame files
    ipp: np.ndarray | None
    iop: np.ndarray | None
    pixel_spacing: tuple[float, float] | None
    slope: float | None
    intercept: float | None
    instance: int | None
    spacing_between: float | None
    thickness: float | None


def _float(v: Any) -> float | None:
    try:
        return None if v is None or v == "" else float(v)
    except (TypeError, ValueError):
        return None


def _floats(v: Any, n: int) -> np.ndarray | None:
    try:
        a = np.asarray([float(x) for x in v], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return a if a.size == n and np.all(np.isfinite(a)) else None


def _single_frame(i: int, ds: Any) -> _Frame:
    ps = _floats(ds.get("PixelSpacing"), 2) if ds.get("PixelSpacing") is not None else None
    inst = ds.get("InstanceNumber")
    try:
        inst = int(inst) if inst not in (None, "") else None
    except (TypeError, ValueError):
        inst = None
    return _Frame(
        file=i, frame=None,
        ipp=_floats(ds.get("ImagePositionPatient"), 3) if ds.get("ImagePositionPatient") is not None else None,
        iop=_floats(ds.get("ImageOrientationPatient"), 6) if ds.get("ImageOrientationPatient") is not None else None,
        pixel_spacing=None if ps is None else (float(ps[0]), float(ps[1])),
        slope=_float(ds.get("RescaleSlope")), intercept=_float(ds.get("RescaleIntercept")),
        instance=inst, spacing_between=_float(ds.get("SpacingBetweenSlices")),
        thickness=_float(ds.get("SliceThickness")),
    )


def _group_attr(ds: Any, per: Any, shared: Any, seq: str, attr: str) -> Any:
    """Functional-group lookup: per-frame item, then shared item, then the top-level dataset."""
    for item in (per, shared):
        if item is not None and seq in item and len(item[seq].value) > 0 and attr in item[seq].value[0]:
            return item[seq].value[0][attr].value
    return ds.get(attr)


def _multi_frames(i: int, path: Path, forced: bool) -> tuple[list[_Frame], Any]:
    """Frames of a multi-frame (Enhanced CT) file, from its functional groups."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=forced)
    except Exception as exc:
        raise VolumeReadError(path, f"cannot read the DICOM header ({exc}); the file is corrupt or truncated") from None
    n = max(1, int(ds.get("NumberOfFrames", 1) or 1))
    per_seq = ds.get("PerFrameFunctionalGroupsSequence")
    shared_seq = ds.get("SharedFunctionalGroupsSequence")
    shared = shared_seq[0] if shared_seq else None
    if per_seq is not None and len(per_seq) != n:
        raise VolumeReadError(path, f"PerFrameFunctionalGroupsSequence has {len(per_seq)} items for {n} frames; "
                                    f"the file is inconsistent")
    frames = []
    for f in range(n):
        per = per_seq[f] if per_seq is not None else None
        ipp = _group_attr(ds, per, shared, "PlanePositionSequence", "ImagePositionPatient")
        iop = _group_attr(ds, per, shared, "PlaneOrientationSequence", "ImageOrientationPatient")
        ps = _group_attr(ds, per, shared, "PixelMeasuresSequence", "PixelSpacing")
        ps_a = _floats(ps, 2) if ps is not None else None
        frames.append(_Frame(
            file=i, frame=f,
            ipp=_floats(ipp, 3) if ipp is not None else None,
            iop=_floats(iop, 6) if iop is not None else None,
            pixel_spacing=None if ps_a is None else (float(ps_a[0]), float(ps_a[1])),
            slope=_float(_group_attr(ds, per, shared, "PixelValueTransformationSequence", "RescaleSlope")),
            intercept=_float(_group_attr(ds, per, shared, "PixelValueTransformationSequence", "RescaleIntercept")),
            instance=f + 1,
            spacing_between=_float(_group_attr(ds, per, shared, "PixelMeasuresSequence", "SpacingBetweenSlices")),
            thickness=_float(_group_attr(ds, per, shared, "PixelMeasuresSequence", "SliceThickness")),
        ))
    if any(fr.ipp is None for fr in frames):
        raise VolumeReadError(path, "multi-frame file without per-frame positions (PlanePositionSequence); "
                                    "cannot order its frames into a volume")
    return frames, ds


# ----------------------------------------------------------------------------------- geometry
@dataclass
class _Geometry:
    order: np.ndarray  # frame indices in stack order
    index_affine: np.ndarray  # (slice, row, col) -> LPS
    direction: np.ndarray  # ITK order (column, row, slice)
    origin: np.ndarray
    slice_gap: float
    reference_map: AxisMap
    reference_spacing: tuple[float, float, float]
    notes: list[str]


def _geometry(frames: list[_Frame], where: Path) -> _Geometry:
    notes: list[str] = []
    ps = [f.pixel_spacing for f in frames]
    if any(p is None for p in ps):
        raise VolumeReadError(where, "PixelSpacing is missing; the in-plane voxel size is unknown "
                                     "(is this a CT image?)")
    ps_arr = np.asarray(ps)
    if not np.allclose(ps_arr, ps_arr[0], rtol=1e-3, atol=1e-4):
        raise VolumeReadError(where, f"slices have different PixelSpacing ({sorted(set(map(tuple, ps_arr.tolist())))}); "
                                     f"they are not one volume — pass series_uid=... of one reconstruction")
    dr, dc = float(ps_arr[0, 0]), float(ps_arr[0, 1])
    n = len(frames)

    if all(f.ipp is not None and f.iop is not None for f in frames):
        iops = np.stack([f.iop for f in frames])
        if not np.allclose(iops, iops[0], atol=1e-3):
            raise VolumeReadError(where, "slices have different ImageOrientationPatient (several stacks or "
                                         "reformats in one series); pass series_uid=... of a single stack")
        row = iops[0, :3] / np.linalg.norm(iops[0, :3])
        col = iops[0, 3:] / np.linalg.norm(iops[0, 3:])
        normal = np.cross(row, col)
        ipps = np.stack([f.ipp for f in frames])
        pos = ipps @ normal
        order = np.argsort(pos, kind="stable")
        gap = check_slice_positions(pos[order], where)
        first, last = ipps[order[0]], ipps[order[-1]]
        step = (last - first) / (n - 1)
        affine = np.eye(4)
        affine[:3, 0] = step
        affine[:3, 1] = col * dr
        affine[:3, 2] = row * dc
        affine[:3, 3] = first
        direction = np.stack([row, col, step / np.linalg.norm(step)], axis=1)
        # Reference: slices sorted by ascending ImagePositionPatient[2] (stable over file order).
        z = ipps[order, 2]
        dz = np.diff(z)
        if np.all(dz > 0):
            ref = AxisMap()
        elif np.all(dz < 0):
            ref = AxisMap(flips=(True, False, False))
        else:
            ref = AxisMap()
            notes.append("slices do not change along z (sagittal/coronal stack): the reference reader's slice "
                         "order would be arbitrary; reference_layout() keeps the slice-normal order")
        z_sorted = np.sort(ipps[:, 2])
        ref_first = frames[order[0] if np.all(dz >= 0) else order[-1]]
        if ref_first.spacing_between is not None:
            ref_dz = abs(ref_first.spacing_between)
        else:
            ref_dz = abs(float(np.mean(np.diff(z_sorted))))
        if not ref_dz > 0:
            ref_dz = abs(gap)
        ref_spacing = (ref_dz, dr, dc)
    else:
        # No geometry: InstanceNumber order, axial slices assumed (the reference does the same).
        if any(f.instance is None for f in frames):
            raise VolumeReadError(where, "slices have neither ImagePositionPatient/ImageOrientationPatient nor "
                                         "InstanceNumber; their order is unknown")
        order = np.argsort([f.instance for f in frames], kind="stable")
        insts = np.asarray([frames[i].instance for i in order])
        if np.any(np.diff(insts) == 0):
            raise VolumeReadError(where, "several slices share one InstanceNumber and there is no "
                                         "ImagePositionPatient to order them")
        f0 = frames[order[0]]
        gap = f0.spacing_between if f0.spacing_between else f0.thickness
        if not gap or gap <= 0:
            raise VolumeReadError(where, "no ImagePositionPatient, SpacingBetweenSlices or SliceThickness: "
                                         "the slice spacing is unknown")
        gap = abs(float(gap))
        notes.append("no ImagePositionPatient/ImageOrientationPatient: slices ordered by InstanceNumber and "
                     "assumed axial (feet to head, LPS rows/columns); check the orientation")
        affine = np.zeros((4, 4))
        affine[2, 0], affine[1, 1], affine[0, 2], affine[3, 3] = gap, dr, dc, 1.0
        direction = np.eye(3)
        ref = AxisMap()
        ref_spacing = (gap, dr, dc)
    return _Geometry(order=order, index_affine=affine, direction=direction, origin=affine[:3, 3].copy(),
                     slice_gap=abs(float(gap)), reference_map=ref, reference_spacing=ref_spacing, notes=notes)


# ----------------------------------------------------------------------------------- decoding
def _ensure_transfer_syntax(ds: Any) -> None:
    """Give files read with ``force=True`` (no file meta) a transfer syntax so pixels can decode."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    if meta is None:
        ds.file_meta = meta = FileMetaDataset()
    if "TransferSyntaxUID" not in meta:
        implicit = True
        enc = getattr(ds, "original_encoding", None)
        if enc is not None and enc[0] is not None:
            implicit = bool(enc[0])
        meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian


def _decode(path: Path, forced: bool) -> tuple[Any, np.ndarray]:
    import pydicom

    try:
        ds = pydicom.dcmread(path, force=forced)
    except Exception as exc:
        raise VolumeReadError(path, f"cannot read the file ({type(exc).__name__}: {exc}); it is corrupt or "
                                    f"truncated — re-export the series") from None
    if "PixelData" not in ds:
        raise VolumeReadError(path, "the file has no pixel data; it is truncated or not an image")
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise VolumeReadError(path, f"the image has {ds.SamplesPerPixel} samples per pixel (colour); "
                                    f"a CT is grey-scale")
    _ensure_transfer_syntax(ds)
    try:
        px = ds.pixel_array
    except Exception as exc:
        ts = ds.file_meta.TransferSyntaxUID
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = ("install the pixel decoders: pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg"
                if ts.is_compressed and ("plugin" in msg.lower() or "missing" in msg.lower() or "install" in msg.lower())
                else "the pixel data is corrupt or truncated — re-export the series")
        raise VolumeReadError(path, f"cannot decode the pixel data ({ts.name}): {msg}; {hint}") from None
    return ds, px


def _padding_mask(ds: Any, px: np.ndarray) -> np.ndarray | None:
    pad = ds.get("PixelPaddingValue")
    if pad is None or isinstance(pad, bytes):
        return None
    limit = ds.get("PixelPaddingRangeLimit")
    if limit is not None and not isinstance(limit, bytes):
        lo, hi = sorted((int(pad), int(limit)))
        return (px >= lo) & (px <= hi)
    return px == int(pad)


def _kernel(ds: Any) -> str | None:
    return _text(ds.get("ConvolutionKernel"))


def _read_series(headers: list[_Header], where: Path, source: dict[str, Any]) -> SourceImage:
    """Decode one series (its headers already grouped) into a :class:`SourceImage`."""
    frames: list[_Frame] = []
    mf_datasets: dict[int, Any] = {}
    for i, h in enumerate(headers):
        if h.n_frames > 1:
            fr, full = _multi_frames(i, h.path, h.forced)
            frames.extend(fr)
            mf_datasets[i] = full
        else:
            frames.append(_single_frame(i, h.ds))
    rows = {(int(h.ds.Rows), int(h.ds.Columns)) for h in headers}
    if len(rows) != 1:
        raise VolumeReadError(where, f"images of different sizes in one series ({sorted(rows)}); pass "
                                     f"series_uid=... of one reconstruction")
    n_rows, n_cols = rows.pop()
    if len(frames) < 2:
        raise VolumeReadError(where, "the series has a single 2-D slice; pass the folder of the whole series")
    geo = _geometry(frames, where)

    # Decode in stack order; a multi-frame file is decoded once.
    n = len(frames)
    out = np.empty((n, n_rows, n_cols), dtype=np.float32)
    pad_mask: np.ndarray | None = None
    decoded: dict[int, tuple[Any, np.ndarray]] = {}
    rescales: set[tuple[float, float]] = set()
    missing_rescale = 0
    storage: np.dtype | None = None
    transfer_syntax = None
    from voxelfm.utils import progress

    for k, fi in enumerate(progress(geo.order, total=n, desc="decoding DICOM", unit="slice", leave=False,
                                         disable=True if n < 64 or not sys.stderr.isatty() else None)):
        fr = frames[int(fi)]
        h = headers[fr.file]
        if fr.file in decoded:
            ds, px_all = decoded[fr.file]
        else:
            ds, px_all = _decode(h.path, h.forced)
            if fr.frame is not None:
                if px_all.ndim == 2:
                    px_all = px_all[None]
                decoded = {fr.file: (ds, px_all)}  # keep only the current multi-frame file
        px = px_all[fr.frame] if fr.frame is not None else px_all
        if px.shape != (n_rows, n_cols):
            raise VolumeReadError(h.path, f"decoded image has shape {px.shape}, header says {(n_rows, n_cols)}; "
                                          f"the file is corrupt")
        if storage is None:
            storage = px.dtype
            transfer_syntax = ds.file_meta.TransferSyntaxUID.name
        slope, intercept = fr.slope, fr.intercept
        if fr.frame is None:  # the full dataset is authoritative for single-frame files
            slope, intercept = _float(ds.get("RescaleSlope")), _float(ds.get("RescaleIntercept"))
        if slope is None and intercept is None:
            missing_rescale += 1
        slope = 1.0 if slope is None else slope
        intercept = 0.0 if intercept is None else intercept
        rescales.add((slope, intercept))
        if slope == 1.0:
            np.add(px, np.float32(intercept), out=out[k], casting="unsafe")
        else:
            np.multiply(px, slope, out=out[k], casting="unsafe")
            out[k] += intercept
        m = _padding_mask(ds, px)
        if m is not None and m.any():
            if pad_mask is None:
                pad_mask = np.zeros(out.shape, dtype=bool)
            pad_mask[k] = m

    ds0 = headers[0].ds
    warnings = source.setdefault("warnings", [])
    warnings.extend(geo.notes)
    if "SeriesInstanceUID" not in ds0:
        warnings.append(f"the images have no SeriesInstanceUID; the {len(headers)} such file(s) in "
                        f"{headers[0].path.parent.name or headers[0].path.parent} were read as one series")
    if missing_rescale:
        warnings.append(f"{missing_rescale} slice(s) have no RescaleSlope/RescaleIntercept; stored values "
                        f"were taken as HU")
    thickness = frames[int(geo.order[0])].thickness
    source.update({
        "format": "dicom",
        "modality": _text(ds0.get("Modality")),
        "series_uid": _series_key(ds0, headers[0].path),
        "study_uid": _text(ds0.get("StudyInstanceUID")),
        "series_number": _text(ds0.get("SeriesNumber")),
        "series_description": _text(ds0.get("SeriesDescription")),
        "manufacturer": _text(ds0.get("Manufacturer")),
        "model": _text(ds0.get("ManufacturerModelName")),
        "kernel": _kernel(ds0),
        "n_slices": n,
        "n_files": len(headers),
        "multiframe": bool(mf_datasets),
        "transfer_syntax": transfer_syntax,
        "storage_dtype": None if storage is None else str(storage),
        "slice_thickness": thickness,
        "slice_gap": round(geo.slice_gap, 6),
        "rescale": ({"slope": next(iter(rescales))[0], "intercept": next(iter(rescales))[1]}
                    if len(rescales) == 1 else {"per_slice": True, "n_distinct": len(rescales)}),
    })
    if thickness is not None and abs(thickness - geo.slice_gap) > 0.01 * max(thickness, geo.slice_gap):
        source["note"] = (f"slice gap {geo.slice_gap:.4g} mm differs from SliceThickness {thickness:.4g} mm "
                          f"(overlapping or gapped reconstruction); the gap is the voxel spacing")
    all_unit = rescales == {(1.0, 0.0)}
    return SourceImage(
        array=out,
        index_affine=geo.index_affine,
        direction=geo.direction,
        origin=geo.origin,
        itk_axes=(2, 1, 0),
        reference_map=geo.reference_map,
        reference_spacing=geo.reference_spacing,
        reference_clip=DICOM_REFERENCE_CLIP,
        source=source,
        padding_mask=pad_mask,
        storage_dtype=storage if all_unit else None,
        may_be_nonfinite=storage is not None and storage.kind == "f",
    )


# ----------------------------------------------------------------------------------- entry points
def _describe(infos: Sequence[DicomSeriesInfo]) -> str:
    return "; ".join(f"{s.uid} ({s.modality or '?'}, {s.n_slices} slice(s)"
                     f"{', ' + s.description if s.description else ''})" for s in infos[:6]) + \
        (" ..." if len(infos) > 6 else "")


def _volume_files_in(folder: Path) -> list[str]:
    exts = (".nii", ".nii.gz", ".nrrd", ".mha", ".mhd", ".npy", ".npz", ".zip")
    try:
        return sorted(p.name for p in folder.iterdir() if p.name.lower().endswith(exts))[:3]
    except OSError:
        return []


def _corrupt_note(corrupt: Sequence[tuple[Path, str]]) -> str:
    names = ", ".join(f"{p.name} ({why})" for p, why in corrupt[:3]) + (" ..." if len(corrupt) > 3 else "")
    return f"{len(corrupt)} DICOM image file(s) cannot be read, corrupt or truncated: {names}"


def _choose(scan: _Scan, where: Path, series_uid: str | None) -> tuple[str, list[DicomSeriesInfo]]:
    infos = _sorted_infos(scan)
    if not infos:
        if scan.n_files == 0 and scan.skipped == 0:
            raise VolumeReadError(where, "the folder is empty (no files); pass the folder that holds the "
                                         "DICOM slices")
        if scan.corrupt:
            raise VolumeReadError(where, f"{_corrupt_note(scan.corrupt)}; re-export the series")
        others = _volume_files_in(where) if where.is_dir() else []
        extra = f"; it holds {', '.join(others)} — pass that file instead" if others else \
            " — pass the folder that holds the DICOM slices"
        raise VolumeReadError(where, f"no readable DICOM image files among {scan.n_files + scan.skipped} "
                                     f"file(s){extra}")
    if series_uid is not None:
        match = [s for s in infos if s.uid == series_uid]
        if not match:
            raise VolumeReadError(where, f"no series with SeriesInstanceUID {series_uid}; found: {_describe(infos)}")
        if not match[0].is_ct:
            raise VolumeReadError(where, f"series {series_uid} is not a CT (Modality {match[0].modality}); "
                                         f"voxelfm reads CT only")
        return series_uid, infos
    candidates = [s for s in infos if s.is_volume_candidate]
    if not candidates:
        cts = [s for s in infos if s.is_ct]
        if not cts:
            mods = sorted({s.modality or "?" for s in infos})
            raise VolumeReadError(where, f"not a CT: the DICOM images have Modality {', '.join(mods)}; "
                                         f"voxelfm reads CT only")
        if len(cts) == 1 and cts[0].n_slices == 1:
            raise VolumeReadError(where, "this is a single 2-D slice, not a volume; pass the folder of the "
                                         "whole series")
        raise VolumeReadError(where, f"only scouts/localizers or series with fewer than {MIN_SLICES} slices "
                                     f"found ({_describe(cts)}); pass the folder of the axial series, or "
                                     f"series_uid=... to force one")
    best = max(candidates, key=lambda s: s.n_slices)  # first of the largest (stable order)
    return best.uid, infos


def read_dicom(path: str | Path, *, series_uid: str | None = None) -> SourceImage:
    """Read one DICOM CT series from a folder (searched recursively), a zip of one, or a DICOM file.

    A folder with several series gives the CT series with the most slices (scouts/localizers and
    series of fewer than 4 slices are never picked) unless ``series_uid`` names one. A single file
    must be multi-frame (Enhanced CT); a single-frame file is rejected with a hint to pass its folder.
    """
    path = Path(path)
    if not path.exists():
        raise VolumeReadError(path, "no such file or folder")
    if path.is_file() and (path.suffix.lower() == ".zip" or zipfile.is_zipfile(path)):
        return _read_zip(path, series_uid)
    source: dict[str, Any] = {"path": str(path), "archive": None, "warnings": []}
    if path.is_file():
        got = _read_header(path)
        if got is None:
            raise VolumeReadError(path, "not a DICOM image file (no readable DICOM header with pixel "
                                        "geometry); corrupt, truncated or another format")
        ds, forced = got
        header = _Header(path, ds, forced)
        info = _info(_series_key(ds, path), [header])
        if series_uid is not None and series_uid != info.uid:
            raise VolumeReadError(path, f"the file belongs to series {info.uid}, not {series_uid}")
        if not info.is_ct:
            raise VolumeReadError(path, f"not a CT (Modality {info.modality}); voxelfm reads CT only")
        if header.n_frames == 1:
            raise VolumeReadError(path, f"this file is a single 2-D slice, not a volume; pass the folder of the "
                                        f"whole series ({path.parent})")
        source["series_found"] = 1
        return _read_series([header], path, source)

    scan = _scan(path, recursive=True)
    uid, infos = _choose(scan, path, series_uid)
    chosen = next(s for s in infos if s.uid == uid)
    others = [s for s in infos if s.uid != uid and s.is_volume_candidate]
    source["series_found"] = len(infos)
    source["series"] = [dict(s.to_dict(), read=s.uid == uid) for s in infos]  # what `voxelfm info` lists
    source["folder"] = str(chosen.folder)
    if scan.duplicates:
        source["duplicate_files_skipped"] = scan.duplicates
    if others and series_uid is None:
        source.setdefault("warnings", []).append(
            f"{len(others) + 1} CT series found; read the largest ({chosen.uid}, {chosen.n_slices} slices"
            f"{', ' + chosen.description if chosen.description else ''}); choose another with series_uid=... "
            f"(`voxelfm info` lists them)")
    if not chosen.is_volume_candidate and chosen.n_slices < 2:
        raise VolumeReadError(path, f"series {uid} has a single 2-D slice; it is not a volume")
    headers = sorted(scan.groups[uid], key=lambda h: str(h.path))
    # Unparseable image files next to the series may be its slices: name them, whatever happens.
    folders = {h.path.parent for h in headers}
    near = [c for c in scan.corrupt if c[0].parent in folders]
    try:
        img = _read_series(headers, path, source)
    except VolumeReadError as exc:
        if near:
            raise VolumeReadError(exc.path, f"{exc.reason}; note: {_corrupt_note(near)} — "
                                            f"probably slices of this series") from None
        raise
    if near:
        img.source.setdefault("warnings", []).append(
            f"{_corrupt_note(near)}; if they are slices of this series, the volume is missing them "
            f"— re-export the series")
    return img


def _single_volume_file(folder: Path) -> SourceImage | None:
    """A zip holding no DICOM but exactly one NIfTI/NRRD/MHA/MHD volume is read as that volume."""
    files = [p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")]
    vols = [p for p in files if p.name.lower().endswith((".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd"))]
    if len(vols) != 1 or any(_read_header(p) is not None for p in files if not _skip_name(p)):
        return None
    v = vols[0]
    name = v.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        from voxelfm.io.nifti import read_nifti

        return read_nifti(v)
    from voxelfm.io.sitk_formats import read_sitk_image

    fmt = "nrrd" if name.endswith((".nrrd", ".nhdr")) else name.rsplit(".", 1)[-1]
    return read_sitk_image(v, fmt)


def _read_zip(path: Path, series_uid: str | None) -> SourceImage:
    tmp = Path(tempfile.mkdtemp(prefix="voxelfm-zip-"))
    try:
        try:
            with zipfile.ZipFile(path) as zf:
                zf.extractall(tmp)  # zipfile strips absolute paths and '..' components
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise VolumeReadError(path, f"cannot extract the zip archive ({exc}); it is corrupt or truncated") from None
        try:
            single = _single_volume_file(tmp)
            if single is not None and series_uid is None:
                img = single
            else:
                img = read_dicom(tmp, series_uid=series_uid)
        except VolumeReadError as exc:
            p = Path(exc.path)
            inner = "" if p == tmp else f" (member {p.relative_to(tmp) if p.is_relative_to(tmp) else p})"
            raise VolumeReadError(path, f"{exc.reason}{inner}") from None
        img.source["path"] = str(path)
        img.source["archive"] = str(path)
        def inside(folder: str) -> str | None:
            f = Path(folder)
            return str(f.relative_to(tmp)) if f.is_relative_to(tmp) else None

        if "folder" in img.source:
            img.source["folder"] = inside(img.source["folder"])
        for info in img.source.get("series", []):
            info["folder"] = inside(info["folder"])
        return img
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
