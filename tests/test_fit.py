"""fit_kernels: parameter recovery on synthetic patterns, columns, degenerate rows, errors."""

from __future__ import annotations

import numpy as np
import pytest

from kernelatlas.atlas import functional as F
from kernelatlas.atlas.evaluation import synthetic_kernels
from kernelatlas.errors import KernelAtlasError
from kernelatlas.fit import FIT_COLUMNS, fit_kernels


def test_recovers_known_parameters():
    k = np.concatenate(
        [
            F.center_pattern(
                7, 7, 0.9, surround_ratio=2.0, surround_weight=0.6, polarity=-1, offset=(0.3, -0.2)
            ),
            F.first_derivative_pattern(7, 7, 1.2, 130.0, offset=(-0.4, 0.1)),
            F.second_derivative_pattern(7, 7, 0.8, 20.0, kind="bar", polarity=-1),
            F.second_derivative_pattern(9, 9, 1.1, 60.0, kind="cross")[:, 1:-1, 1:-1],
        ]
    ) * np.float32(3.0) + np.float32(0.5)  # amplitude and offset must not matter
    df = fit_kernels(k, device="cpu", steps=60)
    assert tuple(df.columns) == FIT_COLUMNS
    assert list(df["fit_family"]) == ["center", "first_derivative"] + ["second_derivative"] * 2
    assert (df["fit_r2"] > 0.995).all()
    c, f1, bar, cross = (df.iloc[i] for i in range(4))
    assert c["fit_polarity"] == -1 and c["fit_sigma"] == pytest.approx(0.9, abs=0.1)
    assert (c["fit_x0"], c["fit_y0"]) == pytest.approx((0.3, -0.2), abs=0.05)
    assert f1["fit_orientation"] == pytest.approx(130.0, abs=1.0)
    assert f1["fit_sigma"] == pytest.approx(1.2, abs=0.05) and f1["fit_polarity"] == 1
    assert (f1["fit_x0"], f1["fit_y0"]) == pytest.approx((-0.4, 0.1), abs=0.05)
    assert bar["fit_orientation"] == pytest.approx(20.0, abs=1.0) and bar["fit_polarity"] == -1
    assert bar["fit_cross_share_second_derivative"] < 0.01
    assert cross["fit_orientation"] == pytest.approx(60.0, abs=1.0)
    assert cross["fit_cross_share_second_derivative"] > 0.99
    assert f1["fit_amplitude"] > 0  # in the kernel's own units


def test_synthetic_families_and_noise():
    kernels, truth = synthetic_kernels(7, 7, 60, noise=0.3, seed=3)
    df = fit_kernels(kernels, device="cpu")
    assert (df["fit_family"] == truth["family"]).mean() > 0.95
    own = np.array([df.loc[i, f"fit_r2_{f}"] for i, f in enumerate(truth["family"])])
    # with noise of relative norm 0.3 the pattern explains about 1 / (1 + 0.09) of the energy
    assert 0.85 < np.median(own) < 0.97
    m = (truth["family"] == "first_derivative").to_numpy()
    err = F.angular_difference(df["fit_orientation"][m], truth["orientation"][m])
    assert np.median(err) < 5.0


def test_degenerate_subset_and_errors():
    k = np.zeros((3, 5, 5), np.float32)
    k[1] = F.first_derivative_pattern(5, 5, 1.0, 0.0)[0]
    k[2, 0, 0] = np.nan
    df = fit_kernels(k, families=("first_derivative",), device="cpu")
    assert list(df["fit_family"]) == ["degenerate", "first_derivative", "degenerate"]
    assert df["fit_r2"].isna().tolist() == [True, False, True]
    assert df["fit_r2_center"].isna().all() and df["fit_polarity"].tolist() == [0, 1, 0]
    with pytest.raises(KernelAtlasError, match="unknown pattern family 'gabor'"):
        fit_kernels(k, families=("gabor",))
    with pytest.raises(KernelAtlasError, match="2x2: fewer than 3 taps"):
        fit_kernels(np.zeros((2, 2, 2)))
    with pytest.raises(KernelAtlasError, match="squeeze"):
        fit_kernels(np.zeros((2, 1, 5, 5)))


def test_deterministic_and_batch_invariant():
    kernels, _ = synthetic_kernels(5, 5, 10, noise=0.5, seed=0)
    a = fit_kernels(kernels, device="cpu", steps=10)
    b = fit_kernels(kernels, device="cpu", steps=10, batch_size=7)
    np.testing.assert_allclose(a["fit_r2"], b["fit_r2"], atol=1e-4)
    assert (a["fit_family"] == b["fit_family"]).all()
