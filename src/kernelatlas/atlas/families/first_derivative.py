"""``first_derivative``: two opposite lobes (edge detectors), centred or half a pixel off.

Atlas: per (sigma, offset) group an orthonormal basis of span{Gx, Gy}. Every direction in
that plane is a first derivative at some orientation (steerability), so the best cosine
over all orientations is the norm of the projection, and the orientation follows in closed
form from the two coefficients. On ``1 x k`` / ``k x 1`` kernels: explicit 1-D profiles
(the sign of the cosine turns the orientation by 180 degrees).

Fit: the receptive-field model of scale-space theory, an anisotropic (affine) Gaussian
derivative ``-d/du G(x - x0; Sigma)``, ``Sigma = R(t) diag(sigma_u^2, sigma_v^2) R(t)^T``:
scale ``sigma_u`` along the derivative direction ``u`` and ``sigma_v`` across it, both
within the atlas's sigma grid, the centre within one pixel of the kernel centre (a
half-pixel difference sits at 0.5 px), pixel-integrated exactly
(:func:`~kernelatlas.atlas.functional.affine_gaussian_basis`). Then the two scale-space
difference models are compared: the centred first difference (centre held on the kernel
centre along ``u``) and the half-pixel-offset one (held half a pixel off, the master-key
filters 1-4); ``kind`` names the better (``r2_centred``, ``r2_half_pixel``).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ...taxonomy import FIRST_DERIVATIVE
from .. import functional as F
from ..family import (
    Basis,
    DenseBasis,
    FamilyScore,
    FitModel,
    Param,
    PatternFamily,
    row_argmax,
    take_rows,
    wrap_angle,
)
from ..registry import register_family
from ..templates import flat_centred, gaussian_groups
from ._common import axis_of_1d, clip_start, draw, random_scale, scale_param

__all__ = ["FirstDerivative", "PlaneBasis", "AffineFirstModel", "VARIANT_STEPS"]

VARIANT_STEPS = 4  # refinement steps of the centred / half-pixel variants


CENTRE_REACH = 1.0  # fitted centre: at most this far from the kernel centre, px


class PlaneBasis(Basis):
    """Steerable first-derivative planes span{Gx, Gy}, one per (sigma, offset) group."""

    def __init__(self, kh: int, kw: int, eps: float = 1e-6) -> None:
        g_sigma, g_off, b = gaussian_groups(kh, kw, order=1)
        raw = torch.stack([flat_centred(b["Gx"]), flat_centred(b["Gy"])], dim=2)  # [G, k, 2]
        q, r = torch.linalg.qr(raw)
        d = torch.diagonal(r, dim1=1, dim2=2).abs()
        ok = (d.min(dim=1).values > eps * d.max()).numpy()
        q, r = q[ok], r[ok]
        sgn = torch.sign(torch.diagonal(r, dim1=1, dim2=2))  # QR is unique up to signs
        q, r = q * sgn[:, None, :], r * sgn[:, :, None]
        # columns: every group's first component, then every group's second one (two
        # contiguous halves of the block: the plane norms are one add of the halves)
        self.columns = q.permute(1, 2, 0).reshape(kh * kw, -1)
        self.sigma, self.offset = g_sigma[ok], g_off[ok]
        self.rinv = torch.linalg.inv(r)  # raw (Gx, Gy) coefficients = rinv @ q

    def score(self, y: torch.Tensor) -> FamilyScore:
        n = len(self.sigma)
        yv = y.detach().cpu().numpy()
        sq = np.square(yv)
        s = np.add(sq[:, :n], sq[:, n:], out=sq[:, :n])  # squared plane norms [B, n]
        g = row_argmax(s)  # numpy's argmax: several times faster than torch's
        q1 = torch.from_numpy(np.stack([take_rows(yv, g), take_rows(yv, n + g)], axis=1))
        coef = (self.rinv[torch.from_numpy(g)] @ q1.to(torch.float64)[:, :, None]).squeeze(-1)
        theta = wrap_angle(torch.rad2deg(torch.atan2(-coef[:, 1], -coef[:, 0])), 360.0)
        return FamilyScore(
            score=torch.sqrt(torch.from_numpy(take_rows(s, g))).numpy(),  # torch's sqrt, as before
            orientation=theta.numpy(),
            polarity=np.ones(len(g), np.int8),
            scale=np.take(self.sigma, g),
            offset=np.take(self.offset, g, axis=0),
            shape=np.zeros(len(g), np.int16),
        )


class AffineFirstModel(FitModel):
    """``a * -d/du G(Sigma)``: x0, y0, sigma_u, sigma_v, orientation; one amplitude."""

    n_amplitudes = 1
    columns = ("r2", "sigma", "sigma_u", "sigma_v", "orientation", "offset_u", "kind",
               "r2_centred", "r2_half_pixel", "polarity", "x0", "y0", "amplitude")  # fmt: skip
    str_columns = frozenset({"kind"})

    def __init__(self, kh: int, kw: int) -> None:
        super().__init__(kh, kw)
        axis = axis_of_1d(kh, kw)
        su = scale_param("sigma_u", kh, kw)
        sv = scale_param("sigma_v", kh, kw)
        if axis is None:
            t = Param("orientation", 0.0, 2 * math.pi, "angle")
        else:  # a 1-D profile: along the kernel; its width across the kernel is irrelevant
            t = Param("orientation", math.radians(axis), math.radians(axis), "angle")
            sv = Param("sigma_v", sv.lo, sv.lo, "log")
        self.params = (*self.centre_params(reach=CENTRE_REACH), su, sv, t)

    def start(self, score: FamilyScore) -> np.ndarray:
        cols = [score.offset[:, 0], score.offset[:, 1], score.scale, score.scale,
                np.deg2rad(score.orientation)]  # fmt: skip
        return np.stack([clip_start(c, p) for c, p in zip(cols, self.params, strict=True)], 1)

    def images(self, theta: torch.Tensor) -> torch.Tensor:
        x0, y0, su, sv, t = theta
        e = F.affine_gaussian_edges(self.kh, self.kw, su, sv, t, x0, y0, order=1)
        return F.edges_to_pixels(-(torch.cos(t) * e["hx"] + torch.sin(t) * e["hy"]))[None]

    def report(self, theta: torch.Tensor, coef: torch.Tensor) -> dict[str, object]:
        x0, y0, su, sv, t = theta
        a = coef[0]
        t = torch.where(a >= 0, t, t + math.pi)
        return {
            "sigma": torch.sqrt(su * sv),
            "sigma_u": su,
            "sigma_v": sv,
            "orientation": wrap_angle(torch.rad2deg(t), 360.0),
            "offset_u": x0 * torch.cos(t) + y0 * torch.sin(t),
            "polarity": torch.ones_like(a),
            "x0": x0,
            "y0": y0,
            "amplitude": a.abs(),
        }

    def post_fit(self, theta: torch.Tensor, coef: torch.Tensor, u: torch.Tensor, refine):
        """Centred or half-pixel-offset difference: the better of the two constrained
        models (the centre along ``u`` held at 0, or at 1/2 px towards the nearer side, at
        the free fit's orientation), their scales refined from the free fit for
        :data:`VARIANT_STEPS` steps."""
        x0, y0, su, sv, t = theta
        c, s = torch.cos(t), torch.sin(t)
        off_u, off_v = x0 * c + y0 * s, -x0 * s + y0 * c
        half = torch.where(off_u >= 0, 0.5, -0.5).to(theta.dtype)
        r2 = []
        for ou in (torch.zeros_like(off_u), half):
            variant = _OffsetVariant(self)
            theta0 = torch.stack([ou, off_v, su, sv, t])
            r2.append(refine(variant, theta0, u, VARIANT_STEPS)[2])
        kind = np.where((r2[1] > r2[0]).cpu().numpy(), "half_pixel", "centred")
        return {"r2_centred": r2[0], "r2_half_pixel": r2[1], "kind": kind.astype(object)}


class _OffsetVariant(FitModel):
    """The affine first derivative with its centre held at ``offset_u`` along ``u`` and
    ``offset_v`` across it, and its orientation (all per kernel, fixed); free: the scales."""

    n_amplitudes = 1

    def __init__(self, free: AffineFirstModel) -> None:
        super().__init__(free.kh, free.kw)
        _, _, su, sv, _ = free.params
        fixed = (Param(n, 0.0, 0.0) for n in ("offset_u", "offset_v", "orientation"))
        ou, ov, t = fixed
        self.params = (ou, ov, su, sv, t)
        self._free = free

    def images(self, theta: torch.Tensor) -> torch.Tensor:
        ou, ov, su, sv, t = theta
        c, s = torch.cos(t), torch.sin(t)
        return self._free.images(torch.stack([ou * c - ov * s, ou * s + ov * c, su, sv, t]))


@register_family
class FirstDerivative(PatternFamily):
    name = FIRST_DERIVATIVE
    description = (
        "Two opposite lobes (edge detector), any orientation, centred or half a pixel off "
        "centre (the master-key filters 1-4)."
    )
    formula = (
        "-d/du G(x - x0, y - y0; s), u = (cos t, sin t), integrated over each pixel "
        "(positive lobe towards t; tiny s and |x0| = 1/2: a forward difference); "
        "fitted with separate scales s_u along u and s_v across it"
    )
    orientation_period = 360.0
    has_polarity = False
    color = "#d95f02"
    model = AffineFirstModel
    order = 20
    shapes = ("first",)
    reference = "Koenderink & van Doorn (1987); Lindeberg (2021, 2026) affine Gaussian derivatives"

    def basis(self, kh: int, kw: int) -> Basis:
        axis = axis_of_1d(kh, kw)
        if axis is None:
            return PlaneBasis(kh, kw)
        g_sigma, g_off, b = gaussian_groups(kh, kw, order=1)
        pats = -(b["Gx"] if axis == 0.0 else b["Gy"])
        return DenseBasis(pats, orientation=np.full(len(g_sigma), axis), scale=g_sigma,
                          offset=g_off, sign="orientation")  # fmt: skip

    def generate(self, kh, kw, n, *, rng, scale=None, orientation=None, polarity=None,
                 offset=(0.0, 0.0)) -> np.ndarray:  # fmt: skip
        s = draw(scale, n, lambda m: random_scale(kh, kw, m, rng))
        t = draw(orientation, n, lambda m: rng.uniform(0.0, 360.0, m))
        axis = axis_of_1d(kh, kw)
        if axis is not None:  # a 1-D kernel holds a derivative along its axis, either sign
            flip = np.cos(np.deg2rad(t - axis)) < 0
            t = np.where(flip, axis + 180.0, axis)
        return F.first_derivative_pattern(kh, kw, s, t, offset=offset)

    def diagram(self, size: int) -> list[tuple[str, np.ndarray]]:
        t = np.array([0.0, 45.0, 90.0, 135.0])
        return [("first derivative", F.first_derivative_pattern(size, size, size / 7.5, t))]
