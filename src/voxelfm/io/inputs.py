"""``collect_inputs``: turn files, folders and CSV manifests into a list of volumes to process."""

from __future__ import annotations

import csv
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from voxelfm.errors import VoxelFMError, VolumeReadError
from voxelfm.io.overrides import ReadOverrides

__all__ = ["InputItem", "collect_inputs", "volume_id_from_path"]

# Single-file volumes picked up from folders (DICOM files inside folders are grouped into series).
_FOLDER_VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".npy", ".npz", ".zip")


@dataclass(frozen=True)
class InputItem:
    """One volume to read: ``read_volume(item.path, series_uid=item.series_uid, overrides=item.overrides)``.

    Attributes:
        id: manifest id, DICOM SeriesInstanceUID, or file name without extensions. Any string; callers
            make file names with :func:`voxelfm.utils.safe_id`.
        path: file or folder.
        series_uid: the series to read when ``path`` is a DICOM folder (None: the largest CT series).
        overrides: spacing / orientation / rescale from a manifest's override columns
            (:mod:`voxelfm.io.overrides`), or None.
        columns: the other (non-empty) columns of its manifest row, as text (e.g. FMCIB seed points
            ``coordX, coordY, coordZ``); empty for files and folders.
    """

    id: str
    path: Path
    series_uid: str | None = None
    overrides: ReadOverrides | None = None
    columns: dict[str, str] = field(default_factory=dict, compare=False, hash=False)


def volume_id_from_path(path: str | Path) -> str:
    """File name without its volume extension(s): ``ct_001.nii.gz`` -> ``ct_001``."""
    from voxelfm.io.read import VOLUME_SUFFIXES

    name = Path(path).name
    lower = name.lower()
    for suffix in VOLUME_SUFFIXES:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return Path(name).stem or name


def _from_manifest(csv_path: Path) -> list[InputItem]:
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            fields = [f.strip() for f in (reader.fieldnames or [])]
            if "id" not in fields or "path" not in fields:
                raise VoxelFMError(f"{csv_path}: a manifest needs columns 'id' and 'path' (found {fields})")
            items = []
            for line, row in enumerate(reader, start=2):
                row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
                if not row.get("id") or not row.get("path"):
                    raise VoxelFMError(f"{csv_path}, line {line}: empty id or path")
                p = Path(os.path.expanduser(row["path"]))
                if not p.is_absolute():
                    p = csv_path.parent / p
                try:
                    overrides = ReadOverrides.from_mapping(row)
                except ValueError as exc:
                    raise VoxelFMError(f"{csv_path}, line {line}: {exc}") from None
                extra = {k: v for k, v in row.items()
                         if k and k not in ("id", "path", "series_uid") and not k.startswith("override_") and v}
                items.append(InputItem(row["id"], p, row.get("series_uid") or None, overrides, extra))
            return items
    except UnicodeDecodeError as exc:
        raise VoxelFMError(f"{csv_path}: not a UTF-8 text CSV ({exc})") from None


def _from_folder(folder: Path) -> list[InputItem]:
    from voxelfm.io.dicom import find_dicom_series

    items: list[InputItem] = []
    series = find_dicom_series(folder, recursive=True)
    skipped = [s for s in series if not s.is_volume_candidate]
    for s in series:
        if s.is_volume_candidate:
            items.append(InputItem(s.uid, s.folder, s.uid))
    if skipped:
        warnings.warn(f"{folder}: skipped {len(skipped)} DICOM series that are not CT volumes "
                      f"(scouts/localizers, other modalities or < 4 slices)", stacklevel=3)
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and name.lower().endswith(_FOLDER_VOLUME_SUFFIXES):
                p = Path(dirpath) / name
                items.append(InputItem(volume_id_from_path(p), p))
    return items


def _from_file(path: Path) -> InputItem:
    from voxelfm.io.read import detect_format

    fmt = detect_format(path)
    if fmt == "dicom":
        import pydicom

        from voxelfm.io.dicom import _series_key

        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"], force=True)
        except Exception:
            raise VolumeReadError(path, "cannot read the SeriesInstanceUID of this DICOM file") from None
        return InputItem(_series_key(ds, path), path, None)
    return InputItem(volume_id_from_path(path), path)


def collect_inputs(inputs: Sequence[str | Path]) -> list[InputItem]:
    """Expand files, folders and CSV manifests into :class:`InputItem` s, in input order.

    * a CSV file is a manifest with columns ``id`` and ``path`` (optional ``series_uid`` and
      reading overrides ``override_spacing_z/_y/_x``, ``override_rescale_slope``,
      ``override_rescale_intercept``, ``override_orientation`` — see :mod:`voxelfm.io.overrides`;
      other columns are kept in ``InputItem.columns`` for backbones that use them, e.g. FMCIB seed
      points); relative paths are resolved against the CSV's folder;
    * a folder gives one item per DICOM CT series found anywhere below it (scouts, localizers,
      non-CT and < 4-slice series skipped; id = SeriesInstanceUID) and one per volume file below it
      (NIfTI, NRRD, MHA/MHD, npy/npz, zip; id = file name without extensions);
    * any other file is one item (a DICOM file's id is its SeriesInstanceUID).

    Identical items are merged; two different items with one id raise :class:`VoxelFMError`.
    """
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    out: list[InputItem] = []
    by_id: dict[str, InputItem] = {}
    for raw in inputs:
        p = Path(os.path.expanduser(str(raw)))
        if not p.exists():
            raise VolumeReadError(p, "no such file or folder")
        if p.is_dir():
            items = _from_folder(p)
        elif p.name.lower().endswith(".csv"):
            items = _from_manifest(p)
        else:
            items = [_from_file(p)]
        for item in items:
            prev = by_id.get(item.id)
            if prev is not None:
                if (Path(prev.path).resolve() == Path(item.path).resolve() and prev.series_uid == item.series_uid
                        and prev.overrides == item.overrides):
                    continue
                raise VoxelFMError(f"duplicate id {item.id!r}: {prev.path} and {item.path}; rename one or list "
                                   f"them in a manifest CSV with unique ids")
            by_id[item.id] = item
            out.append(item)
    return out
