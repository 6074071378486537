"""``voxelfm benchmark paper`` end to end on two tiny prepared datasets × two tiny random-init
backbones: Table 1 (Markdown / CSV / LaTeX) with CIs and Holm-adjusted paired tests, figures,
per-cell time / hardware / load, resume without work, the dry-run plan, and a failing cell."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.benchmark._prepared import make_backbone, make_roots
from voxelfm.benchmark import parse_backbones, plan_paper_benchmark, run_paper_benchmark
from voxelfm.benchmark.backbones import load_backbone_spec
from voxelfm.cli.main import main

FAST = ["--preset", "default", "--no-crop-background", "--max-patches", "0", "--workers", "0",
        "--n-resamples", "200"]
EXTRACT = {"preset": "default", "crop_background": False, "max_patches": None}


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """One full CLI run: ROOTS.yaml with datasets alpha and beta, backbones a and b."""
    tmp = tmp_path_factory.mktemp("bench")
    roots = make_roots(tmp)
    a, b = make_backbone(tmp / "a", 1), make_backbone(tmp / "b", 2)
    out = tmp / "out"
    rc = main(["benchmark", "paper", "--data", str(roots), "--backbones", f"a={a},b={b}", "-o", str(out), *FAST])
    return {"tmp": tmp, "roots": roots, "a": a, "b": b, "out": out, "rc": rc}


def test_table1_layout_cis_and_holm(bench, capsys):
    out = bench["out"]
    assert bench["rc"] == 0
    table = pd.read_csv(out / "table1.csv")
    # rows = dataset / task / probe at the full fraction, columns = backbones, then the test vs a
    assert list(table.columns) == ["dataset", "task", "probe", "metric", "a", "b", "p a vs b"]
    assert table[["dataset", "task", "probe"]].values.tolist() == [
        ["alpha", "finding", "logistic/cls"], ["alpha", "finding", "attentive/patch"], ["alpha", "volume", "ridge/cls"],
        ["beta", "finding", "logistic/cls"], ["beta", "finding", "attentive/patch"], ["beta", "volume", "ridge/cls"]]
    assert set(table["metric"]) == {"auroc ↑", "mae ↓"}
    for cell in table["a"].tolist() + table["b"].tolist():  # "0.812 [0.701, 0.923]"
        v, lo, hi = (float(x) for x in cell.replace("[", "").replace("]", "").replace(",", "").split())
        assert lo <= v <= hi
    # the table's p-values are the suites' raw paired tests, Holm-adjusted over the whole table
    comp = pd.read_csv(out / "table1_comparisons.csv")
    assert len(comp) == 6 and set(comp["backbone_a"]) == {"a"} and set(comp["backbone_b"]) == {"b"}
    raw = comp["p_value"].to_numpy()
    order = np.argsort(raw)
    expected = np.empty(6)
    expected[order] = np.minimum(1, np.maximum.accumulate((6 - np.arange(6)) * raw[order]))
    np.testing.assert_allclose(comp["p_holm"], expected)
    per_dataset = pd.concat(pd.read_csv(out / "suites" / d / "comparisons.csv") for d in ("alpha", "beta"))
    full = per_dataset[per_dataset["fraction"] == 1.0]
    np.testing.assert_allclose(np.sort(full["p_value"]), np.sort(raw))
    md = (out / "table1.md").read_text()
    assert "| dataset | task | probe | metric | a | b | p a vs b |" in md and "Holm-adjusted over the whole table" in md
    tex = (out / "table1.tex").read_text()
    assert r"\begin{tabular}{llllccc}" in tex and r"\toprule" in tex
    for fig in ("fractions.png", "cls_vs_patch.png"):
        assert (out / "figures" / fig).stat().st_size > 5000
    # the long results keep every fraction and metric, with the dataset
    res = pd.read_csv(out / "results.csv")
    assert set(res["dataset"]) == {"alpha", "beta"} and set(res["fraction"]) == {0.5, 1.0}


def test_cells_record_time_hardware_and_load(bench):
    state = json.loads((bench["out"] / "benchmark.json").read_text())
    assert set(state["cells"]) == {"alpha/a", "beta/a", "alpha/b", "beta/b"}
    for rec in state["cells"].values():
        assert rec["status"] == "finished" and rec["n_scans"] == 24 and rec["embedded"] == 24
        assert rec["probe_runs"] == 5 and not rec["probe_failures"]
        assert rec["seconds"] >= rec["extract_seconds"] > 0 and rec["probe_seconds"] > 0
        assert rec["cpu_seconds"] > 0 and len(rec["load_before"]) == 3
        hw = rec["hardware"]
        assert hw["cpu"] and hw["torch"].startswith("2.") and hw["torch_threads"] >= 1 and hw["gpu"] == []
    assert len(list((bench["out"] / "stores" / "alpha" / "a" / "embeddings").glob("*.safetensors"))) == 24


def test_second_run_does_no_work(bench):
    out = bench["out"]
    logs = sorted(out.glob("stores/*/*/index/*.jsonl"))
    before = {p: p.read_bytes() for p in logs}
    state_before = json.loads((out / "benchmark.json").read_text())
    runs_before = {p: p.stat().st_mtime_ns for p in out.glob("suites/*/runs/**/results.json")}

    def no_load(spec):
        raise AssertionError(f"backbone {spec.name} loaded on a resumed run")

    res = run_paper_benchmark(bench["roots"], f"a={bench['a']},b={bench['b']}", out, extract=EXTRACT,
                              n_resamples=200, load=no_load, quiet=True)
    assert res.ran == [] and res.failed == [] and sorted(res.skipped) == ["alpha/a", "alpha/b", "beta/a", "beta/b"]
    assert {p: p.read_bytes() for p in logs} == before  # nothing extracted
    assert {p: p.stat().st_mtime_ns for p in out.glob("suites/*/runs/**/results.json")} == runs_before
    state = json.loads((out / "benchmark.json").read_text())
    assert state["datasets"] == state_before["datasets"]  # no dataset re-combined
    assert len(res.table) == 6


def test_interrupted_cell_resumes_from_its_files(bench):
    """A cell killed after its work was written resumes: nothing is embedded or trained again, and
    the dataset's tables are rebuilt with every backbone. (In place: the suite runner keys finished
    probe runs by the store's absolute path, so a moved benchmark folder trains its probes again.)"""
    out = bench["out"]
    state = json.loads((out / "benchmark.json").read_text())
    state["cells"]["alpha/b"]["status"] = "started"  # as a killed run leaves it
    (out / "benchmark.json").write_text(json.dumps(state))
    logs = {p: p.read_bytes() for p in out.glob("stores/alpha/*/index/*.jsonl")}
    runs = {p: p.stat().st_mtime_ns for p in out.glob("suites/alpha/runs/**/results.json")}
    res = run_paper_benchmark(bench["roots"], f"a={bench['a']},b={bench['b']}", out, extract=EXTRACT,
                              n_resamples=200, only=["alpha"], quiet=True)
    assert res.ran == ["alpha/b"] and res.skipped == ["alpha/a"]
    assert {p: p.read_bytes() for p in logs} == logs  # no scan embedded again
    assert {p: p.stat().st_mtime_ns for p in out.glob("suites/alpha/runs/**/results.json")} == runs
    rec = json.loads((out / "benchmark.json").read_text())["cells"]["alpha/b"]
    assert rec["status"] == "finished" and rec["embedded"] == 24
    assert set(pd.read_csv(out / "suites" / "alpha" / "results.csv")["backbone"]) == {"a", "b"}
    assert list(pd.read_csv(out / "table1.csv").columns[4:]) == ["a", "b", "p a vs b"]


@pytest.mark.slow
def test_changed_weights_rerun_only_their_cells(bench, tmp_path):
    """New weights under the same path: that backbone's cells are embedded and probed again, with
    their own results, and the other backbone's cells are reused."""
    import shutil

    out = tmp_path / "out"
    shutil.copytree(bench["out"], out)
    b = tmp_path / "b"
    shutil.copytree(bench["b"], b)
    before = pd.read_csv(out / "results.csv")
    res = run_paper_benchmark(bench["roots"], f"a={bench['a']},b={b}", out, extract=EXTRACT, n_resamples=200,
                              only=["alpha"], quiet=True)  # first run with b's new path: b re-runs
    assert res.ran == ["alpha/b"] and res.skipped == ["alpha/a"]
    make_backbone(b, 7)  # other weights, same folder
    res = run_paper_benchmark(bench["roots"], f"a={bench['a']},b={b}", out, extract=EXTRACT, n_resamples=200,
                              only=["alpha"], quiet=True)
    assert res.ran == ["alpha/b"] and res.skipped == ["alpha/a"]
    after = pd.read_csv(out / "results.csv")
    key = ["task_name", "head", "feature", "fraction", "metric"]
    old_b = before[(before["dataset"] == "alpha") & (before["backbone"] == "b")].set_index(key)["value"]
    new_b = after[(after["dataset"] == "alpha") & (after["backbone"] == "b")].set_index(key)["value"]
    old_a = before[(before["dataset"] == "alpha") & (before["backbone"] == "a")].set_index(key)["value"]
    new_a = after[(after["dataset"] == "alpha") & (after["backbone"] == "a")].set_index(key)["value"]
    pd.testing.assert_series_equal(old_a, new_a)
    assert not np.allclose(old_b.loc[new_b.index].to_numpy(), new_b.to_numpy())


def test_dry_run_plan_disk_and_time(bench, capsys):
    out = bench["out"]
    plan = plan_paper_benchmark(bench["roots"], f"a={bench['a']},b={bench['b']}", out, extract=EXTRACT,
                                n_resamples=200)
    assert [c["status"] for c in plan["cells"]] == ["done"] * 4  # the finished cells are recognised
    c = plan["cells"][0]["estimate"]
    # 28³ voxels at 1 mm, patch 14 → 2×2×2 tokens; file = (8 + CLS + 4 registers) × 216 × 4 B + header
    model = load_backbone_spec(parse_backbones(f"a={bench['a']}")[0])
    assert c["grid_example"] == (2, 2, 2) and c["mean_tokens"] == 8
    assert c["bytes_per_scan"] == (8 + 1 + model.num_register_tokens) * model.embed_dim * 4 + 2048
    assert c["disk_bytes"] == 24 * c["bytes_per_scan"] and c["n_scans"] == 24 and c["probe_runs"] == 5
    assert 0 < c["seconds_per_scan"] < 1 and c["extract_seconds"] == pytest.approx(24 * c["seconds_per_scan"])
    assert plan["calibration"]["a"]["kind"] == "vit-flops" and plan["calibration"]["a"]["flops_per_second"] > 1e8
    # estimated size matches the real files within the header allowance
    real = np.mean([p.stat().st_size for p in (out / "stores" / "alpha" / "a" / "embeddings").iterdir()])
    assert abs(real - c["bytes_per_scan"]) < 2048
    assert plan["total_disk_bytes"] == 0 and plan["free_disk_bytes"] > 0  # nothing left to run
    # the CLI prints the plan and runs nothing
    fresh = bench["tmp"] / "fresh"
    rc = main(["benchmark", "paper", "--data", str(bench["roots"]), "--backbones", f"a={bench['a']}",
               "-o", str(fresh), "--dry-run", *FAST])
    text = capsys.readouterr().out
    assert rc == 0 and not fresh.exists()
    assert "calibration a:" in text and "GFLOP/s" in text and "to run" in text and "alpha" in text
    assert "hardware:" in text and "of embeddings" in text and "free disk space where -o is" in text


def test_failing_backbone_is_reported_and_others_go_on(bench, tmp_path, capsys):
    roots = tmp_path / "roots.yaml"
    roots.write_text(yaml.safe_dump({"alpha": str(bench["tmp"] / "prepared" / "alpha")}))
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a checkpoint")
    out = tmp_path / "out"
    rc = main(["benchmark", "paper", "--data", str(roots), "--backbones", f"a={bench['a']},bad={broken}",
               "-o", str(out), *FAST])
    err = capsys.readouterr().err
    assert rc == 1 and "alpha/bad" in err
    state = json.loads((out / "benchmark.json").read_text())
    assert state["cells"]["alpha/a"]["status"] == "finished" and state["cells"]["alpha/bad"]["status"] == "failed"
    table = pd.read_csv(out / "table1.csv")
    assert "a" in table.columns and "bad" not in table.columns


def test_usage_errors_are_one_line(tmp_path, capsys):
    roots = tmp_path / "roots.yaml"
    roots.write_text("alpha: " + str(tmp_path / "missing"))
    rc = main(["benchmark", "paper", "--data", str(roots), "--backbones", "a=vit_tiny", "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "does not exist" in err[0]
