"""Integration on a tiny phantom cohort: real volumes → extraction → probes whose targets go through
the preprocessing geometry (localisation from source voxels, segmentation from label maps), and the
PCA view re-created from the volume."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:.*have no label:UserWarning"),
              pytest.mark.filterwarnings("ignore:An ill-conditioned matrix")]


@pytest.fixture(scope="module")
def phantom_store(tmp_path_factory):
    from voxelfm.data.phantoms import generate_cohort
    from voxelfm.inference import EmbeddingStore, extract_features
    from voxelfm.models import build_backbone

    root = tmp_path_factory.mktemp("phantoms")
    cohort = generate_cohort(root / "ph", 10, seed=3, workers=2, progress=False)
    torch.manual_seed(0)
    model = build_backbone("vit_tiny", depth=1).eval()
    store = EmbeddingStore(root / "store")
    for r in cohort.itertuples():
        store.write(r.id, extract_features(model, str(root / "ph" / r.path)))
    store.write_index()
    return root, store, root / "ph" / "cohort.csv"


def test_localisation_targets_follow_the_geometry(phantom_store):
    from voxelfm.preprocess import apply_geometry_to_points
    from voxelfm.probes import train_probe

    _, store, cohort_csv = phantom_store
    cohort = pd.read_csv(cohort_csv)
    has = cohort.dropna(subset=["nodule_d"])
    if has["patient_id"].nunique() < 3:
        pytest.skip("too few nodules in this tiny cohort")
    # split_col=None: patient-grouped splits made over the scans that have a nodule
    run = train_probe(store, cohort_csv, ["nodule_d", "nodule_h", "nodule_w"], task="localisation",
                      coords="voxel", epochs=3, progress=False, n_resamples=50, split_col=None)
    preds = run.predictions.set_index("id")
    assert run.config["targets"]["mode"] == "voxel"
    r = has.iloc[0]
    f = store.load(r["id"])
    expected = (apply_geometry_to_points(np.array([[r.nodule_d, r.nodule_h, r.nodule_w]]), f.record)[0] + 0.5) \
        / np.asarray(f.record["final_shape"])
    got = preds.loc[r["id"], ["target_z", "target_y", "target_x"]].to_numpy(dtype=float)
    np.testing.assert_allclose(got, expected, atol=1e-9)
    assert ((got > 0) & (got < 1)).all()
    assert np.isfinite(run.metrics["mean_distance_mm"].value)


def test_segmentation_from_label_maps_on_the_source_grid(phantom_store):
    import json

    from voxelfm.probes import train_probe

    root, store, cohort_csv = phantom_store
    n_labels = len(json.loads((root / "ph" / "labels.json").read_text()))
    run = train_probe(store, cohort_csv, "seg_path", task="segmentation", epochs=2, seg_size=16,
                      progress=False, n_resamples=50)
    assert 2 <= run.config["num_classes"] <= n_labels + 1
    assert max(run.config["seg_shape_example"]) == 16
    assert 0.0 <= run.metrics["macro_dice"].value <= 1.0
    assert {c for c in run.predictions.columns if c.startswith("dice:")}


def test_regression_survival_and_pca_view(phantom_store, tmp_path):
    import matplotlib.image as mpimg

    from voxelfm.probes import train_probe
    from voxelfm.probes.figures import pca_rgb_figure

    root, store, cohort_csv = phantom_store
    reg = train_probe(store, cohort_csv, "fev1_percent", task="regression", head="ridge", progress=False,
                      n_resamples=50)
    assert np.isfinite(reg.metrics["mae"].value)
    surv = train_probe(store, cohort_csv, ["survival_time", "event"], task="survival", head="cox", epochs=20,
                       progress=False, n_resamples=50)
    assert "c_index" in surv.metrics
    cohort = pd.read_csv(cohort_csv)
    item = cohort["id"].iloc[0]
    png = pca_rgb_figure(store, item, tmp_path / "pca.png", volume=root / "ph" / cohort["path"].iloc[0])
    img = mpimg.imread(png)
    assert img.shape[0] > 300 and float(np.std(img[..., :3])) > 0.05


def test_pca_view_of_a_baseline_store_with_anisotropic_tokens(tmp_path):
    """Other CT foundation models record three patch sizes (e.g. M3D 4x16x16) and their own preset;
    the PCA view then shows the token grid alone, stretched per axis to the model-input extent."""
    import matplotlib.image as mpimg
    import torch

    from voxelfm.inference import EmbeddingStore, Features
    from voxelfm.probes.figures import _patch_sizes, pca_rgb_figure
    from voxelfm.probes.run import _input_shape

    g = torch.Generator().manual_seed(0)
    grid = (4, 6, 6)
    record = {"preset": "m3d_clip", "patch_size": [4, 16, 16], "token_grid": list(grid)}
    feats = Features(cls=torch.randn(8, generator=g), patch=torch.randn(*grid, 8, generator=g),
                     registers=torch.zeros(0, 8), patch_size_mm=(4.0, 16.0, 16.0), record=record)
    store = EmbeddingStore(tmp_path / "store")
    store.write("a", feats)
    assert _patch_sizes(record) == (4.0, 16.0, 16.0)
    assert _patch_sizes({"patch_size": 14}) == (14.0, 14.0, 14.0)
    np.testing.assert_allclose(_input_shape({"record": {"patch_size": [4, 16, 16]}, "grid": list(grid)}),
                               [16, 96, 96])
    png = pca_rgb_figure(store, "a", tmp_path / "pca.png", volume=tmp_path / "unused.nii.gz")
    img = mpimg.imread(png)
    assert img.shape[0] > 300 and float(np.std(img[..., :3])) > 0.05
