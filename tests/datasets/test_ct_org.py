"""CT-ORG recipe: volume-N / labels-N pairs, six-class map, official test set 0-20."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from tests.datasets._layouts import ct_org_labels, tiny_scans, write_ct_org


def test_pairs_classes_and_splits(tmp_path):
    from voxelfm.datasets import prepare_dataset
    from voxelfm.io import read_volume
    from voxelfm.probes.suite import load_suite

    root = tmp_path / "CT-ORG"
    numbers = [0, 3, 20, 21, 40, 77, 100, 139]
    scans = write_ct_org(root, tiny_scans(8), numbers)
    (root / "OrganSegmentations" / "labels-77.nii.gz").unlink()  # a pair without its label map
    res = prepare_dataset("ct-org", root, tmp_path / "out")
    lab = pd.read_csv(res.out / "labels.csv").set_index("id")
    assert sorted(lab.index) == sorted(f"volume-{n}" for n in numbers if n != 77)
    assert (lab.loc[["volume-0", "volume-3", "volume-20"], "split"] == "test").all()
    assert set(lab.drop(["volume-0", "volume-3", "volume-20"])["split"]) <= {"train", "val"}
    assert res.info["skipped"] == [{"id": "volume-77", "reason": "volume without its label map"}]
    assert "labels-77.nii.gz" in res.info["missing"] and "volume-5.nii.gz" in res.info["missing"]
    classes = json.loads((res.out / "classes.json").read_text())
    assert classes == {"0": "background", "1": "liver", "2": "bladder", "3": "lungs", "4": "kidneys", "5": "bone",
                       "6": "brain"}
    lm = read_volume(lab.loc["volume-40", "seg_path"], check_hu=False)
    np.testing.assert_array_equal(lm.array, ct_org_labels(scans[40]))
    s = load_suite(res.out / "suite.yaml", stores={"x": res.out})
    assert s.tasks[0].hparams["num_classes"] == 7
    res2 = prepare_dataset("ct-org", root, tmp_path / "out2", split="random", seed=1)
    assert len(pd.read_csv(res2.out / "splits.csv")) == 7
