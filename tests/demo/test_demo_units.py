"""Fast tests of the demo's parts: settings, stage reuse, the phantom suite, findings and the report."""

from __future__ import annotations

import io
import json
import math
import time

import numpy as np
import pandas as pd
import pytest

from voxelfm.demo.report import compare_backbones, findings_paragraph, main_rows, markdown_to_html, results_table
from voxelfm.demo.settings import DemoSettings
from voxelfm.demo.stages import DemoState, StageRunner, format_seconds, signature
from voxelfm.demo.suite import CATEGORIES, build_suite, category_of
from voxelfm.errors import VoxelFMError


# ------------------------------------------------------------------------------------------ settings
def test_settings_presets_and_overrides():
    d = DemoSettings.create()
    q = DemoSettings.create(quick=True)
    assert (d.cases, d.pretrain_minutes, d.with_reports) == (400, 7.0, False)
    assert q.quick and q.cases < d.cases and q.pretrain_minutes < 1.0 and q.n_resamples < d.n_resamples
    q2 = DemoSettings.create(quick=True, cases=60, pretrain_minutes=2, with_reports=True, workers=1, seed=3)
    assert (q2.cases, q2.pretrain_minutes, q2.with_reports, q2.n_workers, q2.seed) == (60, 2.0, True, 1, 3)
    assert q2.probe_epochs == q.probe_epochs  # quick probe settings kept


@pytest.mark.parametrize("kw, match", [({"cases": 10}, "at least 24"), ({"pretrain_minutes": 0}, "> 0"),
                                       ({"workers": 0}, ">= 1")])
def test_settings_reject_bad_values(kw, match):
    with pytest.raises(ValueError, match=match):
        DemoSettings.create(**kw)


def test_stage_settings_separate_concerns():
    a = DemoSettings.create()
    b = DemoSettings.create(pretrain_minutes=3)
    c = DemoSettings.create(cases=100)
    assert a.stage_settings("phantoms") == b.stage_settings("phantoms")
    assert a.stage_settings("pretrain") != b.stage_settings("pretrain")
    assert a.stage_settings("phantoms") != c.stage_settings("phantoms")
    assert a.stage_settings("probes") == c.stage_settings("probes")
    with pytest.raises(ValueError, match="unknown stage"):
        a.stage_settings("nope")


# ------------------------------------------------------------------------------------------ stages
def test_signature_depends_on_settings_and_upstream():
    s1 = signature({"a": 1}, {"up": "x"})
    assert s1 == signature({"a": 1}, {"up": "x"})
    assert s1 != signature({"a": 2}, {"up": "x"})
    assert s1 != signature({"a": 1}, {"up": "y"})


def test_format_seconds():
    assert format_seconds(0) == "0:00"
    assert format_seconds(73.4) == "1:13"
    assert format_seconds(3725) == "1:02:05"


def test_runner_reuses_resumes_and_clears(tmp_path):
    calls = []
    folder = tmp_path / "stage_a"

    def work(resuming):
        calls.append(resuming)
        folder.mkdir(exist_ok=True)
        (folder / "f.txt").write_text("x")
        return {"n": 3, "_line": "three things"}

    out = io.StringIO()
    state = DemoState.load(tmp_path)
    runner = StageRunner(state, 1, stream=out)
    rec = runner.run("a", "do a", "sig1", work, folders=[folder])
    assert calls == [False] and rec.status == "finished" and rec.summary["n"] == 3
    assert "[demo 1/1] a: do a" in out.getvalue() and "done in" in out.getvalue()
    saved = json.loads((tmp_path / "demo.json").read_text())
    assert saved["stages"]["a"]["status"] == "finished"

    # same signature: reused, work not called
    out2 = io.StringIO()
    runner2 = StageRunner(DemoState.load(tmp_path), 1, stream=out2)
    runner2.run("a", "do a", "sig1", work, folders=[folder])
    assert calls == [False] and "reused" in out2.getvalue()
    assert runner2.this_run["a"]["status"] == "reused"

    # a started (interrupted) record with the same signature resumes; the folder is kept
    st = DemoState.load(tmp_path)
    st.stages["a"].status = "started"
    st.save()
    StageRunner(DemoState.load(tmp_path), 1, stream=io.StringIO()).run("a", "do a", "sig1", work, folders=[folder])
    assert calls == [False, True]

    # an interrupted attempt keeps its time and stays "started"; the next run resumes and adds to it
    def interrupted(resuming):
        time.sleep(0.05)
        raise KeyboardInterrupt

    st = DemoState.load(tmp_path)
    st.stages["a"].status = "started"
    st.save()
    with pytest.raises(KeyboardInterrupt):
        StageRunner(DemoState.load(tmp_path), 1, stream=io.StringIO()).run("a", "do a", "sig1", interrupted)
    rec = DemoState.load(tmp_path).stages["a"]
    assert rec.status == "started" and rec.runs[-1] >= 0.05 and len(rec.runs) == 3
    StageRunner(DemoState.load(tmp_path), 1, stream=io.StringIO()).run("a", "do a", "sig1", work, folders=[folder])
    rec = DemoState.load(tmp_path).stages["a"]
    assert calls == [False, True, True] and rec.status == "finished" and len(rec.runs) == 4
    assert rec.seconds == pytest.approx(sum(rec.runs), abs=1e-2)

    # another signature: folder cleared, run from scratch
    (folder / "stale.txt").write_text("old")
    StageRunner(DemoState.load(tmp_path), 1, stream=io.StringIO()).run("a", "do a", "sig2", work, folders=[folder])
    assert calls == [False, True, True, False] and not (folder / "stale.txt").exists()


def test_state_rejects_foreign_json(tmp_path):
    (tmp_path / "demo.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(VoxelFMError, match="not a voxelfm demo"):
        DemoState.load(tmp_path)


def test_run_demo_refuses_a_foreign_nonempty_folder(tmp_path):
    from voxelfm.demo import run_demo

    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(VoxelFMError, match="holds no demo"):
        run_demo(tmp_path, quick=True, stream=io.StringIO())
    assert (tmp_path / "precious.txt").read_text() == "keep me"


# ------------------------------------------------------------------------------------------ suite
def _cohort(n=60, seed=0):
    rng = np.random.default_rng(seed)
    split = np.array(["train"] * (n * 6 // 10) + ["val"] * (n * 2 // 10) + ["test"] * (n - n * 8 // 10))
    t = pd.DataFrame({"id": [f"c{i}" for i in range(n)], "patient_id": [f"p{i}" for i in range(n)],
                      "split": split, "path": [f"volumes/c{i}.nii.gz" for i in range(n)],
                      "seg_path": [f"segmentations/c{i}_seg.nii.gz" for i in range(n)],
                      "fev1_percent": rng.normal(90, 15, n), "lung_volume_ml": rng.normal(3000, 600, n),
                      "survival_time": rng.exponential(1000, n), "event": rng.integers(0, 2, n)})
    t["lung_nodule"] = (np.arange(n) % 3 == 0).astype(int)
    t["emphysema"] = (np.arange(n) % 4 == 1).astype(int)
    t["cardiomegaly"] = 0
    t.loc[t.index[:3], "cardiomegaly"] = 1  # train only: unusable
    for c in ("nodule_d", "nodule_h", "nodule_w"):
        t[c] = np.where(t["lung_nodule"] == 1, 40.0, np.nan)
    return t


def test_suite_covers_every_category_and_skips_unusable_findings():
    plan = build_suite(_cohort(), DemoSettings.create(quick=True),
                       findings=["lung_nodule", "emphysema", "cardiomegaly", "hiatal_hernia"])
    tasks = {t["name"]: t for t in plan.suite["tasks"]}
    assert plan.findings == ["lung_nodule", "emphysema"]
    assert "cardiomegaly" in plan.skipped and "need 6 of each for 3 folds" in plan.skipped["cardiomegaly"]
    assert plan.suite["protocol"] == "cv" and plan.suite["folds"] == 3 and plan.below_resolution == {}
    assert plan.skipped["hiatal_hernia"] == "not in the cohort table"
    kinds = {t["task"] for t in plan.suite["tasks"]}
    assert {category_of(k) for k in kinds} == set(CATEGORIES)
    nod = tasks["lung_nodule"]
    assert nod["probes"][1] == {"head": "attentive", "feature": "patch"} and nod["fractions"] == [0.5, 1.0]
    assert tasks["all findings"]["target"] == ["lung_nodule", "emphysema"]
    assert tasks["nodule localisation"]["hparams"] == {"coords": "voxel"}
    assert tasks["retrieval"]["target"] == ["lung_nodule", "emphysema"]
    assert tasks["retrieval"]["hparams"] == {"retrieval_split": "all", "n_negatives": 40}  # 60 - 20 nodules
    assert plan.suite["reference"] == "pretrained"
    assert plan.suite["head_defaults"]["segmentation"] == {"epochs": 12, "repeats": 1}
    # the default demo averages two decoders per backbone (one decoder's Dice moves with its seed)
    default = build_suite(_cohort(), DemoSettings.create(folds=3), findings=["lung_nodule", "emphysema"])
    assert default.suite["head_defaults"]["segmentation"] == {"epochs": 20, "repeats": 2}
    assert plan.suite["figures"]["pca"]["ids"] == ["c48"]  # first test scan with a nodule
    split = build_suite(_cohort(), DemoSettings.create(quick=True, protocol="split"),
                        findings=["lung_nodule", "emphysema", "cardiomegaly"])
    assert "val split" in split.skipped["cardiomegaly"] and split.suite["protocol"] == "split"


def test_suite_leaves_out_findings_below_the_input_resolution():
    """On an 11-mm input grid a finding drawn under 22 mm across is listed, not scored; so is the
    localisation of nodules (3–30 mm)."""
    plan = build_suite(_cohort(), DemoSettings.create(quick=True), findings=["lung_nodule", "emphysema"],
                       resolution={"voxel_mm": 11.0, "token_mm": 88.0})
    assert plan.findings == ["emphysema"] and plan.lead == "emphysema"
    assert set(plan.below_resolution) == {"lung_nodule", "nodule localisation"}
    assert plan.below_resolution["lung_nodule"].startswith("drawn from 3 mm across; the model input has 11-mm")
    names = {t["name"] for t in plan.suite["tasks"]}
    assert "lung_nodule" not in names and "nodule localisation" not in names
    fine = build_suite(_cohort(), DemoSettings.create(quick=True), findings=["lung_nodule", "emphysema"],
                       resolution={"voxel_mm": 1.0, "token_mm": 8.0})
    assert fine.below_resolution == {} and "nodule localisation" in {t["name"] for t in fine.suite["tasks"]}


def test_suite_is_valid_for_the_probe_runner(tmp_path):
    """The suite passes the probe runner's own validation (heads, options, columns)."""
    from voxelfm.probes.suite import load_suite

    t = _cohort()
    t.to_csv(tmp_path / "cohort.csv", index=False)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    plan = build_suite(t, DemoSettings.create(), findings=["lung_nodule", "emphysema"])
    s = load_suite(dict(plan.suite, labels=str(tmp_path / "cohort.csv"),
                        stores={"pretrained": str(tmp_path / "a"), "random_init": str(tmp_path / "b")}))
    assert {t.task for t in s.tasks} == {"binary", "multilabel", "regression", "survival", "retrieval",
                                        "localisation", "segmentation"}


def test_suite_needs_a_usable_finding():
    t = _cohort()
    t["lung_nodule"] = 0
    with pytest.raises(ValueError, match="more cases"):
        build_suite(t, DemoSettings.create(), findings=["lung_nodule"])


# ------------------------------------------------------------------------------------------ findings
def _results():
    """Hand-made suite outputs: nodule improved (p 0.001), fev1 better n.s., survival worse n.s.
    (raw p-values whose Holm adjustment over the four rows gives the p_holm column)."""
    rows, comps = [], []

    def add(task_name, task, head, feature, metric, pre, rnd, p, p_holm, method, fraction=1.0):
        for b, (v, lo, hi) in (("pretrained", pre), ("random_init", rnd)):
            rows.append({"task_name": task_name, "task": task, "head": head, "feature": feature,
                         "fraction": fraction, "backbone": b, "metric": metric, "primary": True, "value": v,
                         "ci_low": lo, "ci_high": hi, "method": "x", "n": 40, "best_epoch": 1, "seconds": 1.0,
                         "status": "ok"})
            rows.append({**rows[-1], "metric": "other", "primary": False, "value": 0.0})
        comps.append({"task_name": task_name, "task": task, "head": head, "feature": feature, "fraction": fraction,
                      "metric": metric, "backbone_a": "pretrained", "backbone_b": "random_init", "n": 40,
                      "diff": pre[0] - rnd[0], "p_value": p, "p_holm": p_holm, "method": method})

    add("lung_nodule", "binary", "linear", "cls", "auroc", (0.91, 0.85, 0.97), (0.62, 0.5, 0.74), 0.00025, 0.001,
        "delong")
    add("lung_nodule", "binary", "linear", "cls", "auroc", (0.80, 0.7, 0.9), (0.6, 0.5, 0.7), 0.04 / 3, 0.04, "delong",
        fraction=0.5)
    add("fev1_percent", "regression", "linear", "cls", "mae", (10.0, 8.0, 12.0), (12.5, 10.0, 15.0), 0.04, 0.08,
        "paired-bootstrap")
    add("survival", "survival", "cox", "cls", "c_index", (0.60, 0.5, 0.7), (0.66, 0.55, 0.75), 0.6, 0.6,
        "paired-bootstrap")
    return pd.DataFrame(rows), pd.DataFrame(comps)


def test_compare_backbones_verdicts_respect_metric_direction():
    res, comp = _results()
    cmp = compare_backbones(res, comp)
    v = {(r.task_name, r.fraction): r.verdict for r in cmp.itertuples()}
    assert v[("lung_nodule", 1.0)] == "improved"       # AUROC up, Holm p 0.001
    assert v[("lung_nodule", 0.5)] == "improved"
    assert v[("fev1_percent", 1.0)] == "better"        # MAE down (lower is better), p 0.08
    assert v[("survival", 1.0)] == "not better"        # C-index down, p 0.6
    row = cmp[cmp["task_name"] == "fev1_percent"].iloc[0]
    assert row["diff"] == pytest.approx(-2.5) and row["category"] == "regression"
    assert list(main_rows(cmp)["task_name"]) == ["lung_nodule", "fev1_percent", "survival"]


def test_findings_paragraph_states_numbers_and_failures():
    res, comp = _results()
    text = findings_paragraph(compare_backbones(res, comp))
    assert "on 2 of 3 tasks (1 significantly" in text
    assert "lung_nodule (AUROC 0.910 vs 0.620, p = 0.001)" in text
    assert "Better but not significantly: fev1_percent (MAE 10.0 vs 12.5, p = 0.080)" in text
    assert "Pre-training did not help on survival (C-index 0.600 vs 0.660, p = 0.600)." in text
    assert "classification 1/1" in text and "survival 0/1" in text
    assert "did not help on most tasks" not in text


def test_findings_paragraph_is_honest_when_pretraining_loses():
    res, comp = _results()
    res.loc[(res["backbone"] == "pretrained") & (res["task_name"] == "lung_nodule"), "value"] = 0.5
    comp["p_value"] = comp["p_holm"] = 0.9
    text = findings_paragraph(compare_backbones(res, comp))
    assert "on 1 of 3 tasks (0 significantly" in text
    assert "did not help on most tasks" in text


def test_results_table_has_both_backbones_with_cis():
    res, comp = _results()
    md = results_table(compare_backbones(res, comp))
    assert "| classification | lung_nodule | linear/cls | 1 | AUROC ↑ | **0.910 [0.850, 0.970]** | " \
           "0.620 [0.500, 0.740] | 0.290 | 0.001 (DeLong) | improved |" in md
    assert "MAE ↓" in md and "C-index ↑" in md


def test_several_random_seeds_are_averaged_and_must_all_be_beaten():
    """Three random-init seeds: the random column is their mean (lowest / highest in brackets), and a
    row is significant only when the pre-trained backbone beats every seed (largest per-seed p)."""
    res, comp = _results()
    extra_res, extra_cmp = [], []
    for k, shift in ((2, 0.05), (3, -0.05)):
        r = res[res["backbone"] == "random_init"].copy()
        r["backbone"] = f"random_init_{k}"
        r.loc[r["primary"], "value"] += shift
        extra_res.append(r)
        c = comp.copy()
        c["backbone_b"] = f"random_init_{k}"
        extra_cmp.append(c)
    res = pd.concat([res, *extra_res], ignore_index=True)
    comp = pd.concat([comp, *extra_cmp], ignore_index=True)
    cmp = compare_backbones(res, comp)
    row = cmp[(cmp["task_name"] == "lung_nodule") & (cmp["fraction"] == 1.0)].iloc[0]
    assert row["n_random"] == 3 and row["rnd"] == pytest.approx(0.62)
    assert (row["rnd_lo"], row["rnd_hi"]) == pytest.approx((0.57, 0.67))
    assert row["p_holm"] == pytest.approx(0.001) and row["verdict"] == "improved"  # beats all three
    comp.loc[(comp["backbone_b"] == "random_init_3") & (comp["task_name"] == "lung_nodule")
             & (comp["fraction"] == 1.0), "p_value"] = 0.2
    cmp = compare_backbones(res, comp)
    row = cmp[(cmp["task_name"] == "lung_nodule") & (cmp["fraction"] == 1.0)].iloc[0]
    assert row["p"] == pytest.approx(0.2) and row["verdict"] == "better"  # not significant against seed 3
    assert cmp[cmp["task_name"] == "survival"].iloc[0]["p"] == pytest.approx(0.6)  # 0.60 below all three
    res.loc[(res["backbone"] == "random_init_3") & (res["task_name"] == "survival") & res["primary"], "value"] = 0.55
    surv = compare_backbones(res, comp).set_index("task_name").loc["survival"]
    assert surv["p"] == 1.0 and surv["verdict"] == "not better"  # seeds on both sides: no direction
    md = results_table(cmp)
    assert "random init, mean of 3 seeds [lowest, highest]" in md
    assert "every one of them" in findings_paragraph(cmp)


def test_undefined_rows_are_not_counted():
    res, comp = _results()
    res.loc[(res["task_name"] == "survival"), "value"] = math.nan
    cmp = compare_backbones(res, comp)
    assert cmp.loc[cmp["task_name"] == "survival", "verdict"].item() == "undefined"
    text = findings_paragraph(cmp)
    assert "of 2 tasks" in text and "Not evaluable on this cohort: survival" in text


def test_html_is_self_contained(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1, 1))
    ax.plot([0, 1])
    (tmp_path / "figs").mkdir()
    fig.savefig(tmp_path / "figs" / "a.png")
    plt.close(fig)
    md = "# Title\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n![cap](figs/a.png)\n\n![missing](figs/none.png)\n"
    page = markdown_to_html(md, tmp_path, title="t")
    assert "<table>" in page and "<td>1</td>" in page
    assert 'src="data:image/png;base64,' in page
    assert 'src="figs/none.png"' in page  # missing images are left as links


# ------------------------------------------------------------------------------------------ workflow helpers
def test_longer_pretraining_budget_continues_the_finished_run(tmp_path):
    from voxelfm.demo.stages import StageRecord
    from voxelfm.demo.workflow import _extend_pretraining, _pretrain_base_signature

    s7 = DemoSettings.create()
    s15 = DemoSettings.create(pretrain_minutes=15)
    s3 = DemoSettings.create(pretrain_minutes=3)
    base = _pretrain_base_signature(s7, "prep")
    assert base == _pretrain_base_signature(s15, "prep") != _pretrain_base_signature(s7, "other")
    sig7 = signature(s7.stage_settings("pretrain"), {"prepare": "prep"})
    sig15 = signature(s15.stage_settings("pretrain"), {"prepare": "prep"})
    sig3 = signature(s3.stage_settings("pretrain"), {"prepare": "prep"})

    def runner_with_finished_7min():
        st = DemoState(tmp_path, {"pretrain": StageRecord(sig7, "finished", 420.0, [420.0],
                                                          summary={"base_signature": base, "budget_minutes": 7.0})})
        return StageRunner(st, 1, stream=io.StringIO())

    r = runner_with_finished_7min()
    _extend_pretraining(r, s15, base, sig15)           # more minutes: resume the same run
    assert (r.state.stages["pretrain"].signature, r.state.stages["pretrain"].status) == (sig15, "started")
    r = runner_with_finished_7min()
    _extend_pretraining(r, s3, base, sig3)             # fewer minutes: left alone → cleared and re-run
    assert r.state.stages["pretrain"].signature == sig7
    r = runner_with_finished_7min()
    _extend_pretraining(r, s7, base, sig7)             # same: reused
    assert r.state.stages["pretrain"].status == "finished"


def test_extraction_budget_is_one_global_crop(tmp_path):
    import yaml

    from voxelfm.demo.workflow import compute_threads, extraction_budget

    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"crops": {"global_crops_size": [32, 32, 48]},
                                                          "student": {"patch_size": 8}}))
    assert extraction_budget(tmp_path, None) == 4 * 4 * 6
    assert extraction_budget(tmp_path, 216) == 216
    assert [compute_threads(n) for n in (1, 2, 3, 8)] == [1, 1, 1, 4]


# ------------------------------------------------------------------------------------------ CLI
def test_cli_errors_are_one_line(tmp_path, capsys):
    from voxelfm.cli.main import main

    assert main(["demo", "--cases", "10", "-o", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["voxelfm demo: error: --cases must be at least 24 (train/val/test splits with both classes), got 10"]
    (tmp_path / "x.txt").write_text("x")
    assert main(["demo", "--quick", "-o", str(tmp_path)]) == 2
    assert "holds no demo" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["demo", "--with-reports", "--no-reports"])


def test_cli_help_lists_the_flags():
    from voxelfm.cli.main import build_parser

    text = build_parser()._subparsers._group_actions[0].choices["demo"].format_help()
    for flag in ("--quick", "--cases", "--pretrain-minutes", "--with-reports", "--no-reports", "--workers",
                 "--seed", "--fresh", "voxelfm-demo"):
        assert flag in text


def test_tiny_schedule_is_fitted_to_the_pretraining_budget():
    from voxelfm.demo.settings import DemoSettings
    from voxelfm.demo.workflow import TINY_STEPS_PER_SECOND, _schedule_overrides

    # 7 minutes at 5.5 steps/s = 2,310 steps -> 46 epochs of 50 steps (the schedule ends inside the budget)
    assert _schedule_overrides(DemoSettings.create()) == ["optim.epochs=46"]
    assert int(7 * 60 * TINY_STEPS_PER_SECOND) // 50 == 46
    assert _schedule_overrides(DemoSettings.create(quick=True)) == ["optim.epochs=4"]
    assert _schedule_overrides(DemoSettings.create(pretrain_minutes=0.01)) == ["optim.epochs=2"]  # floor
    # a user's own schedule or another config is left alone
    assert _schedule_overrides(DemoSettings.create(pretrain_overrides=("optim.epochs = 3",))) == []
    assert _schedule_overrides(DemoSettings.create(pretrain_config="vit_small")) == []


def test_pretraining_schedule_is_fitted_to_the_measured_speed(tmp_path, monkeypatch):
    """The first piece of pre-training measures steps/s; the schedule then fits the rest of the budget
    (a loaded machine gets a shorter, complete schedule instead of a long one cut off mid-decay)."""
    from voxelfm.demo import workflow as W

    paths = W.DemoPaths(tmp_path)
    calls = []

    def fake_pretrain(config, data, output, *, overrides, max_minutes, **kw):
        calls.append((list(overrides), max_minutes))
        output.mkdir(parents=True, exist_ok=True)  # 45 s at 1 step/s (startup included)
        (output / "run.json").write_text(json.dumps({"steps_this_run": 45, "minutes_this_run": 0.75,
                                                     "steps_done": 45}))

    monkeypatch.setattr("voxelfm.ssl.pretrain", fake_pretrain)
    monkeypatch.setattr(W, "_pretrain_elapsed", lambda run_dir: 45.0)
    s = DemoSettings.create(pretrain_minutes=7)
    assert W._fits_schedule(s) and W._schedule_overrides(s) == ["optim.epochs=46"]  # quiet: 5.5 steps/s
    fitted = W._fit_schedule_to_machine(paths, s, ["train.seed=0"], 1)
    # 45 steps done + 1 step/s × (420 − 45) s = 420 steps → 8 epochs of 50 steps
    assert fitted == ["optim.epochs=8"]
    # the calibration runs the demo's own model (its grid overrides), not the plain recipe: a
    # checkpoint of another patch size could not be resumed, and its speed would be another model's
    assert calls == [(["train.seed=0", "optim.epochs=46", *s.pretrain_overrides], W.CALIBRATION_MINUTES)]
    assert "student.patch_size=16" in s.pretrain_overrides
    rec = json.loads((paths.pretrain / W.SCHEDULE_FILE).read_text())
    assert rec["steps_per_second"] == 1.0 and rec["epochs"] == 8
    assert W._fit_schedule_to_machine(paths, s, ["train.seed=0"], 1) == ["optim.epochs=8"] and len(calls) == 1
    longer = DemoSettings.create(pretrain_minutes=14)  # a longer budget continues: refit from the speed
    assert W._fit_schedule_to_machine(paths, longer, ["train.seed=0"], 1) == ["optim.epochs=16"] and len(calls) == 1
    assert W._fit_schedule_to_machine(W.DemoPaths(tmp_path / "q"), DemoSettings.create(quick=True),
                                      [], 1) == W._schedule_overrides(DemoSettings.create(quick=True))


def test_measured_speed_leaves_out_the_start_up_step(tmp_path):
    from voxelfm.demo.workflow import _measured_speed

    rows = [{"step": 0, "step_time": 14.0}] + [{"step": i, "step_time": 0.5} for i in range(1, 6)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = {"steps_this_run": 6, "minutes_this_run": 0.4}
    assert _measured_speed(tmp_path, run) == pytest.approx(2.0)  # not 6 / 24 s = 0.25
    (tmp_path / "metrics.jsonl").write_text("")
    assert _measured_speed(tmp_path, run) == pytest.approx(0.25)


def test_baselines_setting_validates_and_reaches_its_stage(monkeypatch):
    """``voxelfm demo --baselines [FAMILIES]``: names are checked, the stage's signature depends on
    them and their reduced input sizes, and the CLI passes them through (all families by default)."""
    import argparse

    from voxelfm.cli import demo as cli_demo
    from voxelfm.demo.settings import DEMO_BASELINES

    assert DemoSettings().baselines == ()
    with pytest.raises(ValueError, match="unknown demo baseline.*'resnet'"):
        DemoSettings(baselines=("merlin", "resnet"))
    s = DemoSettings.create(quick=True, baselines=("merlin", "ct_clip"))
    st = s.stage_settings("baselines")
    assert st["baselines"] == {"merlin": DEMO_BASELINES["merlin"], "ct_clip": DEMO_BASELINES["ct_clip"]}
    assert signature(st) != signature(DemoSettings.create(quick=True, baselines=("merlin",)).stage_settings("baselines"))
    assert "fmcib" not in DEMO_BASELINES  # lesion crops, not scans
    seen = {}
    monkeypatch.setattr("voxelfm.demo.run_demo", lambda out, fresh, settings: seen.update(settings=settings))
    parser = argparse.ArgumentParser()
    cli_demo.add_arguments(parser)
    for argv, expected in ((["--quick", "--baselines"], tuple(DEMO_BASELINES)),
                           (["--quick", "--baselines", "merlin, radfm"], ("merlin", "radfm")),
                           (["--quick"], ())):
        assert cli_demo.run(parser.parse_args(argv)) == 0
        assert seen["settings"].baselines == expected and seen["settings"].quick


def test_baselines_section_says_it_is_a_pipeline_check(tmp_path):
    from types import SimpleNamespace

    from voxelfm.demo.report import _baselines_section

    paths = SimpleNamespace(root=tmp_path, baselines=tmp_path / "baselines")
    assert _baselines_section(paths, {}) == []
    paths.baselines.mkdir()
    (paths.baselines / "table.md").write_text("# Backbone comparison\n\n| task | pretrained | merlin |\n|---|---|---|\n"
                                             "| a | 0.7 | 0.5 |\n")
    text = "\n".join(_baselines_section(paths, {"backbones": ["pretrained", "random_init", "merlin"]}))
    assert "pipeline check, not a result" in text and "random weights" in text
    assert "(merlin)" in text and "| a | 0.7 | 0.5 |" in text and "baselines/table.md" in text
    assert "\n### Backbone comparison" in text and "\n# " not in text


def test_report_generation_section_shows_repaired_and_decoded_reports(tmp_path):
    from voxelfm.demo import workflow as W
    from voxelfm.demo.report import _reports_section
    from voxelfm.demo.workflow import REPORT_GROUNDING

    assert REPORT_GROUNDING == {"grounding": "probe", "grounding_threshold": "f1", "repair": True}
    paths = W.DemoPaths(tmp_path)
    assert "voxelfm demo --with-reports" in "\n".join(_reports_section(paths, tmp_path, False))
    assert _reports_section(paths, tmp_path, True) == []  # asked for but not (yet) run: no section

    def est(v):
        return {"macro_f1": {"value": v, "ci_low": v - 0.05, "ci_high": v + 0.05}}

    paths.reports.mkdir(parents=True)
    (paths.reports / "results.json").write_text(json.dumps({
        "lm": "SmolLM2", "n_test": 75, "generated": est(0.428), "generated_raw": est(0.291),
        "grounding": {"reports_disagreeing_with_probe": 75}, "probe": est(0.300),
        "baselines": {"most_common": est(0.0), "random_train": est(0.171), "nearest_train": est(0.294)},
        "permutation_test": {"p_value": 0.0005, "n_permutations": 2000}}))
    md = "\n".join(_reports_section(paths, tmp_path, True))
    assert "| generated, repaired to the probe findings | 0.428 [0.378, 0.478] |" in md
    assert "| generated, as decoded | 0.291 [0.241, 0.341] |" in md
    assert "nearest training report" in md and "| linear probe per abnormality | 0.300" in md
    assert "p = 0.0005 — the reports depend on their own scan" in md and "`--repair`" in md
