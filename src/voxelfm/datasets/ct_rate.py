"""CT-RATE: 50,188 chest CT reconstructions of 21,304 patients with 18 abnormality labels and
radiology reports (Hamamci et al. 2024).

Traps handled:

* The NIfTI files of the first release have blank headers: no spacing, orientation or rescale
  (unit voxels, identity affine, raw stored values). The facts live in the metadata CSVs
  (``XYSpacing``, ``ZSpacing``, ``ImageOrientationPatient``, ``RescaleSlope``, ``RescaleIntercept``);
  the recipe writes them as reading overrides into ``manifest.csv`` and
  :func:`voxelfm.io.read_volume` applies them, warning where a (re-released) header contradicts
  them.
* The NIfTI array axes follow the DICOM pixel layout: ``i`` along the image rows' direction
  (``ImageOrientationPatient[:3]``), ``j`` along the columns' (``[3:]``), ``k`` along their cross
  product (slices in ascending position) — the layout of the re-released, fixed headers ("LPS" for
  the usual axial orientation).
* Patients have several scans and reconstructions: splits are by patient (``train_123`` of
  ``train_123_a_1``); the official *valid* set is the test split, the official *train* set is split
  80/20 into train/val by patient (seeded), as the reference did.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from voxelfm.datasets._tables import patient_splits, read_official_csv, snake_case
from voxelfm.datasets.protocols import SUITE_COMMON, classification_heads
from voxelfm.datasets.recipe import Prepared, PrepareReport, Recipe, RecipeOption

__all__ = ["RECIPE", "CTRateRecipe", "ABNORMALITIES", "LABEL_COLUMNS", "orientation_from_iop"]

#: The 18 abnormality columns of ``multi_abnormality_labels/*_predicted_labels.csv``, as published.
ABNORMALITIES: tuple[str, ...] = (
    "Medical material", "Arterial wall calcification", "Cardiomegaly", "Pericardial effusion",
    "Coronary artery wall calcification", "Hiatal hernia", "Lymphadenopathy", "Emphysema", "Atelectasis",
    "Lung nodule", "Lung opacity", "Pulmonary fibrotic sequela", "Pleural effusion", "Mosaic attenuation pattern",
    "Peribronchial thickening", "Consolidation", "Bronchiectasis", "Interlobular septal thickening",
)
#: their names in labels.csv.
LABEL_COLUMNS: tuple[str, ...] = tuple(snake_case(a) for a in ABNORMALITIES)

# official split -> (metadata, labels, reports) file names (alternatives in order of preference)
_FILES: dict[str, dict[str, tuple[str, ...]]] = {
    "train": {"metadata": ("metadata/train_metadata.csv",),
              "labels": ("multi_abnormality_labels/train_predicted_labels.csv",),
              "reports": ("radiology_text_reports/train_reports.csv",)},
    "valid": {"metadata": ("metadata/validation_metadata.csv", "metadata/valid_metadata.csv"),
              "labels": ("multi_abnormality_labels/valid_predicted_labels.csv",),
              "reports": ("radiology_text_reports/validation_reports.csv", "radiology_text_reports/valid_reports.csv")},
}
_VOLUME_DIRS: dict[str, tuple[str, ...]] = {"train": ("train_fixed", "train"), "valid": ("valid_fixed", "valid")}
_METADATA_COLUMNS = ("VolumeName", "XYSpacing", "ZSpacing", "RescaleSlope", "RescaleIntercept")
_REPORT_COLUMNS = {"ClinicalInformation_EN": "clinical_information", "Technique_EN": "technique",
                   "Findings_EN": "findings", "Impressions_EN": "impressions"}
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_LETTERS = (("L", "R"), ("P", "A"), ("S", "I"))


def _numbers(text: Any) -> list[float]:
    return [float(x) for x in _NUMBER.findall(str(text))] if isinstance(text, str) else (
        [] if text is None or (isinstance(text, float) and np.isnan(text)) else [float(text)])


def _letter(v: np.ndarray) -> str:
    axis = int(np.argmax(np.abs(v)))
    return _LETTERS[axis][0 if v[axis] > 0 else 1]


def orientation_from_iop(iop: Any) -> str | None:
    """Orientation code of the NIfTI axes ``(i, j, k)`` from a DICOM ``ImageOrientationPatient``
    (row direction, column direction; slices along their cross product), e.g.
    ``"[1, 0, 0, 0, 1, 0]"`` → ``"LPS"``; ``None`` when it cannot be parsed."""
    v = _numbers(iop)
    if len(v) != 6:
        return None
    r, c = np.asarray(v[:3]), np.asarray(v[3:])
    n = np.cross(r, c)
    if min(np.linalg.norm(r), np.linalg.norm(c), np.linalg.norm(n)) < 1e-3:
        return None
    from voxelfm.io.overrides import orientation_directions

    code = _letter(r) + _letter(c) + _letter(n)
    try:
        orientation_directions(code)
    except ValueError:  # two axes closest to one patient axis (strongly oblique)
        return None
    return code


def _age(text: Any) -> float:
    v = _numbers(text)
    return float(v[0]) if v else float("nan")


def _first_existing(base: Path, names: tuple[str, ...]) -> Path | None:
    return next((base / n for n in names if (base / n).is_file()), None)


class CTRateRecipe(Recipe):
    name = "ct-rate"
    title = "CT-RATE"
    description = ("50,188 non-contrast chest CT reconstructions (21,304 patients) with 18 abnormality labels and "
                   "reports: multi-label classification, retrieval, report generation")
    licence = ("CC BY-NC-SA 4.0; gated on Hugging Face (accept the terms, non-commercial research use, cite "
               "Hamamci et al. 2024)")
    url = "https://huggingface.co/datasets/ibrahimhamamci/CT-RATE"
    layout = """\
ROOT/  (the Hugging Face repository, or its dataset/ folder)
  dataset/train/train_<N>/train_<N>_<a>/train_<N>_<a>_<k>.nii.gz   (or train_fixed/, the re-released headers)
  dataset/valid/valid_<N>/valid_<N>_<a>/valid_<N>_<a>_<k>.nii.gz   (or valid_fixed/)
  dataset/metadata/train_metadata.csv, validation_metadata.csv
      VolumeName, XYSpacing ("[0.75, 0.75]" = row, column mm), ZSpacing, RescaleSlope, RescaleIntercept,
      ImageOrientationPatient ("[1, 0, 0, 0, 1, 0]"), PatientSex, PatientAge ("065Y"), ...
  dataset/multi_abnormality_labels/train_predicted_labels.csv, valid_predicted_labels.csv
      VolumeName + the 18 abnormalities (0/1): Medical material, Arterial wall calcification, Cardiomegaly, ...
  dataset/radiology_text_reports/train_reports.csv, validation_reports.csv   (optional)
      VolumeName, ClinicalInformation_EN, Technique_EN, Findings_EN, Impressions_EN"""
    paper = ("18 binary abnormalities, one probe per label on the official valid set (test); MLP 1024/0.5 on CLS "
             "and one-query attentive pooling on patch tokens, noise p 1.0 σ 0.1, batch 16 × 4, AdamW 1e-3, "
             "10 epochs, selection on validation AUROC; retrieval Recall@1/5/10 with 99 negatives on valid "
             "volumes *_1 with >= 1 finding")
    version = "1"
    options = {
        "reconstructions": RecipeOption("all", "all reconstructions of each scan, or only the first (*_1)",
                                        ("all", "first")),
    }

    def build(self, root: Path, out: Path, report: PrepareReport, *, seed: int, **options: Any) -> Prepared:
        base = root / "dataset" if (root / "dataset").is_dir() else root
        volumes: dict[str, tuple[Path, str]] = {}
        metadata, labels, reports = [], [], []
        for split, files in _FILES.items():
            found_dirs = [d for d in _VOLUME_DIRS[split] if (base / d).is_dir()]
            if not found_dirs:
                report.missing.append(f"{_VOLUME_DIRS[split][-1]}/ (volumes of the official {split} set)")
            elif len(found_dirs) > 1:
                report.notes.append(f"both {' and '.join(found_dirs)}/ exist: {found_dirs[0]}/ is used")
            for d in found_dirs[:1]:
                for p in sorted((base / d).rglob("*.nii.gz")):
                    volumes.setdefault(p.name[: -len(".nii.gz")], (p, split))
            for kind, sink, cols in (("metadata", metadata, _METADATA_COLUMNS),
                                     ("labels", labels, ("VolumeName", *ABNORMALITIES)),
                                     ("reports", reports, ("VolumeName",))):
                path = _first_existing(base, files[kind])
                if path is None:
                    report.missing.append(files[kind][0])
                    continue
                df = read_official_csv(path, cols)
                df["VolumeName"] = df["VolumeName"].str.strip().str.replace(r"\.nii(\.gz)?$", "", regex=True)
                sink.append(df)
        report.found["volumes"] = len(volumes)
        meta = pd.concat(metadata).drop_duplicates("VolumeName").set_index("VolumeName") if metadata else None
        lab = pd.concat(labels).drop_duplicates("VolumeName").set_index("VolumeName") if labels else None
        rep = pd.concat(reports).drop_duplicates("VolumeName").set_index("VolumeName") if reports else None
        report.found["metadata rows"] = 0 if meta is None else len(meta)
        report.found["label rows"] = 0 if lab is None else len(lab)
        report.found["reports"] = 0 if rep is None else len(rep)

        man_rows, lab_rows = [], []
        for vid in sorted(volumes, key=_natural_key):
            path, split = volumes[vid]
            if options["reconstructions"] == "first" and not vid.endswith("_1"):
                continue
            if meta is None or vid not in meta.index:
                report.skip(vid, "no metadata row (spacing and rescale unknown)")
                continue
            if lab is None or vid not in lab.index:
                report.skip(vid, "no label row")
                continue
            m = meta.loc[vid]
            xy, z = _numbers(m["XYSpacing"]), _numbers(m["ZSpacing"])
            if len(xy) != 2 or len(z) != 1 or min(xy + z) <= 0:
                report.skip(vid, "unreadable XYSpacing/ZSpacing in the metadata")
                continue
            orientation = orientation_from_iop(m.get("ImageOrientationPatient"))
            if orientation is None:
                report.skip(vid, "unreadable ImageOrientationPatient in the metadata")
                continue
            slope, inter = _numbers(m["RescaleSlope"]), _numbers(m["RescaleIntercept"])
            man_rows.append({"id": vid, "path": str(path), "override_spacing_z": z[0], "override_spacing_y": xy[0],
                             "override_spacing_x": xy[1], "override_rescale_slope": slope[0] if slope else 1.0,
                             "override_rescale_intercept": inter[0] if inter else 0.0,
                             "override_orientation": orientation})
            parts = vid.split("_")
            row = {"id": vid, "patient_id": "_".join(parts[:2]), "official_split": split,
                   "reconstruction": parts[-1]}
            values = pd.to_numeric(lab.loc[vid, list(ABNORMALITIES)], errors="coerce")
            row.update({c: (int(v) if np.isfinite(v) else np.nan) for c, v in zip(LABEL_COLUMNS, values)})
            row["age"] = _age(m.get("PatientAge"))
            row["sex"] = str(m.get("PatientSex", "")).strip() if isinstance(m.get("PatientSex"), str) else ""
            lab_rows.append(row)
        missing_volumes = sorted(set(meta.index) - set(volumes)) if meta is not None else []
        if missing_volumes:
            report.found["metadata rows without a volume"] = len(missing_volumes)
            report.missing.extend(f"volume {v}.nii.gz (listed in the metadata)" for v in missing_volumes)
        manifest = pd.DataFrame(man_rows, columns=["id", "path", "override_spacing_z", "override_spacing_y",
                                                   "override_spacing_x", "override_rescale_slope",
                                                   "override_rescale_intercept", "override_orientation"])
        table = pd.DataFrame(lab_rows)
        if table.empty:
            return Prepared(manifest, table, {})
        table.insert(2, "split", _splits(table, report, seed))
        table = table[["id", "patient_id", "split"] + [c for c in table.columns if c not in
                                                        ("id", "patient_id", "split")]]
        first = table[(table["reconstruction"] == "1") & (table[list(LABEL_COLUMNS)].fillna(0).sum(axis=1) > 0)]
        first.to_csv(out / "retrieval_labels.csv", index=False, lineterminator="\n")
        if rep is not None:
            _write_reports(table, rep, out)
        counts = {"positives": {c: int(table[c].fillna(0).sum()) for c in LABEL_COLUMNS},
                  "retrieval_volumes": int(len(first)),
                  "reports": 0 if rep is None else int(table["id"].isin(rep.index).sum())}
        return Prepared(manifest, table, _suite(rep is not None), counts)


def _natural_key(vid: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", vid)]


def _splits(table: pd.DataFrame, report: PrepareReport, seed: int) -> pd.Series:
    """Official valid → test; official train → train/val 80/20 by patient (seeded)."""
    split = pd.Series("test", index=table.index, dtype=object)
    tr = table["official_split"] == "train"
    if tr.any():
        s = patient_splits(list(table.loc[tr, "id"]), list(table.loc[tr, "patient_id"]), report, seed=seed,
                           fractions=(0.8, 0.2, 0.0))
        split[tr] = s.to_numpy()
    return split


def _write_reports(table: pd.DataFrame, rep: pd.DataFrame, out: Path) -> None:
    """``reports.csv`` for ``voxelfm report``: id, split, report (the findings) and every section."""
    keep = table[table["id"].isin(rep.index)][["id", "patient_id", "split"]].copy()
    r = rep.reindex(keep["id"])
    for src, dst in _REPORT_COLUMNS.items():
        keep[dst] = r[src].to_numpy() if src in r.columns else ""
    keep["report"] = keep["findings"]
    keep.to_csv(out / "reports.csv", index=False, lineterminator="\n")


def _suite(with_reports: bool) -> dict[str, Any]:
    tasks: list[dict[str, Any]] = [
        {"name": c, "task": "binary", "target": c, "probes": ["mlp", "attentive:patch"]} for c in LABEL_COLUMNS]
    tasks.append({"name": "retrieval", "task": "retrieval", "target": list(LABEL_COLUMNS),
                  "labels": "retrieval_labels.csv", "probes": ["cosine:cls"],
                  "hparams": {"retrieval_split": "test", "retrieval_method": "protocol"}})
    return {
        "description": "CT-RATE: 18 abnormalities (one probe each, official valid set as test) and retrieval"
                       + ("; reports.csv holds the reports for voxelfm report" if with_reports else ""),
        **SUITE_COMMON,
        "head_defaults": classification_heads(),
        "tasks": tasks,
        "figures": {"roc": True, "cls_vs_patch": True},
    }


RECIPE = CTRateRecipe()
