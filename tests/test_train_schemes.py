"""Every registered scheme: the parametrised model trains (the one loop, real Fashion-MNIST),
bakes back to a plain model with the same outputs, and the atlas names its step-0 kernels as
intended. Plus the registry's rules and each lever's own mechanics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from kernelatlas.atlas import functional as F
from kernelatlas.errors import KernelAtlasError
from kernelatlas.train import (
    LoopConfig,
    bake_,
    depthwise_convs,
    get_scheme,
    init_depthwise_,
    is_plain,
    list_schemes,
    param_groups,
    register_scheme,
    train_model,
)
from kernelatlas.train import schemes as registry
from kernelatlas.train.coverage import shared_atlas
from kernelatlas.train.data import FASHION_MNIST_DIR, load_dataset
from kernelatlas.train.frozen import layer_scales
from kernelatlas.train.models import build_model
from kernelatlas.train.prior import AtlasPrior, add_atlas_prior_, atlas_residual, priors
from kernelatlas.train.structured import atlas_basis, basis_sigmas, orthonormal_basis

needs_fashion = pytest.mark.skipif(
    not FASHION_MNIST_DIR.is_dir(),
    reason="Debian package dataset-fashion-mnist not installed (make system installs it)",
)


def _net(seed: int = 0, arch: str = "convnext") -> nn.Module:
    if arch == "convnext":  # dims 8-16-32-64, depths 1-1-2-1, 7x7, layer scale 1e-6
        return build_model("convnext", 10, image_size=64, width=0.2, depth=0.25, seed=seed)
    return build_model(
        "mobilenetv2", 10, image_size=28, width=0.25, depth=0.34, seed=seed, stem_stride=2
    )


def _kernels(model: nn.Module) -> np.ndarray:
    return np.concatenate(
        [
            c.weight.detach().numpy().reshape(c.weight.shape[0], *c.weight.shape[2:])
            for _, c in depthwise_convs(model)
        ]
    )


def _reference(k: int) -> np.ndarray:
    """A 'trained' reference bank: noisy oriented edges and DoGs (for atlas/covariance)."""
    rng = np.random.default_rng(0)
    edges = F.first_derivative_pattern(k, k, 1.0, rng.uniform(0, 360, 150))
    dogs = F.center_pattern(k, k, 0.8, surround_ratio=2.0, polarity=1)
    bank = np.concatenate([edges, np.repeat(dogs, 50, 0)])
    return bank + 0.02 * rng.standard_normal(bank.shape)


# ---------------------------------------------------------------------- intended step-0 kernels


def _is_default(df, kernels, fresh) -> None:
    assert np.array_equal(kernels, fresh)  # untouched
    assert df["classified"].mean() < 0.1  # the atlas sees noise


def _is_dog(df, kernels, fresh) -> None:
    assert df["classified"].all()
    shares = df["family"].value_counts(normalize=True)
    assert shares["center"] == pytest.approx(0.5, abs=0.02)
    assert shares["first_derivative"] == pytest.approx(0.5, abs=0.02)


def _is_master_key(df, kernels, fresh) -> None:
    mk = F.master_key_filters()
    unit = kernels.reshape(len(kernels), -1)
    unit = unit / np.linalg.norm(unit, axis=1, keepdims=True)
    ref = mk.reshape(8, -1) / np.linalg.norm(mk.reshape(8, -1), axis=1, keepdims=True)
    cos = unit @ ref.T
    assert np.allclose(cos.max(1), 1.0, atol=1e-5)  # every kernel is one of the eight
    expected = shared_atlas(7, 7).predict(mk)["family"].to_numpy()[cos.argmax(1)]
    assert np.array_equal(df["family"].to_numpy(), expected)  # named as its filter is


def _is_atlas(df, kernels, fresh) -> None:
    assert df["classified"].mean() > 0.9
    assert set(df.loc[df["classified"], "family"]) <= {"center", "first_derivative"}


def _is_covariance(df, kernels, fresh) -> None:
    assert not np.array_equal(kernels, fresh)
    norms0 = np.linalg.norm(fresh.reshape(len(fresh), -1), axis=1)
    assert np.allclose(np.linalg.norm(kernels.reshape(len(kernels), -1), axis=1), norms0, rtol=1e-5)


INTENDED = {
    "default": _is_default,
    "dog": _is_dog,
    "atlas": _is_atlas,
    "master_key": _is_master_key,
    "covariance": _is_covariance,
    "master_key_frozen": _is_master_key,
    "default_frozen": _is_default,
    "default_ls": _is_default,
    "dog_ls": _is_dog,
    "master_key_ls": _is_master_key,
    "master_key_frozen_ls": _is_master_key,
    "structured": _is_dog,  # the DoG start, projected on the atlas basis (>99% of its energy)
    "structured_njet": _is_dog,
    "atlas_prior": _is_default,  # the prior changes nothing before the first step
}


def test_every_registered_scheme_declares_its_step0_intention():
    assert set(list_schemes()) == set(INTENDED)


@pytest.fixture(scope="module")
def fashion():
    if not FASHION_MNIST_DIR.is_dir():
        pytest.skip("Debian package dataset-fashion-mnist not installed")
    return load_dataset("fashion_mnist", n_train=256, n_test=64)


@needs_fashion
@pytest.mark.parametrize("scheme", sorted(INTENDED))
def test_scheme_names_trains_and_bakes(scheme, fashion, one_torch_thread):
    info = get_scheme(scheme)
    fresh_model = _net(0)
    fresh = _kernels(fresh_model)
    model = _net(0)
    ref = _reference(7) if info.needs_reference else None
    init_depthwise_(model, scheme, seed=0, reference=ref, total_steps=4)
    k0 = _kernels(model)
    INTENDED[scheme](shared_atlas(7, 7).predict(k0), k0, fresh)
    if info.lever in ("structure", "frozen"):
        assert not is_plain(model)
    if info.needs_layer_scale:
        assert all(float(p.detach().min()) == 1.0 for _, p in layer_scales(model))

    frozen = {
        n: c.parametrizations.weight.original.detach().clone()
        for n, c in depthwise_convs(model)
        if info.lever == "frozen"
    }
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    res = train_model(
        model, fashion, LoopConfig(steps=4, batch_size=32, eval_every=2, image_size=64), seed=0
    )
    assert res.curve[-1]["loss"] < math.log(10)  # it learns (chance is ln 10)
    moved = [
        n for n, p in model.named_parameters() if n in before and not torch.equal(p, before[n])
    ]
    assert len(moved) == len(before)  # every trainable parameter took steps
    for n, c in depthwise_convs(model):
        if n in frozen:  # the frozen filters stay bit-identical
            assert torch.equal(c.parametrizations.weight.original, frozen[n])

    model.eval()
    x = fashion.x_test[:8]
    x = torch.nn.functional.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False)
    with torch.no_grad():
        y0 = model(x)
    bake_(model)
    assert is_plain(model)
    plain = _net(1)  # a freshly built plain model takes the baked weights as they are
    plain.load_state_dict(model.state_dict())
    plain.eval()
    with torch.no_grad():
        assert torch.allclose(model(x), y0, atol=1e-5)
        assert torch.allclose(plain(x), y0, atol=1e-5)
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("scheme", ["structured", "master_key_frozen", "atlas_prior"])
def test_3x3_mobilenetv2_levers(scheme):
    model = _net(0, "mobilenetv2")
    fresh = _kernels(_net(0, "mobilenetv2"))
    init_depthwise_(model, scheme, seed=0, total_steps=10)
    df = shared_atlas(3, 3).predict(_kernels(model))
    if scheme == "structured":
        assert df["classified"].mean() > 0.95
    elif scheme == "master_key_frozen":  # the central 3x3 of the eight filters
        mk3 = F.master_key_filters()[:, 2:5, 2:5]
        want = shared_atlas(3, 3).predict(mk3)["classified"].mean()
        assert df["classified"].mean() == pytest.approx(want, abs=0.1)
    else:
        assert np.array_equal(_kernels(model), fresh)
    with pytest.raises(KernelAtlasError, match="has none"):
        init_depthwise_(_net(0, "mobilenetv2"), "master_key_frozen_ls", seed=0)


# ---------------------------------------------------------------------- the registry


@pytest.fixture
def scratch_scheme():
    yield "test_scratch"
    registry._REGISTRY.pop("test_scratch", None)


def test_registry_plugins_and_errors(scratch_scheme):
    calls = []

    @register_scheme(scratch_scheme, lever="init", summary="a test scheme")
    def _scratch(model, *, seed, reference, total_steps, strength: float = 1.0):
        calls.append((seed, total_steps, strength))

    assert scratch_scheme in list_schemes("test_*")
    assert get_scheme(scratch_scheme).options == ("strength",)
    init_depthwise_(_net(), scratch_scheme, seed=3, total_steps=7, strength=2.0)
    assert calls == [(3, 7, 2.0)]
    with pytest.raises(KernelAtlasError, match="already registered"):
        register_scheme(scratch_scheme, lever="init", summary="again")(_scratch)
    with pytest.raises(KernelAtlasError, match="must accept"):
        register_scheme("test_bad_sig", lever="init", summary="x")(lambda model: None)
    with pytest.raises(KernelAtlasError, match="lower-case"):
        register_scheme("Bad-Name", lever="init", summary="x")
    with pytest.raises(KernelAtlasError, match="unknown scheme 'he'"):
        init_depthwise_(_net(), "he")
    with pytest.raises(KernelAtlasError, match="has no option 'strenght'"):
        init_depthwise_(_net(), scratch_scheme, strenght=1.0)
    with pytest.raises(KernelAtlasError, match="needs reference"):
        init_depthwise_(_net(), "covariance")
    with pytest.raises(KernelAtlasError, match="freeze=True applies to initialisers"):
        init_depthwise_(_net(), "structured", freeze=True)
    with pytest.raises(KernelAtlasError, match="no depthwise"):
        init_depthwise_(nn.Sequential(nn.Conv2d(3, 8, 3)), "dog")
    assert list_schemes(lever="prior") == ["atlas_prior"]


def test_schemes_do_not_stack_and_foreign_parametrisations_are_refused():
    model = _net()
    init_depthwise_(model, "structured", seed=0)
    init_depthwise_(model, "atlas_prior", seed=0, total_steps=10)  # bakes the structure first
    assert is_plain(model) is False and len(priors(model)) == len(depthwise_convs(model))
    init_depthwise_(model, "dog", seed=0)
    assert is_plain(model)
    conv = depthwise_convs(model)[0][1]
    torch.nn.utils.parametrize.register_parametrization(conv, "weight", nn.Identity())
    with pytest.raises(KernelAtlasError, match="did not register"):
        bake_(model)


# ---------------------------------------------------------------------- lever mechanics


def test_atlas_basis_spans_the_families():
    q = orthonormal_basis(atlas_basis(7, 7))
    assert q.shape == (49, 18) and basis_sigmas(3, 3) == (0.6,) and len(basis_sigmas(5, 5)) == 2
    assert torch.allclose(q.T @ q, torch.eye(18, dtype=q.dtype), atol=1e-10)
    pats = np.concatenate(
        [
            F.first_derivative_pattern(7, 7, 1.0, [0.0, 33.0, 120.0]),
            F.second_derivative_pattern(7, 7, 1.2, [10.0, 80.0]),
            F.center_pattern(7, 7, 0.8, surround_ratio=2.0, polarity=-1),
        ]
    ).reshape(-1, 49)
    p = torch.from_numpy(pats).double()
    kept = ((p @ q) ** 2).sum(1) / (p**2).sum(1)
    assert kept.min() > 0.98
    noise = torch.from_numpy(np.random.default_rng(0).standard_normal((2000, 49)))
    assert ((noise @ q) ** 2).sum(1).mean() / (noise**2).sum(1).mean() == pytest.approx(
        18 / 49, abs=0.02
    )
    with pytest.raises(KernelAtlasError, match="too small"):
        atlas_basis(2, 2)


def test_njet_learns_its_scales():
    model = _net()
    init_depthwise_(model, "structured_njet", seed=0)
    p = depthwise_convs(model)[0][1].parametrizations.weight[0]
    out = model(torch.randn(2, 1, 64, 64)).sum()
    out.backward()
    assert p.log_sigma.grad is not None and bool(torch.isfinite(p.log_sigma.grad).all())
    groups = sorted(g["lr_scale"] for g in param_groups(model, 1e-3, 0.05))
    assert groups == pytest.approx([1.0, 1.0, math.sqrt(49 / 18), 5.0])


def test_frozen_terms_learn_at_tap_matched_rates():
    model = _net()
    init_depthwise_(model, "master_key_frozen", seed=0)
    name, conv = depthwise_convs(model)[0]
    affine = conv.parametrizations.weight[0]
    norm = float(conv.parametrizations.weight.original.reshape(8, -1).norm(dim=1).mean())
    assert affine.lr_scales["scale"] == pytest.approx(7.0 / norm)
    assert affine.lr_scales["shift"] == 1.0
    groups = param_groups(model, 1e-3, 0.05)
    g = next(g for g in groups if any(p is affine.scale for p in g["params"]))
    assert g["lr"] == pytest.approx(1e-3 * 7.0 / norm) and g["weight_decay"] == 0.0
    assert all(p is not conv.parametrizations.weight.original for g in groups for p in g["params"])
    init_depthwise_(model, "master_key_frozen", seed=0, scale_lr=2.0, shift_lr=0.5)
    assert depthwise_convs(model)[0][1].parametrizations.weight[0].lr_scales == {
        "scale": 2.0,
        "shift": 0.5,
    }


def test_prior_gradient_is_the_penalty_gradient_and_is_released():
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 6, 7, padding=3, groups=6)
    net = nn.Sequential(conv)
    add_atlas_prior_(net, weight=0.3, warmup_steps=2, release_steps=2)
    prior = priors(net)[0][1]
    assert [prior.strength(t) for t in range(5)] == pytest.approx([0.3, 0.3, 0.2, 0.1, 0.0])
    # the hook adds exactly d/dw [0.3 * sum_k r(w_k)] (the loss itself contributes zero)
    w = conv.weight.detach().clone().requires_grad_(True)
    q = prior.q64.to(w.dtype)
    flat = w.reshape(6, -1)
    r = ((flat - flat @ q @ q.T) ** 2).sum(1) / (flat**2).sum(1)
    (want,) = torch.autograd.grad(0.3 * r.sum(), w)
    (conv(torch.randn(1, 6, 9, 9)) * 0).sum().backward()
    assert torch.allclose(conv.weight.grad, want, atol=1e-6)
    for _ in range(4):  # steps 1..4: 0.3, 0.2, 0.1, then released
        conv.weight.grad = None
        (conv(torch.randn(1, 6, 9, 9)) * 0).sum().backward()
    assert float(conv.weight.grad.abs().max()) == 0.0
    # an optimiser on the penalty alone pulls the kernels into the atlas span
    net2 = nn.Sequential(nn.Conv2d(6, 6, 7, padding=3, groups=6))
    add_atlas_prior_(net2, weight=1.0, warmup_steps=50)
    r0 = atlas_residual(net2)
    opt = torch.optim.Adam(net2.parameters(), lr=1e-2)
    for _ in range(50):
        opt.zero_grad()
        (net2(torch.randn(1, 6, 9, 9)) * 0).sum().backward()
        opt.step()
    assert r0 > 0.5 and atlas_residual(net2) < 0.1 * r0
    assert isinstance(prior, AtlasPrior)
