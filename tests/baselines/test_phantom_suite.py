"""Every baseline family through ``voxelfm extract --backbone`` on a tiny phantom cohort and through
probes (classification; localisation whose targets go through each backbone's preprocessing geometry)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("monai")
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning"),
              pytest.mark.filterwarnings("ignore:An ill-conditioned matrix")]

FAMILIES = {  # small inputs: the defaults are the originals' sizes (Merlin 224x224x160)
    "merlin": ["--backbone-option", "input_size=32x32x32"],
    "ctfm": ["--backbone-option", "pipeline=hf"],  # native grid; the default 3x1x1 mm makes ~9M-voxel inputs
    "fmcib": ["--backbone-option", "crop_size=24"],
}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from voxelfm.data.phantoms import generate_cohort

    root = tmp_path_factory.mktemp("bl_phantoms")
    table = generate_cohort(root / "ph", 8, seed=5, workers=1, progress=False)
    # FMCIB: one row per scan, seeded at its nodule (canonical voxels) where it has one
    manifest = table[["id", "path"]].copy()
    manifest["path"] = [str(root / "ph" / p) for p in table["path"]]
    for a, b in (("seed_d", "nodule_d"), ("seed_h", "nodule_h"), ("seed_w", "nodule_w")):
        manifest[a] = table[b]
    manifest.to_csv(root / "manifest.csv", index=False)
    return root, table


@pytest.mark.parametrize("family", list(FAMILIES))
def test_extract_cli_and_probes(cohort, family, capsys):
    from voxelfm.cli.main import main
    from voxelfm.inference import EmbeddingStore
    from voxelfm.preprocess import apply_geometry_to_points
    from voxelfm.probes import train_probe

    root, table = cohort
    out = root / f"store_{family}"
    rc = main(["extract", "-i", str(root / "manifest.csv"), "-o", str(out), "--backbone", family, "--workers", "0",
               *FAMILIES[family]])
    assert rc == 0, capsys.readouterr().err
    store = EmbeddingStore(out)
    f = store.load(table["id"].iloc[0])
    assert f.record["preset"] == family and f.cls.shape[0] == {"merlin": 2048, "ctfm": 512, "fmcib": 4096}[family]
    assert list(f.grid) == f.record["token_grid"]
    if family == "fmcib":
        with_nodule = table.dropna(subset=["nodule_d"])
        if len(with_nodule):
            g = store.load(with_nodule["id"].iloc[0])
            assert g.record["seed"]["space"] == "voxel"
            assert g.record["seed"]["given"] == pytest.approx(with_nodule[["nodule_d", "nodule_h", "nodule_w"]]
                                                               .iloc[0].tolist())
    labels = root / "ph" / "cohort.csv"
    run = train_probe(store, labels, "fev1_percent", task="regression", head="ridge", progress=False,
                      n_resamples=20)
    assert np.isfinite(run.metrics["mae"].value)
    has = table.dropna(subset=["nodule_d"])
    # localisation through the geometry: CT-FM keeps the whole (cropped) scan; Merlin's test-sized
    # input (32^3 voxels at 1.5x1.5x3 mm) and FMCIB's crops do not contain the nodules
    if family == "ctfm" and has["patient_id"].nunique() >= 3:
        loc = train_probe(store, labels, ["nodule_d", "nodule_h", "nodule_w"], task="localisation", coords="voxel",
                          epochs=2, progress=False, n_resamples=20, split_col=None)
        r = has.iloc[0]
        rec = store.load(r["id"]).record
        expected = (apply_geometry_to_points(np.array([[r.nodule_d, r.nodule_h, r.nodule_w]]), rec)[0] + 0.5) \
            / np.asarray(rec["final_shape"])
        got = loc.predictions.set_index("id").loc[r["id"], ["target_z", "target_y", "target_x"]].to_numpy(float)
        np.testing.assert_allclose(got, expected, atol=1e-9)
        assert np.isfinite(loc.metrics["mean_distance_mm"].value)
    assert isinstance(pd.read_csv(out / "index.csv"), pd.DataFrame)
