"""Common estimator checks, run over every kernelatlas estimator (sklearn's check_estimator
habit): one base (signature parameters, declarative constraints, fitted state, input checks)
and one kernel-size parser and range."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pytest

from kernelatlas.atlas import Atlas
from kernelatlas.atlas import functional as F
from kernelatlas.autoencoder import KernelAutoencoder
from kernelatlas.errors import KernelAtlasError
from kernelatlas.estimator import BaseEstimator, NotFittedError, clone
from kernelatlas.fit import KernelFitter
from kernelatlas.sizes import kernel_geometry, parse_kernel_size, unsupported_reason
from kernelatlas.taxonomy import coverage


def _train(n: int = 300, k: int = 5) -> np.ndarray:
    rng = np.random.default_rng(0)
    pats = np.concatenate(
        [
            F.center_pattern(k, k, rng.uniform(0.6, 1.2, n // 2), polarity=1),
            F.first_derivative_pattern(k, k, 0.9, rng.uniform(0, 360, n - n // 2)),
        ]
    )
    return pats + 0.05 * rng.standard_normal(pats.shape).astype(np.float32)


# name -> (a small instance, how to fit it, its family column)
CASES: dict[str, tuple[Callable[[], BaseEstimator], Callable[[Any], Any], str]] = {
    "Atlas": (lambda: Atlas(kernel_size=5, n_null=1000), lambda e: e.fit(), "family"),
    "KernelFitter": (
        lambda: KernelFitter(kernel_size=5, n_null=1000, steps=3),
        lambda e: e.fit(),
        "fit_family",
    ),
    "KernelAutoencoder": (
        lambda: KernelAutoencoder(5, hidden=8, epochs=1, n_grid=16, null_size=200),
        lambda e: e.fit(_train(120)),
        "ae_family",
    ),
}


@pytest.fixture(params=list(CASES), scope="module")
def case(request) -> tuple[str, BaseEstimator, Any, str]:
    make, fit, col = CASES[request.param]
    return request.param, make(), fit(make()), col


def test_clone_round_trip_and_params(case):
    name, fresh, fitted, _ = case
    for est in (fresh, fitted):
        twin = clone(est)
        assert type(twin) is type(est) and twin is not est
        assert twin.get_params() == est.get_params()
        assert not twin._is_fitted()  # a clone is never fitted
    params = fresh.get_params()
    assert list(params) == type(fresh)._get_param_names()
    assert fresh.set_params(**params) is fresh and fresh.get_params() == params
    with pytest.raises(KernelAtlasError, match="has no parameter 'bogus'"):
        clone(fresh).set_params(bogus=1)
    assert repr(fresh).startswith(f"{name}(")


def test_every_parameter_is_constrained_and_validated_in_fit(case):
    name, fresh, _, _ = case
    cls = type(fresh)
    assert set(cls._parameter_constraints) == set(cls._get_param_names())
    bad = clone(fresh).set_params(kernel_size=(5, 0))
    with pytest.raises(KernelAtlasError, match=f"{name}: kernel_size must be"):
        CASES[name][1](bad)


def test_not_fitted_error(case):
    _, fresh, _, _ = case
    with pytest.raises(KernelAtlasError, match="not fitted"):
        fresh.predict(np.zeros((2, 5, 5), np.float32))


def test_wrong_size_message(case):
    name, _, fitted, _ = case
    with pytest.raises(KernelAtlasError, match=r"for 5x5 kernels, got 3x3"):
        fitted.predict(np.zeros((2, 3, 3), np.float32))
    with pytest.raises(KernelAtlasError, match="squeeze the channel axis"):
        fitted.predict(np.zeros((2, 1, 5, 5), np.float32))
    if name != "KernelAutoencoder":  # its own check says "train one for that size"
        # [N, 25]: N flattened 5x5 kernels, read as one 4x25 kernel ("fit one per size")
        with pytest.raises(KernelAtlasError, match=r"got 4x25: a 2-D array is one kernel; "
                           r"for 4 flattened kernels pass kernels\.reshape\(-1, 5, 5\)"):  # fmt: skip
            fitted.predict(np.zeros((4, 25), np.float32))


def test_determinism(case):
    name, _, fitted, _ = case
    x = _train(40)
    again = CASES[name][1](CASES[name][0]())
    pd.testing.assert_frame_equal(fitted.predict(x), again.predict(x))


def test_degenerate_rows(case):
    _, _, fitted, col = case
    x = _train(6)
    bad = np.stack([np.zeros((5, 5)), np.full((5, 5), 3.0), np.full((5, 5), np.nan)])
    mixed = np.concatenate([x[:3], bad, x[3:]]).astype(np.float32)
    out = fitted.predict(mixed)
    assert list(out[col][3:6]) == ["degenerate"] * 3
    # the other rows are what they are alone (up to float32 rounding: a matrix product's
    # blocking depends on the row count, and a short fit keeps a trace of its start)
    alone = fitted.predict(x).reset_index(drop=True)
    rest = out.drop(index=[3, 4, 5]).reset_index(drop=True)
    pd.testing.assert_frame_equal(rest, alone, rtol=1e-3, atol=1e-3)


def test_not_fitted_error_type(case):
    """Every estimator refuses an unfitted predict with NotFittedError (the autoencoder
    raised a plain KernelAtlasError, so ``except NotFittedError`` missed it)."""
    _, fresh, _, _ = case
    with pytest.raises(NotFittedError):
        fresh.predict(np.zeros((1, 5, 5)))


def test_scikit_learn_parameter_protocol(case):
    """``get_params(deep=False)`` (what sklearn's clone calls; the autoencoder's took no
    argument: TypeError), and a repr that shows only what differs from the defaults."""
    name, fresh, _, _ = case
    assert fresh.get_params(deep=False) == fresh.get_params(deep=True) == fresh.get_params()
    assert repr(type(fresh)()) == f"{name}()"
    assert repr(type(fresh)(seed=3)) == f"{name}(seed=3)"


def test_one_kernel_size_parser_and_range():
    assert parse_kernel_size(7) == (7, 7) and parse_kernel_size((1, 7)) == (1, 7)
    for bad in (0, 129, (3,), (3, 2.5), True, "7"):
        with pytest.raises(KernelAtlasError, match="kernel_size"):
            parse_kernel_size(bad)
    assert kernel_geometry(3, 3) == kernel_geometry(4, 9) == "2d"
    assert kernel_geometry(1, 7) == kernel_geometry(5, 1) == "1d"
    for size in ((1, 1), (1, 2), (2, 2), (2, 7)):
        assert kernel_geometry(*size) is None and unsupported_reason(*size)
    assert unsupported_reason(3, 3) is None
    for est in (Atlas(kernel_size=(2, 7)), KernelFitter(kernel_size=(2, 7))):
        with pytest.raises(KernelAtlasError, match="2x7: fewer than 3 taps"):
            est.fit()


def test_one_definition_of_coverage():
    fam = np.array(["center", "degenerate", "unclassified", "shift"], dtype=object)
    assert coverage(np.array([True, False, False, True]), fam) == pytest.approx(2 / 3)
    assert np.isnan(coverage(np.array([False]), np.array(["degenerate"], dtype=object)))
