"""The 1-D atlas (1 x k and k x 1 kernels), the shift family, and analyses that meet sizes
the atlas cannot name (counted and listed, never an abort)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from kernelatlas.atlas import Atlas
from kernelatlas.atlas import functional as F
from kernelatlas.fit import KernelFitter
from kernelatlas.null import gaussian_null


@pytest.fixture(scope="module")
def atlas_1x7() -> Atlas:
    return Atlas(kernel_size=(1, 7), n_null=5000).fit()


def _profiles(kh: int, kw: int) -> tuple[np.ndarray, list[str], list[float], list[int]]:
    along = 0.0 if kh == 1 else 90.0
    k = np.concatenate(
        [
            F.center_pattern(kh, kw, 0.9, polarity=-1),
            F.first_derivative_pattern(kh, kw, 0.8, along),
            F.first_derivative_pattern(kh, kw, 0.8, along + 180.0),
            F.second_derivative_pattern(kh, kw, 0.9, along, polarity=-1),
            F.center_pattern(
                kh, kw, 0.25, surround_weight=0.0, offset=(2.0, 0.0) if kh == 1 else (0.0, -2.0)
            ),
        ]
    )
    fams = ["center", "first_derivative", "first_derivative", "second_derivative", "shift"]
    orient = [np.nan, along, along + 180.0, along, 0.0 if kh == 1 else 270.0]
    pols = [-1, 1, 1, -1, 1]
    return k, fams, orient, pols


@pytest.mark.parametrize("size", [(1, 7), (7, 1), (1, 3)])
def test_1d_profiles_are_named(size, atlas_1x7):
    atlas = atlas_1x7 if size == (1, 7) else Atlas(kernel_size=size, n_null=5000).fit()
    assert 0 < atlas.null_rate_ <= 0.01
    assert set(atlas.families_) == {"center", "first_derivative", "second_derivative", "shift"}
    k, fams, orient, pols = _profiles(*size)
    noisy = k + 0.02 * np.random.default_rng(0).standard_normal(k.shape).astype(np.float32)
    df = atlas.predict(noisy)
    if size == (1, 3):
        # two free taps: every family spans them all, so noise matches as well as any
        # pattern and the calibrated thresholds say so (the honest answer at 1x3)
        assert min(atlas.thresholds_.values()) > 0.999
        return
    assert list(df["family"]) == fams
    assert list(df["polarity"]) == pols
    got = df["orientation"].to_numpy()
    ok = np.isfinite(orient)
    assert F.angular_difference(got[ok], np.array(orient)[ok]).max() < 1.0
    # a fresh null draw is classified at about the calibrated rate
    assert atlas.predict(gaussian_null(5000, *size, seed=5))["classified"].mean() < 0.016


def test_1d_fits_stay_along_the_kernel(atlas_1x7):
    k, fams, orient, _ = _profiles(1, 7)
    df = KernelFitter(kernel_size=(1, 7), steps=20).fit(atlas_1x7).predict(k)
    assert list(df["fit_family"]) == fams
    assert (df["fit_r2"] > 0.99).all() and (df["fit_y0"].abs() < 1e-6).all()
    assert df["fit_orientation"][1] == pytest.approx(0.0, abs=1e-3)
    assert df["fit_orientation"][2] == pytest.approx(180.0, abs=1e-3)


@pytest.mark.parametrize("kh", [3, 5, 7])
def test_shift_kernels(kh):
    atlas = Atlas(kernel_size=kh, n_null=5000).fit()
    offsets = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0], [float(kh // 2), 0.0]])
    pol = np.array([1, -1, 1, -1])
    k = F.center_pattern(kh, kh, 0.25, surround_weight=0.0, polarity=pol, offset=offsets)
    df = atlas.predict(k, details=True)
    assert (df["family"] == "shift").all() and list(df["polarity"]) == list(pol)
    expect = np.rad2deg(np.arctan2(offsets[:, 1], offsets[:, 0])) % 360
    assert F.angular_difference(df["orientation"], expect).max() < 1e-6
    assert np.allclose(df[["offset_x", "offset_y"]].to_numpy(), offsets)
    fits = KernelFitter(kernel_size=kh, steps=20).fit(atlas).predict(k)
    assert (fits["fit_family"] == "shift").all() and (fits["fit_r2"] > 0.99).all()
    assert np.allclose(fits[["fit_x0", "fit_y0"]].to_numpy(), offsets, atol=0.05)
    # the centred near-delta stays a centre kernel
    assert (
        atlas.predict(F.center_pattern(kh, kh, 0.25, surround_weight=0.0))["family"][0] == "center"
    )


class _Mixed(nn.Module):
    """Depthwise layers of three sizes: 3x3, 1x7 (named by the 1-D atlas), 2x2 (not named)."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.a = nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False)
        self.b = nn.Conv2d(16, 16, (1, 7), padding=(0, 3), groups=16, bias=False)
        self.c = nn.Conv2d(16, 16, 2, groups=16, bias=False)
        with torch.no_grad():
            for conv in (self.a, self.b, self.c):
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=g))
            # a few clean profiles in the 1x7 layer, so something is classified
            self.b.weight[:4, 0] = torch.from_numpy(F.first_derivative_pattern(1, 7, 0.8, 0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(self.b(self.a(x)))


def test_analyze_names_1d_layers_and_lists_the_rest(tmp_path, capsys):
    from kernelatlas.cli.analyze_cmd import _coverage_table
    from kernelatlas.pipeline import analyze
    from kernelatlas.report import load_summary

    res = analyze([_Mixed()], tmp_path / "out", quiet=True, n_null=2000, figures=False,
                  init_baseline=False)  # fmt: skip
    doc = load_summary(res.out)
    sizes = {(m["kh"], m["kw"]): m for m in doc["models"]}
    assert set(sizes) == {(3, 3), (1, 7)}
    assert sizes[(1, 7)]["kernels"] == 16 and sizes[(1, 7)]["classified"] >= 4
    [skip] = doc["skipped"]
    assert (skip["kh"], skip["kw"], skip["layers"], skip["kernels"]) == (2, 2, 1, 16)
    assert "fewer than 3 taps" in skip["reason"]
    table = _coverage_table(doc)
    assert "1x7" in table and "not analysed" in table and "fewer than 3 taps" in table
    page = (res.out / "index.html").read_text()
    assert "Not analysed" in page and "2x2" in page
    assert json.loads((res.out / "summary.json").read_text())["skipped"] == doc["skipped"]


def test_analyze_a_real_ocr_model_with_a_1x7_layer(tmp_path):
    # PP-OCRv6's recogniser: one 1x7 depthwise layer among 3x3 ones (issue 11's abort)
    from kernelatlas.pipeline import analyze

    res = analyze(["ppocrv6_rec_small"], tmp_path / "ocr", quiet=True, figures=False,
                  init_baseline=False)  # fmt: skip
    sizes = {(m["kh"], m["kw"]): m for m in res.summary["models"]}
    assert set(sizes) == {(3, 3), (1, 7)} and sizes[(1, 7)]["kernels"] == 120
    assert sizes[(1, 7)]["classified"] > 0 and res.summary["skipped"] == []
