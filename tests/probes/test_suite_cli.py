"""The suite runner end to end (two backbones, tables with p-values, figures, resume) and the CLI."""

from __future__ import annotations

import json

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
import yaml

from voxelfm.cli.main import main
from voxelfm.probes import run_suite


def _suite(root, labels_path):
    return {
        "name": "tiny",
        "labels": str(labels_path),
        "stores": {"good": str(root / "good"), "bad": str(root / "bad")},
        "n_resamples": 200,
        "defaults": {"epochs": 8},
        "tasks": [
            {"name": "finding", "task": "binary", "target": "y",
             "probes": ["logistic", "knn", {"head": "attentive", "feature": "patch", "epochs": 6}],
             "fractions": [0.5, 1.0]},
            {"task": "regression", "target": "value", "probes": ["ridge"]},
            {"task": "survival", "target": ["time", "event"], "probes": ["cox"], "hparams": {"epochs": 60}},
            {"name": "retr", "task": "retrieval", "target": ["a", "b"],
             "hparams": {"retrieval_split": "all", "n_negatives": 20}},
        ],
        "figures": {"pca": {"n": 1}},
    }


def _png_ok(path):
    img = mpimg.imread(path)
    return path.stat().st_size > 5000 and img.ndim == 3 and float(np.std(img[..., :3])) > 0.02


@pytest.mark.slow
def test_suite_end_to_end_tables_pvalues_figures_and_resume(two_backbones, tmp_path):
    root, _, _, labels_path = two_backbones
    out = tmp_path / "out"
    res = run_suite(_suite(root, labels_path), out, show_progress=False)
    assert not res.failures
    # one long row per metric, the table has one row per (task, probe, fraction)
    assert set(res.results["backbone"]) == {"good", "bad"}
    assert len(res.table) == 3 * 2 + 1 + 1 + 1
    # pairwise tests: DeLong for binary AUROC, paired bootstrap elsewhere, Holm over the table
    comp = res.comparisons
    assert set(comp[comp["task"] == "binary"]["method"]) == {"delong"}
    assert set(comp[comp["task"] != "binary"]["method"]) == {"paired-bootstrap"}
    assert (comp["p_holm"] >= comp["p_value"] - 1e-12).all()
    good_vs_bad = comp[(comp["task"] == "regression")].iloc[0]
    assert good_vs_bad["diff"] < 0 and good_vs_bad["p_value"] < 0.05  # lower MAE for the good backbone
    md = (out / "results.md").read_text()
    assert "| task | probe | fraction | metric | good | bad | p good vs bad |" in md
    assert "**" in md and "(DeLong)" in md
    tex = (out / "results.tex").read_text()
    assert r"\begin{tabular}" in tex and r"\textbf{" in tex and r"\toprule" in tex
    csv = pd.read_csv(out / "results.csv")
    assert {"value", "ci_low", "ci_high", "backbone", "metric"} <= set(csv.columns)
    assert pd.read_csv(out / "table.csv").shape[0] == len(res.table)
    figs = out / "figures"
    names = {p.name for p in figs.glob("*.png")}
    assert {"fractions.png", "cls_vs_patch.png", "pca_good_case000.png", "pca_bad_case000.png",
            "roc_finding_logistic-cls.png"} <= names
    for name in names:
        assert _png_ok(figs / name), name
    # resumable: finished runs are not trained again
    stamp = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("results.json")}
    res2 = run_suite(_suite(root, labels_path), out, show_progress=False, figures=False)
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("results.json")} == stamp
    pd.testing.assert_frame_equal(res2.table, res.table)
    assert json.loads((out / "summary.json").read_text())["resumed"] == len(stamp)


def test_suite_validates_before_training(two_backbones, tmp_path):
    root, _, _, labels_path = two_backbones
    bad = _suite(root, labels_path)
    bad["tasks"][0]["target"] = "nope"
    with pytest.raises(ValueError, match="no column 'nope'"):
        run_suite(bad, tmp_path / "o1", show_progress=False)
    bad = _suite(root, labels_path)
    bad["tasks"][1]["probes"] = ["attentive:cls"]
    with pytest.raises(ValueError, match="feature=patch"):
        run_suite(bad, tmp_path / "o2", show_progress=False)
    bad = _suite(root, labels_path)
    bad["tasks"][0]["probes"] = [{"head": "mlp", "hiden_dim": 3}]
    with pytest.raises(ValueError, match="hiden_dim"):
        run_suite(bad, tmp_path / "o3", show_progress=False)
    assert not (tmp_path / "o1" / "runs").exists()


def test_cli_train_and_run(two_backbones, tmp_path, capsys):
    root, _, _, labels_path = two_backbones
    out = tmp_path / "probe"
    code = main(["probe", "train", "--store", str(root / "good"), "--labels", str(labels_path), "--target", "y",
                 "--task", "binary", "--head", "logistic", "-o", str(out), "--set", "n_resamples=100"])
    assert code == 0
    assert {"results.json", "predictions.csv", "config.json", "history.jsonl", "weights.safetensors"} <= \
        {p.name for p in out.iterdir()}
    assert "auroc:" in capsys.readouterr().out
    suite = _suite(root, labels_path)
    suite["tasks"] = suite["tasks"][1:2]
    suite["figures"] = {"roc": False}
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    code = main(["probe", "run", str(path), "-o", str(tmp_path / "suite_out"), "--workers", "2"])
    assert code == 0 and (tmp_path / "suite_out" / "results.md").exists()


@pytest.mark.parametrize("args,message", [
    (["--target", "missing_col", "--task", "binary"], "no column 'missing_col'"),
    (["--target", "y", "--task", "classify"], "unknown task 'classify'"),
    (["--target", "y", "--task", "binary", "--head", "segmentation"], "does not fit task"),
    (["--target", "y", "--task", "binary", "--set", "bogus=1"], "unknown option(s) bogus"),
])
def test_cli_errors_are_one_line(two_backbones, tmp_path, capsys, args, message):
    root, _, _, labels_path = two_backbones
    code = main(["probe", "train", "--store", str(root / "good"), "--labels", str(labels_path),
                 "-o", str(tmp_path / "x"), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and message in err and err.startswith("voxelfm probe: error:")


def test_suite_workers_give_identical_results(two_backbones, tmp_path):
    """Runs in two worker processes: the same numbers as one process; failures still reported."""
    root, _, _, labels_path = two_backbones
    suite = {"name": "par", "labels": str(labels_path), "n_resamples": 100,
             "stores": {"good": str(root / "good"), "bad": str(root / "bad")},
             "tasks": [{"name": "finding", "task": "binary", "target": "y",
                        "probes": ["logistic", {"head": "attentive", "feature": "patch", "epochs": 3}]},
                       {"task": "survival", "target": ["time", "event"], "probes": ["cox"],
                        "hparams": {"epochs": 30}},
                       {"name": "broken", "task": "binary", "target": "value", "probes": ["logistic"]}],
             "figures": {"roc": False, "fractions": False, "cls_vs_patch": False}}
    one = run_suite(suite, tmp_path / "one", show_progress=False)
    two = run_suite(suite, tmp_path / "two", show_progress=False, workers=2)
    cols = ["task_name", "head", "feature", "backbone", "fraction", "metric", "value", "ci_low", "ci_high", "status"]
    pd.testing.assert_frame_equal(one.results[cols], two.results[cols])
    pd.testing.assert_frame_equal(one.comparisons, two.comparisons)
    assert [k for k, _ in two.failures] == [("broken", "logistic", "cls", "good", 1.0),
                                            ("broken", "logistic", "cls", "bad", 1.0)]
    assert "0/1 labels" in two.failures[0][1]
    assert (tmp_path / "two" / "runs" / "broken" / "logistic-cls" / "good" / "frac-1" / "error.txt").exists()


def test_resume_reruns_when_head_defaults_change(two_backbones, tmp_path, monkeypatch):
    """A finished run is reused only under the same *resolved* options (package defaults included)."""
    from voxelfm.probes.run import HEAD_DEFAULTS

    root, _, _, labels_path = two_backbones
    suite = {"name": "sig", "labels": str(labels_path), "n_resamples": 50, "stores": {"good": str(root / "good")},
             "tasks": [{"task": "regression", "target": "value", "probes": ["ridge"]}], "figures": {}}
    run_suite(suite, tmp_path / "o", show_progress=False, figures=False)
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["resumed"] == 0
    run_suite(suite, tmp_path / "o", show_progress=False, figures=False)
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["resumed"] == 1
    monkeypatch.setitem(HEAD_DEFAULTS, "ridge", {"grid": [1.0, 10.0]})
    run_suite(suite, tmp_path / "o", show_progress=False, figures=False)
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["resumed"] == 0


def test_cls_vs_patch_picks_heads_on_validation(monkeypatch, tmp_path):
    """The class-token and patch-token bars show the head chosen on the validation metric, not the
    best test value (test-set selection would favour the kind with more heads)."""
    import voxelfm.probes.figures as F
    from voxelfm.probes import suite as S
    from voxelfm.probes.run import ProbeRun
    from voxelfm.stats import Estimate

    def run(head, feature, val, test):
        return ProbeRun(task="regression", head=head, feature=feature, target=["v"], predictions=pd.DataFrame(),
                        metrics={"mae": Estimate(test, test - 1, test + 1, "b", 10)},
                        val_metrics={"mae": Estimate(val, np.nan, np.nan, "point", 5)})
    runs = {("t", "ridge", "cls", "a", 1.0): run("ridge", "cls", val=5.0, test=9.0),
            ("t", "mlp", "cls", "a", 1.0): run("mlp", "cls", val=7.0, test=3.0),   # best test, worse val
            ("t", "attentive", "patch", "a", 1.0): run("attentive", "patch", val=6.0, test=6.0)}
    rows = [{"task_name": k[0], "task": "regression", "head": k[1], "feature": k[2], "backbone": k[3],
             "fraction": k[4], "metric": "mae", "primary": True, "status": "ok", "value": r.metrics["mae"].value,
             "ci_low": r.metrics["mae"].ci_low, "ci_high": r.metrics["mae"].ci_high} for k, r in runs.items()]
    suite = S.Suite(name="x", stores={"a": None},
                    tasks=[S.TaskSpec("t", "regression", "v", [S.ProbeSpec("ridge", "cls")], [1.0])],
                    figures={"roc": False, "fractions": False, "cls_vs_patch": True})
    seen = {}
    monkeypatch.setattr(F, "cls_vs_patch_figure", lambda df, path, title="": seen.setdefault("df", df))
    S._figures(suite, runs, pd.DataFrame(rows), tmp_path, {})
    df = seen["df"].set_index("kind")
    assert df.loc["class token", "head"] == "ridge/cls" and df.loc["class token", "value"] == 9.0
    assert df.loc["patch tokens", "value"] == 6.0 and df.loc["class token", "metric"] == "mae ↓"


def test_cli_train_prints_warnings_as_one_line(two_backbones, tmp_path, capsys):
    root, _, _, labels_path = two_backbones
    labels = pd.read_csv(labels_path)
    labels.loc[:2, "value"] = np.nan  # three scans without a target: skipped with a warning
    path = tmp_path / "l.csv"
    labels.to_csv(path, index=False)
    code = main(["probe", "train", "--store", str(root / "good"), "--labels", str(path), "--target", "value",
                 "--task", "regression", "--head", "ridge", "-o", str(tmp_path / "r"), "--set", "n_resamples=20"])
    err = capsys.readouterr().err
    assert code == 0
    assert "warning: 3 id(s) have no label in ['value'] and are skipped" in err
    assert "UserWarning" not in err and "join_labels(" not in err


def test_store_overrides_are_relative_to_the_current_directory(two_backbones, tmp_path, monkeypatch):
    """--store NAME=FOLDER (and run_suite(stores=...)) paths are relative to where the user is, not
    to the suite file (a packaged suite lives inside the installed package)."""
    root, _, _, labels_path = two_backbones
    conf = tmp_path / "conf"
    conf.mkdir()
    suite = {"name": "rel", "labels": str(labels_path), "n_resamples": 20,
             "tasks": [{"task": "regression", "target": "value", "probes": ["ridge"]}], "figures": {}}
    (conf / "suite.yaml").write_text(yaml.safe_dump(suite))
    monkeypatch.chdir(root)
    code = main(["probe", "run", str(conf / "suite.yaml"), "-o", str(tmp_path / "o"), "--store", "good=good",
                 "--no-figures"])
    assert code == 0 and (tmp_path / "o" / "runs" / "value" / "ridge-cls" / "good").is_dir()
    res = run_suite(suite, tmp_path / "o2", stores={"bad": "bad"}, show_progress=False, figures=False)
    assert not res.failures


def test_table_bolds_ties_sensibly():
    from voxelfm.probes.suite import format_markdown, results_table

    def row(b, v, task="lung", tk="binary", metric="auroc"):
        return {"task_name": task, "task": tk, "head": "logistic", "feature": "cls", "fraction": 1.0, "backbone": b,
                "metric": metric, "primary": True, "value": v, "ci_low": v - 0.1, "ci_high": v + 0.1, "status": "ok"}
    res = pd.DataFrame([row("a", 0.8), row("b", 0.8), row("a", 5.0, "reg", "regression", "mae"),
                        row("b", 4.0, "reg", "regression", "mae"), row("c", 4.0, "reg", "regression", "mae")])
    comp = pd.DataFrame(columns=["task_name", "head", "feature", "fraction", "backbone_a", "backbone_b", "p_holm",
                                 "method"])
    table = results_table(res, comp)
    assert list(table["_best"]) == [(), ("b", "c")]  # all tied: no bold; lower MAE wins, ties both bold
    md = format_markdown(table)
    assert "**0.800" not in md and md.count("**4.000") == 2
