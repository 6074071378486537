"""Label maps for segmentation recipes: merging per-class masks into one map per scan (in a fixed
class order), the class table, and running per-scan jobs in worker processes with progress."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["merge_masks", "run_jobs", "write_classes"]


def merge_masks(reference: Path, masks: Sequence[tuple[int, Path]], out: Path) -> dict[str, Any]:
    """Merge binary masks into one uint8 label map on the grid of ``reference`` (a NIfTI CT).

    ``masks`` are ``(label value, mask file)`` in the fixed class order; where masks overlap the
    later class wins (as TotalSegmentator's own nnU-Net conversion). Missing mask files are absent
    classes. The map is written with the reference's affine to ``out`` (NIfTI), through a temporary
    file.

    Returns:
        ``{"classes_present": [...], "missing_masks": [...], "shape_mismatch": [...]}``.
    """
    import nibabel as nib

    ref = nib.load(str(reference))
    shape = tuple(int(s) for s in ref.shape[:3])
    if max(v for v, _ in masks) > 255:
        raise ValueError("more than 255 classes do not fit a uint8 label map")
    lab = np.zeros(shape, dtype=np.uint8)
    present, missing, mismatch = [], [], []
    for value, path in masks:
        if not path.is_file():
            missing.append(path.name)
            continue
        m = np.asarray(nib.load(str(path)).dataobj)
        if m.shape[:3] != shape:
            mismatch.append(path.name)
            continue
        sel = m.reshape(shape) > 0
        if sel.any():
            lab[sel] = value
            present.append(int(value))
    img = nib.Nifti1Image(lab, ref.affine)
    img.header.set_qform(ref.affine, code=1)
    img.header.set_sform(ref.affine, code=1)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.nii.gz")
    nib.save(img, str(tmp))
    tmp.replace(out)
    return {"classes_present": present, "missing_masks": missing, "shape_mismatch": mismatch}


def write_classes(out: Path, classes: Mapping[int, str]) -> None:
    """``classes.json``: label value → class name (``"0": "background"`` included)."""
    table = {"0": "background", **{str(int(k)): str(v) for k, v in sorted(classes.items())}}
    (out / "classes.json").write_text(json.dumps(table, indent=1) + "\n", encoding="utf-8")


def run_jobs(fn: Callable[..., Any], jobs: Sequence[tuple[Any, ...]], *, workers: int, desc: str) -> list[Any]:
    """``[fn(*job) for job in jobs]`` in ``workers`` processes (1 = here), with a progress bar + ETA.
    ``fn`` must be a module-level function; an exception in a job is returned in its place."""
    from voxelfm.utils import progress

    def call(job: tuple[Any, ...]) -> Any:
        try:
            return fn(*job)
        except Exception as exc:  # noqa: BLE001 - returned, the recipe records it as a skip
            return exc

    if workers <= 1 or len(jobs) <= 1:
        return [call(j) for j in progress(jobs, total=len(jobs), desc=desc, unit="scan")]
    from concurrent.futures import as_completed
    from concurrent.futures.process import BrokenProcessPool

    from voxelfm.utils.pool import process_pool

    out: list[Any] = [None] * len(jobs)
    with process_pool(workers, what=desc) as ex:
        futures = {ex.submit(fn, *j): k for k, j in enumerate(jobs)}
        for f in progress(as_completed(futures), total=len(jobs), desc=desc, unit="scan"):
            exc = f.exception()
            if isinstance(exc, BrokenProcessPool):  # a dead worker: process_pool says what to do
                raise exc
            out[futures[f]] = exc if exc is not None else f.result()
    return out
