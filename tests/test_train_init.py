"""init_depthwise_: every scheme gives the intended atlas families at the default norms."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from kernelatlas.atlas import Atlas
from kernelatlas.atlas import functional as F
from kernelatlas.errors import KernelAtlasError
from kernelatlas.train import DoGConfig, depthwise_convs, init_depthwise_
from kernelatlas.train.init import covariance_kernels, master_key_kernels
from kernelatlas.train.models import build_model


@pytest.fixture(scope="module")
def atlas7():
    return Atlas(kernel_size=7, n_null=4000).fit()


@pytest.fixture(scope="module")
def atlas3():
    return Atlas(kernel_size=3, n_null=4000).fit()


def _dw_net(c: int = 16, k: int = 7) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(
            1, c, 3, padding=1
        ),  # a grayscale stem: groups == in_channels == 1, not depthwise
        nn.Conv2d(c, c, k, padding=k // 2, groups=c),
        nn.Conv2d(c, 2 * c, k, padding=k // 2, groups=c),  # channel multiplier 2
        nn.Conv2d(2 * c, 2 * c, 1, groups=2 * c),  # 1x1 depthwise: no spatial pattern, skipped
    )


def _kernels(model: nn.Module) -> list[np.ndarray]:
    return [
        c.weight.detach().numpy().reshape(c.weight.shape[0], *c.weight.shape[2:])
        for _, c in depthwise_convs(model)
    ]


def test_finder_keeps_spatial_depthwise_only():
    names = [n for n, _ in depthwise_convs(_dw_net())]
    assert names == ["1", "2"]


@pytest.mark.parametrize("k", [7, 3])
def test_dog_gives_center_and_first_derivative_alternating(k, atlas7, atlas3):
    atlas = atlas7 if k == 7 else atlas3
    net = init_depthwise_(_dw_net(16, k), "dog", seed=0)
    for kern in _kernels(net):
        df = atlas.predict(kern)
        assert df["classified"].all()
        assert (df["family"] == "center").sum() == len(kern) // 2
        assert (df["family"] == "first_derivative").sum() == len(kern) // 2
        pol = df.loc[df["family"] == "center", "polarity"].to_numpy()
        assert sorted(pol.tolist()) == [-1] * (len(pol) // 2) + [1] * (len(pol) // 2)
        assert np.all(pol[1:] != pol[:-1])  # on/off alternating


def test_dog_config_sets_the_mix(atlas7):
    net = init_depthwise_(
        _dw_net(16, 7), "dog", seed=1, config=DoGConfig(center_fraction=0.75, on_fraction=1.0)
    )
    df = atlas7.predict(_kernels(net)[0])
    assert df["classified"].all()
    assert (df["family"] == "center").sum() == 12
    assert (df.loc[df["family"] == "center", "polarity"] == 1).all()
    with pytest.raises(KernelAtlasError, match="on_fraction"):
        init_depthwise_(_dw_net(), "dog", config=DoGConfig(on_fraction=1.5))


def test_master_key_7x7_are_the_published_filters():
    mk = F.master_key_filters()
    bank = master_key_kernels(16, 7, 7, rng=np.random.default_rng(0))
    unit = mk / np.linalg.norm(mk.reshape(8, -1), axis=1)[:, None, None]
    # every kernel is one of the eight filters, each used exactly twice
    match = np.einsum("nij,mij->nm", bank, unit)
    assert np.allclose(match.max(1), 1.0, atol=1e-5)
    assert np.bincount(match.argmax(1), minlength=8).tolist() == [2] * 8
    # Lindeberg's model: filters 1-6 first derivatives, 7-8 centre (Gaussian-like, on-centre);
    # the scale-space families name them so (with the shift family too, 1 and 4 are shifts)
    scale_space = ("center", "first_derivative", "second_derivative")
    df = Atlas(kernel_size=7, n_null=4000, families=scale_space).fit().predict(bank)
    fams = df.groupby(match.argmax(1))["family"].first().tolist()
    assert fams == ["first_derivative"] * 6 + ["center"] * 2


@pytest.mark.parametrize("k", [3, 5, 9])
def test_master_key_resampled_sizes(k):
    bank = master_key_kernels(8, k, k, rng=np.random.default_rng(0))
    assert bank.shape == (8, k, k)
    assert np.allclose(np.linalg.norm(bank.reshape(8, -1), axis=1), 1.0, atol=1e-5)
    assert len(np.unique(bank.round(5), axis=0)) == 8


def test_atlas_scheme_follows_reference_frame(atlas7):
    ref = pd.DataFrame(
        {
            "family": ["first_derivative"] * 30 + ["center"] * 10 + ["unclassified"] * 60,
            "orientation": [90.0] * 30 + [np.nan] * 70,
            "polarity": [1] * 30 + [-1] * 10 + [0] * 60,
            "scale": [1.0] * 40 + [np.nan] * 60,
            "classified": [True] * 40 + [False] * 60,
        }
    )
    net = init_depthwise_(_dw_net(64, 7), "atlas", seed=0, reference=ref)
    df = atlas7.predict(_kernels(net)[0])
    assert df["classified"].all()
    share = (df["family"] == "first_derivative").mean()
    assert 0.55 < share < 0.95  # 3:1 among classified references, 64 draws
    first = df[df["family"] == "first_derivative"]
    assert np.allclose(first["orientation"], 90.0, atol=3.0)
    assert (df.loc[df["family"] == "center", "polarity"] == -1).all()


def test_atlas_scheme_from_kernel_array(atlas3):
    rng = np.random.default_rng(0)
    ref = F.second_derivative_pattern(3, 3, 0.7, rng.uniform(0, 180, 50), polarity=1)
    net = init_depthwise_(_dw_net(16, 3), "atlas", seed=0, reference=ref)
    df = atlas3.predict(_kernels(net)[0])
    assert (df["family"] == "second_derivative").mean() >= 0.9


def test_covariance_reproduces_reference_covariance():
    rng = np.random.default_rng(0)
    theta = rng.uniform(0, 360, 2000)
    ref = F.first_derivative_pattern(7, 7, 1.0, theta) + 0.05 * rng.standard_normal((2000, 7, 7))
    draws = covariance_kernels(4000, 7, 7, rng=rng, reference=ref)
    ref_u = ref.reshape(2000, -1) / np.linalg.norm(ref.reshape(2000, -1), axis=1, keepdims=True)
    c_ref, c_new = np.cov(ref_u, rowvar=False), np.cov(draws.reshape(4000, -1), rowvar=False)
    corr = np.corrcoef(c_ref.ravel(), c_new.ravel())[0, 1]
    assert corr > 0.95
    # and iid noise as a reference gives an unstructured covariance (the test can fail)
    noise_draws = covariance_kernels(
        4000, 7, 7, rng=rng, reference=rng.standard_normal((2000, 7, 7))
    )
    c_noise = np.cov(noise_draws.reshape(4000, -1), rowvar=False)
    assert np.corrcoef(c_ref.ravel(), c_noise.ravel())[0, 1] < 0.5


def test_covariance_reference_lookup_and_errors():
    net = _dw_net(8, 7)
    ref = np.random.default_rng(0).standard_normal((100, 7, 7))
    init_depthwise_(net, "covariance", seed=0, reference={7: ref})
    with pytest.raises(KernelAtlasError, match="5x5 but layer"):
        init_depthwise_(net, "covariance", seed=0, reference=ref[:, :5, :5])
    with pytest.raises(KernelAtlasError, match="needs reference"):
        init_depthwise_(net, "covariance", seed=0)
    with pytest.raises(KernelAtlasError, match="needs reference"):
        init_depthwise_(net, "atlas", seed=0)
    with pytest.raises(KernelAtlasError, match="unknown scheme"):
        init_depthwise_(net, "kaiming", seed=0)
    with pytest.raises(KernelAtlasError, match="no depthwise"):
        init_depthwise_(nn.Sequential(nn.Conv2d(3, 8, 3)), "dog")


SCHEME_ARGS = {
    "dog": {},
    "master_key": {},
    "atlas": {
        "reference": pd.DataFrame(
            {"family": ["center", "first_derivative", "second_derivative"], "classified": True}
        )
    },
    "covariance": {"reference": None},  # filled per kernel size below
}


@pytest.mark.parametrize("arch", ["convnext", "mobilenetv2"])
@pytest.mark.parametrize("scheme", list(SCHEME_ARGS))
def test_norms_match_default_init_and_rest_untouched(arch, scheme):
    fresh = build_model(
        arch, 10, image_size=28 if arch == "mobilenetv2" else 64, width=0.25, depth=0.34, seed=3
    )
    model = build_model(
        arch, 10, image_size=28 if arch == "mobilenetv2" else 64, width=0.25, depth=0.34, seed=3
    )
    kwargs = dict(SCHEME_ARGS[scheme])
    if scheme == "covariance":
        k = 7 if arch == "convnext" else 3
        kwargs["reference"] = np.random.default_rng(0).standard_normal((200, k, k))
    init_depthwise_(model, scheme, seed=0, **kwargs)
    dw = {n for n, _ in depthwise_convs(model)}
    before, after = fresh.state_dict(), model.state_dict()
    changed = 0
    for name, w0 in before.items():
        w1 = after[name]
        if name.removesuffix(".weight") in dw:
            n0 = w0.reshape(len(w0), -1).norm(dim=1)
            n1 = w1.reshape(len(w1), -1).norm(dim=1)
            assert torch.allclose(n0, n1, rtol=1e-5), name
            changed += int(not torch.equal(w0, w1))
        else:
            assert torch.equal(w0, w1), name
    assert changed == len(dw)


def test_seeded_and_deterministic():
    a = init_depthwise_(_dw_net(), "dog", seed=5)
    b = init_depthwise_(_dw_net(), "dog", seed=5)
    c = init_depthwise_(_dw_net(), "dog", seed=6)
    assert all(np.array_equal(x, y) for x, y in zip(_kernels(a), _kernels(b), strict=True))
    assert not np.array_equal(_kernels(a)[0], _kernels(c)[0])
    torch.manual_seed(1)
    d = init_depthwise_(_dw_net(), "master_key")
    torch.manual_seed(1)
    e = init_depthwise_(_dw_net(), "master_key")
    assert np.array_equal(_kernels(d)[1], _kernels(e)[1])


def test_frozen_kernels_stay_bit_identical_while_shifts_learn():
    model = build_model("convnext", 10, image_size=64, width=0.25, depth=0.34, seed=0)
    init_depthwise_(model, "master_key", freeze=True, seed=0)
    convs = depthwise_convs(model)
    frozen = [c.parametrizations.weight.original.detach().clone() for _, c in convs]
    effective = [c.weight.detach().clone() for _, c in convs]
    opt = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1
    )
    x, y = torch.randn(8, 1, 64, 64), torch.arange(8)
    for _ in range(3):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    for (_, c), f0, e0 in zip(convs, frozen, effective, strict=True):
        orig = c.parametrizations.weight.original
        assert not orig.requires_grad
        assert torch.equal(orig, f0)  # bit-identical
        shift = c.parametrizations.weight[0].shift
        assert shift.requires_grad and shift.abs().max() > 0  # the scalars moved
        assert torch.allclose(c.weight - orig, shift.expand_as(orig))  # one scalar per channel
        assert not torch.equal(c.weight.detach(), e0)
    # re-initialising without freeze makes the kernels trainable again
    init_depthwise_(model, "dog", seed=0)
    assert all(c.weight.requires_grad and not hasattr(c, "parametrizations") for _, c in convs)
