"""Shared phantom fixtures: one small cohort generated once per test session."""

from __future__ import annotations

import pytest

SEED = 5
N = 18


@pytest.fixture(scope="session")
def cohort_dir(tmp_path_factory):
    from voxelfm.data.phantoms import generate_cohort

    out = tmp_path_factory.mktemp("phantoms")
    table = generate_cohort(out, N, seed=SEED, workers=2, progress=False)
    return out, table
