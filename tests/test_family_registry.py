"""The family registry drives every stage: a toy family registered here shows up in the
taxonomy, the atlas and its calibration, the fits, the initialisers, the report and the
summary schema -- without any other file knowing about it."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pandas as pd
import pytest
import torch

from kernelatlas.atlas import Atlas
from kernelatlas.atlas.family import DenseBasis, FamilyScore, FitModel, PatternFamily
from kernelatlas.atlas.registry import (
    families,
    get_family,
    list_families,
    register_family,
    unregister_family,
)
from kernelatlas.errors import KernelAtlasError
from kernelatlas.fit import fit_columns, fit_kernels
from kernelatlas.report import summary_schema, validate_summary
from kernelatlas.report.diagram import diagram_columns, diagram_patterns
from kernelatlas.report.html import render_page
from kernelatlas.report.sections import ReportContext, sections
from kernelatlas.report.summary import build_summary, merge_counts, partial_counts
from kernelatlas.taxonomy import FAMILIES, FAMILY_COLORS, FAMILY_INFO, PATTERN_FAMILIES
from kernelatlas.train.init import atlas_kernels


def _checker(kh: int, kw: int) -> np.ndarray:
    return np.fromfunction(lambda i, j: (-1.0) ** (i + j), (kh, kw))


class CheckerModel(FitModel):
    """No nonlinear parameter: the amplitude of the checkerboard."""

    columns = ("r2", "polarity", "amplitude")

    def __init__(self, kh: int, kw: int) -> None:
        super().__init__(kh, kw)
        self.params = ()

    def start(self, score: FamilyScore) -> np.ndarray:
        return np.zeros((len(score), 0))

    def images(self, theta: torch.Tensor) -> torch.Tensor:
        img = torch.from_numpy(_checker(self.kh, self.kw)).to(theta.dtype)
        return img[None, :, :, None].expand(1, self.kh, self.kw, theta.shape[1])

    def report(self, theta: torch.Tensor, coef: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"polarity": torch.where(coef[0] >= 0, 1.0, -1.0), "amplitude": coef[0].abs()}


class Checker(PatternFamily):
    name = "checker"
    description = "Toy family: the checkerboard (highest spatial frequency)."
    formula = "p * (-1)^(i + j)"
    has_polarity = True
    color = "#123456"
    order = 100
    shapes: ClassVar[tuple[str, ...]] = ("checker",)
    model = CheckerModel

    def basis(self, kh: int, kw: int) -> DenseBasis | None:
        if min(kh, kw) < 3:
            return None
        return DenseBasis(
            _checker(kh, kw)[None],
            orientation=np.full(1, np.nan),
            scale=np.full(1, np.nan),
            offset=np.zeros((1, 2)),
        )

    def generate(self, kh, kw, n, *, rng, scale=None, orientation=None, polarity=None, **kw_):
        pol = np.ones(n) if polarity is None else np.where(np.asarray(polarity) < 0, -1.0, 1.0)
        p = pol[:, None, None] * _checker(kh, kw)[None]
        p = p - p.mean(axis=(1, 2), keepdims=True)
        return (p / np.linalg.norm(p.reshape(n, -1), axis=1)[:, None, None]).astype(np.float32)


@pytest.fixture
def checker():
    register_family(Checker)
    yield get_family("checker")
    unregister_family("checker")


def test_registry_lists_and_refuses():
    assert list_families() == ["center", "first_derivative", "second_derivative", "shift"]
    assert list_families("*derivative") == ["first_derivative", "second_derivative"]
    with pytest.raises(KernelAtlasError, match="already registered"):
        register_family(type(get_family("center")))
    bad = type("Bad", (Checker,), {"name": "unclassified"})
    with pytest.raises(KernelAtlasError, match="reserved"):
        register_family(bad)
    half = type("Half", (PatternFamily,), {"name": "half", "description": "d", "formula": "f",
                                           "color": "#000000"})  # fmt: skip
    with pytest.raises(KernelAtlasError, match="must implement basis"):
        register_family(half)
    with pytest.raises(KernelAtlasError, match="unknown pattern family 'nope'"):
        get_family("nope")


def test_every_family_has_what_each_stage_needs():
    # a test over every registered entry (as timm's tests run over every model)
    rng = np.random.default_rng(0)
    for fam in families():
        info = FAMILY_INFO[fam.name]
        assert info.color.startswith("#") and info.formula and info.description
        for kh, kw in ((3, 3), (5, 5), (4, 6), (1, 7), (7, 1)):
            basis = fam.basis(kh, kw)
            assert basis is not None and basis.columns.shape[0] == kh * kw
            pats = fam.generate(kh, kw, 3, rng=rng)
            assert pats.shape == (3, kh, kw) and np.allclose(pats.sum((1, 2)), 0, atol=1e-5)
            model = fam.fit_model(kh, kw)
            assert model.columns[0] == "r2"
        assert fam.diagram(9)


def test_a_registered_family_reaches_every_stage(checker, tmp_path):
    # taxonomy: live views follow the registry
    assert "checker" in PATTERN_FAMILIES and FAMILIES[-3:] == (
        "checker",
        "unclassified",
        "degenerate",
    )
    assert FAMILY_INFO["checker"].formula == "p * (-1)^(i + j)"
    assert FAMILY_COLORS["checker"] == "#123456"

    # atlas: its own calibrated threshold, and its patterns are named after it
    atlas = Atlas(kernel_size=5, n_null=3000).fit()
    assert "checker" in atlas.thresholds_ and atlas.null_rate_ <= 0.01
    pats = checker.generate(5, 5, 2, rng=np.random.default_rng(0), polarity=np.array([1, -1]))
    noisy = pats + 0.05 * np.random.default_rng(1).standard_normal(pats.shape).astype(np.float32)
    df = atlas.predict(noisy, details=True)
    assert list(df["family"]) == ["checker", "checker"] and list(df["polarity"]) == [1, -1]
    assert list(df["shape"]) == ["checker", "checker"] and "score_checker" in df

    # fits: its model's columns, and the fit agrees with the atlas
    assert "fit_amplitude_checker" in fit_columns()
    fits = fit_kernels(noisy, atlas=atlas, device="cpu")
    assert list(fits["fit_family"]) == ["checker", "checker"]
    assert (fits["fit_r2_checker"] > 0.95).all() and list(fits["fit_polarity"]) == [1, -1]

    # init: the atlas scheme renders reference rows of the family with its generator
    ref = pd.DataFrame({"family": ["checker"] * 4, "classified": True, "polarity": [1, -1, 1, -1]})
    bank = atlas_kernels(6, 5, 5, rng=np.random.default_rng(0), reference=ref)
    assert np.allclose(np.abs(np.einsum("nij,ij->n", bank, pats[0])), 1.0, atol=1e-5)

    # report: counts, shares, schema, HTML and the atlas figure
    rows = atlas.predict(noisy).assign(source="toy", model="toy", kh=5, kw=5, layer="dw",
                                       layer_index=0, depth=0.0)  # fmt: skip
    counts = merge_counts([partial_counts(rows)])
    doc = build_summary(counts, config={"method": "atlas", "fold_bn": False, "null": "gaussian",
                                        "null_fpr": 0.01, "seed": 0, "sources": ["toy"]},
                        thresholds=[])  # fmt: skip
    assert doc["models"][0]["family_shares"]["checker"] == 1.0
    validate_summary(doc)
    schema = summary_schema()
    assert "checker" in schema["$defs"]["pattern_family"]["enum"]
    assert "checker" in schema["$defs"]["row"]["properties"]["family_shares"]["required"]
    del doc["models"][0]["family_shares"]["checker"]
    with pytest.raises(KernelAtlasError, match="checker"):
        validate_summary(doc)
    ctx = ReportContext(tmp_path, build_summary(counts, config=doc["config"], thresholds=[]))
    page = render_page(ctx, [s for s in sections() if s.name == "atlas"])
    assert "#123456" in page and "p * (-1)^(i + j)" in page

    # the atlas diagram: a column drawn from the family's own generator
    cols = [c for c in diagram_columns() if c[0] is not None and c[0].family == "checker"]
    assert cols
    (pattern, _), *_ = diagram_patterns(cols, size=9)
    c = _checker(9, 9) - _checker(9, 9).mean()
    assert abs(float((pattern * c).sum() / np.linalg.norm(c))) > 0.999  # the checkerboard, unit


def test_unregistered_family_is_gone_everywhere(checker):
    unregister_family("checker")
    try:
        assert "checker" not in PATTERN_FAMILIES and "checker" not in FAMILY_COLORS
        assert "fit_r2_checker" not in fit_columns()
        assert "checker" not in Atlas(kernel_size=3, n_null=500).fit().thresholds_
    finally:
        register_family(Checker)  # the fixture unregisters it again


def test_orientations_stay_in_their_period() -> None:
    """A forward difference's orientation is 0, never 359.99999999999994 or 360.0 (``%`` on
    atan2's -1e-14 degrees), and no angle is -0.0."""
    import torch

    from kernelatlas.atlas import Atlas
    from kernelatlas.atlas.family import wrap_angle

    k = np.zeros((2, 3, 3), np.float32)
    k[0, 1] = [-1, 1, 0]  # forward differences along +x: orientation 0
    k[1, 1] = [0, -1, 1]
    df = Atlas(kernel_size=3, n_null=2000).fit().predict(k)
    assert list(df["family"]) == ["first_derivative"] * 2
    assert df["orientation"].tolist() == [0.0, 0.0]
    got = wrap_angle(np.array([-1e-14, -0.0, 359.5, 720.25, 360.0]), 360.0)
    assert got.tolist() == [0.0, 0.0, 359.5, 0.25, 0.0] and not np.signbit(got).any()
    t = wrap_angle(torch.tensor([-1e-14, -0.0, 90.0], dtype=torch.float64), 180.0)
    assert t.tolist() == [0.0, 0.0, 90.0] and not torch.signbit(t).any()
