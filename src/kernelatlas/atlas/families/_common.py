"""Helpers shared by the built-in family modules (not a family: skipped by discovery)."""

from __future__ import annotations

import math

import numpy as np
import torch

from ..family import Param
from ..functional import gaussian_last
from ..templates import pattern_side, sigma_range

__all__ = [
    "draw",
    "random_scale",
    "separable_gaussian",
    "scale_param",
    "clip_start",
    "axis_of_1d",
]


def random_scale(kh: int, kw: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """Log-uniform sigmas in [0.4, max(0.8, side / 5)] px (the synthetic-recovery range)."""
    hi = max(0.8, pattern_side(kh, kw) / 5.0)
    return np.exp(rng.uniform(math.log(0.4), math.log(hi), n))


def draw(values: np.ndarray | None, n: int, sample) -> np.ndarray:
    """``values`` [n] with NaNs (or all, when None) replaced by ``sample(k)`` for the k
    missing ones; ``sample`` (and so the generator) is only called for those."""
    if values is None:
        return np.asarray(sample(n), dtype=np.float64)
    v = np.broadcast_to(np.asarray(values, dtype=np.float64), (n,)).copy()
    bad = ~np.isfinite(v)
    if bad.any():
        v[bad] = np.asarray(sample(int(bad.sum())), dtype=np.float64)
    return v


def axis_of_1d(kh: int, kw: int) -> float | None:
    """The orientation (degrees) of a 1-D kernel's axis: 0 for ``1 x k``, 90 for ``k x 1``."""
    if kh == 1 and kw > 1:
        return 0.0
    if kw == 1 and kh > 1:
        return 90.0
    return None


def scale_param(name: str, kh: int, kw: int) -> Param:
    """A sigma bounded to the atlas's sigma range for this size (log scale)."""
    lo, hi = sigma_range(kh, kw)
    return Param(name, lo, hi, "log")


def clip_start(values: np.ndarray, p: Param) -> np.ndarray:
    """Start values moved a little inside ``p``'s bounds (so they can move both ways)."""
    v = np.asarray(values, dtype=np.float64)
    if p.kind == "angle" or p.fixed:
        return np.full_like(v, p.lo) if p.fixed else v
    if p.kind == "log":
        lo, hi = math.log(p.lo), math.log(p.hi)
        lv = np.log(np.clip(v, p.lo, p.hi))
        span = hi - lo
        return np.exp(np.clip(lv, lo + 0.02 * span, hi - 0.02 * span))
    span = p.hi - p.lo
    return np.clip(v, p.lo + 0.02 * span, p.hi - 0.02 * span)


def separable_gaussian(
    kh: int, kw: int, sigma: torch.Tensor, x0: torch.Tensor, y0: torch.Tensor
) -> torch.Tensor:
    """Pixel-integrated isotropic Gaussians [kh, kw, B] (integral 1), batch last."""
    return gaussian_last(kh, kw, sigma, x0, y0)
