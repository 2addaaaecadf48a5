"""Property-based tests: normalize, Atlas.predict and fit_kernels on arbitrary float arrays
(NaN, Inf, denormals, all-zero, constant and huge values) never raise, keep the shape, flag
degenerate rows, and return unit kernels / scores in range."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from kernelatlas.normalize import normalize
from kernelatlas.taxonomy import DEGENERATE

SPECIAL = [0.0, -0.0, np.nan, np.inf, -np.inf, 1e-45, -1e-45, 1e-40, 3.4e38, -3.4e38, 1.0, 1e-30]


def kernels(kh: int, kw: int, dtype=np.float32, max_n: int = 12):
    """Arrays [N, kh, kw] mixing ordinary values, specials and constant/zero rows."""
    elements = st.one_of(
        st.floats(width=32, allow_nan=True, allow_infinity=True, allow_subnormal=True),
        st.sampled_from(SPECIAL),
    )
    base = hnp.arrays(dtype, st.tuples(st.integers(1, max_n), st.just(kh), st.just(kw)),
                      elements=elements)  # fmt: skip

    @st.composite
    def with_rows(draw):
        arr = draw(base).copy()
        if len(arr):
            # some rows all one value (zero, constant, huge, denormal)
            for i in draw(st.lists(st.integers(0, len(arr) - 1), max_size=3)):
                arr[i] = draw(st.sampled_from(SPECIAL))
        return arr

    return with_rows()


def _expected_degenerate(arr: np.ndarray) -> np.ndarray:
    x = arr.reshape(len(arr), -1).astype(np.float64)
    nonfinite = ~np.isfinite(x).all(1)
    constant = np.zeros(len(arr), bool)
    finite = ~nonfinite
    constant[finite] = (x[finite] == x[finite][:, :1]).all(1)
    return nonfinite | constant


FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(kernels(3, 3) | kernels(5, 5) | kernels(1, 5) | kernels(7, 7, np.float64))
def test_normalize_properties(arr):
    nz = normalize(arr)
    n = len(arr)
    assert nz.unit.shape == arr.shape and nz.unit.dtype == np.float32
    assert nz.norm.shape == (n,) and nz.degenerate.shape == (n,)
    assert np.isfinite(nz.unit).all() and np.isfinite(nz.norm).all() and (nz.norm >= 0).all()
    assert nz.degenerate[_expected_degenerate(arr)].all()  # NaN/Inf/constant rows flagged
    ok = ~nz.degenerate
    u = nz.unit.reshape(n, -1).astype(np.float64)
    np.testing.assert_allclose((u[ok] ** 2).sum(1), 1.0, rtol=1e-4)
    np.testing.assert_allclose(u[ok].mean(1), 0.0, atol=1e-5)
    assert (u[~ok] == 0).all()


@pytest.fixture(scope="module")
def atlases():
    from kernelatlas.atlas import Atlas

    return {k: Atlas(kernel_size=k, n_null=300, seed=0).fit() for k in (3, 5)}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture])  # fmt: skip
@given(st.sampled_from([3, 5]).flatmap(lambda k: kernels(k, k)))
def test_atlas_predict_properties(atlases, arr):
    from kernelatlas.taxonomy import PATTERN_FAMILIES, UNCLASSIFIED

    atlas = atlases[arr.shape[1]]
    df = atlas.predict(arr, details=True)
    assert len(df) == len(arr)
    assert set(df["family"]) <= {*PATTERN_FAMILIES, UNCLASSIFIED, DEGENERATE}
    degen = (df["family"] == DEGENERATE).to_numpy()
    np.testing.assert_array_equal(degen, normalize(arr).degenerate)
    assert degen[_expected_degenerate(arr)].all()
    score = df["score"].to_numpy()
    assert np.isnan(score[degen]).all() and not df["classified"][degen].any()
    live = score[~degen]
    assert np.isfinite(live).all() and (np.abs(live) <= 1 + 1e-5).all()


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kernels(3, 3, max_n=6) | kernels(5, 5, max_n=6))
def test_fit_kernels_properties(arr):
    fit = pytest.importorskip("kernelatlas.fit")
    df = fit.fit_kernels(arr, device="cpu", steps=3)
    assert len(df) == len(arr) and tuple(df.columns) == fit.FIT_COLUMNS
    degen = normalize(arr).degenerate
    np.testing.assert_array_equal((df["fit_family"] == DEGENERATE).to_numpy(), degen)
    r2 = df["fit_r2"].to_numpy()
    assert np.isnan(r2[degen]).all()
    assert np.isfinite(r2[~degen]).all() and (r2[~degen] <= 1 + 1e-4).all()


def test_empty_batch(atlases):
    empty = np.zeros((0, 3, 3), np.float32)
    assert normalize(empty).unit.shape == (0, 3, 3)
    assert len(atlases[3].predict(empty)) == 0
