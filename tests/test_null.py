"""Null kinds: each surrogate keeps what it claims, calibration on each kind meets its FPR on
held-out surrogates, everything is seed-deterministic (real EfficientNet-Lite0 5x5 kernels)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kernelatlas.atlas import Atlas
from kernelatlas.errors import KernelAtlasError
from kernelatlas.harvest import harvest
from kernelatlas.normalize import normalize
from kernelatlas.null import (
    DEFAULT_BASELINES,
    NULL_KINDS,
    NULLS,
    SMOOTH_FILTER,
    NullReference,
    ReferenceBuilder,
    calibration_null,
    difference_interval,
    draw_surrogates,
    get_null,
    heldout_surrogates,
    measure_baselines,
    phase_randomize,
    register_null,
    smooth_field,
    wilson_interval,
)
from kernelatlas.report.summary import baseline_block

SIZE = (5, 5)


def _layers(source: str) -> tuple[np.ndarray, np.ndarray]:
    res = harvest(source)
    parts = [(i, lay.weights) for i, lay in enumerate(res.layers) if lay.weights.shape[1:] == SIZE]
    codes = np.concatenate([np.full(len(w), i) for i, w in parts])
    return np.concatenate([w for _, w in parts]).astype(np.float32), codes


@pytest.fixture(scope="module")
def lite0() -> tuple[np.ndarray, np.ndarray]:
    return _layers("efficientnet_lite0")  # 6,336 real 5x5 kernels in 9 layers


@pytest.fixture(scope="module")
def refs(lite0: tuple[np.ndarray, np.ndarray]) -> dict[str, NullReference]:
    k, codes = lite0
    b = ReferenceBuilder(5, 5, kinds=NULL_KINDS, expected={"lite0": len(k)}, sample_size=100_000)
    b.add("lite0", codes, k)
    b.set_init("lite0", _layers("timm:efficientnet_lite0@init")[0])
    return b.build()


def test_registry_lists_refuses_and_explains() -> None:
    assert NULL_KINDS[:2] == ("gaussian", "init")
    assert {"gaussian", "init", "smooth", "phase", "covariance"} <= set(DEFAULT_BASELINES)
    assert "covariance_layer" in NULL_KINDS and "covariance_layer" not in DEFAULT_BASELINES
    with pytest.raises(KernelAtlasError, match="already registered"):
        register_null("gaussian", label="x", keeps="x", rules_out="x", leaves_open="x")(
            lambda ref, n, rng: np.zeros((n, ref.kh, ref.kw))
        )
    with pytest.raises(KernelAtlasError, match="unknown null kind 'nope': choose from gaussian"):
        get_null("nope")
    for entry in NULLS.values():
        assert entry.label and entry.keeps and entry.rules_out and entry.leaves_open


@pytest.mark.parametrize("kind", NULL_KINDS)
def test_every_kind_draws_deterministic_independent_parts(kind, refs) -> None:
    ref = refs["lite0"]
    a = draw_surrogates(kind, ref, 3000, seed=3, model="lite0")
    b = draw_surrogates(kind, ref, 3000, seed=3, model="lite0")
    c = draw_surrogates(kind, ref, 3000, seed=4, model="lite0")
    cal = draw_surrogates(kind, ref, 3000, seed=3, part="calibration", model="lite0")
    assert a.dtype == np.float32 and a.shape[1:] == SIZE and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)
    if get_null(kind).finite:  # halves of a fixed pool: disjoint, together the whole pool
        assert len(a) + len(cal) == len(ref.init) and len(a) == len(ref.init) // 2
        rows = {r.tobytes() for r in np.concatenate([a, cal])}
        assert len(rows) == len(ref.init) == len({r.tobytes() for r in ref.init})
        assert not np.array_equal(np.sort(a, axis=None), np.sort(c, axis=None)) or len(a) < 2
    else:
        assert len(a) == 3000 and not np.array_equal(a, c) and not np.array_equal(a, cal)


def test_covariance_surrogates_keep_the_second_moment(refs, lite0) -> None:
    ref = refs["lite0"]
    n = 40_000
    for kind in ("covariance", "covariance_layer"):
        x = draw_surrogates(kind, ref, n, seed=0, model="lite0").reshape(n, -1).astype(np.float64)
        emp = x.T @ x / n
        sigma = ref.moment  # the mixture of the layers' moments is the model's moment
        se = np.sqrt((np.outer(np.diag(sigma), np.diag(sigma)) + sigma**2) / n)
        z = np.abs(emp - sigma) / np.maximum(se, 1e-12)
        assert z.max() < 5.0, (kind, z.max())  # 625 entries; a wrong covariance gives z >> 10
        assert np.abs(x.mean(0)).max() < 5 * np.sqrt(np.diag(sigma).max() / n)
    # The reference is the second moment of the unit kernels, per layer too.
    nz = normalize(lite0[0])
    u = nz.unit[~nz.degenerate].reshape(-1, 25).astype(np.float64)
    np.testing.assert_allclose(ref.moment, u.T @ u / len(u), atol=1e-12)
    assert ref.layer_counts.sum() == ref.count == len(u)
    np.testing.assert_allclose(
        (ref.layer_moments * ref.layer_counts[:, None, None]).sum(0) / ref.count, ref.moment
    )


def test_reference_streams_exactly_and_samples_at_most_the_cap(lite0) -> None:
    k, codes = lite0
    whole = ReferenceBuilder(5, 5, kinds=["covariance_layer", "phase"], expected={"m": len(k)})
    whole.add("m", codes, k)
    parts = ReferenceBuilder(5, 5, kinds=["covariance_layer", "phase"], expected={"m": len(k)})
    for idx in np.array_split(np.arange(len(k)), 7):
        parts.add("m", codes[idx], k[idx])
    a, b = whole.build()["m"], parts.build()["m"]
    np.testing.assert_allclose(a.moment, b.moment, rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(a.sample, b.sample)
    capped = ReferenceBuilder(5, 5, kinds=["phase"], expected={"m": len(k)}, sample_size=1000)
    capped.add("m", codes, k)
    s = capped.build()["m"].sample
    assert 800 < len(s) < 1200 and s.shape[1:] == SIZE  # Bernoulli(1000 / 6336) sample


def test_reference_takes_the_callers_normalisation_and_one_layer_as_it_is(lite0) -> None:
    """``add(normalized=normalize(k))`` gives the same bits as normalising in ``add``; rows
    of one layer (no mask: none degenerate) give that layer's sums exactly."""
    k, codes = lite0
    nz = normalize(k)
    assert nz.degenerate.any()  # the masked path too
    kinds = ["covariance_layer", "phase"]
    a = ReferenceBuilder(5, 5, kinds=kinds, expected={"m": len(k)}, sample_size=1000)
    b = ReferenceBuilder(5, 5, kinds=kinds, expected={"m": len(k)}, sample_size=1000)
    a.add("m", codes, k)
    b.add("m", codes, k, normalized=nz)
    from kernelatlas.null import _gram

    ra, rb = a.build()["m"], b.build()["m"]
    for name in ("moment", "layer_moments", "layer_counts", "sample"):
        np.testing.assert_array_equal(getattr(ra, name), getattr(rb, name))
    live = np.flatnonzero(~nz.degenerate & (codes == codes[0]))
    one = ReferenceBuilder(5, 5, kinds=kinds, expected={"m": len(live)})
    one.add("m", codes[live], k[live], normalized=nz[live])
    u = nz.unit[live].reshape(-1, 25).astype(np.float64)
    want = _gram(u) / len(u)  # the one layer's rows in one product
    np.testing.assert_array_equal(one.build()["m"].layer_moments, want[None])
    with pytest.raises(KernelAtlasError, match="normalize\\(kernels\\) of the same kernels"):
        a.add("m", codes, k, normalized=nz[:10])


def test_phase_surrogates_keep_the_amplitude_spectrum_exactly(lite0) -> None:
    k = lite0[0][:500].astype(np.float64)
    k = k[np.abs(k).reshape(len(k), -1).max(1) > 0]  # drop the dead (all-zero) kernels
    rng = np.random.default_rng(0)
    s = phase_randomize(k, rng)
    amp = np.abs(np.fft.fft2(k))
    np.testing.assert_allclose(np.abs(np.fft.fft2(s)), amp, rtol=0, atol=1e-12 * amp.max())
    assert np.isrealobj(s) and not np.allclose(s, k)
    # the phases are not kept: surrogate and kernel barely correlate
    corr = np.einsum("nij,nij->n", s, k) / np.sqrt((s**2).sum((1, 2)) * (k**2).sum((1, 2)))
    assert abs(corr.mean()) < 0.1
    # even sizes (Nyquist bins are their own conjugates) stay real and exact too
    e = np.random.default_rng(1).standard_normal((50, 4, 6))
    se = phase_randomize(e, rng)
    np.testing.assert_allclose(np.abs(np.fft.fft2(se)), np.abs(np.fft.fft2(e)), atol=1e-12)
    # through the registry: one reference kernel, every float32 surrogate has its spectrum
    one = NullReference(5, 5, count=1, sample=lite0[0][:1])
    d = draw_surrogates("phase", one, 200, seed=0).astype(np.float64)
    ref_amp = np.abs(np.fft.fft2(lite0[0][:1].astype(np.float64)))
    np.testing.assert_allclose(np.abs(np.fft.fft2(d)), np.broadcast_to(ref_amp, d.shape),
                               atol=1e-6 * ref_amp.max())  # fmt: skip


def test_phase_amplitudes_of_the_drawn_kernels_are_those_of_the_whole_sample(lite0) -> None:
    """Only the drawn kernels are transformed (each distinct one once): bit for bit the
    amplitudes of the whole sample at those rows, so the surrogates are the same."""
    sample = lite0[0][:3000]
    ref = NullReference(5, 5, count=len(sample), sample=sample)
    whole = np.abs(np.fft.fft2(sample.astype(np.float64)))
    idx = np.random.default_rng(2).integers(len(sample), size=5000)  # repeats, out of order
    np.testing.assert_array_equal(ref.amplitude(idx), whole[idx])
    np.testing.assert_array_equal(ref.amplitude(idx[:1]), whole[idx[:1]])


def test_smooth_field_has_the_documented_correlation() -> None:
    assert SMOOTH_FILTER.sum() == pytest.approx(1.0)
    x = smooth_field(60_000, 7, 7, np.random.default_rng(0))
    var = x.var(0)
    assert np.allclose(var, 0.2, atol=0.01)  # stationary: 5 taps of 1/5, no border effects
    c = x[:, 3, 3]
    for (di, dj), rho in {(0, 1): 0.4, (1, 0): 0.4, (1, 1): 0.4, (0, 2): 0.2, (1, 2): 0.0}.items():
        r = np.corrcoef(c, x[:, 3 + di, 3 + dj])[0, 1]
        assert r == pytest.approx(rho, abs=0.015), (di, dj)


@pytest.mark.parametrize("kind", NULL_KINDS)
def test_calibration_on_each_kind_meets_its_fpr_on_held_out(kind, refs) -> None:
    fpr, n = 0.05, 4000
    null = calibration_null(kind, refs, n, seed=0)
    atlas = Atlas(kernel_size=5, null_fpr=fpr).fit(null=null)
    held = heldout_surrogates(kind, refs, n, seed=0)
    pred = atlas.predict(held)
    live = pred["family"] != "degenerate"
    m = int(live.sum())
    rate = float(pred["classified"][live].mean())
    # calibration and held-out draws each carry binomial noise: sd sqrt(2 p (1-p) / m)
    sd = np.sqrt(2 * fpr * (1 - fpr) / min(m, len(null)))
    assert atlas.null_rate_ <= fpr
    assert abs(rate - fpr) < 3.5 * sd, (kind, rate, m)


def test_measure_baselines_counts_and_pools(refs) -> None:
    two = dict(refs) | {"other": NullReference(5, 5, count=refs["lite0"].count // 3,
                                               moment=np.eye(25) / 25)}  # fmt: skip
    atlas = Atlas(kernel_size=5, n_null=2000).fit()
    rows, pooled = measure_baselines(
        atlas.predict,
        two,
        ["gaussian", "covariance", "init"],
        2000,
        seed=1,
        calibrated="covariance",
    )
    again, _ = measure_baselines(
        atlas.predict,
        two,
        ["gaussian", "covariance", "init"],
        2000,
        seed=1,
        calibrated="covariance",
    )
    pd.testing.assert_frame_equal(rows, again)
    assert set(zip(rows["model"], rows["kind"])) == {
        ("lite0", "gaussian"), ("other", "gaussian"), ("lite0", "covariance"),
        ("other", "covariance"), ("lite0", "init"),
    }  # fmt: skip
    g = rows[rows["kind"] == "gaussian"]
    assert g["classified"].nunique() == 1  # one draw per size serves every model
    fam = rows[[c for c in rows if c.startswith("n_")]].sum(axis=1)
    assert (fam == rows["classified"]).all()
    # A model's surrogates do not depend on which other models are analysed.
    alone, _ = measure_baselines(
        atlas.predict, {"lite0": refs["lite0"]}, ["covariance"], 2000, seed=1
    )
    pair = rows[(rows["kind"] == "covariance") & (rows["model"] == "lite0")]
    assert alone["classified"].item() == pair["classified"].item()
    # The pooled held-out mixture: 3/4 of the draws from lite0, 1/4 from the white "other".
    cov = rows[rows["kind"] == "covariance"].set_index("model")["classified"] / 2000
    assert pooled["surrogates"] == 2000
    expected = 0.75 * cov["lite0"] + 0.25 * cov["other"]
    assert pooled["classified"] / 2000 == pytest.approx(expected, abs=0.04)


def test_missing_reference_is_a_one_line_error() -> None:
    ref = {"m": NullReference(5, 5)}
    with pytest.raises(KernelAtlasError, match="no 5x5 kernels to build the init null from"):
        calibration_null("init", ref, 100)
    with pytest.raises(KernelAtlasError, match="no 5x5 kernels to build the covariance null"):
        calibration_null("covariance", ref, 100)
    assert calibration_null("smooth", ref, 100).shape == (100, 5, 5)


def test_intervals_match_newcombe_1998() -> None:
    lo, hi = wilson_interval([81, 15, 0], [263, 148, 20])
    np.testing.assert_allclose(lo, [0.2553, 0.0624, 0.0], atol=1e-4)
    np.testing.assert_allclose(hi, [0.3662, 0.1605, 0.1611], atol=1e-4)
    d, lo, hi = difference_interval([56, 9], [70, 10], [48, 3], [80, 10])
    np.testing.assert_allclose(d, [0.2, 0.6])
    np.testing.assert_allclose(lo, [0.0524, 0.1705], atol=1e-4)
    np.testing.assert_allclose(hi, [0.3339, 0.8090], atol=1e-4)
    assert np.isnan(wilson_interval(0, 0)[0])


def test_baseline_block_excess_and_strongest() -> None:
    rows = pd.DataFrame(
        [
            {"kind": "gaussian", "surrogates": 1000, "classified": 10, "n_center": 4,
             "n_first_derivative": 3, "n_second_derivative": 3},
            {"kind": "covariance", "surrogates": 1000, "classified": 600, "n_center": 400,
             "n_first_derivative": 150, "n_second_derivative": 50},
        ]
    )  # fmt: skip
    fam = {"center": 500, "first_derivative": 250, "second_derivative": 50}
    b = baseline_block(800, 1000, fam, rows)
    assert b["strongest_baseline"] == "covariance"
    assert b["excess"]["excess"] == pytest.approx(0.2)
    lo, hi = b["excess"]["interval"]
    assert lo < 0.2 < hi and hi - lo < 0.1
    fe = b["excess"]["family_excess"]
    assert sum(v["excess"] for v in fe.values()) == pytest.approx(b["excess"]["excess"])
    assert fe["second_derivative"]["excess"] == pytest.approx(0.0)
    assert b["baselines"]["gaussian"]["excess"] == pytest.approx(0.79)
    lo, hi = b["coverage_interval"]
    assert lo < 0.8 < hi


def test_config_names_its_baselines_and_refuses_unknown_kinds() -> None:
    from kernelatlas.pipeline import AnalysisConfig

    assert AnalysisConfig().baseline_kinds() == DEFAULT_BASELINES
    cfg = AnalysisConfig(null="covariance_layer", baselines=("gaussian",), init_baseline=False)
    assert cfg.baseline_kinds() == ("gaussian", "covariance_layer")  # the calibrating null too
    assert "init" not in AnalysisConfig(init_baseline=False).baseline_kinds()
    for bad in (AnalysisConfig(null="nope"), AnalysisConfig(baselines=("gaussian", "nope"))):
        with pytest.raises(KernelAtlasError, match="nope"):
            bad.validate()


def test_gaussian_null_keeps_the_thresholds_of_0_1_0() -> None:
    from kernelatlas.null import gaussian_null

    ref = {"m": NullReference(5, 5)}
    cal = calibration_null("gaussian", ref, 2000, seed=4)
    np.testing.assert_array_equal(cal, gaussian_null(2000, 5, 5, seed=4))
    np.testing.assert_array_equal(heldout_surrogates("gaussian", ref, 50, seed=4),
                                  gaussian_null(50, 5, 5, seed=4 + 7919))  # fmt: skip
    a = Atlas(kernel_size=5, n_null=2000, seed=4).fit()
    assert Atlas(kernel_size=5, seed=4).fit(null=cal).thresholds_ == a.thresholds_


def test_the_baselines_name_surrogates_as_predict_does(lite0) -> None:
    """The analysis names its baseline surrogates with Atlas.scores (not predict's other
    columns): the same family (unclassified, degenerate) and decision for every kernel."""
    from kernelatlas.pipeline import _names

    atlas = Atlas(kernel_size=5, n_null=2000).fit()
    k = np.concatenate([lite0[0][:1500], np.zeros((5, 5, 5), np.float32)])
    want = atlas.predict(k)[["family", "classified"]]
    got = _names(atlas)(k)
    assert got["family"].tolist() == want["family"].tolist()
    assert got["classified"].tolist() == want["classified"].tolist()
    assert {"unclassified", "degenerate"} <= set(got["family"]) and got["classified"].any()
