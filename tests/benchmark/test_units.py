"""Backbone specs, the ROOTS.yaml reader and the estimates of the dry run."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from voxelfm.benchmark.backbones import parse_backbones
from voxelfm.benchmark.estimate import scan_geometry, token_grid, vit_forward_flops
from voxelfm.benchmark.roots import read_roots
from voxelfm.errors import ConfigError
from voxelfm.preprocess import preprocess_volume


def test_parse_backbones_forms(tmp_path):
    w = tmp_path / "w.safetensors"
    w.write_bytes(b"x")
    specs = parse_backbones([f"voxelfm={w},random=vit_tiny", "again=voxelfm:vit_small"])
    assert [(s.name, s.family, s.weights) for s in specs] == [
        ("voxelfm", "voxelfm", str(w)), ("random", "voxelfm", "vit_tiny"), ("again", "voxelfm", "vit_small")]
    fp = specs[0].fingerprint()
    w.write_bytes(b"xy")  # other weights under the same path → another fingerprint
    assert specs[0].fingerprint() != fp


@pytest.mark.parametrize("text,msg", [
    ("voxelfm", "NAME=WEIGHTS"), ("a=vit_tiny,a=vit_small", "twice"), ("a b=vit_tiny", "letters"),
    ("a=nosuchfamily:w.pt", "unknown backbone family"), ("voxelfm=random", "config name"), ("", "no backbones")])
def test_parse_backbones_errors(text, msg):
    with pytest.raises(ConfigError, match=msg):
        parse_backbones(text)


def _empty_prepared(folder):
    """A folder that counts as prepared (manifest.csv + suite.yaml)."""
    folder.mkdir()
    (folder / "manifest.csv").write_text("id,path\n")
    (folder / "suite.yaml").write_text("tasks: []\n")
    return folder


def test_read_roots_prepared_download_and_long_form(tmp_path):
    prep = _empty_prepared(tmp_path / "prep")
    dl = tmp_path / "download"
    dl.mkdir()
    roots = tmp_path / "roots.yaml"
    roots.write_text(f"extract: {{max_patches: 8000}}\nct: prep\nluna: {dl}\n"
                     f"nsclc: {{root: download, prepared: p2, extract: {{crop_background: false}}, "
                     f"options: {{seed_split: 1}}}}\n")
    entries, glob = read_roots(roots, tmp_path / "out")
    assert glob == {"max_patches": 8000}
    ct, luna, nsclc = entries
    assert ct.prepared == prep and ct.root is None and not ct.needs_preparation
    assert luna.root == dl and luna.prepared == tmp_path / "out" / "prepared" / "luna" and luna.needs_preparation
    assert nsclc.prepared == tmp_path / "p2" and nsclc.extract == {"crop_background": False}
    assert nsclc.options == {"seed_split": 1} and ct.options == {}
    roots.write_text("ct: {prepared: prep, extract: {spacing: 1}}\n")
    with pytest.raises(ConfigError, match="unknown extraction option"):
        read_roots(roots, tmp_path / "out")
    roots.write_text("ct: {prepared: nothing}\n")
    with pytest.raises(FileNotFoundError, match="not a prepared folder"):
        read_roots(roots, tmp_path / "out")


@pytest.mark.parametrize("shape,spacing,max_patches", [
    ((40, 50, 61), (2.5, 0.7, 0.7), None), ((40, 50, 61), (2.5, 0.7, 0.7), 30), ((30, 30, 30), (1.0, 1.0, 1.0), None),
    ((33, 47, 29), (1.2, 0.9, 3.0), 12)])
def test_token_grid_matches_the_pipeline(shape, spacing, max_patches):
    arr = np.full(shape, -500.0, dtype=np.float32)
    pre = preprocess_volume(arr, "default", spacing=spacing, max_patches=max_patches, patch_size=7)
    assert token_grid(shape, spacing, patch_size=7, preset="default", max_patches=max_patches) == pre.grid


def test_scan_geometry_reads_the_header_only(tmp_path):
    arr = np.full((12, 20, 30), -1000, dtype=np.int16)  # z, y, x
    arr[3:9, 5:15, 5:25] = 40
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.8, 0.9, 2.5))
    path = tmp_path / "ct.nii.gz"
    sitk.WriteImage(img, str(path))
    from voxelfm.io import read_volume
    from voxelfm.io.overrides import ReadOverrides

    vol = read_volume(path)
    shape, spacing = scan_geometry(path)
    assert shape == vol.array.shape and spacing == pytest.approx(vol.spacing)
    # a manifest's spacing override (CT-RATE's blank headers) wins over the header
    shape, spacing = scan_geometry(path, overrides=ReadOverrides(spacing=(1.5, 0.7, 0.7)))
    assert shape == vol.array.shape and spacing == (1.5, 0.7, 0.7)


def test_vit_flops_formula():
    dims = {"embed_dim": 864, "depth": 12, "patch_size": 14}
    n, c = 25000 + 5, 864  # tokens + CLS + 4 registers
    expected = 12 * (24 * n * c * c + 4 * n * n * c) + 2 * 25000 * 14 ** 3 * c
    assert vit_forward_flops(25000, **dims) == pytest.approx(expected)
    # doubling small token counts doubles the cost; at 25,000 tokens attention dominates
    assert 1.95 < vit_forward_flops(200, **dims) / vit_forward_flops(100, **dims) < 2.05
    assert vit_forward_flops(50000, **dims) / vit_forward_flops(25000, **dims) > 3.3


def test_only_and_reference_are_checked(tmp_path):
    from voxelfm.benchmark.paper import _resolve

    _empty_prepared(tmp_path / "prep")
    roots = tmp_path / "roots.yaml"
    roots.write_text("a: prep\nb: prep\n")
    entries, _, specs, ref = _resolve(roots, "x=vit_tiny,y=vit_small", tmp_path / "out", None, ["b"])
    assert [e.name for e in entries] == ["b"] and ref == "x" and [s.name for s in specs] == ["x", "y"]
    with pytest.raises(ConfigError, match="--only: c not in"):
        _resolve(roots, "x=vit_tiny", tmp_path / "out", None, ["c"])
    with pytest.raises(ConfigError, match="--reference 'z' is not one of the backbones"):
        _resolve(roots, "x=vit_tiny", tmp_path / "out", "z", None)


def test_paper_table_mean_rows_and_holm():
    import pandas as pd

    from voxelfm.benchmark.table import paper_table

    rows, comps = [], []
    for t, (va, vb) in {"f1": (0.9, 0.7), "f2": (0.8, 0.6), "f3": (0.7, 0.75)}.items():
        for b, v in (("a", va), ("b", vb)):
            rows.append({"dataset": "d", "task_name": t, "task": "binary", "head": "mlp", "feature": "cls",
                         "fraction": 1.0, "backbone": b, "metric": "auroc", "primary": True, "value": v,
                         "ci_low": v - 0.05, "ci_high": v + 0.05, "status": "ok"})
        comps.append({"dataset": "d", "task_name": t, "task": "binary", "head": "mlp", "feature": "cls",
                      "fraction": 1.0, "metric": "auroc", "backbone_a": "a", "backbone_b": "b", "n": 10,
                      "diff": va - vb, "p_value": {"f1": 0.01, "f2": 0.02, "f3": 0.5}[t], "method": "delong",
                      "p_holm": 0.0})
    table, comp = paper_table(pd.DataFrame(rows), pd.DataFrame(comps), ["a", "b"])
    assert list(table["task"]) == ["f1", "f2", "f3", "mean of 3 tasks"]
    mean = table.iloc[-1]
    assert mean["a"] == "0.800" and mean["b"] == "0.683" and mean["_best"] == ("a",) and mean["p a vs b"] == "—"
    assert mean["metric"] == "auroc ↑ (mean)"
    np.testing.assert_allclose(comp.set_index("task_name")["p_holm"].loc[["f1", "f2", "f3"]], [0.03, 0.04, 0.5])
