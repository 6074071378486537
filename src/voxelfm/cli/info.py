"""``voxelfm info PATH...``: what :func:`voxelfm.read_volume` sees in each input.

For every path: the format, the DICOM series found (the one read is marked), shape, spacing, the
source's orientation code, the HU range and percentiles, the reference-reader layout used by the
``paper`` preset, and warnings. Bad input gives one error line per path and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HELP = "show what voxelfm reads from CT files/folders (format, series, shape, spacing, orientation, HU)"

_PERCENTILES = (1, 5, 50, 95, 99)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="DICOM folder, zip, Enhanced CT file, NIfTI, NRRD, MHA/MHD, npy/npz")
    parser.add_argument("--json", action="store_true",
                        help="print JSON (an object for one path, a list for several) instead of text")
    parser.add_argument("--series-uid", default=None, help="SeriesInstanceUID to read from a DICOM folder")
    parser.add_argument("--spacing", nargs=3, type=float, metavar=("SZ", "SY", "SX"), default=None,
                        help="voxel spacing in mm for .npy/.npz input")


def _round(x: float, nd: int = 4) -> float:
    return float(round(float(x), nd))


def describe(path: str | Path, *, series_uid: str | None = None, spacing: Any = None) -> dict[str, Any]:
    """JSON-able description of one input as read by :func:`voxelfm.io.read_volume`.

    Raises:
        VolumeReadError: the input cannot be read.
    """
    import warnings

    import numpy as np

    from voxelfm.io import find_dicom_series, read_volume
    from voxelfm.io.read import detect_format

    p = Path(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # they are in volume.source["warnings"]
        vol = read_volume(p, spacing=spacing, series_uid=series_uid)
    a = vol.array
    pct = np.percentile(a, _PERCENTILES)
    ref_array_shape = vol.reference_map.out_shape(a.shape)
    record: dict[str, Any] = {
        "path": str(p),
        "format": vol.source.get("format"),
        "shape": list(a.shape),
        "spacing": [_round(s, 6) for s in vol.spacing],
        "orientation": vol.orientation,
        "source_orientation": vol.source.get("orientation"),
        "obliquity_deg": vol.source.get("obliquity_deg"),
        "hu": {"min": _round(a.min(), 2), **{f"p{q}": _round(v, 2) for q, v in zip(_PERCENTILES, pct)},
               "max": _round(a.max(), 2), "mean": _round(a.mean(dtype=np.float64), 2)},
        "affine": [[_round(v, 6) for v in row] for row in vol.affine],
        "origin": [_round(v, 6) for v in vol.origin],
        "direction": [[_round(v, 6) for v in row] for row in vol.direction],
        "reference": {"shape": list(ref_array_shape), "spacing": [_round(s, 6) for s in vol.reference_spacing],
                      "clip": list(vol.reference_clip) if vol.reference_clip else None,
                      "axis_map": vol.reference_map.to_dict()},
        "warnings": list(vol.source.get("warnings", [])),
        "source": {k: v for k, v in vol.source.items() if k not in ("warnings", "series")},
    }
    if vol.source.get("series"):  # folders and zips: the series the reader found (headers read once)
        record["series"] = vol.source["series"]
    elif detect_format(p) == "dicom" and p.is_file():
        chosen = vol.source.get("series_uid")
        record["series"] = [dict(s.to_dict(), read=(s.uid == chosen)) for s in find_dicom_series(p)]
    return record


def _fmt_num(x: float) -> str:
    return f"{x:.4g}"


def format_text(rec: dict[str, Any]) -> str:
    """Human-readable multi-line summary of a :func:`describe` record."""
    src = rec["source"]
    lines = [f"{rec['path']}: {rec['format']}"
             + (f" ({src.get('modality') or '?'}, {src.get('manufacturer') or '?'}"
                f"{', kernel ' + src['kernel'] if src.get('kernel') else ''})" if rec["format"] == "dicom" else "")]
    if rec.get("series"):
        lines.append(f"  series found: {len(rec['series'])} (* = read)")
        for s in rec["series"]:
            tags = ", localizer" if s["localizer"] else ""
            where = f"  [{s['folder']}]" if s.get("folder") not in (None, ".") else ""
            lines.append(f"    {'*' if s['read'] else ' '} {s['uid']}  {s['modality'] or '?'}  "
                         f"{s['n_slices']} slice(s){tags}  {s['description'] or ''}{where}")
    d, h, w = rec["shape"]
    sz, sy, sx = rec["spacing"]
    lines.append(f"  shape [D,H,W]: {d} x {h} x {w}   spacing (z,y,x): {_fmt_num(sz)} x {_fmt_num(sy)} x "
                 f"{_fmt_num(sx)} mm")
    lines.append(f"  orientation: source {rec['source_orientation']}, read as {rec['orientation']}"
                 f"   obliquity {rec['obliquity_deg']:.2f} deg")
    hu = rec["hu"]
    lines.append("  HU: " + "  ".join(f"{k} {_fmt_num(v)}" for k, v in hu.items()))
    if src.get("padding_voxels"):
        lines.append(f"  padding: {src['padding_voxels']} voxel(s) (lowest {src.get('padding_value_hu')}) set to -1024")
    ref = rec["reference"]
    lines.append(f"  reference layout (paper preset): shape {ref['shape']}, spacing "
                 f"{[_fmt_num(s) for s in ref['spacing']]}, clip {ref['clip']}")
    for wmsg in rec["warnings"]:
        lines.append(f"  warning: {wmsg}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from voxelfm.errors import VoxelFMError

    records: list[dict[str, Any]] = []
    failed = 0
    for path in args.paths:
        try:
            rec = describe(path, series_uid=args.series_uid, spacing=args.spacing)
        except (VoxelFMError, ValueError, OSError) as exc:
            failed += 1
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            print(f"voxelfm info: error: {msg}", file=sys.stderr)
            records.append({"path": str(path), "error": msg})
            continue
        records.append(rec)
        if not args.json:
            print(format_text(rec))
    if args.json:
        doc: Any = records[0] if len(records) == 1 else records
        print(json.dumps(doc, indent=2, default=str))
    return 2 if failed else 0
