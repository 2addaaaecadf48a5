"""``second_derivative``: bars/ridges (``-d2G/du2``) and crosses (``d2G/dudv``).

Atlas: per (sigma, offset) group an orthonormal basis of span{A, B, L} with
``A = Gxx - Gyy``, ``B = 2 Gxy``, ``L = Gxx + Gyy`` (orthonormalised in that order).
Crosses fill the (A, B) plane exactly (best cosine = in-plane norm, orientation in closed
form); bars ``-(L + cos 2t A + sin 2t B) / 2`` form a cone around the L axis, scored
exactly on a fine grid of ``2t`` (only for each kernel's best group) after a closed-form
cone approximation picks the group. On ``1 x k`` / ``k x 1`` kernels: explicit 1-D bar
profiles (no crosses).

Fit: ``a * bar(t) + c * cross(t)`` of an anisotropic (affine) Gaussian with ``sigma_u``
across the bar (within the atlas's sigma grid) and ``sigma_v = aspect * sigma_u`` along it,
``aspect`` in [1, 4] (a bar is elongated along itself; a "bar" wider than long is a blob),
the centre within one pixel of the kernel centre, pixel-integrated exactly.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ...taxonomy import SECOND_DERIVATIVE
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

__all__ = ["SecondDerivative", "ConeBasis", "AffineSecondModel", "N_BAR_ANGLES", "bar_directions"]

N_BAR_ANGLES = 72  # grid over 2t in [0, 360): 2.5 degrees in t, refined by a parabola


def bar_directions(r: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
    """Unit bar directions (polarity +1) in orthonormal coordinates.

    ``r`` [..., 3, 3] upper-triangular factors, ``phi`` [..., A] angles ``2t`` in radians;
    returns [..., 3, A].
    """
    c = -0.5 * torch.stack([torch.cos(phi), torch.sin(phi), torch.ones_like(phi)], dim=-2)
    u = r @ c
    return u / torch.linalg.vector_norm(u, dim=-2, keepdim=True)


CENTRE_REACH = 1.0  # fitted centre: at most this far from the kernel centre, px
ASPECT_MAX = 4.0  # a bar is at least as long (sigma_v) as it is wide (sigma_u), at most 4x


class ConeBasis(Basis):
    """Second-derivative groups span{A, B, L}: crosses in the (A, B) plane, bars on a cone."""

    def __init__(self, kh: int, kw: int, eps: float = 1e-6) -> None:
        g_sigma, g_off, b = gaussian_groups(kh, kw, order=2)
        gxx, gxy, gyy = (flat_centred(b[n]) for n in ("Gxx", "Gxy", "Gyy"))
        raw = torch.stack([gxx - gyy, 2 * gxy, gxx + gyy], dim=2)  # [G, k, 3]
        q, r = torch.linalg.qr(raw)
        d = torch.diagonal(r, dim1=1, dim2=2).abs()
        ok = (d.min(dim=1).values > eps * d.max()).numpy()
        q, r = q[ok], r[ok]
        sgn = torch.sign(torch.diagonal(r, dim1=1, dim2=2))  # positive diagonal of R
        q, r = q * sgn[:, None, :], r * sgn[:, :, None]
        phi = torch.arange(N_BAR_ANGLES, dtype=torch.float64) * (2 * math.pi / N_BAR_ANGLES)
        grid = bar_directions(r, phi.expand(r.shape[0], -1))  # [G, 3, A]
        cone = torch.stack(
            [grid[:, 2].abs().mean(1), torch.linalg.vector_norm(grid[:, :2], dim=1).mean(1)], 1
        )
        cone = cone / torch.linalg.vector_norm(cone, dim=1, keepdim=True)
        # columns: the A components of every group, then the B ones, then the L ones
        # (contiguous thirds of the block)
        self.columns = q.permute(1, 2, 0).reshape(kh * kw, -1)
        self.sigma, self.offset = g_sigma[ok], g_off[ok]
        self.r = r
        self.rinv2 = torch.linalg.inv(r[:, :2, :2])  # cross plane
        self.cone = cone.to(torch.float32)
        self._cone = self.cone.numpy().T.copy()  # [2, G]: the cone's L and plane weights
        # the bar grid per coordinate [3, G, A] (a kernel's group's rows taken contiguously)
        self._grid = grid.to(torch.float32).permute(1, 0, 2).numpy().copy()

    def _bar_exact(self, q: np.ndarray, group: np.ndarray) -> tuple[torch.Tensor, ...]:
        """Exact best bar cosine in each kernel's group: grid over 2t, parabola, re-evaluate.

        ``q`` [n, 3] float32 coordinates in the group ``group`` [n]."""
        a = N_BAR_ANGLES
        step = 2 * math.pi / a
        grid = self._grid
        f = q[:, 0, None] * np.take(grid[0], group, axis=0)
        f += q[:, 1, None] * np.take(grid[1], group, axis=0)
        f += q[:, 2, None] * np.take(grid[2], group, axis=0)
        fa = np.abs(f)
        i = fa.argmax(axis=1)
        best = torch.from_numpy(take_rows(fa, i))
        f0 = torch.from_numpy(take_rows(fa, (i - 1) % a))
        f2 = torch.from_numpy(take_rows(fa, (i + 1) % a))
        sign0 = torch.from_numpy(np.sign(take_rows(f, i)))
        den = f0 - 2 * best + f2
        delta = torch.where(den < -1e-12, 0.5 * (f0 - f2) / den.clamp(max=-1e-12), 0.0)
        grid_phi = torch.from_numpy(i).to(torch.float64) * step
        phi = grid_phi + delta.clamp(-0.5, 0.5).to(torch.float64) * step
        tq = torch.from_numpy(q)
        u = bar_directions(self.r[torch.from_numpy(group)], phi[:, None]).squeeze(-1)
        val = (tq.to(torch.float64) * u).sum(1).to(torch.float32)
        better = val.abs() > best
        score = torch.where(better, val.abs(), best)
        phi = torch.where(better, phi, grid_phi)
        sign = torch.where(better, torch.sign(val), sign0)
        return score, phi, sign

    def score(self, y: torch.Tensor) -> FamilyScore:
        n = len(self.sigma)
        yv = y.detach().cpu().numpy()
        sq = np.square(yv[:, : 2 * n])
        r = np.add(sq[:, :n], sq[:, n:], out=sq[:, :n])
        torch.sqrt(torch.from_numpy(r), out=torch.from_numpy(r))  # in-plane (cross) norm [B, n]
        bar_apx = np.abs(yv[:, 2 * n :])
        bar_apx *= self._cone[0]
        bar_apx += r * self._cone[1]
        g = row_argmax(np.maximum(r, bar_apx, out=bar_apx))  # numpy's argmax: fast
        q2 = np.stack([take_rows(yv, g), take_rows(yv, n + g), take_rows(yv, 2 * n + g)], axis=1)
        cross = torch.from_numpy(take_rows(r, g))
        bar, phi, bar_sign = self._bar_exact(q2, g)
        is_cross = cross > bar
        tg = torch.from_numpy(g)
        cc = (self.rinv2[tg] @ torch.from_numpy(q2[:, :2, None]).to(torch.float64)).squeeze(-1)
        theta_cross = 0.5 * torch.rad2deg(torch.atan2(-cc[:, 0], cc[:, 1]))
        theta_bar = 0.5 * torch.rad2deg(phi.to(torch.float64))
        theta = wrap_angle(torch.where(is_cross, theta_cross, theta_bar), 180.0)
        pol = torch.where(is_cross, torch.ones_like(bar_sign), bar_sign)
        pol = torch.where(pol == 0, torch.ones_like(pol), pol)
        return FamilyScore(
            score=torch.maximum(cross, bar).numpy(),
            orientation=theta.numpy(),
            polarity=pol.numpy().astype(np.int8),
            scale=np.take(self.sigma, g),
            offset=np.take(self.offset, g, axis=0),
            shape=is_cross.numpy().astype(np.int16),  # 0: bar, 1: cross
        )


class AffineSecondModel(FitModel):
    """``a * bar(t) + c * cross(t)`` of an affine Gaussian (sigma_u across, sigma_v along)."""

    n_amplitudes = 2
    columns = ("r2", "sigma", "sigma_u", "sigma_v", "orientation", "polarity", "cross_share",
               "x0", "y0", "amplitude")  # fmt: skip

    def __init__(self, kh: int, kw: int) -> None:
        super().__init__(kh, kw)
        axis = axis_of_1d(kh, kw)
        su = scale_param("sigma_u", kh, kw)
        aspect = Param("aspect", 1.0, ASPECT_MAX, "log")
        if axis is None:
            t = Param("orientation", 0.0, math.pi, "angle", period=math.pi)
        else:  # a 1-D profile along the kernel: its extent across is irrelevant
            t = Param("orientation", math.radians(axis), math.radians(axis), "angle", math.pi)
            aspect = Param("aspect", 1.0, 1.0, "log")
        self.params = (*self.centre_params(reach=CENTRE_REACH), su, aspect, t)

    def start(self, score: FamilyScore) -> np.ndarray:
        cols = [score.offset[:, 0], score.offset[:, 1], score.scale, np.full(len(score), 1.0),
                np.deg2rad(score.orientation)]  # fmt: skip
        return np.stack([clip_start(c, p) for c, p in zip(cols, self.params, strict=True)], 1)

    def images(self, theta: torch.Tensor) -> torch.Tensor:
        x0, y0, su, aspect, t = theta
        e = F.affine_gaussian_edges(self.kh, self.kw, su, su * aspect, t, x0, y0, order=2)
        c, s = torch.cos(t), torch.sin(t)
        cc, ss, cs = c * c, s * s, c * s
        # with X = ex * hx, Y = ey * hy: Gxx ~ qr g - X, Gyy ~ qp g - Y (before differencing)
        # bar = -(c^2 Gxx + 2cs Gxy + s^2 Gyy), cross = cs (Gyy - Gxx) + (c^2 - s^2) Gxy
        x = e["hx"].mul_(e["ex"][None])
        y = e["hy"].mul_(e["ey"][:, None])
        g = e["g"]
        qr, qp = e["qr"], e["qp"]
        bar = (g * (-(cc * qr) - 2 * cs - ss * qp)).add_(x * cc).add_(y * ss)
        cross = (x - y).mul_(cs).add_(g * (cs * (qp - qr) + cc - ss))
        return F.edges_to_pixels(torch.stack([bar, cross], -2)).movedim(-2, 0)

    def report(self, theta: torch.Tensor, coef: torch.Tensor) -> dict[str, torch.Tensor]:
        x0, y0, su, aspect, t = theta
        sv = su * aspect
        a, c = coef[0], coef[1]
        deg = torch.rad2deg(t)
        is_cross = c.abs() > a.abs()
        deg = wrap_angle(torch.where(is_cross & (c < 0), deg + 90.0, deg), 180.0)
        return {
            "sigma": torch.sqrt(su * sv),
            "sigma_u": su,
            "sigma_v": sv,
            "orientation": deg,
            "polarity": torch.where(is_cross | (a >= 0), 1.0, -1.0),
            "cross_share": c.square() / (a.square() + c.square()).clamp_min(1e-24),
            "x0": x0,
            "y0": y0,
            "amplitude": torch.sqrt(a.square() + c.square()),
        }


@register_family
class SecondDerivative(PatternFamily):
    name = SECOND_DERIVATIVE
    description = "Bar/ridge detectors (d2/du2) and cross shapes (d2/dudv) of a Gaussian."
    formula = (
        "-p * d2/du2 G(x - x0, y - y0; s) (bar) or p * d2/dudv G(x - x0, y - y0; s) (cross), "
        "u = (cos t, sin t), v = (-sin t, cos t), integrated over each pixel; fitted with "
        "separate scales s_u across the bar and s_v along it"
    )
    orientation_period = 180.0
    has_polarity = True
    color = "#7570b3"
    model = AffineSecondModel
    order = 30
    shapes = ("bar", "cross")
    reference = "Koenderink & van Doorn (1987); Lindeberg (2021) affine Gaussian derivatives"

    def basis(self, kh: int, kw: int) -> Basis:
        axis = axis_of_1d(kh, kw)
        if axis is None:
            return ConeBasis(kh, kw)
        g_sigma, g_off, b = gaussian_groups(kh, kw, order=2)
        pats = -(b["Gxx"] if axis == 0.0 else b["Gyy"])
        return DenseBasis(pats, orientation=np.full(len(g_sigma), axis), scale=g_sigma,
                          offset=g_off, sign="polarity")  # fmt: skip

    def generate(self, kh, kw, n, *, rng, scale=None, orientation=None, polarity=None,
                 kind="bar", offset=(0.0, 0.0)) -> np.ndarray:  # fmt: skip
        s = draw(scale, n, lambda m: random_scale(kh, kw, m, rng))
        t = draw(orientation, n, lambda m: rng.uniform(0.0, 180.0, m))
        p = draw(polarity, n, lambda m: rng.choice(np.array([-1.0, 1.0]), m))
        p = np.where(p < 0, -1, 1)
        axis = axis_of_1d(kh, kw)
        if axis is not None:  # 1-D: a bar profile along the kernel
            t, kind = np.full(n, axis), "bar"
        return F.second_derivative_pattern(kh, kw, s, t, kind=kind, polarity=p, offset=offset)

    def diagram(self, size: int) -> list[tuple[str, np.ndarray]]:
        s = size / 7.5
        bar = F.second_derivative_pattern(size, size, s, np.array([0.0, 45.0, 90.0, 135.0]))
        cross = F.second_derivative_pattern(
            size, size, s, np.array([0.0, 22.5, 45.0, 67.5]), kind="cross"
        )
        return [("second derivative (bar)", bar), ("second derivative (cross)", cross)]
