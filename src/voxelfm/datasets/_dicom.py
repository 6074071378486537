"""Finding the CT series of each patient folder of a DICOM dataset (TCIA / Kaggle downloads)."""

from __future__ import annotations

from pathlib import Path

from voxelfm.datasets.recipe import PrepareReport

__all__ = ["patient_ct_series"]


def patient_ct_series(folders: dict[str, Path], report: PrepareReport) -> dict[str, tuple[Path, str]]:
    """``{patient: (series folder, SeriesInstanceUID)}``: the CT volume series with the most slices
    in each patient's folder (RTSTRUCT / SEG / scouts / other modalities ignored). Patients without
    one are skipped with the reason; a patient with several CT series gets a note."""
    from voxelfm.io import find_dicom_series
    from voxelfm.utils import progress

    out: dict[str, tuple[Path, str]] = {}
    for patient, folder in progress(sorted(folders.items()), total=len(folders), desc="DICOM series", unit="patient"):
        try:
            series = [s for s in find_dicom_series(folder, recursive=True) if s.is_volume_candidate]
        except Exception as exc:  # noqa: BLE001 - an unreadable folder skips the patient, recorded
            report.skip(patient, f"DICOM folder could not be scanned ({type(exc).__name__})")
            continue
        if not series:
            report.skip(patient, "no CT volume series in the patient's folder")
            continue
        if len(series) > 1:
            report.notes.append(f"{patient}: {len(series)} CT series, the one with the most slices is used")
        best = max(series, key=lambda s: s.n_slices)
        out[patient] = (best.folder, best.uid)
    return out
