"""Every finding in the table is visible in the volume and stated in the report; absent findings are
not reported as present; tissue intensities are realistic."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from voxelfm.data.phantoms import FINDINGS, generate_case, mentions
from voxelfm.data.phantoms import labels as L

from .conftest import SEED


@pytest.fixture(scope="module")
def cases(cohort_dir):
    from voxelfm.io import read_volume

    out, table = cohort_dir
    meta = {m["id"]: m for m in map(json.loads, (out / "metadata.jsonl").read_text().splitlines())}
    res = []
    for _, row in table.iterrows():
        hu = read_volume(out / row["path"]).array
        seg = read_volume(out / row["seg_path"], check_hu=False).array.astype(np.uint8)
        res.append((row, hu, seg, meta[row["id"]]))
    return res


def test_tissue_hu_in_realistic_ranges(cases):
    for row, hu, seg, _ in cases:
        med = {name: float(np.median(hu[seg == lab])) for name, lab in
               (("lung", L.LUNG_RIGHT), ("fat", L.SUBCUTANEOUS_FAT), ("muscle", L.MUSCLE),
                ("liver", L.LIVER), ("vertebrae", L.VERTEBRAE), ("air", L.BACKGROUND))
               if np.any(seg == lab)}
        lo = -990 if row["emphysema"] else -900   # severe emphysema darkens the whole lung
        assert lo <= med["lung"] <= -780, (row["id"], med)
        assert -130 <= med["fat"] <= -70, (row["id"], med)
        assert 20 <= med["muscle"] <= 75, (row["id"], med)
        assert 35 <= med["liver"] <= 140, (row["id"], med)
        assert 120 <= med["vertebrae"] <= 450, (row["id"], med)     # mostly cancellous bone
        assert med["air"] <= -990, (row["id"], med)
        cortical = np.percentile(hu[(seg == L.VERTEBRAE) | (seg == L.RIBS)], 97)
        assert 550 <= cortical <= 1300, (row["id"], cortical)


def test_label_map_is_plausible(cases):
    for row, hu, seg, _ in cases:
        vox_ml = float(row["spacing_x"] * row["spacing_y"] * row["spacing_z"]) / 1000
        lung_ml = float(np.count_nonzero((seg == L.LUNG_RIGHT) | (seg == L.LUNG_LEFT))) * vox_ml
        assert lung_ml == pytest.approx(row["lung_volume_ml"], rel=1e-3)
        assert 1500 < lung_ml < 8000
        assert 150 < np.count_nonzero(seg == L.HEART) * vox_ml < 2500
        for lab in (L.LIVER, L.AORTA, L.VERTEBRAE, L.RIBS, L.AIRWAY, L.SKIN, L.TABLE):
            assert np.any(seg == lab), (row["id"], L.LABELS[lab])


def _ctr(seg):
    heart = (seg == L.HEART).any(axis=(0, 1))
    chest = ((seg == L.HEART) | (seg == L.LUNG_LEFT) | (seg == L.LUNG_RIGHT)).any(axis=(0, 1))
    return np.ptp(np.nonzero(heart)[0]) / np.ptp(np.nonzero(chest)[0])


def test_findings_visible_in_volume(cases):
    seen = {f: set() for f in FINDINGS}
    for row, hu, seg, meta in cases:
        rid = row["id"]
        for f in FINDINGS:
            seen[f].add(int(row[f]))
        lung = (seg == L.LUNG_RIGHT) | (seg == L.LUNG_LEFT)
        # nodules: every nodule's mask overlaps its centroid
        assert len(meta["nodules"]) == row["nodule_count"]
        for n in meta["nodules"]:
            assert seg[tuple(n["voxel"])] == L.LUNG_NODULE, rid
        assert (np.count_nonzero(seg == L.LUNG_NODULE) > 0) == bool(row["lung_nodule"]), rid
        # effusions: fluid voxels exist exactly when labelled, with fluid density
        eff = seg == L.PLEURAL_EFFUSION
        assert eff.any() == bool(row["pleural_effusion"]), rid
        if eff.any():
            assert -15 <= np.median(hu[eff]) <= 35, rid
        assert (seg == L.PERICARDIAL_EFFUSION).any() == bool(row["pericardial_effusion"]), rid
        # emphysema lowers the lung's 5th percentile below -950 HU; normal lungs stay above
        p5 = np.percentile(hu[lung], 5)
        assert (p5 < -950) == bool(row["emphysema"]), (rid, p5)
        # cardiomegaly: cardiothoracic width ratio
        assert (_ctr(seg) > 0.56) == bool(row["cardiomegaly"]), (rid, _ctr(seg))
        # enlarged nodes: a lymph-node component larger than a 10 mm sphere
        vox_mm3 = float(row["spacing_x"] * row["spacing_y"] * row["spacing_z"])
        comp, n = ndimage.label(seg == L.LYMPH_NODE)
        biggest = np.bincount(comp.ravel())[1:].max() * vox_mm3 if n else 0.0
        assert (biggest > 600) == bool(row["lymphadenopathy"]), (rid, biggest)
        # calcified plaques next to the aorta / on the heart
        calc = seg == L.CALCIFICATION
        near_aorta = calc & ndimage.binary_dilation(seg == L.AORTA, iterations=2)
        near_heart = (calc & ndimage.binary_dilation(seg == L.HEART, iterations=2)
                      & ~ndimage.binary_dilation(seg == L.AORTA, iterations=1))
        assert near_aorta.any() == bool(row["arterial_wall_calcification"]), rid
        assert near_heart.any() == bool(row["coronary_artery_wall_calcification"]), rid
        if calc.any():
            assert np.percentile(hu[calc], 90) > 250, rid
        # hiatal hernia: stomach above the top of the liver (i.e. through the diaphragm)
        liver_top = np.nonzero((seg == L.LIVER).any(axis=(1, 2)))[0].max()
        assert (seg[liver_top + 1:] == L.STOMACH).any() == bool(row["hiatal_hernia"]), rid
    for f in FINDINGS:  # the fixture cohort exercises both classes of every finding
        assert seen[f] == {0, 1}, f


def test_each_finding_changes_a_visible_volume():
    """Counterfactual check for the findings without a label of their own: the same case rendered
    without the finding differs in >= 10 voxels by more than 100 HU, in the lungs for lung findings.
    (Labelled findings are checked on the label map in test_findings_visible_in_volume.)"""
    from voxelfm.data.phantoms.cohort import _scan_spec, case_plan

    wanted, picked = {"emphysema", "consolidation", "lung_opacity", "atelectasis", "cardiomegaly"}, {}
    for i, (p, k) in enumerate(case_plan(SEED + 100, 60)):
        flags = _scan_spec(SEED + 100, p, k, "demo")[4].flags
        for f in list(wanted):
            if flags[f]:
                picked[f] = i
                wanted.discard(f)
        if not wanted:
            break
    assert not wanted, wanted
    for f, i in sorted(picked.items()):
        with_ = generate_case(SEED + 100, i)
        if not with_.row[f]:
            continue  # dropped as invisible (rare); the table then says 0
        without = generate_case(SEED + 100, i, without=(f,))
        assert without.row[f] == 0 and not mentions(without.row["report"], f)[0]
        changed = np.abs(with_.hu - without.hu) > 100
        assert changed.sum() >= 10, (f, int(changed.sum()))
        if f in ("emphysema", "lung_nodule", "consolidation", "lung_opacity", "atelectasis", "pleural_effusion"):
            lung = np.isin(without.labels, L.LUNGS)
            assert (changed & lung).sum() >= 0.8 * changed.sum(), f


def test_reports_state_present_findings_and_never_absent_ones(cases):
    for row, *_ in cases:
        for f in FINDINGS:
            pos, _neg = mentions(row["report"], f)
            assert pos == bool(row[f]), (row["id"], f, row["report"])
    # measurements and locations are in the text
    nod = [r for r, *_ in cases if r["lung_nodule"]]
    for r in nod:
        assert f"{r['nodule_diameter_mm']:.0f} mm" in r["report"]
        assert "lobe" in r["report"]


def test_report_negation_check_itself():
    text = "LUNGS: No pleural effusion. A 12 mm solid nodule in the right upper lobe.\nIMPRESSION: 1. Nodule."
    assert mentions(text, "pleural_effusion") == (False, True)
    assert mentions(text, "lung_nodule") == (True, False)
    assert mentions("No mediastinal or hilar lymphadenopathy.", "lymphadenopathy") == (False, True)
    assert mentions("Calcified plaques along the aortic arch.", "arterial_wall_calcification")[0]
    assert not mentions("Calcified plaques along the aortic arch.", "coronary_artery_wall_calcification")[0]


def test_clinical_targets_follow_the_findings():
    """Larger simulated table (no rendering needed): survival and FEV1 depend on the findings."""
    from voxelfm.data.phantoms.cohort import _scan_spec, _survival, case_plan

    rows = []
    for p, k in case_plan(11, 400):
        if k:
            continue
        patient, _, _, _, f, streams = _scan_spec(11, p, 0, "demo")
        t, e, lp = _survival(streams[3], patient, f, 0.0)
        rows.append({"t": t, "e": e, "lp": lp, "age": patient.age, **f.flags})
    df = pd.DataFrame(rows)
    from lifelines.utils import concordance_index

    # higher linear predictor -> shorter survival (C-index well above chance)
    assert concordance_index(df["t"], -df["lp"], df["e"]) > 0.65
    assert 0.15 < df["e"].mean() < 0.6
    for f in FINDINGS:  # realistic prevalences: every finding between 8% and 45%
        assert 0.08 <= df[f].mean() <= 0.45, (f, df[f].mean())


def test_reportgen_rule_labeler_maps_reports_back_to_the_table(cohort_dir):
    """Integration: the CT-RATE rule-based labeler of voxelfm.reportgen recovers every finding."""
    labeler = pytest.importorskip("voxelfm.reportgen.labeler")
    _, table = cohort_dir
    for _, row in table.iterrows():
        got = {labeler.column_name(k) if k not in FINDINGS else k: bool(v)
               for k, v in labeler.label_report(row["report"]).items()}
        for f in FINDINGS:
            if f in got:
                assert got[f] == bool(row[f]), (row["id"], f, row["report"])
