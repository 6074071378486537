"""prepare → extract (tiny random-init ViT) → the prepared suite.yaml through `voxelfm probe run`."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from tests.datasets._layouts import tiny_scans, write_ct_rate, write_luna16

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _tiny_model():
    from voxelfm.models import build_backbone

    torch.manual_seed(0)
    return build_backbone("vit_tiny", depth=1, patch_size=4, embed_dim=24, num_heads=2).eval()


@pytest.mark.slow
def test_luna16_prepare_extract_suite(tmp_path):
    from voxelfm.cli.main import main
    from voxelfm.datasets import prepare_dataset
    from voxelfm.inference import EmbeddingStore
    from voxelfm.inference.batch import extract_batch
    from voxelfm.preprocess import apply_geometry_to_points

    root = tmp_path / "LUNA16"
    write_luna16(root, tiny_scans(12))
    prep = prepare_dataset("luna16", root, tmp_path / "prepared")
    summary = extract_batch(_tiny_model(), [prep.out / "manifest.csv"], tmp_path / "store", workers=0,
                            show_progress=False)
    assert summary.ok == 12 and summary.all_ok
    # the prepared suite, with the paper's head sizes and epochs cut down to CPU-test scale
    suite = yaml.safe_load((prep.out / "suite.yaml").read_text())
    assert suite["labels"] == "labels.csv"
    suite["n_resamples"] = 50
    for head, opts in suite["head_defaults"].items():
        opts.update({"epochs": 3, "hidden_dim": 16 if head != "localisation" else 32})
    (prep.out / "suite_fast.yaml").write_text(yaml.safe_dump(suite))
    rc = main(["probe", "run", str(prep.out / "suite_fast.yaml"), "-o", str(tmp_path / "results"),
               "--store", f"tiny={tmp_path / 'store'}", "--no-figures"])
    assert rc == 0
    res = pd.read_csv(tmp_path / "results" / "results.csv")
    assert {"nodule_position", "nodule_present"} <= set(res["task_name"])
    dist = res[(res["task_name"] == "nodule_position") & (res["metric"] == "mean_distance")]["value"]
    assert len(dist) == 1 and 0 < float(dist.iloc[0]) < 1
    # the localisation targets are the labels' canonical voxels carried into each embedding's token frame
    lab = pd.read_csv(prep.out / "labels.csv", dtype={"id": str}).set_index("id")
    store = EmbeddingStore(tmp_path / "store")
    pred = pd.read_csv(next((tmp_path / "results" / "runs" / "nodule_position").rglob("predictions.csv")),
                       dtype={"id": str})
    row = pred.iloc[0]
    rec = store.load(row["id"]).record
    vox = lab.loc[row["id"], ["nodule_d", "nodule_h", "nodule_w"]].to_numpy(dtype=float)[None]
    want = (apply_geometry_to_points(vox, rec)[0] + 0.5) / np.asarray(rec["final_shape"])
    np.testing.assert_allclose(row[["target_z", "target_y", "target_x"]].to_numpy(dtype=float), want, atol=1e-9)


def test_ct_rate_extraction_honours_the_metadata(tmp_path):
    """`voxelfm extract -i manifest.csv` reads CT-RATE with the metadata's spacing (the blank header
    says 1 mm): the embedding record shows it."""
    from voxelfm.datasets import prepare_dataset
    from voxelfm.inference import EmbeddingStore
    from voxelfm.inference.batch import extract_batch

    root = tmp_path / "CT-RATE"
    scans = write_ct_rate(root, tiny_scans(3), n_valid=1)
    prep = prepare_dataset("ct-rate", root, tmp_path / "prepared")
    assert extract_batch(_tiny_model(), [prep.out / "manifest.csv"], tmp_path / "store", show_progress=False).all_ok
    store = EmbeddingStore(tmp_path / "store")
    for name, s in scans.items():
        rec = store.load(name).record
        np.testing.assert_allclose(rec["input_spacing"], s.spacing, rtol=1e-6)
        assert rec["source"]["read_overrides"]["orientation"] == "LPS"


def test_ct_rate_pretraining_store_honours_the_metadata(tmp_path):
    """`voxelfm prepare -i manifest.csv` (the pre-training store) reads with the overrides too."""
    from voxelfm.data.volume_store import VolumeStore, prepare_volumes
    from voxelfm.datasets import prepare_dataset

    root = tmp_path / "CT-RATE"
    scans = write_ct_rate(root, tiny_scans(3), n_valid=1)
    prep = prepare_dataset("ct-rate", root, tmp_path / "prepared")
    prepare_volumes([prep.out / "manifest.csv"], tmp_path / "vs", workers=1, min_side=8, progress=False)
    recs = {r["id"]: r for r in VolumeStore(tmp_path / "vs").records()}
    for name, s in scans.items():
        assert recs[name]["status"] == "ok"
        np.testing.assert_allclose(recs[name]["input_spacing"], s.spacing, rtol=1e-5)


@pytest.mark.slow
def test_ct_org_label_maps_train_the_segmentation_probe(tmp_path):
    """The prepared seg_path label maps (on the scans' own grids) feed the segmentation probe."""
    import json

    from tests.datasets._layouts import write_ct_org
    from voxelfm.datasets import prepare_dataset
    from voxelfm.inference.batch import extract_batch
    from voxelfm.probes import train_probe

    root = tmp_path / "CT-ORG"
    write_ct_org(root, tiny_scans(6), [0, 1, 30, 31, 32, 33])
    prep = prepare_dataset("ct-org", root, tmp_path / "prepared", split="random")
    assert extract_batch(_tiny_model(), [prep.out / "manifest.csv"], tmp_path / "store", show_progress=False).all_ok
    suite = yaml.safe_load((prep.out / "suite.yaml").read_text())
    run = train_probe(tmp_path / "store", prep.out / "labels.csv", "seg_path", task="segmentation",
                      num_classes=suite["tasks"][0]["hparams"]["num_classes"], epochs=2, seg_size=12, hidden_dim=8,
                      min_channels=8, n_resamples=20, progress=False)
    assert run.config["num_classes"] == 7 == len(json.loads((prep.out / "classes.json").read_text()))
    assert 0 <= run.metrics["macro_dice"].value <= 1
    assert {"dice:1", "dice:3", "dice:5"} <= set(run.predictions.columns)  # liver, lungs, bone present
