"""Probe runs limit torch *and* BLAS/OpenMP threads (tiny sklearn fits were 10x slower on a busy
machine with a multi-threaded OpenBLAS)."""

from __future__ import annotations

import torch
from threadpoolctl import threadpool_info

from voxelfm.probes import train_probe
from voxelfm.probes.heads import SklearnLinearProbe
from voxelfm.probes.trainer import limit_threads


def _blas_threads() -> set[int]:
    return {lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"}


def test_limit_threads_sets_and_restores_torch_and_blas():
    import numpy as np  # noqa: F401  (BLAS loaded)

    torch_before, blas_before = torch.get_num_threads(), _blas_threads()
    with limit_threads(1):
        assert torch.get_num_threads() == 1
        assert _blas_threads() == {1}
    assert torch.get_num_threads() == torch_before
    assert _blas_threads() == blas_before
    with limit_threads(None):  # None leaves everything alone
        assert torch.get_num_threads() == torch_before


def test_sklearn_probes_fit_single_threaded(strong_store, monkeypatch):
    store, labels = strong_store
    seen = []
    fit = SklearnLinearProbe.fit

    def spy(self, *a, **k):
        seen.append((_blas_threads(), torch.get_num_threads()))
        return fit(self, *a, **k)

    monkeypatch.setattr(SklearnLinearProbe, "fit", spy)
    run = train_probe(store, labels, "y", task="binary", head="logistic", progress=False, n_resamples=50)
    assert seen == [({1}, 1)]
    assert run.metrics["auroc"].value > 0.95
    seen.clear()
    train_probe(store, labels, "y", task="binary", head="logistic", progress=False, n_resamples=50, threads=2)
    assert seen[0][1] == 2
