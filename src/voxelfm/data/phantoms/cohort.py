"""The phantom cohort: patients, scans, rendering, clinical targets, splits and files.

Seeding: the cohort is a stream of patients; patient ``p`` draws everything from
``SeedSequence([seed, p])`` (its anatomy, chronic findings, survival) and its scan ``k`` from
``SeedSequence([seed, p, 100 + k])``. Case ``index`` is the ``index``-th scan of that stream, so
every case is determined by ``(seed, index)`` alone: outputs are bit-identical whatever the number
of workers, and a cohort of ``n`` cases is a prefix of a larger one (except possibly the split
column, which is computed over the whole table).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from voxelfm.data.phantoms import labels as L
from voxelfm.data.phantoms.acquisition import SIZES, Acquisition, draw_acquisition, finalize, render_grid
from voxelfm.data.phantoms.anatomy import Anatomy, Patient, draw_patient, render_anatomy
from voxelfm.data.phantoms.canvas import Canvas
from voxelfm.data.phantoms.findings import (
    FINDINGS,
    Findings,
    draw_chronic,
    draw_findings,
    lobe_of,
    render_emphysema,
    render_findings,
)
from voxelfm.data.phantoms.reports import write_report
from voxelfm.utils.pool import process_pool

__all__ = ["PhantomCase", "case_plan", "generate_case", "generate_cohort", "COHORT_COLUMNS"]

P_TWO_SCANS = 0.2
HORIZON_DAYS = 1826.0  # administrative censoring: 5 years after the first scan
WEIBULL_SHAPE = 1.3
WEIBULL_SCALE_DAYS = 3300.0  # baseline scale (median ≈ 2500 days at the reference covariates)
NODULE_COLUMNS = (
    "nodule_count",
    "nodule_diameter_mm",
    "nodule_x_mm",
    "nodule_y_mm",
    "nodule_z_mm",
    "nodule_d",
    "nodule_h",
    "nodule_w",
)
COHORT_COLUMNS = (
    ("id", "path", "seg_path", "patient_id", "split", "age", "sex", "report")
    + FINDINGS
    + ("lung_volume_ml", "fev1_percent", "survival_time", "event")
    + NODULE_COLUMNS
    + (
        "scan_index",
        "contrast",
        "spacing_z",
        "spacing_y",
        "spacing_x",
        "shape",
        "orientation",
        "laa950_percent",
        "effusion_ml",
        "noise_sd",
    )
)


@dataclass
class PhantomCase:
    """One generated scan.

    Attributes:
        id: case id. patient_id: patient id. scan_index: 0 or 1 (second scan of a patient).
        hu: ``[D, H, W]`` float32 HU in canonical SPL order (exactly the stored values).
        stored: ``[D, H, W]`` int16 stored values (``hu = stored + intercept``).
        labels: ``[D, H, W]`` uint8 organ labels (:data:`voxelfm.data.phantoms.labels.LABELS`).
        acquisition: spacing, origin, orientation, contrast, noise of the scan.
        findings: the findings (flags, nodules with centroids, measurements).
        row: the cohort-table row of this case (without ``path``/``seg_path``/``split``).
        affine: 4×4 canonical ``(d, h, w, 1)`` → LPS mm.
        patient: the patient-level draws (age, sex, size, fat, smoking exposure).
    """

    id: str
    patient_id: str
    scan_index: int
    hu: np.ndarray
    stored: np.ndarray
    labels: np.ndarray
    acquisition: Acquisition
    findings: Findings
    row: dict
    affine: np.ndarray
    patient: Patient


def _n_scans(seed: int, p: int) -> int:
    r = np.random.default_rng(np.random.SeedSequence([seed, p]).spawn(4)[3])
    return 2 if r.random() < P_TWO_SCANS else 1


def case_plan(seed: int, n: int) -> list[tuple[int, int]]:
    """``(patient index, scan index)`` of cases ``0 .. n-1``."""
    plan: list[tuple[int, int]] = []
    p = 0
    while len(plan) < n:
        for k in range(_n_scans(seed, p)):
            plan.append((p, k))
        p += 1
    return plan[:n]


def _patient_streams(seed: int, p: int):
    ss = np.random.SeedSequence([seed, p]).spawn(4)
    return [np.random.default_rng(s) for s in ss]


def _scan_spec(seed: int, p: int, k: int, size: str):
    """Draw (without rendering) everything of scan ``k`` of patient ``p``."""
    r_pat, r_chronic, r_surv, _ = _patient_streams(seed, p)
    patient = draw_patient(r_pat)
    an0 = Anatomy(patient, (0.0, 0.0, 0.0))
    chronic = draw_chronic(r_chronic, patient, an0)
    scan_ss = np.random.SeedSequence([seed, p, 100 + k]).spawn(5)
    r_acq, r_find, r_render, r_noise, r_report = (np.random.default_rng(s) for s in scan_ss)
    lung_extent = an0.apex - (an0.dome_r[2] - an0.dome_depth) + 16 * patient.size
    acq = draw_acquisition(
        r_acq,
        size,
        body_halfwidth_mm=an0.a0 + patient.fat_mm,
        apex_mm=an0.apex,
        patient_size=patient.size,
        min_coverage_mm=lung_extent + 60.0,
    )
    findings = draw_findings(r_find, patient, chronic, an0, acq.spacing)
    return patient, an0, chronic, acq, findings, (r_render, r_noise, r_report, r_surv)


def _survival(rng: np.random.Generator, patient: Patient, f: Findings, interval_days: float):
    """Weibull proportional-hazards survival from the first scan; returns (time from this scan, event)."""
    fl = f.flags
    big_nodule = any(n.diameter_mm >= 15 for n in f.nodules)
    lp = (
        0.045 * (patient.age - 63)
        + 0.25 * (patient.sex == "M")
        + 0.6 * fl["emphysema"]
        + 0.9 * big_nodule
        + 0.3 * (fl["lung_nodule"] and not big_nodule)
        + 0.7 * fl["pleural_effusion"]
        + 0.55 * fl["cardiomegaly"]
        + 0.5 * fl["lymphadenopathy"]
        + 0.35 * fl["consolidation"]
        + 0.3 * fl["pericardial_effusion"]
        + 0.25 * fl["arterial_wall_calcification"]
    )
    # T | T > interval  via the cumulative hazard H(t) = (t/λ)^k e^lp
    h0 = (interval_days / WEIBULL_SCALE_DAYS) ** WEIBULL_SHAPE * math.exp(lp)
    e = rng.exponential()
    t = WEIBULL_SCALE_DAYS * ((h0 + e) / math.exp(lp)) ** (1.0 / WEIBULL_SHAPE)
    c = interval_days + rng.exponential(4000.0)  # loss to follow-up (memoryless)
    c = max(min(c, HORIZON_DAYS), interval_days + 1.0)  # administrative end of follow-up
    time = min(t, c) - interval_days
    return round(float(time), 1), int(t <= c), lp


def generate_case(seed: int, index: int, *, size: str = "demo", without: tuple[str, ...] = ()) -> PhantomCase:
    """Generate case ``index`` of the cohort with ``seed`` (deterministic in ``(seed, index, size)``).

    Args:
        seed: cohort seed.
        index: case index ≥ 0.
        size: ``"demo"`` (≈ 112² × 80–136), ``"small"`` (192² × ...), ``"full"`` (512² × ...).
        without: findings (names from :data:`FINDINGS`) to leave out — a counterfactual of the same
            patient and acquisition, identical elsewhere up to the noise (e.g. to measure what a
            finding changes in the image, or for attribution studies).
    """
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {sorted(SIZES)}")
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    unknown = set(without) - set(FINDINGS)
    if unknown:
        raise ValueError(f"unknown findings {sorted(unknown)} in without=; choose from {list(FINDINGS)}")
    p, k = case_plan(seed, index + 1)[index]
    patient, an0, chronic, acq, f, (r_render, r_noise, r_report, r_surv) = _scan_spec(seed, p, k, size)
    f.suppressed = frozenset(without) | ({"consolidation"} if "lung_opacity" in without else set())
    if "cardiomegaly" in f.suppressed and f.flags["cardiomegaly"]:
        f.cardiac_scale = 1.0
    if "pericardial_effusion" in f.suppressed:
        f.pericardial_mm = 0.0
    interval = 0.0
    if k == 1:
        interval = float(np.random.default_rng([seed, p, 999]).uniform(60, 540))
    age = patient.age + interval / 365.25
    an = Anatomy(patient, acq.offset, cardiac_scale=f.cardiac_scale, contrast=acq.contrast)
    grid, sub = render_grid(acq)
    canvas = Canvas(grid)
    canvas.subslices = sub
    lm = render_anatomy(
        canvas,
        an,
        pericardial_fluid_mm=f.pericardial_mm,
        scan_rng=r_render,
        after_lungs=lambda cv: render_emphysema(cv, an, f, r_render),
    )
    counts = render_findings(canvas, an, lm, f, r_render)
    a, ba, bp = (float(v) for v in an.body_axes(np.float32(0.0)))
    hu, stored, labels = finalize(canvas.hu, canvas.label, sub, acq, r_noise, (a, 0.5 * (ba + bp)))
    del canvas
    for name in f.suppressed:
        f.flags[name] = 0
    if "lung_nodule" in f.suppressed:
        f.nodules = []
    if "pleural_effusion" in f.suppressed:
        f.effusion_ml = {}
    if {"lung_opacity", "consolidation"} & f.suppressed:
        f.opacities = [
            op
            for op in f.opacities
            if not (
                "lung_opacity" in f.suppressed or (op["kind"] == "consolidation" and "consolidation" in f.suppressed)
            )
        ]
    _measure(f, an, acq, hu, labels, counts, sub)
    # survival: the patient's baseline hazard comes from the first scan's findings
    if k == 0:
        f0 = f
    else:
        f0 = _scan_spec(seed, p, 0, size)[4]
    surv_time, event, _ = _survival(r_surv, patient, f0, interval)
    vox_ml = float(np.prod(acq.spacing)) / 1000.0
    lung_ml = float(np.count_nonzero((labels == L.LUNG_RIGHT) | (labels == L.LUNG_LEFT))) * vox_ml
    eff_ml = float(sum(f.measured.get("effusion_ml", {}).values()))
    laa = f.measured.get("laa950_percent", 0.0)
    fev1 = (
        104.0
        + 3.0 * (patient.sex == "M")
        - 0.35 * (patient.age - 55)
        - 1.3 * laa
        - 0.012 * eff_ml
        - 6.0 * f.flags["atelectasis"]
        - 5.0 * f.flags["consolidation"]
        - 4.0 * f.flags["cardiomegaly"]
        - 12.0 * patient.smoker
        + 25.0 * (patient.size - 1.0)
        + float(r_surv.normal(0, 6))
    )
    fev1 = float(np.clip(fev1, 15, 140))
    case_id = f"phantom_{index:04d}"
    pid = f"patient_{p:04d}"
    report = write_report(f, r_report, contrast=acq.contrast, age=age)
    row = {"id": case_id, "patient_id": pid, "age": round(age, 1), "sex": patient.sex, "report": report}
    row.update({k_: int(f.flags[k_]) for k_ in FINDINGS})
    row.update(
        {
            "lung_volume_ml": round(lung_ml, 1),
            "fev1_percent": round(fev1, 1),
            "survival_time": surv_time,
            "event": event,
        }
    )
    visible = [n for n in f.nodules if n.voxel is not None]
    if visible:
        big = max(visible, key=lambda n: n.diameter_mm)
        row.update(
            {
                "nodule_count": len(visible),
                "nodule_diameter_mm": big.diameter_mm,
                "nodule_x_mm": round(big.center_mm[0], 2),
                "nodule_y_mm": round(big.center_mm[1], 2),
                "nodule_z_mm": round(big.center_mm[2], 2),
                "nodule_d": big.voxel[0],
                "nodule_h": big.voxel[1],
                "nodule_w": big.voxel[2],
            }
        )
    else:
        row.update({"nodule_count": 0, **{c: None for c in NODULE_COLUMNS[1:]}})
    row.update(
        {
            "scan_index": k,
            "contrast": acq.contrast,
            "spacing_z": round(acq.spacing[0], 4),
            "spacing_y": round(acq.spacing[1], 4),
            "spacing_x": round(acq.spacing[2], 4),
            "shape": "x".join(str(v) for v in acq.shape),
            "orientation": acq.orientation,
            "laa950_percent": round(laa, 2),
            "effusion_ml": round(eff_ml, 1),
            "noise_sd": round(acq.noise_sd, 2),
        }
    )
    return PhantomCase(
        id=case_id,
        patient_id=pid,
        scan_index=k,
        hu=hu,
        stored=stored,
        labels=labels,
        acquisition=acq,
        findings=f,
        row=row,
        affine=acq.grid.affine_lps(),
        patient=patient,
    )


def _measure(
    f: Findings, an: Anatomy, acq: Acquisition, hu: np.ndarray, labels: np.ndarray, counts: dict, sub: int
) -> None:
    """Measure what became visible; drop findings that did not (so the table matches the image)."""
    g = acq.grid
    vox_ml = float(np.prod(acq.spacing)) / 1000.0
    lung = (labels == L.LUNG_RIGHT) | (labels == L.LUNG_LEFT)
    n_lung = int(np.count_nonzero(lung))
    laa = float(np.count_nonzero(lung & (hu < -950)) * 100.0 / n_lung) if n_lung else 0.0
    f.measured["laa950_percent"] = laa
    step = max(1, int(round((n_lung / 300000) ** (1 / 3)))) if n_lung else 1
    p5 = float(np.percentile(hu[::step, ::step, ::step][lung[::step, ::step, ::step]], 5)) if n_lung else 0.0
    if f.flags["emphysema"] and (laa < 6.0 or p5 >= -950):
        f.flags["emphysema"] = 0
    # nodules: centre voxel must carry the nodule label
    for n in f.nodules:
        if n.center_mm is None:
            continue
        d, h, w = (int(round(v)) for v in g.mm_to_index(n.center_mm))
        if 0 <= d < g.shape[0] and 0 <= h < g.shape[1] and 0 <= w < g.shape[2] and labels[d, h, w] == L.LUNG_NODULE:
            n.voxel = (d, h, w)
            z = g.origin[2] + d * g.spacing[0]
            n.center_mm = (n.center_mm[0], n.center_mm[1], float(z))
    f.nodules = [n for n in f.nodules if n.voxel is not None]
    f.flags["lung_nodule"] = int(bool(f.nodules))
    # effusions: per side, from the label map
    eff = {}
    if f.effusion_ml:
        m = labels == L.PLEURAL_EFFUSION
        xs = g.axis(2)
        right = xs < an.offset[0] + an.mediast_x
        for sd in f.effusion_ml:
            cols = right if sd == "R" else ~right
            v = float(np.count_nonzero(m[:, :, cols])) * vox_ml
            if v >= 15.0:
                eff[sd] = v
    f.measured["effusion_ml"] = eff
    f.effusion_ml = {sd: eff[sd] for sd in eff}
    f.flags["pleural_effusion"] = int(bool(eff))
    min_vox = 4 * sub
    if f.flags["pericardial_effusion"] and np.count_nonzero(labels == L.PERICARDIAL_EFFUSION) < 8:
        f.flags["pericardial_effusion"] = 0
    for key, least in (
        ("lymphadenopathy", min_vox),
        ("hiatal_hernia", min_vox),
        ("arterial_wall_calcification", 1),
        ("coronary_artery_wall_calcification", 1),
    ):
        if f.flags[key] and counts.get(key, 0) < least:
            f.flags[key] = 0
    kept = []
    for op in f.opacities:
        op["lobe"] = lobe_of(an, op["rel"])
        kept.append(op)
    if counts.get("consolidation", 0) < min_vox * 4:
        kept = [op for op in kept if op["kind"] != "consolidation"]
    if counts.get("ground-glass", 0) < min_vox * 4:
        kept = [op for op in kept if op["kind"] != "ground-glass"]
    f.opacities = kept
    f.flags["consolidation"] = int(any(op["kind"] == "consolidation" for op in kept))
    f.flags["lung_opacity"] = int(bool(kept))
    if f.flags["atelectasis"]:
        at = f.atelectasis
        side = "right" if at["side"] == "R" else "left"
        at["lobe"] = (side, "lower")
        if at.get("kind") == "compressive" and at["side"] not in f.effusion_ml:
            f.flags["atelectasis"] = 0
        elif counts.get("atelectasis", 0) < min_vox * 2:
            f.flags["atelectasis"] = 0
    if not f.flags["atelectasis"]:
        f.atelectasis = {}


# ---- cohort ---------------------------------------------------------------------------------------


def _assign_splits(table, seed: int) -> list[str]:
    """train/val/test ≈ 60/20/20 by patient, stratified on the patient's nodule status."""
    rng = np.random.default_rng([seed, 12345])
    first = table.drop_duplicates("patient_id")
    strata = {}
    for pid, pos in zip(first["patient_id"], first["lung_nodule"]):
        strata.setdefault(int(pos), []).append(pid)
    assign = {}
    n_pat = len(first)
    for key in sorted(strata):
        pids = list(strata[key])
        rng.shuffle(pids)
        n = len(pids)
        n_train = int(round(0.6 * n))
        n_val = int(round(0.2 * n))
        for i, pid in enumerate(pids):
            assign[pid] = "train" if i < n_train else ("val" if i < n_train + n_val else "test")
    # every split non-empty when possible (tiny cohorts)
    if n_pat >= 3:
        for want in ("val", "test", "train"):
            if want not in assign.values():
                counts = {s: [p for p, v in assign.items() if v == s] for s in ("train", "val", "test")}
                donor = max(counts, key=lambda s: len(counts[s]))
                assign[counts[donor][-1]] = want
    return [assign[p] for p in table["patient_id"]]


def _write_case(args) -> dict:
    seed, index, size, fmt, out_dir = args
    from voxelfm.data.phantoms.writers import write_dicom_series, write_nifti

    case = generate_case(seed, index, size=size)
    out = Path(out_dir)
    acq = case.acquisition
    if fmt == "nifti":
        rel = f"volumes/{case.id}.nii.gz"
        write_nifti(out / rel, case.stored, case.affine, acq.orientation, intercept=acq.intercept)
    else:
        rel = f"dicom/{case.id}"
        day = 1 + (case.scan_index * 200 + int(case.patient_id[-4:]) * 7) % 3000
        date = (np.datetime64("2018-01-01") + np.timedelta64(day, "D")).astype(str).replace("-", "")
        write_dicom_series(
            out / rel,
            case.stored,
            case.affine,
            intercept=acq.intercept,
            uid_seed=f"voxelfm-phantom/{seed}/{case.id}",
            patient_id=case.patient_id,
            patient_age=case.row["age"],
            patient_sex=case.row["sex"],
            study_date=date,
            kvp=acq.kvp,
            kernel=acq.kernel,
            slice_order=acq.slice_order,
            padding_value=int(-3024 - acq.intercept) if acq.circle_pad else None,
        )
    seg_rel = f"segmentations/{case.id}_seg.nii.gz"
    write_nifti(out / seg_rel, case.labels, case.affine, acq.orientation if fmt == "nifti" else "LPS")
    row = dict(case.row)
    row["path"] = rel
    row["seg_path"] = seg_rel
    meta = {
        "id": case.id,
        "patient_id": case.patient_id,
        "scan_index": case.scan_index,
        "acquisition": {
            "shape": list(acq.shape),
            "spacing": list(acq.spacing),
            "origin": list(acq.origin),
            "orientation": acq.orientation if fmt == "nifti" else "LPS",
            "contrast": acq.contrast,
            "noise_sd": acq.noise_sd,
            "cupping_hu": acq.cupping_hu,
            "circle_pad": acq.circle_pad,
            "intercept": acq.intercept,
            "kvp": acq.kvp,
        },
        "flags": {k: int(v) for k, v in case.findings.flags.items()},
        "nodules": [
            {
                "diameter_mm": n.diameter_mm,
                "kind": n.kind,
                "side": n.side,
                "lobe": n.lobe,
                "center_mm": list(n.center_mm),
                "voxel": list(n.voxel),
            }
            for n in case.findings.nodules
        ],
        "effusion_ml": case.findings.measured.get("effusion_ml", {}),
        "laa950_percent": case.findings.measured.get("laa950_percent", 0.0),
        "lymph_nodes": [{"station": s, "short_axis_mm": d} for s, d in case.findings.nodes]
        if case.findings.flags["lymphadenopathy"]
        else [],
    }
    row["_meta"] = meta
    return row


def generate_cohort(
    out_dir: str | os.PathLike,
    n: int,
    seed: int = 0,
    *,
    format: str = "nifti",
    size: str = "demo",
    workers: int | None = None,
    progress: bool = True,
):
    """Generate ``n`` phantom CT scans into ``out_dir`` and return the cohort table.

    Writes ``out_dir/cohort.csv`` (columns :data:`COHORT_COLUMNS`; ``path``/``seg_path`` relative to
    ``out_dir``), ``labels.json`` (label value → organ name), ``metadata.jsonl`` (all nodules with
    centroids, acquisition details per case), ``volumes/<id>.nii.gz`` or ``dicom/<id>/IM*.dcm``, and
    ``segmentations/<id>_seg.nii.gz``.

    Args:
        out_dir: output folder (created).
        n: number of cases (≥ 1).
        seed: cohort seed; the same seed gives byte-identical files whatever ``workers`` is.
        format: ``"nifti"`` or ``"dicom"``.
        size: ``"demo"``, ``"small"`` or ``"full"``.
        workers: processes (default: CPU count; 1 = in this process). Worker processes import the
            calling script again (forkserver/spawn start), so a script that calls this with
            ``workers > 1`` must keep its top-level code under ``if __name__ == "__main__":``.
        progress: show a progress bar (tqdm, with ETA; silenced by ``VOXELFM_NO_PROGRESS=1``).

    Returns:
        pandas.DataFrame, the rows of ``cohort.csv``.

    Raises:
        VoxelFMError: a worker process died — most often the missing ``__main__`` guard above
            (the message says so), else a killed worker (out of memory).
    """
    import pandas as pd

    from voxelfm.utils import atomic_write_text
    from voxelfm.utils import progress as progress_bar

    if format not in ("nifti", "dicom"):
        raise ValueError(f"format must be 'nifti' or 'dicom', got {format!r}")
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    if int(n) < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    n = int(n)
    workers = int(workers) if workers else (os.cpu_count() or 1)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(int(seed), i, size, format, str(out)) for i in range(n)]
    rows: list[dict] = []
    bar = progress_bar(total=n, desc="phantoms", unit="case", disable=None if progress else True)
    try:
        if workers == 1:
            for j in jobs:
                rows.append(_write_case(j))
                bar.update(1)
        else:
            with process_pool(min(workers, n), initializer=_worker_init, what="generate_cohort") as ex:
                for row in ex.map(_write_case, jobs, chunksize=1):
                    rows.append(row)
                    bar.update(1)
    finally:
        bar.close()
    metas = [r.pop("_meta") for r in rows]
    table = pd.DataFrame(rows)
    table["split"] = _assign_splits(table, int(seed))
    table = table[list(COHORT_COLUMNS)]
    for c in NODULE_COLUMNS[1:]:
        table[c] = table[c].astype("Float64") if c.endswith("mm") else table[c].astype("Int64")
    atomic_write_text(out / "cohort.csv", table.to_csv(index=False, lineterminator="\n"))
    atomic_write_text(out / "labels.json", json.dumps({str(k): v for k, v in L.LABELS.items()}, indent=2) + "\n")
    split_of = dict(zip(table["id"], table["split"]))
    for m in metas:
        m["split"] = split_of[m["id"]]
    atomic_write_text(out / "metadata.jsonl", "".join(json.dumps(m, sort_keys=True) + "\n" for m in metas))
    return table


def _worker_init() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
