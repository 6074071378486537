"""TotalSegmentator recipe: per-structure masks merged in the fixed class order."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tests.datasets._layouts import PHANTOM_TO_TS, tiny_scans, write_nifti, write_totalsegmentator


@pytest.fixture(scope="module")
def ts(tmp_path_factory):
    from voxelfm.datasets import prepare_dataset

    root = tmp_path_factory.mktemp("ts") / "Totalsegmentator_dataset_v201"
    splits = ["train", "train", "train", "val", "test", "test"]
    scans = write_totalsegmentator(root, tiny_scans(6), splits)
    (root / "s0099").mkdir()  # a subject folder without its files: not a subject
    # an overlap: the later class in the fixed order wins
    s = scans["s0000"]
    overlap = np.zeros_like(s.labels)
    overlap[s.labels == 17] = 1  # the liver...
    write_nifti(root / "s0000" / "segmentations" / "costal_cartilages.nii.gz", overlap, s.spacing, np.uint8)
    return root, scans, splits, prepare_dataset("totalsegmentator", root, root.parent / "prepared", workers=2)


def test_label_maps_follow_the_fixed_class_order(ts):
    from voxelfm.data.phantoms import LABELS
    from voxelfm.datasets.totalsegmentator import CLASSES
    from voxelfm.io import read_volume

    root, scans, splits, result = ts
    out = result.out
    classes = json.loads((out / "classes.json").read_text())
    assert len(classes) == 118 and classes["0"] == "background" and classes["1"] == "spleen"
    assert classes["117"] == "costal_cartilages" and classes["52"] == "aorta"
    value_of = {v: k for k, v in CLASSES.items()}
    lab = pd.read_csv(out / "labels.csv").set_index("id")
    for sid, s in scans.items():
        lm = read_volume(out / lab.loc[sid, "seg_path"], check_hu=False)
        ct = read_volume(root / sid / "ct.nii.gz")
        assert lm.array.shape == ct.array.shape == s.labels.shape
        np.testing.assert_allclose(lm.affine, ct.affine)
        for value, organ in LABELS.items():
            if organ in PHANTOM_TO_TS and (s.labels == value).any():
                want = value_of[PHANTOM_TO_TS[organ]]
                if sid == "s0000" and organ == "liver":
                    want = 117
                assert (lm.array[s.labels == value] == want).all(), (sid, organ)
        assert (lm.array[~np.isin(s.labels, [v for v, o in LABELS.items() if o in PHANTOM_TO_TS])] == 0).all()


def test_official_split_and_contract(ts):
    from voxelfm.probes.suite import load_suite

    root, scans, splits, result = ts
    lab = pd.read_csv(result.out / "labels.csv")
    assert list(lab["split"]) == splits and list(lab["id"]) == sorted(scans)
    assert result.info["counts"]["classes"] == 118
    assert any("of 117 mask files missing" in n for n in result.info["notes"])
    s = load_suite(result.out / "suite.yaml", stores={"x": result.out})
    assert s.tasks[0].task == "segmentation" and s.tasks[0].hparams["num_classes"] == 118
    assert s.head_defaults["segmentation"]["epochs"] == 120


def test_study_type_split_and_missing_meta(tmp_path):
    from voxelfm.datasets import prepare_dataset
    from voxelfm.errors import VoxelFMError

    root = tmp_path / "TS"
    write_totalsegmentator(root, tiny_scans(3), ["train", "val", "test"])
    res = prepare_dataset("totalsegmentator", root, tmp_path / "o", split="study_type")
    assert set(pd.read_csv(res.out / "labels.csv")["split"]) == {"train"}  # < 20 scans of the type: train
    (root / "meta.csv").unlink()
    with pytest.raises(VoxelFMError, match="meta.csv"):
        prepare_dataset("totalsegmentator", root, tmp_path / "o2")


def test_real_sample_round_trip(tmp_path):
    """TotalSegmentator's own sample (its sdist's test files): the label map split into the
    dataset's 117 per-structure files is merged back exactly, on the CT's grid."""
    import shutil
    from pathlib import Path

    import nibabel as nib

    from voxelfm.datasets import prepare_dataset
    from voxelfm.datasets.totalsegmentator import CLASSES

    data = Path(__file__).parent / "data" / "totalsegmentator"
    seg = nib.load(str(data / "example_seg.nii.gz"))
    full = np.asarray(seg.dataobj)
    root = tmp_path / "Totalsegmentator_dataset_v201"
    subjects = ["s0001", "s0002", "s0003"]
    for sid in subjects:
        (root / sid / "segmentations").mkdir(parents=True)
        shutil.copy(data / "example_ct_sm.nii.gz", root / sid / "ct.nii.gz")
        for value, name in CLASSES.items():
            nib.save(nib.Nifti1Image((full == value).astype(np.uint8), seg.affine),
                     str(root / sid / "segmentations" / f"{name}.nii.gz"))
    pd.DataFrame({"image_id": subjects, "study_type": "ct abdomen", "split": ["train", "val", "test"]}).to_csv(
        root / "meta.csv", sep=";", index=False)
    res = prepare_dataset("totalsegmentator", root, tmp_path / "out")
    assert res.info["complete"] and not res.info["notes"]
    merged = nib.load(str(res.out / "labelmaps" / "s0002.nii.gz"))
    np.testing.assert_array_equal(np.asarray(merged.dataobj), full)
    np.testing.assert_allclose(merged.affine, seg.affine)
    assert len(np.unique(full)) - 1 == int(pd.read_csv(res.out / "labels.csv")["n_classes_present"].iloc[0])
