"""``shift``: a single off-centre pixel -- the neuron driven (or inhibited) by a neighbour.

The near-delta ``center`` kernel is "one neuron driven by the one in front of it"; a
depthwise kernel whose weight sits on one *neighbouring* tap passes the neighbour's value
through instead: a spatial shift of the feature map by that offset (polarity -1: the
neighbour inhibits).

Atlas: explicit unit templates, one near-delta (a pixel-integrated Gaussian of sigma
0.25 px, the atlas's smallest scale) on every pixel outside the centre family's offset
range (``max(|dx|, |dy|) > 0.5``) and within :data:`MAX_SHIFT_RADIUS` (3.5 px, Chebyshev)
of the centre: every off-centre tap of a kernel up to 8x8, the nearest 48 (odd sides) or
60 (even sides) taps of a larger one. A shift is a neighbour driving the neuron; a template
per tap of a 128x128 kernel would be 16,383 templates of 16,384 taps (2 GiB in float64) for
patterns no trained model shows, so larger offsets are left to the ``unclassified`` rest.
The sign of the cosine is the polarity, the orientation
is the direction from the kernel centre to that pixel. 1-D kernels: the taps along them.

Fit: a pixel-integrated Gaussian blob with sigma in [0.1, 0.5] px and its centre anywhere
in the kernel, one amplitude (the sign is the polarity).

This family lives in this one file: registering it adds it to the atlas (and its
calibration), the fits, the initialisers, the report and the summary schema.
"""

from __future__ import annotations

import numpy as np
import torch

from .. import functional as F
from ..family import DenseBasis, FamilyScore, FitModel, Param, PatternFamily, wrap_angle
from ..registry import register_family
from ..templates import SIGMA_MIN
from ._common import clip_start, draw, separable_gaussian

__all__ = ["Shift", "ShiftModel", "SHIFT", "MAX_SHIFT_RADIUS"]

SHIFT = "shift"
SIGMA_RANGE = (0.1, 0.5)
#: Largest offset (Chebyshev, px) of a shift template: covers every tap of an 8x8 kernel.
MAX_SHIFT_RADIUS = 3.5


def _positions(kh: int, kw: int) -> np.ndarray:
    """(dx, dy) of every off-centre pixel within :data:`MAX_SHIFT_RADIUS` [P, 2] (x right,
    y up), nearest first."""
    x = np.arange(kw) - (kw - 1) / 2.0
    y = (kh - 1) / 2.0 - np.arange(kh)
    xx, yy = np.meshgrid(x, y)
    pos = np.stack([xx.ravel(), yy.ravel()], axis=1)
    cheb = np.abs(pos).max(axis=1)
    pos = pos[(cheb > 0.5) & (cheb <= MAX_SHIFT_RADIUS)]
    order = np.lexsort((np.arctan2(pos[:, 1], pos[:, 0]) % (2 * np.pi), np.hypot(*pos.T)))
    return pos[order]


class ShiftModel(FitModel):
    """``a * G(x - x0; sigma)``, sigma in [0.1, 0.5] px, centre anywhere in the kernel."""

    n_amplitudes = 1
    columns = ("r2", "sigma", "orientation", "distance", "polarity", "x0", "y0", "amplitude")

    def __init__(self, kh: int, kw: int) -> None:
        super().__init__(kh, kw)
        self.params = (*self.centre_params(), Param("sigma", *SIGMA_RANGE, "log"))

    def start(self, score: FamilyScore) -> np.ndarray:
        cols = [score.offset[:, 0], score.offset[:, 1], np.full(len(score), SIGMA_MIN)]
        return np.stack([clip_start(c, p) for c, p in zip(cols, self.params, strict=True)], 1)

    def images(self, theta: torch.Tensor) -> torch.Tensor:
        x0, y0, s = theta
        return separable_gaussian(self.kh, self.kw, s, x0, y0)[None]

    def report(self, theta: torch.Tensor, coef: torch.Tensor) -> dict[str, torch.Tensor]:
        x0, y0, s = theta
        a = coef[0]
        return {
            "sigma": s,
            "orientation": wrap_angle(torch.rad2deg(torch.atan2(y0, x0)), 360.0),
            "distance": torch.sqrt(x0 * x0 + y0 * y0),
            "polarity": torch.where(a >= 0, 1.0, -1.0),
            "x0": x0,
            "y0": y0,
            "amplitude": a.abs(),
        }


@register_family
class Shift(PatternFamily):
    name = SHIFT
    description = (
        "A single off-centre pixel: the neuron driven (+1) or inhibited (-1) by a "
        "neighbour, i.e. a shift of the feature map."
    )
    formula = (
        "p * G(x - dx, y - dy; s), s <= 0.5 px, (dx, dy) an off-centre tap "
        "(1/2 < max(|dx|, |dy|) <= 3.5), integrated over each pixel; orientation = direction of "
        "(dx, dy)"
    )
    orientation_period = 360.0
    has_polarity = True
    color = "#e7298a"
    model = ShiftModel
    order = 40
    shapes = ("shift",)
    reference = "kernelatlas issue 12: off-centre near-delta kernels of trained DS-CNNs"
    diagram_scale = SIGMA_MIN  # a near-delta: drawn at its own scale, not the diagram's

    def basis(self, kh: int, kw: int) -> DenseBasis | None:
        pos = _positions(kh, kw)
        if len(pos) == 0:
            return None
        n = len(pos)
        g = F.gaussian_basis(
            kh,
            kw,
            torch.full((n,), SIGMA_MIN, dtype=torch.float64),
            torch.from_numpy(pos[:, 0].copy()),
            torch.from_numpy(pos[:, 1].copy()),
            order=0,
        )["G"]
        return DenseBasis(
            g,
            orientation=wrap_angle(np.rad2deg(np.arctan2(pos[:, 1], pos[:, 0])), 360.0),
            scale=np.full(n, SIGMA_MIN),
            offset=pos,
            sign="polarity",
        )

    def generate(self, kh, kw, n, *, rng, scale=None, orientation=None, polarity=None,
                 **options) -> np.ndarray:  # fmt: skip
        """Near-deltas on an off-centre tap: the tap nearest to one pixel away in
        ``orientation`` (random taps when it is not given); ``scale`` is the blob's sigma."""
        pos = _positions(kh, kw)
        if len(pos) == 0:
            raise ValueError(f"a {kh}x{kw} kernel has no off-centre tap")
        s = draw(scale, n, lambda m: np.full(m, SIGMA_MIN))
        p = draw(polarity, n, lambda m: rng.choice(np.array([-1.0, 1.0]), m))
        t = np.full(n, np.nan) if orientation is None else np.asarray(orientation, float)
        t = np.broadcast_to(t, (n,))
        given = np.isfinite(t)
        idx = np.zeros(n, np.int64)
        if (~given).any():
            idx[~given] = rng.integers(0, len(pos), int((~given).sum()))
        if given.any():
            want = np.stack([np.cos(np.deg2rad(t[given])), np.sin(np.deg2rad(t[given]))], 1)
            idx[given] = np.argmin(((pos[None] - want[:, None]) ** 2).sum(-1), axis=1)
        d = pos[idx]
        pol = np.where(p < 0, -1, 1)
        return F.center_pattern(kh, kw, s, surround_weight=0.0, polarity=pol, offset=d)

    def diagram(self, size: int) -> list[tuple[str, np.ndarray]]:
        t = np.array([0.0, 90.0, 180.0, 270.0])
        pats = self.generate(size, size, 4, rng=np.random.default_rng(0), scale=np.full(4, 0.5),
                             orientation=t, polarity=np.ones(4))  # fmt: skip
        return [("shift (off-centre tap)", pats)]
