"""Segmentation label maps on the decoder grid are cached across runs (a suite reads the same maps
for every backbone) and re-read when the file or the geometry changes."""

from __future__ import annotations

import os

import numpy as np
import torch

import voxelfm.probes.run as R


def test_label_maps_cached_and_invalidated(tmp_path, monkeypatch):
    lab = np.zeros((8, 8, 8), dtype=np.int64)
    lab[2:5, 1:7, 3:6] = 3
    path = tmp_path / "m.npy"
    np.save(path, lab)
    reads = []
    real = R._read_label_map
    monkeypatch.setattr(R, "_read_label_map", lambda p, rec: reads.append(p) or real(p, rec))
    monkeypatch.setattr(R, "_LABEL_CACHE", type(R._LABEL_CACHE)())
    rec = {"final_shape": [8, 8, 8]}
    a = R._label_map_on_grid(path, rec, "input", 4)
    b = R._label_map_on_grid(path, {**rec, "forward_seconds": 1.0}, "input", 4)  # geometry unchanged
    assert len(reads) == 1 and torch.equal(a, b)
    assert a.shape == (4, 4, 4) and a.dtype == torch.int16
    # nearest-exact downsampling by 2 picks voxels floor((i + 0.5) * 2) = 1, 3, 5, 7
    np.testing.assert_array_equal(a.numpy(), lab[1::2, 1::2, 1::2])
    R._label_map_on_grid(path, rec, "input", 8)                      # another seg_size: another entry
    assert len(reads) == 2
    lab[0, 0, 0] = 1
    np.save(path, lab)
    os.utime(path, ns=(1, 1))                                         # the file changed: read again
    c = R._label_map_on_grid(path, rec, "input", 8)
    assert len(reads) == 3 and int(c[0, 0, 0]) == 1
