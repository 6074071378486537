"""`voxelfm datasets list | info | prepare`."""

from __future__ import annotations

import json

from tests.datasets._layouts import tiny_scans, write_ct_org


def test_list_info_prepare(tmp_path, capsys):
    from voxelfm.cli.main import main
    from voxelfm.datasets import recipes

    assert main(["datasets", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("ct-rate", "luna16", "totalsegmentator", "ct-org", "nsclc-radiomics", "osic"):
        assert name in recipes() and f"{name} " in out
    assert main(["datasets", "info", "CT_ORG"]) == 0
    out = capsys.readouterr().out
    assert "volume-0.nii.gz" in out and "CC BY 3.0" in out and "--set KEY=VALUE" in out

    root = tmp_path / "CT-ORG"
    write_ct_org(root, tiny_scans(4), [0, 30, 31, 32])
    assert main(["datasets", "prepare", "ct-org", "--root", str(root), "-o", str(tmp_path / "out"),
                 "--set", "split=random"]) == 0
    out = capsys.readouterr().out
    assert "ct-org: 4 scans of 4 patients" in out and "missing: volume-1.nii.gz" in out
    assert json.loads((tmp_path / "out" / "prepare.json").read_text())["options"]["split"] == "random"
    # an existing output is kept unless --overwrite; errors are one line
    assert main(["datasets", "prepare", "ct-org", "--root", str(root), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "exists; choose another -o folder or pass --overwrite" in err and len(err.strip().splitlines()) == 1
    assert main(["datasets", "prepare", "ct-org", "--root", str(root), "-o", str(tmp_path / "out"),
                 "--overwrite"]) == 0
    assert json.loads((tmp_path / "out" / "prepare.json").read_text())["options"]["split"] == "official"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
    assert main(["datasets", "prepare", "nope", "--root", str(root), "-o", str(tmp_path / "x")]) == 2
    assert "no dataset recipe 'nope'; available: ct-rate" in capsys.readouterr().err
    assert main(["datasets", "prepare", "ct-org", "--root", str(root), "-o", str(tmp_path / "y"),
                 "--set", "split=bogus"]) == 2
    assert "option split must be one of official, random" in capsys.readouterr().err
