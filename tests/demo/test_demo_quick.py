"""The quick demo end to end (≈ 2 minutes on 2 quiet cores): phantoms → prepare → pretrain →
extract ×2 → probe suite → report, then a second run that reuses every stage."""

from __future__ import annotations

import io
import json
import re
import time

import pandas as pd
import pytest

from voxelfm.demo.suite import CATEGORIES

pytestmark = pytest.mark.slow

STAGES = ("phantoms", "prepare", "pretrain", "extract_pretrained", "extract_random", "probes")
_EST = r"-?\d+\.\d+ \[-?\d+\.\d+, -?\d+\.\d+\]"   # "0.812 [0.771, 0.850]"


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    from voxelfm.demo import run_demo

    out = tmp_path_factory.mktemp("demo") / "voxelfm-demo"
    log = io.StringIO()
    t0 = time.monotonic()
    report = run_demo(out, quick=True, stream=log)
    first = time.monotonic() - t0
    return out, report, log.getvalue(), first


def _probes_summary(out):
    return json.loads((out / "demo.json").read_text())["stages"]["probes"]["summary"]


def _scored_categories(out) -> list[str]:
    """Every category, except localisation when its target (the largest nodule) is below the resolution
    of the model input — then the report says so instead of scoring it."""
    unseen = _probes_summary(out).get("below_resolution") or {}
    return [c for c in CATEGORIES if not (c == "localisation" and "nodule localisation" in unseen)]


def test_report_exists_with_banner_findings_and_every_category(quick_demo):
    out, report, log, _ = quick_demo
    assert report == out / "report.md" and report.is_file()
    text = report.read_text()
    assert "not clinical evidence" in text
    findings = text.split("## Findings", 1)[1].split("##", 1)[0]
    assert re.search(r"on \d+ of \d+ tasks", findings)  # the generated paragraph states the count
    for cat in _scored_categories(out):
        assert f"| {cat} |" in text, f"no {cat} row in the results table"
    unseen = _probes_summary(out).get("below_resolution") or {}
    assert "lung_nodule" in unseen  # 3-30 mm nodules on an ≈ 11 mm input grid
    not_scored = text.split("Not scored — below the resolution of the model input:", 1)[1].split("\n", 1)[0]
    for finding in unseen:
        assert f"{finding} (drawn from" in not_scored, finding
    # the path is printed at the end, after the timing table
    assert log.rstrip().splitlines()[-2].startswith("report: ") and str(report) in log
    assert "stage" in log and "computed in" in log


def test_stage_headers_show_progress(quick_demo):
    _, _, log, _ = quick_demo
    for k, name in enumerate(STAGES + ("report",), start=1):
        assert re.search(rf"\[demo {k}/7\] {name}: .* — elapsed \d+:\d\d", log), name
        assert re.search(rf"\[demo {k}/7\] {name}: done in \d+:\d\d", log), name


def test_results_table_has_both_backbones_with_numbers_and_cis(quick_demo):
    out, report, _, _ = quick_demo
    cmp = pd.read_csv(out / "probes" / "pretrained_vs_random.csv")
    assert set(cmp["category"]) == set(_scored_categories(out))
    full = cmp[cmp["fraction"] == 1.0]
    # every category has a row where both backbones got a number with a confidence interval
    for cat in _scored_categories(out):
        rows = full[full["category"] == cat]
        ok = rows[rows[["pre", "pre_lo", "pre_hi", "rnd", "rnd_lo", "rnd_hi"]].notna().all(axis=1)]
        assert len(ok), f"{cat}: no row with values and CIs for both backbones"
        assert ((ok["pre_lo"] <= ok["pre"] + 1e-9) & (ok["pre"] <= ok["pre_hi"] + 1e-9)).all()
        assert ((ok["rnd_lo"] <= ok["rnd"] + 1e-9) & (ok["rnd"] <= ok["rnd_hi"] + 1e-9)).all()
    # binary AUROCs compared with DeLong, p-values in [0, 1]
    assert (cmp.loc[cmp["task"] == "binary", "method"] == "delong").all()
    p = cmp["p_holm"].dropna()
    assert len(p) and ((p >= 0) & (p <= 1)).all()
    # the Markdown table shows both backbones' estimates side by side
    text = report.read_text()
    table_rows = [ln for ln in text.splitlines() if ln.startswith("| classification |")]
    assert table_rows and all(len(re.findall(_EST, ln)) == 2 for ln in table_rows if "—" not in ln)
    assert "pre-trained [95% CI]" in text and "random init [95% CI]" in text and "p (Holm)" in text


def test_figures_exist_and_are_linked(quick_demo):
    out, report, _, _ = quick_demo
    text = report.read_text()
    figs = out / "probes" / "figures"
    lead = _probes_summary(out)["lead"]
    expected = [out / "figures" / "summary.png", out / "figures" / "pretrain_loss.png", figs / "fractions.png",
                figs / "cls_vs_patch.png", figs / f"roc_{lead}_linear-cls.png"]
    expected += sorted(figs.glob("pca_pretrained_*.png"))[:1] + sorted(figs.glob("pca_random_init_*.png"))[:1]
    assert len(expected) == 7
    for f in expected:
        assert f.is_file() and f.stat().st_size > 5000, f
        assert f"]({f.relative_to(out).as_posix()})" in text, f"{f.name} not in report.md"
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 7 and "<table>" in html


def test_timing_and_state_recorded(quick_demo):
    out, report, _, _ = quick_demo
    state = json.loads((out / "demo.json").read_text())
    for name in STAGES:
        rec = state["stages"][name]
        assert rec["status"] == "finished" and rec["seconds"] > 0
    assert state["stages"]["pretrain"]["summary"]["steps"] >= 1
    timing = report.read_text().split("## Timing", 1)[1]
    for title in ("phantom cohort", "pre-training", "probe suite"):
        assert re.search(rf"\| {title} \| \d+:\d\d \| ran \| \d+:\d\d \| \d+:\d\d \|", timing), title


def test_second_run_reuses_every_stage(quick_demo):
    from voxelfm.demo import run_demo

    out, report, _, first = quick_demo
    before = {p: p.stat().st_mtime_ns for p in (out / "embeddings" / "pretrained").rglob("*.safetensors")}
    log = io.StringIO()
    t0 = time.monotonic()
    again = run_demo(out, quick=True, stream=log)
    second = time.monotonic() - t0
    text = log.getvalue()
    for name in STAGES:
        assert re.search(rf"\] {name}: reused", text), name
    assert again == report and "| pre-training | 0:00 | reused |" in report.read_text()
    assert {p: p.stat().st_mtime_ns for p in before} == before  # nothing re-extracted
    assert second < max(20.0, 0.25 * first), (second, first)
