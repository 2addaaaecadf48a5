"""Master-key discovery: greedy selection over decoded latents, coverage, published match."""

from __future__ import annotations

import numpy as np
import pytest

from kernelatlas.atlas.functional import master_key_filters
from kernelatlas.autoencoder import KernelAutoencoder, discover_master_keys, explained_by
from kernelatlas.errors import KernelAtlasError

FAST = dict(hidden=128, epochs=100, batch_size=128, lr=1e-2, device="cpu")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def mk_bank():
    """Kernels a * published_filter + b + noise: the discovered set must match the eight."""
    rng = np.random.default_rng(0)
    ref = master_key_filters()
    idx = rng.integers(0, 8, 1600)
    a = rng.uniform(0.2, 2.0, (idx.size, 1, 1))
    b = rng.normal(0.0, 0.5, (idx.size, 1, 1))
    noise = 0.03 * rng.standard_normal((idx.size, 7, 7))
    return (a * ref[idx] + b + a * noise).astype(np.float32)


@pytest.fixture(scope="module")
def result(mk_bank):
    ae = KernelAutoencoder(7, seed=0, name_spectrum=False, **FAST).fit(mk_bank)
    return discover_master_keys(mk_bank, k=8, n_candidates=50, autoencoder=ae, seed=0)


def test_discovered_filters_match_the_published_eight(result):
    m = result.match
    assert list(m.columns) == ["published", "best_filter", "cosine", "abs_cosine"]
    assert list(m["published"]) == list(range(1, 9))
    # Each published filter is found (up to sign and a*f + b), and by distinct filters.
    assert m["abs_cosine"].min() > 0.9, m
    assert m["best_filter"].nunique() == 8


def test_coverage_grows_with_filters_and_beats_the_null(result):
    cov = result.coverage
    assert list(cov.columns) == [
        "n_filters",
        "explained",
        "covered",
        "null_explained",
        "null_covered",
    ]
    assert list(cov["n_filters"]) == list(range(1, 9))
    assert np.all(np.diff(cov["explained"]) >= 0) and np.all(np.diff(cov["covered"]) >= 0)
    assert cov["explained"].iloc[-1] > 0.9 and cov["covered"].iloc[-1] > 0.95
    assert cov["null_explained"].iloc[-1] < 0.25 and cov["null_covered"].iloc[-1] == 0.0
    f = result.filters.reshape(8, -1)
    assert result.filters.shape == (8, 7, 7) and result.candidates.shape == (50, 7, 7)
    assert np.allclose(f.sum(1), 0, atol=1e-5) and np.allclose((f**2).sum(1), 1, atol=1e-5)
    assert len(set(result.selected.tolist())) == 8


def test_explained_by_is_the_r2_of_a_times_filter_plus_b():
    rng = np.random.default_rng(1)
    f = rng.standard_normal((1, 5, 5)).astype(np.float32)
    w = rng.standard_normal((50, 5, 5)).astype(np.float32)
    ex, cov = explained_by(w, f, threshold=0.3)
    # Least squares of w on [f, 1] by numpy: R^2 of the centred kernel.
    design = np.stack([f.reshape(-1), np.ones(25)], 1)
    coef, *_ = np.linalg.lstsq(design, w.reshape(50, -1).T, rcond=None)
    resid = w.reshape(50, -1).T - design @ coef
    wc = w.reshape(50, -1) - w.reshape(50, -1).mean(1, keepdims=True)
    r2 = 1 - (resid**2).sum(0) / (wc**2).sum(1)
    assert np.isclose(ex[0], r2.mean(), atol=1e-5)
    assert np.isclose(cov[0], (np.sqrt(r2) > 0.7).mean())


def test_other_sizes_have_no_published_match_and_errors():
    x = np.random.default_rng(0).standard_normal((300, 3, 3)).astype(np.float32)
    res = discover_master_keys(x, k=3, n_candidates=6, epochs=2, hidden=16, device="cpu")
    assert res.match is None and res.filters.shape == (3, 3, 3)
    with pytest.raises(KernelAtlasError, match="exceeds n_candidates"):
        discover_master_keys(x, k=9, n_candidates=5)
    with pytest.raises(KernelAtlasError, match="objective"):
        discover_master_keys(x, objective="best")
    with pytest.raises(KernelAtlasError, match="not fitted"):
        discover_master_keys(x, k=2, autoencoder=KernelAutoencoder(3))
