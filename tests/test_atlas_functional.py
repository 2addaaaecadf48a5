"""Pattern generators: contract (shape, dtype, zero mean, unit norm), conventions, errors."""

from __future__ import annotations

import numpy as np
import pytest

from kernelatlas.atlas import functional as F
from kernelatlas.errors import KernelAtlasError

SIZES = [(3, 3), (4, 4), (5, 5), (7, 7), (6, 9), (31, 31), (3, 31)]


def _check_unit(p: np.ndarray, n: int, kh: int, kw: int) -> None:
    assert p.shape == (n, kh, kw) and p.dtype == np.float32
    np.testing.assert_allclose(p.sum(axis=(1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose((p.astype(np.float64) ** 2).sum(axis=(1, 2)), 1.0, atol=1e-5)


@pytest.mark.parametrize("kh,kw", SIZES)
def test_generators_contract_any_size(kh, kw):
    sig = np.array([0.3, 0.8, 2.0])
    off = (np.array([0.0, 0.25, -0.5]), 0.5)
    _check_unit(F.center_pattern(kh, kw, sig, polarity=[1, -1, 1], offset=off), 3, kh, kw)
    _check_unit(F.first_derivative_pattern(kh, kw, sig, [0.0, 45.0, 300.0], offset=off), 3, kh, kw)
    for kind in ("bar", "cross"):
        p = F.second_derivative_pattern(kh, kw, sig, 30.0, kind=kind, polarity=-1, offset=off)
        _check_unit(p, 3, kh, kw)
    # scalars broadcast to N = 1; an [N, 2] offset array is accepted
    _check_unit(F.center_pattern(kh, kw, 1.0, offset=np.zeros((1, 2))), 1, kh, kw)


def test_conventions_orientation_and_polarity():
    c = 3  # centre index of a 7x7
    p = F.first_derivative_pattern(7, 7, 1.0, [0.0, 90.0, 180.0, 270.0])
    assert p[0, c, c + 2] > 0 > p[0, c, c - 2]  # 0 deg: positive lobe to the right (+x)
    assert p[1, c - 2, c] > 0 > p[1, c + 2, c]  # 90 deg: positive lobe up (row 0 is the top)
    np.testing.assert_allclose(p[2], -p[0], atol=1e-6)
    np.testing.assert_allclose(p[3], -p[1], atol=1e-6)
    on, off = F.center_pattern(7, 7, 1.0, polarity=[1, -1])
    assert on[c, c] == on.max() > 0 and off[c, c] == off.min() < 0
    bar = F.second_derivative_pattern(7, 7, 1.0, 0.0, kind="bar")[0]
    assert bar[c, c] > 0 and bar[0, c] > 0 > bar[c, c + 2]  # vertical ridge across x
    cross = F.second_derivative_pattern(7, 7, 1.0, 0.0, kind="cross")[0]
    assert cross[c - 1, c + 1] > 0 and cross[c + 1, c - 1] > 0 and cross[c - 1, c - 1] < 0
    # cross(t + 90, p) == cross(t, -p)
    a = F.second_derivative_pattern(7, 7, 1.0, 100.0, kind="cross", polarity=-1)
    b = F.second_derivative_pattern(7, 7, 1.0, 10.0, kind="cross", polarity=1)
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_half_pixel_offsets_give_forward_differences():
    # tiny sigma: centred -> central difference; half a pixel right -> forward difference
    central = F.first_derivative_pattern(5, 5, 0.2, 0.0)[0]
    forward = F.first_derivative_pattern(5, 5, 0.2, 0.0, offset=(0.5, 0.0))[0]
    row = np.zeros(5)
    row[[1, 3]] = [-1, 1]
    np.testing.assert_allclose(central[2], row / np.sqrt(2), atol=1e-3)
    row = np.zeros(5)
    row[[2, 3]] = [-1, 1]
    np.testing.assert_allclose(forward[2], row / np.sqrt(2), atol=1e-3)
    assert np.abs(forward[[0, 1, 3, 4]]).max() < 1e-2  # 0.2 px blur only
    # a tiny-sigma Gaussian is a delta at the (offset) centre
    delta = F.center_pattern(5, 5, 0.1, surround_weight=0.0, offset=(1.0, -1.0))[0]
    assert np.unravel_index(delta.argmax(), delta.shape) == (3, 3)


@pytest.mark.parametrize("theta", [0.0, 30.0, 77.0, 200.0])
def test_first_derivative_is_steerable(theta):
    p0, p90, pt = F.first_derivative_pattern(9, 9, 1.4, [0.0, 90.0, theta])
    t = np.deg2rad(theta)
    steer = np.cos(t) * p0 + np.sin(t) * p90
    cos = F.cosine_similarity(steer[None], pt[None])[0]
    assert cos > 0.99999


def test_parameter_errors():
    with pytest.raises(KernelAtlasError, match="sigma"):
        F.center_pattern(7, 7, 0.0)
    with pytest.raises(KernelAtlasError, match="polarity"):
        F.center_pattern(7, 7, 1.0, polarity=2)
    with pytest.raises(KernelAtlasError, match="common length"):
        F.first_derivative_pattern(7, 7, [1.0, 2.0], [0.0, 1.0, 2.0])
    with pytest.raises(KernelAtlasError, match="between"):
        F.first_derivative_pattern(0, 7, 1.0, 0.0)
    with pytest.raises(KernelAtlasError, match="kind"):
        F.second_derivative_pattern(7, 7, 1.0, 0.0, kind="saddle")
    with pytest.raises(KernelAtlasError, match="surround_weight"):
        F.center_pattern(7, 7, 1.0, surround_weight=1.5)
    with pytest.raises(KernelAtlasError, match="offset"):
        F.center_pattern(7, 7, 1.0, offset=0.5)
    with pytest.raises(KernelAtlasError, match="finite"):
        F.center_pattern(7, 7, np.nan)


def test_master_key_filters_shipped_as_package_data():
    m = F.master_key_filters()
    assert m.shape == (8, 7, 7) and m.dtype == np.float32
    # spot values of the published file (filters 1, 7, 8 peak at or next to the centre)
    assert m[0, 0, 0] == np.float32(-0.010366)
    assert m[0, 4, 3] == np.float32(0.936427)
    assert m[6, 3, 3] == np.float32(0.982706)
    assert m[7, 6, 6] == np.float32(-0.043075)


def test_metrics():
    np.testing.assert_allclose(F.angular_difference([350.0, 10.0], [10.0, 190.0]), [20.0, 180.0])
    np.testing.assert_allclose(F.angular_difference(179.0, 1.0, period=180.0), 2.0)
    a = F.center_pattern(5, 5, [1.0, 1.0], polarity=[1, -1])
    np.testing.assert_allclose(F.cosine_similarity(a, a[::-1] * 3 + 7), [-1.0, -1.0], atol=1e-6)
