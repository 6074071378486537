"""From a dataset's download layout to Table 1 in one command (prepare → extract → suite), and a
segmentation recipe's label maps used by a probe on real embeddings."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from tests.benchmark._prepared import make_backbone
from tests.datasets._layouts import tiny_scans
from tests.datasets._paper_layouts import write_ct_lymph_nodes, write_mycobacterial
from voxelfm.cli.main import main

FAST = ["--preset", "default", "--no-crop-background", "--max-patches", "0", "--workers", "0",
        "--n-resamples", "100"]


@pytest.mark.slow
def test_download_root_is_prepared_extracted_and_probed(tmp_path):
    write_mycobacterial(tmp_path / "kaggle" / "nifti-dataset", tiny_scans(14, seed=21))
    roots = tmp_path / "roots.yaml"
    roots.write_text(yaml.safe_dump({"mycobacterial": str(tmp_path / "kaggle" / "nifti-dataset")}))
    a, b = make_backbone(tmp_path / "a", 1), make_backbone(tmp_path / "b", 2)
    out = tmp_path / "bench"
    rc = main(["benchmark", "paper", "--data", str(roots), "--backbones", f"voxelfm={a},random={b}", "-o",
               str(out), *FAST])
    assert rc == 0
    prepared = out / "prepared" / "mycobacterial"
    assert json.loads((prepared / "prepare.json").read_text())["counts"]["scans"] == 14
    table = pd.read_csv(out / "table1.csv")
    assert table[["dataset", "task", "probe"]].values.tolist() == [
        ["mycobacterial", "tb_vs_ntm", "mlp/cls"], ["mycobacterial", "tb_vs_ntm", "attentive/patch"]]
    assert list(table.columns[4:]) == ["voxelfm", "random", "p voxelfm vs random"]
    state = json.loads((out / "benchmark.json").read_text())
    assert {c["embedded"] for c in state["cells"].values()} == {14}
    # the scans go to the extractor with the manifest's rescale overrides (read in HU, not [0, 1])
    from voxelfm.benchmark.paper import _manifest_items

    items = _manifest_items(prepared)
    assert len(items) == 14 and all(i.overrides.rescale_slope == 1500.0 for i in items)


@pytest.mark.slow
def test_segmentation_label_maps_train_a_probe(tmp_path):
    from voxelfm.datasets import prepare_dataset
    from voxelfm.inference import extract_batch
    from voxelfm.io import collect_inputs
    from voxelfm.models import load_backbone
    from voxelfm.probes import train_probe

    root = tmp_path / "manifest-1"
    write_ct_lymph_nodes(root, tiny_scans(7, seed=22), organ=8)
    out = prepare_dataset("mediastinal-ln", root, tmp_path / "prepared").out
    model = load_backbone(str(make_backbone(tmp_path / "m", 3)))
    summary = extract_batch(model, collect_inputs([out / "manifest.csv"]), tmp_path / "store", show_progress=False)
    assert summary.ok == 6
    run = train_probe(tmp_path / "store", out / "labels.csv", "label_map", task="segmentation", feature="patch",
                      epochs=3, seg_size=16, num_classes=2, progress=False, n_resamples=50)
    dice = run.metrics["macro_dice"].value
    assert 0.0 <= dice <= 1.0 and run.config["n"]["test"] >= 1
