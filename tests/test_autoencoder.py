"""KernelAutoencoder: spectrum naming on known families, reproducibility, save/load, errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from kernelatlas.atlas import functional as F
from kernelatlas.autoencoder import (
    PREDICT_COLUMNS,
    SEGMENT_COLUMNS,
    SPECTRUM_COLUMNS,
    KernelAutoencoder,
    agreement,
    kmeans_unit_kernels,
)
from kernelatlas.errors import FormatError, KernelAtlasError
from kernelatlas.null import gaussian_null
from kernelatlas.taxonomy import DEGENERATE, PAPER_AE_THRESHOLDS

FAST = dict(hidden=128, epochs=100, batch_size=128, lr=1e-2, device="cpu")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def synthetic_bank(k: int = 7, n: int = 240, seed: int = 0, noise: float = 0.2):
    """A mixture of five known patterns (the atlas's generators, random scale) + noise.

    Centre on/off, first derivatives at 4 orientations, second-derivative bars (both
    polarities) at 2 orientations; noise of L2 norm ``noise`` relative to the unit pattern
    (0.2: SNR 5); any scale. Returns kernels and their true segment label.
    """
    rng = np.random.default_rng(seed)
    sig = lambda: rng.uniform(0.9, 1.4, n)  # noqa: E731
    bar = lambda p: F.second_derivative_pattern(  # noqa: E731
        k, k, sig(), rng.integers(0, 2, n) * 90.0, kind="bar", polarity=p
    )
    parts = {
        "center+": F.center_pattern(k, k, sig(), polarity=1),
        "center-": F.center_pattern(k, k, sig(), polarity=-1),
        "first_derivative": F.first_derivative_pattern(k, k, sig(), rng.integers(0, 4, n) * 90.0),
        "second_derivative+": bar(1),
        "second_derivative-": bar(-1),
    }
    labels = np.repeat(list(parts), n)
    x = np.concatenate(list(parts.values()))
    x = x + noise * rng.standard_normal(x.shape).astype(np.float32) / k
    scale = rng.uniform(0.01, 3.0, (x.shape[0], 1, 1)).astype(np.float32)  # any scale
    return (x * scale).astype(np.float32), labels


@pytest.fixture(scope="module")
def bank7():
    return synthetic_bank()


@pytest.fixture(scope="module")
def ae7(bank7):
    return KernelAutoencoder(7, seed=0, **FAST).fit(bank7[0])


def test_named_segments_recover_each_family_of_a_noisy_mixture(ae7, bank7):
    """The known answer: every family's kernels land in a segment named after it (>= 95%
    each; measured 100% at SNR 5, docs/autoencoder.md), and predict() names them so."""
    x, labels = bank7
    seg = ae7.segments_
    assert list(seg.columns) == list(SEGMENT_COLUMNS)
    assert np.isclose(seg["mass"].sum(), 1.0)
    # Segments that hold the kernels carry exactly the families' names.
    big = seg[seg["mass"] > 0.05]
    assert set(big["label"]) == set(np.unique(labels)), seg
    # Contiguous cover of [0, 1].
    assert seg["z_start"].iloc[0] == 0.0 and seg["z_end"].iloc[-1] == 1.0
    assert np.allclose(seg["z_start"].to_numpy()[1:], seg["z_end"].to_numpy()[:-1])
    lab = seg["label"].to_numpy()[ae7.segment_of(x)]
    fam = ae7.predict(x)["ae_family"].to_numpy()
    truth = np.array([s.rstrip("+-") for s in labels])
    for name in np.unique(labels):
        own = labels == name
        assert (lab[own] == name).mean() >= 0.95, (name, seg)
        assert (fam[own] == truth[own]).mean() >= 0.95, name


def test_rename_spectrum_and_saved_masses_match_the_fit(ae7, bank7, tmp_path):
    before = ae7.segments_.copy()
    assert ae7.latent_counts_.sum() == ae7.n_train_
    back = KernelAutoencoder.load(ae7.save(tmp_path / "ae"), device="cpu").rename_spectrum()
    pd.testing.assert_frame_equal(back.segments_, before)
    # Masses from the stored grid counts equal those from the latents themselves.
    from kernelatlas.autoencoder.spectrum import segment_spectrum

    direct = segment_spectrum(ae7.spectrum_, ae7.transform(bank7[0]), min_run=ae7.min_segment)
    assert np.allclose(direct["mass"], before["mass"])


def test_calibrate_at_another_null_rate():
    x, _ = synthetic_bank(k=3, n=60)
    ae = KernelAutoencoder(3, seed=0, **dict(FAST, epochs=5), null_size=4000).fit(x)
    t1 = ae.threshold_
    assert ae.calibrate(null_fpr=0.05).threshold_ > t1 and ae.null_fpr == 0.05
    assert ae.null_coverage_ == pytest.approx(0.05, abs=0.015)
    with pytest.raises(KernelAtlasError, match="null_fpr"):
        ae.calibrate(null_fpr=2.0)


def test_spectrum_columns_and_grid(ae7):
    sp = ae7.spectrum(n=64)
    assert list(sp.columns) == list(SPECTRUM_COLUMNS)
    assert len(sp) == 64 and sp["z"].iloc[0] == 0.0 and sp["z"].iloc[-1] == 1.0
    assert set(sp["family"]) <= {"center", "first_derivative", "second_derivative", "unclassified"}


def test_paper_threshold_coverage_and_null(ae7, bank7):
    assert ae7.threshold_rule_ == "paper" and ae7.threshold_ == PAPER_AE_THRESHOLDS[7]
    assert ae7.coverage(bank7[0]) > 0.95
    # iid Gaussian kernels are far from the learnt curve: (almost) none classified.
    assert ae7.null_coverage_ < 0.05
    assert ae7.null_coverage(gaussian_null(2000, 7, seed=5)) < 0.05
    d = ae7.reconstruction_distance(bank7[0])
    assert d.dtype == np.float32 and np.nanmax(d) <= 2.0 and np.nanmin(d) >= 0.0


def test_predict_columns_and_degenerate_rows(ae7, bank7):
    x = bank7[0][:10].copy()
    x[3] = 0.0
    x[4] = np.nan
    x[5] = 2.5  # constant
    df = ae7.predict(x)
    assert list(df.columns) == list(PREDICT_COLUMNS)
    assert df["ae_latent"].dtype == np.float32 and df["ae_classified"].dtype == bool
    assert list(df.loc[[3, 4, 5], "ae_family"]) == [DEGENERATE] * 3
    assert df.loc[[3, 4, 5], "ae_latent"].isna().all()
    assert not df.loc[[3, 4, 5], "ae_classified"].any()
    assert df.drop(index=[3, 4, 5])["ae_latent"].between(0, 1).all()


def test_inverse_transform_gives_unit_kernels(ae7):
    rec = ae7.inverse_transform(np.array([0.0, 0.25, 1.0]))
    assert rec.shape == (3, 7, 7) and rec.dtype == np.float32
    assert np.allclose(rec.sum((1, 2)), 0.0, atol=1e-5)
    assert np.allclose((rec**2).sum((1, 2)), 1.0, atol=1e-5)
    with pytest.raises(KernelAtlasError, match=r"\[0, 1\]"):
        ae7.inverse_transform([1.5])


def test_save_load_round_trip_is_bit_identical(ae7, bank7, tmp_path):
    ae7.save(tmp_path / "ae")
    back = KernelAutoencoder.load(tmp_path / "ae", device="cpu")
    x = bank7[0]
    assert np.array_equal(back.transform(x), ae7.transform(x))
    assert np.array_equal(back.reconstruction_distance(x), ae7.reconstruction_distance(x))
    pd.testing.assert_frame_equal(back.predict(x), ae7.predict(x))
    pd.testing.assert_frame_equal(back.segments_, ae7.segments_)
    z = np.linspace(0, 1, 33)
    assert np.array_equal(back.inverse_transform(z), ae7.inverse_transform(z))
    assert (back.threshold_, back.threshold_rule_) == (ae7.threshold_, ae7.threshold_rule_)
    assert not list((tmp_path / "ae").glob(".tmp-*"))


def test_same_seed_same_latent_other_seed_differs(bank7):
    x = bank7[0][::4]
    kw = dict(FAST, epochs=3, name_spectrum=False)
    a = KernelAutoencoder(7, seed=3, **kw).fit(x)
    b = KernelAutoencoder(7, seed=3, **kw).fit(x)
    c = KernelAutoencoder(7, seed=4, **kw).fit(x)
    assert np.array_equal(a.transform(x), b.transform(x))
    assert a.loss_history_ == b.loss_history_
    assert not np.array_equal(a.transform(x), c.transform(x))


def test_3x3_threshold_is_null_calibrated():
    x, _ = synthetic_bank(k=3, n=150)
    ae = KernelAutoencoder(3, seed=0, **dict(FAST, epochs=20), null_size=4000).fit(x)
    assert 3 not in PAPER_AE_THRESHOLDS
    assert ae.threshold_rule_ == "null"
    # Calibrated on one null draw at 1%: a fresh draw passes at about that rate.
    assert ae.null_coverage_ < 0.03
    assert 0.0 < ae.threshold_ < 1.0


def test_non_square_kernel_size():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 3, 5)).astype(np.float32)
    ae = KernelAutoencoder((3, 5), hidden=16, epochs=1, name_spectrum=False, null_size=500)
    ae.fit(x)
    assert ae.transform(x).shape == (64,) and ae.threshold_rule_ == "null"
    assert ae.inverse_transform([0.5]).shape == (1, 3, 5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(kernel_size=0), "kernel_size"),
        (dict(kernel_size="7"), "kernel_size"),
        (dict(epochs=0), "epochs"),
        (dict(lr=-1.0), "lr"),
        (dict(null_fpr=1.5), "null_fpr"),
    ],
)
def test_bad_parameters_are_refused_at_fit(kwargs, match):
    ae = KernelAutoencoder(**{"kernel_size": 7, **kwargs})  # __init__ only stores
    with pytest.raises(KernelAtlasError, match=match):
        ae.fit(np.zeros((4, 7, 7), np.float32))


def test_input_errors(ae7, tmp_path):
    with pytest.raises(KernelAtlasError, match="not fitted"):
        KernelAutoencoder(7).transform(np.zeros((2, 7, 7)))
    with pytest.raises(KernelAtlasError, match="5x5"):
        ae7.transform(np.zeros((2, 5, 5)))
    with pytest.raises(KernelAtlasError, match="squeeze"):
        ae7.transform(np.zeros((2, 1, 7, 7)))
    with pytest.raises(KernelAtlasError, match="at least 2 non-degenerate"):
        KernelAutoencoder(7, epochs=1).fit(np.zeros((5, 7, 7)))
    with pytest.raises(FormatError, match="not a saved autoencoder"):
        KernelAutoencoder.load(tmp_path)
    if not torch.cuda.is_available():
        with pytest.raises(KernelAtlasError, match="no CUDA"):
            KernelAutoencoder(7, device="cuda").fit(np.ones((4, 7, 7)))


def test_kmeans_baseline_recovers_clusters():
    x, labels = synthetic_bank(noise=0.05)  # 10 sub-clusters (orientations) of 5 labels
    res = kmeans_unit_kernels(x, k=16, seed=0, device="cpu")
    again = kmeans_unit_kernels(x, k=16, seed=0, device="cpu")
    assert np.array_equal(res.labels, again.labels)
    assert res.centers.shape == (16, 7, 7)
    # Every cluster is (nearly) pure in the true labels.
    ct = pd.crosstab(res.labels, labels)
    purity = ct.max(axis=1).sum() / ct.to_numpy().sum()
    assert purity > 0.95
    assert np.nanmedian(res.cosine_distance) < 0.1


def test_agreement_with_the_atlas(ae7, bank7):
    from kernelatlas.atlas import Atlas

    x = bank7[0].copy()
    x[0] = 0.0  # degenerate: left out
    pred = ae7.predict(x)
    at = Atlas(kernel_size=7).fit().predict(x)
    res = agreement(pred, at)
    assert res["n"] == len(x) - 1
    # On kernels drawn from the atlas's own families, the two namings agree.
    assert res["agreement"] > 0.9 and res["agreement_both_classified"] > 0.95
    flipped = pred.assign(ae_family=np.where(pred["ae_family"] == "center", "x", "center"))
    assert agreement(flipped, at)["agreement"] < 0.5
    with pytest.raises(KernelAtlasError, match="one row per kernel"):
        agreement(pred.iloc[:3], at)


def test_agreement_counts_only_kernels_one_method_classifies():
    fams = ["unclassified", "center", "center", "unclassified", "degenerate", "first_derivative"]
    ae = pd.DataFrame({"ae_family": fams[:5] + ["center"]})
    atlas = pd.DataFrame({"family": ["unclassified", "center", "unclassified", "center",
                                     "center", "first_derivative"]})  # fmt: skip
    res = agreement(ae, atlas)
    # Row 0 (both unclassified) and row 4 (degenerate) say nothing: left out.
    assert res["n"] == 5 and res["n_either_classified"] == 4
    assert res["agreement"] == pytest.approx(1 / 4)
    assert res["n_both_classified"] == 2 and res["agreement_both_classified"] == 0.5
    none = agreement(ae.iloc[[0]], atlas.iloc[[0]])
    assert none["n_either_classified"] == 0 and np.isnan(none["agreement"])
