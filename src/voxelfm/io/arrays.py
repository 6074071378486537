"""``.npy`` / ``.npz`` reader: arrays already in ``[D, H, W]`` SPL order, spacing given or 1 mm."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from voxelfm.errors import VolumeReadError
from voxelfm.io._source import SourceImage
from voxelfm.io.orientation import AxisMap
from voxelfm.io.validation import check_spacing

__all__ = ["read_array_file", "NPZ_IMAGE_KEYS"]

#: Keys tried, in order, when an ``.npz`` holds several arrays.
NPZ_IMAGE_KEYS = ("image", "volume", "ct", "array", "data", "img", "arr_0")


def _load(path: Path) -> tuple[np.ndarray, np.ndarray | None, str | None]:
    with open(path, "rb") as fh:
        magic = fh.read(6)
    if magic != b"\x93NUMPY" and not magic.startswith(b"PK"):
        raise VolumeReadError(path, "not a readable numpy file (no .npy/.npz signature); corrupt or another "
                                    "format")
    try:
        if path.suffix.lower() == ".npy":
            return np.load(path, allow_pickle=False), None, None
        with np.load(path, allow_pickle=False) as z:
            keys = list(z.files)
            spacing = np.asarray(z["spacing"], dtype=np.float64) if "spacing" in keys else None
            candidates = [k for k in keys if k not in ("spacing", "affine", "origin")]
            if len(candidates) == 1:
                key = candidates[0]
            else:
                key = next((k for k in NPZ_IMAGE_KEYS if k in candidates), None)
                if key is None:
                    raise VolumeReadError(path, f"the .npz holds arrays {keys}; name the volume one of "
                                                f"{list(NPZ_IMAGE_KEYS)} (optionally with 'spacing')")
            return np.asarray(z[key]), spacing, key
    except VolumeReadError:
        raise
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise VolumeReadError(path, "the file holds Python objects (pickled); save a plain numeric array "
                                        "with numpy.save") from None
        raise VolumeReadError(path, f"not a readable numpy file ({exc}); corrupt or truncated") from None
    except Exception as exc:
        raise VolumeReadError(path, f"not a readable numpy file ({type(exc).__name__}: {exc}); "
                                    f"corrupt or truncated") from None


def read_array_file(path: str | Path, spacing: Sequence[float] | None = None) -> SourceImage:
    """Read ``.npy``/``.npz`` holding an HU volume ``[D, H, W]`` assumed to be in SPL order.

    Spacing: the ``spacing`` argument, else an ``.npz`` ``spacing`` array ``(sz, sy, sx)``, else 1 mm
    (with a warning). Leading singleton axes (``[1, D, H, W]``) are dropped. Values are taken as HU
    as they are (no padding mapping, like the reference), but are checked to look like HU.
    """
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    array, stored_spacing, key = _load(path)
    while array.ndim > 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 3 or min(array.shape) <= 1:
        what = "a single 2-D slice" if array.ndim == 2 or (array.ndim == 3 and min(array.shape) == 1) else \
            f"{array.ndim}-D"
        raise VolumeReadError(path, f"the array is {what} (shape {array.shape}); expected a 3-D volume [D, H, W]")
    warnings: list[str] = []
    if spacing is not None:
        sp = tuple(float(s) for s in spacing)
        spacing_from = "argument"
    elif stored_spacing is not None and stored_spacing.size == 3:
        sp = tuple(float(s) for s in stored_spacing)
        spacing_from = "file"
    else:
        sp = (1.0, 1.0, 1.0)
        spacing_from = "assumed"
        warnings.append("no voxel spacing known for a numpy array; assumed 1 mm isotropic — pass "
                        "spacing=(sz, sy, sx) (CLI: --spacing) if that is wrong")
    sp = check_spacing(sp, path)
    index_affine = np.zeros((4, 4))
    index_affine[2, 0], index_affine[1, 1], index_affine[0, 2] = sp
    index_affine[3, 3] = 1.0
    source = {
        "format": fmt,
        "path": str(path),
        "modality": None,
        "series_uid": None,
        "storage_dtype": str(array.dtype),
        "npz_key": key,
        "spacing_from": spacing_from,
        "warnings": warnings,
    }
    return SourceImage(
        array=array,
        index_affine=index_affine,
        direction=np.eye(3),
        origin=np.zeros(3),
        itk_axes=(2, 1, 0),
        reference_map=AxisMap(),  # reference: as is
        reference_spacing=sp,  # reference assumes 1 mm; we keep the known spacing (docs/io.md)
        reference_clip=None,
        source=source,
        map_padding=False,
        full_fov=False,
        storage_dtype=array.dtype,
        may_be_nonfinite=array.dtype.kind in "fc",
    )
