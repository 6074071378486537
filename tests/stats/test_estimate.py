"""Estimate formatting/serialisation and the no-torch guarantee of voxelfm.stats."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from voxelfm.stats import BootstrapEstimate, Estimate


def test_estimate_str_float_dict():
    e = Estimate(0.8123, 0.7712, 0.8499, "hanley-mcneil", 100, name="auroc")
    assert str(e) == "0.812 [0.771, 0.850]"
    assert format(e, ".2f") == "0.81 [0.77, 0.85]"
    assert float(e) == pytest.approx(0.8123)
    d = e.to_dict()
    assert d == {"value": 0.8123, "ci_low": 0.7712, "ci_high": 0.8499, "method": "hanley-mcneil",
                 "n": 100, "alpha": 0.05, "name": "auroc"}
    json.dumps(d)
    assert e.has_ci and e.level == pytest.approx(0.95)


def test_point_estimate_prints_without_interval_and_numpy_scalars_normalised():
    e = Estimate(np.float32(0.5), math.nan, math.nan, "point", np.int64(7))
    assert str(e) == "0.500"
    assert not e.has_ci
    assert type(e.value) is float and type(e.n) is int
    with pytest.raises(dataclasses.FrozenInstanceError):
        e.value = 1.0  # frozen
    same = Estimate(0.5, float("nan"), np.nan, "point", 7)
    assert e == same and hash(e) == hash(same) and e != Estimate(0.5, 0.1, 0.9, "x", 7)


def test_bootstrap_estimate_dict_excludes_replicates():
    e = BootstrapEstimate(0.5, 0.4, 0.6, "bootstrap-percentile", 10, n_resamples=100, n_skipped=3,
                          replicates=np.linspace(0.4, 0.6, 97))
    d = e.to_dict()
    assert "replicates" not in d and d["n_skipped"] == 3 and d["n_resamples"] == 100
    json.dumps(d)
    assert e.std_error == pytest.approx(np.std(np.linspace(0.4, 0.6, 97), ddof=1))
    assert isinstance(e, Estimate)


def test_import_does_not_load_torch():
    code = ("import sys, voxelfm.stats, voxelfm.stats.retrieval, voxelfm.stats.delong;"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
