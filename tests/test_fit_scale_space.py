"""Fits inside their models and consistent with the atlas: the master-key filters against
the published scale-space model (Lindeberg, Babaiee & Kiasari, JMIV 2026), parameter bounds,
and fit/atlas agreement on real kernels."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kernelatlas.atlas import Atlas
from kernelatlas.atlas import functional as F
from kernelatlas.atlas.evaluation import SCALE_SPACE_FAMILIES, _by_size, synthetic_kernels
from kernelatlas.atlas.families.center import CenterModel
from kernelatlas.atlas.family import Param
from kernelatlas.atlas.registry import get_family
from kernelatlas.fit import FIT_MARGIN, KernelFitter, _levenberg_marquardt
from kernelatlas.normalize import normalize
from kernelatlas.null import gaussian_null

# The published model's scales (discrete-Gaussian sigma, px), the authors' default
# "method B" (tonylindeberg/masterfiltmodel, model-fitting/filteranal.py and
# experiments/modify_models): filter -> (kind, sigma_x, sigma_y).
PUBLISHED_B = {5: ("dx", 1.107, 0.945), 6: ("dy", 0.900, 0.889), 8: ("gauss", 0.609, 0.601)}
SCALE_TOLERANCE = 0.10  # relative, docs/atlas.md "The master-key filters"


def _central(f: np.ndarray) -> np.ndarray:
    p = np.pad(f, 1)
    return (p[2:] - p[:-2]) / 2  # Lindeberg's delta = [-1/2, 0, 1/2]


def _published_filter(kind: str, sx: float, sy: float) -> np.ndarray:
    """The idealised filter of the published model: differences of discrete Gaussians."""
    tx, ty = F.discrete_gaussian(sx, 3), F.discrete_gaussian(sy, 3)
    if kind == "dx":
        return np.outer(ty, _central(tx))
    if kind == "dy":
        return np.outer(_central(ty)[::-1], tx)
    return np.outer(ty, tx)


class _PureGaussian(CenterModel):
    """The centre model with no surround (a = 0): the published model of filter 8."""

    def __init__(self, kh: int, kw: int) -> None:
        super().__init__(kh, kw)
        self.params = (*self.params[:3], Param("ratio", 2.0, 2.0, "log"))

    def amplitudes(self, gram: torch.Tensor, proj: torch.Tensor) -> torch.Tensor:
        return torch.stack([proj[0] / gram[0, 0], torch.zeros_like(proj[0])])


def _gaussian_sigma(k: np.ndarray) -> float:
    u = torch.from_numpy(normalize(k[None]).unit.reshape(1, -1).T.copy())
    theta0 = torch.tensor([[0.0], [0.0], [0.5], [2.0]])
    theta, _, _ = _levenberg_marquardt(_PureGaussian(7, 7), theta0, u, 30)
    return float(theta[2, 0])


@pytest.fixture(scope="module")
def scale_space() -> KernelFitter:
    return KernelFitter(kernel_size=7, families=SCALE_SPACE_FAMILIES).fit()


@pytest.fixture(scope="module")
def keys(scale_space):
    return scale_space.predict(F.master_key_filters())


def test_master_keys_as_scale_space_models(keys):
    assert list(keys["fit_family"]) == ["first_derivative"] * 6 + ["center"] * 2
    assert list(keys["fit_polarity"][6:]) == [1, 1]  # 7 and 8 on-centre
    assert keys["fit_r2"].mean() >= 0.92
    # 2-4 are half-pixel-offset differences, 5-6 centred derivatives (1 is mostly a shift,
    # between the two: see the shift test below)
    kinds = list(keys["fit_kind_first_derivative"][1:6])
    assert kinds == ["half_pixel"] * 3 + ["centred"] * 2
    assert (keys["fit_surround_weight_center"][6:].between(0, 1)).all()


def test_master_key_scales_match_the_published_model(scale_space, keys):
    # the same fit applied to the published idealised filters: the scales agree within the
    # stated tolerance (the conversion between the two Gaussians is the fit itself)
    ideal = np.stack([_published_filter(*PUBLISHED_B[i]) for i in (5, 6)]).astype(np.float32)
    ref = scale_space.predict(ideal)
    assert list(ref["fit_family"]) == ["first_derivative"] * 2
    for row, key in ((0, 4), (1, 5)):
        for col in ("fit_sigma_u_first_derivative", "fit_sigma_v_first_derivative"):
            assert keys[col][key] == pytest.approx(ref[col][row], rel=SCALE_TOLERANCE), col
    learned8 = _gaussian_sigma(F.master_key_filters()[7])
    ideal8 = _gaussian_sigma(_published_filter(*PUBLISHED_B[8]).astype(np.float32))
    assert learned8 == pytest.approx(ideal8, rel=SCALE_TOLERANCE)
    # and the discrete Gaussian's L2-closest pixel-integrated Gaussian is narrower than the
    # variance rule sigma_c^2 = sigma_d^2 - 1/12 says (its tails are heavier)
    assert ideal8 < math.sqrt(0.605**2 - 1 / 12)


def test_with_every_family_master_key_1_is_a_shift():
    df = KernelFitter(kernel_size=7, steps=30).fit().predict(F.master_key_filters())
    assert df["fit_family"][0] == "shift" and df["fit_r2"].mean() >= 0.92
    assert list(df["fit_family"][1:6]) == ["first_derivative"] * 5
    # the atlas names 4 a shift too, but its half-pixel difference fits better by > margin
    assert df["fit_r2_first_derivative"][3] > df["fit_r2_shift"][3] + FIT_MARGIN


def _check_bounds(df, kh: int, kw: int) -> None:
    for fam in ("center", "first_derivative", "second_derivative", "shift"):
        model = get_family(fam).fit_model(kh, kw)
        col = {c: df[f"fit_{c}_{fam}"].to_numpy(np.float64) for c in model.columns if c != "kind"}
        col["orientation"] = col.get("orientation", np.zeros(len(df)))
        ok = np.isfinite(col["r2"])
        assert (col["r2"][ok] <= 1 + 1e-5).all()
        derived = {
            "ratio": col.get("sigma2", np.nan) / col["sigma"],
            "aspect": col.get("sigma_v", np.nan) / col.get("sigma_u", np.nan),
        }
        for p in model.params:
            if p.kind == "angle":  # reported in degrees within one period (along the axis in 1-D)
                v = col["orientation"][ok]
                period = 180.0 if fam == "second_derivative" else 360.0
                assert ((v >= 0) & (v < period + 1e-6)).all(), (fam, v.min(), v.max())
                if p.fixed:
                    assert np.allclose(np.mod(v - math.degrees(p.lo) + 1, 180.0), 1.0), fam
                continue
            v = col.get(p.name, derived.get(p.name))[ok]
            tol = 1e-4 * max(1.0, abs(p.hi))
            assert ((v >= p.lo - tol) & (v <= p.hi + tol)).all(), (fam, p.name, v.min(), v.max())
        if fam == "center":
            assert ((col["surround_weight"][ok] >= 0) & (col["surround_weight"][ok] <= 1)).all()
        if fam == "second_derivative":
            assert ((col["cross_share"][ok] >= 0) & (col["cross_share"][ok] <= 1 + 1e-6)).all()


@pytest.mark.parametrize("size", [(3, 3), (5, 5), (1, 7)])
def test_no_fitted_parameter_outside_its_declared_range(size):
    kh, kw = size
    synth = synthetic_kernels(kh, kw, 40, noise=0.3, seed=2)[0] if kh > 1 else np.zeros((0, kh, kw))
    x = np.concatenate([gaussian_null(200, kh, kw, seed=3), synth]).astype(np.float32)
    _check_bounds(KernelFitter(kernel_size=size, n_null=2000, steps=8).fit().predict(x), kh, kw)


@pytest.mark.parametrize(
    "source,size", [("efficientnet_lite0", (5, 5)), ("ppocrv6_det_small", (7, 7))]
)
def test_fits_agree_with_the_atlas_on_real_kernels(source, size):
    kernels = _by_size(source)[size]
    atlas = Atlas(kernel_size=size).fit()
    pred = atlas.predict(kernels)
    fits = KernelFitter(kernel_size=size).fit(atlas).predict(kernels)
    cls = pred["classified"].to_numpy()
    agree = float((fits["fit_family"][cls] == pred["family"][cls]).mean())
    assert agree >= 0.95, agree  # measured 0.991 (5x5) and 0.994 (7x7), docs/atlas.md
    _check_bounds(fits, *size)
    # where they differ, another family's fit explains more than FIT_MARGIN more energy
    diff = cls & (fits["fit_family"] != pred["family"]).to_numpy()
    own = np.array(
        [fits[f"fit_r2_{f}"][i] for i, f in zip(np.flatnonzero(diff), pred["family"][diff])]
    )
    assert (fits["fit_r2"][diff].to_numpy() > own + FIT_MARGIN).all()
