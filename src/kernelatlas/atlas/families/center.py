"""``center``: centre-surround -- DoG, Laplacian-of-Gaussian-like DoG, Gaussian, near-delta.

Atlas: explicit unit templates, three shapes (a Gaussian; DoGs of surround ratio 1.6 and
3 with surround weight 1) x the sigma grid x the sub-pixel offsets; the sign of the best
cosine is the polarity. On ``1 x k`` / ``k x 1`` kernels the same shapes are 1-D profiles.

Fit: ``p * (G(s1) - a * G(ratio * s1))`` with the surround weight ``a`` in [0, 1] (solved
in closed form on that double cone), ``s1`` within the atlas's sigma grid, ``ratio`` in
[1.2, 4] and the centre within one pixel of the kernel centre.
"""

from __future__ import annotations

import numpy as np
import torch

from ...taxonomy import CENTER
from .. import functional as F
from ..family import DenseBasis, FamilyScore, FitModel, Param, PatternFamily
from ..registry import register_family
from ..templates import default_offsets, default_sigmas
from ._common import clip_start, draw, random_scale, scale_param, separable_gaussian

__all__ = ["Center", "CENTER_SHAPES", "CenterModel"]

# Centre-surround shapes (surround_ratio, surround_weight): Gaussian, LoG-like DoG, wide DoG.
CENTER_SHAPES: tuple[tuple[float, float], ...] = ((1.6, 0.0), (1.6, 1.0), (3.0, 1.0))
RATIO_RANGE = (1.6, 4.0)


CENTRE_REACH = 1.0  # fitted centre: at most this far from the kernel centre, px


class CenterModel(FitModel):
    """Bounded DoG: ``b1 * (G(s1) - a * G(ratio * s1))``, ``0 <= a <= 1``."""

    n_amplitudes = 2
    columns = ("r2", "sigma", "sigma2", "surround_weight", "polarity", "x0", "y0", "amplitude")

    def __init__(self, kh: int, kw: int) -> None:
        super().__init__(kh, kw)
        self.params = (*self.centre_params(reach=CENTRE_REACH), scale_param("sigma", kh, kw),
                       Param("ratio", *RATIO_RANGE, "log"))  # fmt: skip

    def start(self, score: FamilyScore) -> np.ndarray:
        cols = [score.offset[:, 0], score.offset[:, 1], score.scale, score.extra["ratio"]]
        return np.stack([clip_start(c, p) for c, p in zip(cols, self.params, strict=True)], 1)

    def images(self, theta: torch.Tensor) -> torch.Tensor:
        x0, y0, s, ratio = theta
        g1 = separable_gaussian(self.kh, self.kw, s, x0, y0)
        g2 = separable_gaussian(self.kh, self.kw, s * ratio, x0, y0)
        return torch.stack([g1, g2])

    def amplitudes(self, gram: torch.Tensor, proj: torch.Tensor) -> torch.Tensor:
        # least squares over {t * (1, -a): a in [0, 1]}: the free solution if it lies there,
        # else the better of the two boundary lines a = 0 and a = 1
        c0, c1 = super().amplitudes(gram, proj)
        inside = (c0.abs() > 1e-12) & (-c1 * c0 >= 0) & (-c1 * c0 <= c0 * c0)
        g00, g01, g11 = gram[0, 0], gram[0, 1], gram[1, 1]
        p0, p1 = proj[0], proj[1]
        tiny = self.ridge * (g00 + g11).clamp_min(1e-12)
        t0 = p0 / (g00 + tiny)
        t1 = (p0 - p1) / ((g00 - 2 * g01 + g11).clamp_min(0) + tiny)
        first = t0 * p0 >= t1 * (p0 - p1)
        b0 = torch.where(first, t0, t1)
        b1 = torch.where(first, torch.zeros_like(t1), -t1)
        return torch.stack([torch.where(inside, c0, b0), torch.where(inside, c1, b1)])

    def report(self, theta: torch.Tensor, coef: torch.Tensor) -> dict[str, torch.Tensor]:
        x0, y0, s, ratio = theta
        b1 = coef[0]
        safe = torch.where(b1.abs() > 1e-12, b1, torch.full_like(b1, 1e-12))
        a = (-coef[1] / safe).clamp(0.0, 1.0)
        return {
            "sigma": s,
            "sigma2": s * ratio,
            "surround_weight": a,
            "polarity": torch.where(b1 >= 0, 1.0, -1.0),
            "x0": x0,
            "y0": y0,
            "amplitude": b1.abs(),
        }


@register_family
class Center(PatternFamily):
    name = CENTER
    description = (
        "Centre-surround: DoG, Laplacian-of-Gaussian, Gaussian and the near-delta kernel; "
        "on-centre (+1) or off-centre (-1)."
    )
    formula = (
        "p * (G(x - x0, y - y0; s1) - a * G(x - x0, y - y0; s2)), s2 = ratio * s1 > s1, "
        "0 <= a <= 1, G(.; s) = exp(-r^2 / 2s^2) / (2 pi s^2) (integral 1), integrated over "
        "each pixel; a = 0: Gaussian, ratio 1.6 and a = 1: LoG-like DoG, small s: near-delta"
    )
    orientation_period = None
    has_polarity = True
    color = "#1b9e77"
    model = CenterModel
    order = 10
    shapes = tuple("gaussian" if w == 0 else f"dog_{r:g}" for r, w in CENTER_SHAPES)
    reference = "Marr & Hildreth (1980); the ICLR 2024 DoG-family taxonomy"

    def basis(self, kh: int, kw: int) -> DenseBasis:
        sig = default_sigmas(kh, kw)
        off = np.asarray(default_offsets(kh, kw), dtype=np.float64)
        ss, oo = np.meshgrid(np.arange(len(sig)), np.arange(len(off)), indexing="ij")
        g_sigma, g_off = sig[ss.ravel()], off[oo.ravel()]
        ts = torch.from_numpy(g_sigma)
        tx, ty = torch.from_numpy(g_off[:, 0].copy()), torch.from_numpy(g_off[:, 1].copy())
        g1 = F.gaussian_basis(kh, kw, ts, tx, ty, order=0)["G"]
        pats, shape, ratio = [], [], []
        for i, (r, w) in enumerate(CENTER_SHAPES):
            g2 = F.gaussian_basis(kh, kw, ts * r, tx, ty, order=0)["G"]
            pats.append(g1 - w * g2)
            shape.append(np.full(len(g_sigma), i))
            ratio.append(np.full(len(g_sigma), r))
        k = len(CENTER_SHAPES)
        return DenseBasis(
            torch.cat(pats),
            orientation=np.full(k * len(g_sigma), np.nan),
            scale=np.tile(g_sigma, k),
            offset=np.tile(g_off, (k, 1)),
            shape=np.concatenate(shape),
            sign="polarity",
            extra={"ratio": np.concatenate(ratio)},
        )

    def generate(self, kh, kw, n, *, rng, scale=None, orientation=None, polarity=None,
                 surround_ratio=1.6, surround_weight=1.0, offset=(0.0, 0.0)) -> np.ndarray:  # fmt: skip
        s = draw(scale, n, lambda m: random_scale(kh, kw, m, rng))
        p = draw(polarity, n, lambda m: rng.choice(np.array([-1.0, 1.0]), m))
        p = np.where(p < 0, -1, 1)
        return F.center_pattern(kh, kw, s, surround_ratio=surround_ratio,
                                surround_weight=surround_weight, polarity=p, offset=offset)  # fmt: skip

    def diagram(self, size: int) -> list[tuple[str, np.ndarray]]:
        s = np.array([1.2, 2.0, 2.0, 1.2]) * size / 15.0
        pol = np.array([1, 1, -1, -1])
        return [("centre (DoG)", F.center_pattern(size, size, s, polarity=pol))]
