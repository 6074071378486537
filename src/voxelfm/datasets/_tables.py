"""Helpers shared by the recipes: reading official CSVs, label names, patient splits."""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from voxelfm.datasets.recipe import PrepareReport
from voxelfm.errors import VoxelFMError

__all__ = ["patient_splits", "read_official_csv", "snake_case"]


def snake_case(name: str) -> str:
    """``"Arterial wall calcification"`` → ``"arterial_wall_calcification"``."""
    return re.sub(r"[^0-9a-z]+", "_", str(name).strip().lower()).strip("_")


def read_official_csv(path: Path, required: Sequence[str], *, sep: str = ",", dtype: object = str) -> pd.DataFrame:
    """Read one of a dataset's published CSVs, checking that the published columns are there.

    Raises:
        VoxelFMError: a required column is absent (the message lists what the file has).
    """
    try:
        df = pd.read_csv(path, sep=sep, dtype=dtype, keep_default_na=True, encoding="utf-8-sig")
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise VoxelFMError(f"{path}: not a readable CSV ({exc})") from None
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise VoxelFMError(f"{path}: no column {missing[0]!r} (columns: {', '.join(df.columns[:20])}); is this "
                           "the file as published?")
    return df


def patient_splits(ids: Sequence[str], patients: Sequence[str], report: PrepareReport, *, seed: int,
                   fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
                   stratify: Sequence[object] | None = None) -> pd.Series:
    """Seeded, patient-grouped (and stratified, when ``stratify`` is given) train/val/test splits.

    With fewer than 3 patients (a very partial download) every scan goes to ``train`` and a note
    says so.
    """
    from voxelfm.probes.splits import make_splits

    if len(set(patients)) < 3:
        report.notes.append(f"only {len(set(patients))} patient(s): all scans put in the train split")
        return pd.Series(["train"] * len(ids), index=pd.Index(list(ids), name="id"), name="split")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s = make_splits(list(ids), groups=list(patients), stratify=stratify, fractions=fractions, seed=seed)
    report.notes.extend(str(w.message) for w in caught)
    return s
