"""Shared fixtures of the probe tests: synthetic embedding stores with planted signal."""

from __future__ import annotations

import pytest

from tests.probes._synth import make_store


@pytest.fixture(scope="session")
def strong_store(tmp_path_factory):
    """160 scans (80 patients, 2 scans each), 16-dim tokens, strongly separable signal."""
    return make_store(tmp_path_factory.mktemp("strong") / "store", 160, signal=5.0, seed=1)


@pytest.fixture(scope="session")
def two_backbones(tmp_path_factory):
    """Two stores over the same ids: one with signal, one (almost) without."""
    root = tmp_path_factory.mktemp("suite")
    good, labels = make_store(root / "good", 100, signal=4.0, seed=2)
    bad, _ = make_store(root / "bad", 100, signal=0.2, seed=2)
    path = root / "labels.csv"
    labels.to_csv(path, index=False)
    return root, good, bad, path
