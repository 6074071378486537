"""``voxelfm compare``: backbone specs, the suite derived from a label table, the comparison table's
pairwise p-values and Holm adjustment against direct stats calls, and the command end to end on
tiny phantoms (resume: a second run extracts nothing)."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest

from voxelfm.errors import ConfigError
from voxelfm.inference.backbones import BackboneSpec, parse_backbones, parse_options
from voxelfm.probes.compare import default_suite
from voxelfm.probes.comparison_table import backbone_letters, comparison_table, format_comparison_latex, \
    format_comparison_markdown
from voxelfm.stats import adjust_pvalues, mae, paired_bootstrap_test
from voxelfm.stats.delong import delong_test
from tests.probes._synth import make_store


# ------------------------------------------------------------------------------------------ specs
def test_parse_backbones_labels_weights_and_options():
    specs = parse_backbones(["voxelfm=~/w/teacher,merlin=/m/merlin.pt", "voxelfm@random"],
                            ["random:config=\"vit_tiny\"", "merlin:depth=[1, 2]"])
    assert [s.label for s in specs] == ["voxelfm", "merlin", "random"]
    assert [s.family for s in specs] == ["voxelfm", "merlin", "voxelfm"]
    assert specs[0].weights.endswith("/w/teacher") and not specs[0].weights.startswith("~")
    assert specs[2].weights is None
    assert specs[2].options == {"config": "vit_tiny"} and specs[1].options == {"depth": [1, 2]}
    hub = parse_backbones("clip2d@bm=microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224,voxelfm")
    assert hub[0] == BackboneSpec("bm", "clip2d", "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224", {})
    assert parse_options(["a:window=[-1000, 400]", "a:model=pubmedclip"]) == \
        {"a": {"window": [-1000, 400], "model": "pubmedclip"}}


@pytest.mark.parametrize("specs,options,match", [
    ("voxelfm=a,voxelfm=b", (), "used twice"),
    ("voxelfm=a", (), "at least two"),
    ("voxelfm@x/y=a,merlin", (), "label"),
    ("=a,merlin", (), "no family"),
    ("voxelfm,merlin", ["ctfm:x=1"], "unknown backbone label"),
    ("voxelfm,merlin", ["merlin=1"], "LABEL:KEY=VALUE"),
])
def test_parse_backbones_errors_say_what_to_do(specs, options, match):
    with pytest.raises(ValueError, match=match):
        parse_backbones(specs, options)


# ------------------------------------------------------------------------------ derived suite
def test_default_suite_from_label_columns():
    rng = np.random.default_rng(0)
    n = 40
    table = pd.DataFrame({
        "id": [f"c{i}" for i in range(n)], "path": [f"v{i}.nii.gz" for i in range(n)],
        "patient_id": [f"p{i}" for i in range(n)], "split": ["train"] * 30 + ["val"] * 5 + ["test"] * 5,
        "nodule": rng.integers(0, 2, n), "stage": rng.integers(1, 4, n), "fev1": rng.normal(80, 10, n),
        "sex": rng.choice(["F", "M"], n), "survival_time": rng.uniform(1, 9, n), "event": rng.integers(0, 2, n),
        "constant": np.ones(n), "report": [f"free text {i}" for i in range(n)],
        "spacing_z": rng.uniform(0.5, 5, n), "scan_index": rng.integers(0, 2, n),
        "partial": [np.nan] + [float(i % 2) for i in range(1, n)],
    })
    suite = default_suite(table)
    kinds = {t["name"]: (t["task"], t["target"], t["probes"]) for t in suite["tasks"]}
    assert kinds == {"survival": ("survival", ["survival_time", "event"], ["cox"]),
                     "nodule": ("binary", "nodule", ["logistic", "knn"]),
                     "stage": ("multiclass", "stage", ["logistic"]),
                     "fev1": ("regression", "fev1", ["ridge"]),
                     "sex": ("multiclass", "sex", ["logistic"])}
    assert suite["split_col"] == "split"
    # restricted to extracted ids, a column without missing values there is usable
    assert "partial" not in kinds
    only = default_suite(table, ids=[f"c{i}" for i in range(1, n)], targets=["partial", "nodule"])
    assert [t["name"] for t in only["tasks"]] == ["partial", "nodule"]
    with pytest.raises(ConfigError, match="cannot be probed"):
        default_suite(table, targets=["constant"])
    with pytest.raises(ConfigError, match="not in the label table"):
        default_suite(table, targets=["nope"])
    with pytest.raises(ConfigError, match="none of the"):
        default_suite(table, ids=["zz"])


# --------------------------------------------------------------- table vs direct stats calls
@pytest.fixture(scope="module")
def three_backbone_suite(tmp_path_factory):
    """Three synthetic stores over the same ids with strong / weak / no signal; a binary and a
    regression task; every pair tested, Holm over the table."""
    from voxelfm.probes import run_suite

    root = tmp_path_factory.mktemp("cmp3")
    _, labels = make_store(root / "strong", 100, signal=4.0, seed=2)
    make_store(root / "weak", 100, signal=0.6, seed=2)
    make_store(root / "none", 100, signal=0.0, seed=2)
    labels.to_csv(root / "labels.csv", index=False)
    suite = {"name": "three", "labels": str(root / "labels.csv"), "n_resamples": 300, "seed": 7,
             "stores": {b: str(root / b) for b in ("strong", "weak", "none")},
             "tasks": [{"name": "finding", "task": "binary", "target": "y", "probes": ["logistic"]},
                       {"name": "value", "task": "regression", "target": "value", "probes": ["ridge"]}]}
    res = run_suite(suite, root / "out", show_progress=False, figures=False)
    assert not res.failures
    return res


def test_every_pair_and_holm_match_direct_stats_calls(three_backbone_suite):
    res = three_backbone_suite
    comp = res.comparisons
    backbones = ["strong", "weak", "none"]
    pairs = list(itertools.combinations(backbones, 2))
    assert len(comp) == 2 * len(pairs)
    expected_p = []
    for _, r in comp.iterrows():
        ra = res.runs[(r["task_name"], r["head"], r["feature"], r["backbone_a"], 1.0)].predictions
        rb = res.runs[(r["task_name"], r["head"], r["feature"], r["backbone_b"], 1.0)].predictions
        ta = ra[ra["split"] == "test"].set_index("id")
        tb = rb[rb["split"] == "test"].set_index("id").loc[ta.index]
        if r["task"] == "binary":
            d = delong_test(ta["label"].to_numpy(int), ta["prob"].to_numpy(), tb["prob"].to_numpy())
            assert r["method"] == "delong"
            assert r["diff"] == pytest.approx(d.auc_a - d.auc_b, abs=1e-12)
            assert r["p_value"] == pytest.approx(d.p_value, rel=1e-9)
        else:
            t = paired_bootstrap_test(mae, ta["target"].to_numpy(), ta["pred"].to_numpy(), tb["pred"].to_numpy(),
                                      n_resamples=300, seed=7)
            assert r["diff"] == pytest.approx(t.diff.value, rel=1e-9)
            assert r["p_value"] == pytest.approx(t.p_value, rel=1e-9)
        expected_p.append(r["p_value"])
    # Holm over the whole table (all tasks x all pairs)
    np.testing.assert_allclose(comp["p_holm"], adjust_pvalues(expected_p, "holm"), rtol=1e-12)

    table = comparison_table(res.results, comp, backbones)
    letters = backbone_letters(backbones)
    assert list(table.columns[:8]) == ["task", "probe", "fraction", "metric", "n", "strong (a)", "weak (b)",
                                       "none (c)"]
    assert [c for c in table.columns if " vs " in c] == ["strong vs weak", "strong vs none", "weak vs none"]
    for _, row in table.iterrows():
        c = comp[comp["task_name"] == row["task"]]
        higher = row["metric"].endswith("↑")
        for _, r in c.iterrows():
            col = f"{r['backbone_a']} vs {r['backbone_b']}"
            assert row["_pairs"][col] == pytest.approx(r["p_holm"])
            assert row[col].startswith(f"{r['diff']:+.3f} (p ")
            winner, loser = (r["backbone_a"], r["backbone_b"]) if (r["diff"] > 0) == higher \
                else (r["backbone_b"], r["backbone_a"])
            beats = letters[loser] in row["_better"][f"{winner} ({letters[winner]})"]
            assert beats == (r["p_holm"] < 0.05)
            assert letters[winner] not in row["_better"][f"{loser} ({letters[loser]})"]
    # the strong backbone beats the one without signal on both tasks, after Holm
    assert all("c" in row["_better"]["strong (a)"] for _, row in table.iterrows())
    assert all(row["_best"] == ("strong (a)",) for _, row in table.iterrows())
    md = format_comparison_markdown(table, title="t")
    assert "| task | probe | fraction | metric | n | strong (a) | weak (b) | none (c) | strong vs weak |" in md
    assert "<sup>" in md and "**" in md
    tex = format_comparison_latex(table)
    assert r"$^{" in tex and r"\textbf{" in tex and r"\toprule" in tex


def test_letters_on_a_constructed_case():
    """A hand-made results/comparisons pair: lower-is-better metric, one significant pair, one tie."""
    results = pd.DataFrame([
        {"task_name": "t", "task": "regression", "head": "ridge", "feature": "cls", "fraction": 1.0, "backbone": b,
         "metric": "mae", "primary": True, "value": v, "ci_low": v - 1, "ci_high": v + 1, "n": 30, "status": "ok"}
        for b, v in (("x", 2.0), ("y", 5.0), ("z", 5.0))])
    comparisons = pd.DataFrame([
        {"task_name": "t", "task": "regression", "head": "ridge", "feature": "cls", "fraction": 1.0,
         "backbone_a": a, "backbone_b": b, "diff": d, "p_value": p, "p_holm": q, "method": "paired-bootstrap"}
        for a, b, d, p, q in (("x", "y", -3.0, 0.001, 0.003), ("x", "z", -3.0, 0.04, 0.08),
                              ("y", "z", 0.0, 1.0, 1.0))])
    table = comparison_table(results, comparisons, ["x", "y", "z"])
    row = table.iloc[0]
    assert row["_better"] == {"x (a)": ["b"], "y (b)": [], "z (c)": []}
    assert row["_best"] == ("x (a)",)
    assert row["x vs y"] == "-3.000 (p 0.003)" and row["x vs z"] == "-3.000 (p 0.080)"
    assert row["x (a)"] == "2.000 [1.000, 3.000]"
    # the same pair given the other way round is reported in column order
    swapped = comparisons.assign(backbone_a=comparisons["backbone_b"], backbone_b=comparisons["backbone_a"],
                                 diff=-comparisons["diff"])
    assert comparison_table(results, swapped, ["x", "y", "z"]).iloc[0]["x vs y"] == "-3.000 (p 0.003)"
    with pytest.raises(ValueError, match="alpha"):
        comparison_table(results, comparisons, ["x", "y", "z"], alpha=1.5)


# -------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def tiny_cohort(tmp_path_factory):
    import torch

    from voxelfm.data.phantoms import generate_cohort
    from voxelfm.models import build_backbone, save_backbone

    root = tmp_path_factory.mktemp("compare")
    generate_cohort(root / "ph", 24, seed=1, workers=2, progress=False)
    for i in (0, 1):
        torch.manual_seed(i)
        save_backbone(build_backbone("vit_tiny", depth=1, embed_dim=48, num_heads=2, patch_size=8), root / f"m{i}")
    return root


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:An ill-conditioned matrix")
@pytest.mark.filterwarnings("ignore:random-init")
def test_compare_cli_end_to_end_and_resume(tiny_cohort, capsys, monkeypatch):
    """Two voxelfm ViTs (different weights), a random-init baseline family (the contract's test
    family, with its own preprocessing and an option) and a small random-init clip2d tower (JSON
    options) through extraction, suite and table."""
    from voxelfm.baselines.registry import FAMILY_MODULES
    from voxelfm.cli.main import main

    monkeypatch.setitem(FAMILY_MODULES, "fake", "tests.baselines.fake_family:FAMILY")
    root = tiny_cohort
    out = root / "out"
    tower = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
             "image_size": 16, "patch_size": 8, "projection_dim": 8}
    argv = ["compare", "--backbones", f"voxelfm@a={root / 'm0'},voxelfm@b={root / 'm1'}", "-b", "fake,clip2d@c2",
            "--option", "fake:width=8", "--option", f"c2:tower={json.dumps(tower)}", "--option", "c2:slice_stride=16",
            "--option", "c2:window=lung",
            "--inputs", str(root / "ph" / "cohort.csv"), "--labels", str(root / "ph" / "cohort.csv"),
            "--targets", "lung_nodule", "fev1_percent", "--max-patches", "64", "--workers", "0",
            "--n-resamples", "200", "-o", str(out)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "| task | probe | fraction | metric | n | a (a) | b (b) | fake (c) | c2 (d) | a vs b | a vs fake " \
        "| a vs c2 " \
        "| b vs fake | b vs c2 | fake vs c2 |" in captured.out
    assert "fake, c2 are randomly initialised: a pipeline check, not a result" in captured.err
    summary = json.loads((out / "compare.json").read_text())
    assert {k: v["ok"] for k, v in summary["extraction"].items()} == {"a": 24, "b": 24, "fake": 24, "c2": 24}
    assert summary["random_init"] == ["fake", "c2"]
    for label in ("a", "b", "fake", "c2"):
        assert len(list((out / "stores" / label / "embeddings").glob("*.safetensors"))) == 24
    # different embeddings (three backbones) of the same ids; the baseline used its own preprocessing
    from voxelfm.inference import EmbeddingStore

    sa, sb, sf = (EmbeddingStore(out / "stores" / k) for k in ("a", "b", "fake"))
    assert sorted(sa.ids) == sorted(sb.ids) == sorted(sf.ids)
    assert not np.allclose(sa.load(sa.ids[0]).cls.numpy(), sb.load(sa.ids[0]).cls.numpy())
    fake = sf.load(sa.ids[0])
    assert fake.cls.shape == (8,) and fake.record["preset"] == "fake" and fake.record["final_shape"] == [16, 16, 16]
    c2 = EmbeddingStore(out / "stores" / "c2").load(sa.ids[0])
    assert c2.record["preset"] == "clip2d" and c2.record["window"] == [-1350.0, 150.0]
    assert c2.patch.shape[1:] == (1, 1, 8) and c2.patch.shape[0] == -(-c2.record["final_shape"][0] // 16)
    table = pd.read_csv(out / "table.csv")
    assert list(table["task"]) == ["lung_nodule", "lung_nodule", "fev1_percent"]
    assert list(table["probe"]) == ["logistic/cls", "knn/cls", "ridge/cls"]
    comp = pd.read_csv(out / "probes" / "comparisons.csv")
    assert len(comp) == 3 * 6  # every pair on every row
    np.testing.assert_allclose(comp["p_holm"], adjust_pvalues(comp["p_value"].to_numpy(), "holm"))
    assert (out / "table.md").read_text().count("\n|") >= 4 and r"\begin{tabular}" in (out / "table.tex").read_text()
    assert (out / "figures" / "backbones.png").stat().st_size > 5000
    assert (out / "figures" / "pairwise.png").stat().st_size > 5000
    assert (out / "probes" / "figures" / "roc_lung_nodule_logistic-cls.png").exists()
    stamps = {p: p.stat().st_mtime_ns for p in (out / "stores").rglob("*.safetensors")}
    # resume: nothing is extracted or trained again, the table is the same
    assert main(argv) == 0
    capsys.readouterr()
    again = json.loads((out / "compare.json").read_text())
    assert {k: (v["ok"], v["skipped"]) for k, v in again["extraction"].items()} == \
        {"a": (0, 24), "b": (0, 24), "fake": (0, 24), "c2": (0, 24)}
    assert {p: p.stat().st_mtime_ns for p in (out / "stores").rglob("*.safetensors")} == stamps
    assert json.loads((out / "probes" / "summary.json").read_text())["resumed"] == 12
    pd.testing.assert_frame_equal(pd.read_csv(out / "table.csv"), table)


def test_a_suite_with_a_reference_compares_every_pair(tmp_path):
    """A suite (like the packaged ones) names a reference backbone; compare replaces the stores and
    tests all pairs."""
    from voxelfm.probes.suite import load_suite

    _, labels = make_store(tmp_path / "x", 20, seed=1)
    make_store(tmp_path / "y", 20, seed=1)
    labels.to_csv(tmp_path / "labels.csv", index=False)
    stores = {"x": str(tmp_path / "x"), "y": str(tmp_path / "y")}
    suite = {"reference": "pretrained", "stores": {"pretrained": "p", "random_init": "r"},
             "tasks": [{"task": "binary", "target": "y", "probes": ["logistic"]}]}
    with pytest.raises(ConfigError, match="reference 'pretrained'"):
        load_suite(suite, stores=stores, labels=tmp_path / "labels.csv")
    s = load_suite(suite, stores=stores, labels=tmp_path / "labels.csv", all_pairs=True)
    assert s.reference is None and list(s.stores) == ["x", "y"]


def test_compare_cli_usage_errors_are_one_line(tiny_cohort, capsys):
    from voxelfm.cli.main import main

    root = tiny_cohort
    base = ["--inputs", str(root / "ph" / "cohort.csv"), "--labels", str(root / "ph" / "cohort.csv"),
            "-o", str(root / "bad")]
    assert main(["compare", "--backbones", "voxelfm=a,voxelfm=b", *base]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "used twice" in err
    assert main(["compare", "--backbones", f"voxelfm@a={root / 'm0'},voxelfm@b={root / 'm1'}", *base,
                 "--targets", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not in the label table" in err
    # a bad backbone anywhere in the list stops the run before the first extraction
    good = f"voxelfm@a={root / 'm0'}"
    for spec, opts, match in ((f"{good},nosuch", [], "unknown backbone 'nosuch'"),
                              (f"{good},voxelfm@b={root / 'missing'}", [], "do not exist"),
                              (f"{good},clip2d@c", ["c:colour=1"], "has no option"),
                              (f"{good},clip2d@c=org/not-cached", [], "download")):
        argv = ["compare", "--backbones", spec, *base]
        for o in opts:
            argv += ["--option", o]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and match in err, err
    assert not (root / "bad" / "stores" / "a" / "embeddings").exists()  # nothing extracted
