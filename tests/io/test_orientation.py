"""AxisMap algebra against numpy, and canonical_map against nibabel's own reorientation."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from voxelfm.io.orientation import AxisMap, canonical_map, obliquity_degrees, orientation_code

A = np.arange(2 * 3 * 4).reshape(2, 3, 4)
MAPS = [AxisMap(p, f) for p in itertools.permutations(range(3)) for f in itertools.product([False, True], repeat=3)]


@pytest.mark.parametrize("m", MAPS[::5])
def test_apply_inverse_then_and_index_transform(m):
    out = m.apply(A)
    assert out.shape == m.out_shape(A.shape)
    np.testing.assert_array_equal(m.inverse().apply(out), A)
    other = MAPS[(MAPS.index(m) * 7 + 3) % len(MAPS)]
    np.testing.assert_array_equal(m.then(other).apply(A), other.apply(m.apply(A)))
    t = m.index_transform(A.shape)  # output index -> input index
    for idx in [(0, 0, 0), tuple(s - 1 for s in out.shape), (1, 2, 0)]:
        idx = tuple(min(i, s - 1) for i, s in zip(idx, out.shape))
        src = (t @ np.array([*idx, 1.0]))[:3].astype(int)
        assert out[idx] == A[tuple(src)]


@pytest.mark.parametrize("code", ["RAS", "LPS", "LIP", "ASL", "PIR", "SPL"])
def test_canonical_map_matches_nibabel(code):
    import nibabel.orientations as no

    ras = no.inv_ornt_aff(no.axcodes2ornt(code), (2, 3, 4))  # some affine with this code
    ras = np.linalg.inv(ras) if "".join(no.aff2axcodes(ras)) != code else ras
    assert "".join(no.aff2axcodes(ras)) == code
    lps = np.diag([-1.0, -1, 1, 1]) @ ras
    assert orientation_code(lps) == code
    m = canonical_map(lps)
    expected = no.apply_orientation(A, no.ornt_transform(no.axcodes2ornt(code), no.axcodes2ornt("SPL")))
    np.testing.assert_array_equal(m.apply(A), expected)
    canon = lps @ m.index_transform(A.shape)
    assert orientation_code(canon) == "SPL" and obliquity_degrees(canon) == pytest.approx(0.0)


def test_degenerate_affine_rejected():
    with pytest.raises(ValueError, match="degenerate"):
        canonical_map(np.diag([1.0, 0.0, 1.0, 1.0]))
