"""Best cosine of unit kernels to each pattern family, with the best pattern's parameters.

Pure functions over a :class:`~.templates.TemplateBank`; one matrix product per batch,
then closed-form steering (see :mod:`.templates`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .templates import N_BAR_ANGLES, TemplateBank, bar_directions

__all__ = ["FamilyScores", "score_unit_kernels"]


@dataclass
class FamilyScores:
    """Per-kernel best cosine and parameters for each family (numpy arrays of length B)."""

    center: np.ndarray
    center_sigma: np.ndarray
    center_polarity: np.ndarray
    center_offset: np.ndarray  # [B, 2]
    center_shape: np.ndarray
    first: np.ndarray
    first_sigma: np.ndarray
    first_orientation: np.ndarray
    first_offset: np.ndarray
    second: np.ndarray
    second_sigma: np.ndarray
    second_orientation: np.ndarray
    second_polarity: np.ndarray
    second_cross: np.ndarray  # bool: cross (True) or bar (False)
    second_offset: np.ndarray

    def stack(self) -> np.ndarray:
        """Scores [B, 3] in taxonomy.PATTERN_FAMILIES order."""
        return np.stack([self.center, self.first, self.second], axis=1)


def _bar_exact(
    bank: TemplateBank, q: torch.Tensor, group: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact best bar cosine in each kernel's group: grid over 2t, parabola, re-evaluate."""
    a = N_BAR_ANGLES
    step = 2 * math.pi / a
    grid = bank.bar_grid[group]  # [n, 3, A]
    f = q[:, 0, None] * grid[:, 0] + q[:, 1, None] * grid[:, 1] + q[:, 2, None] * grid[:, 2]
    fa = f.abs()
    best, i = fa.max(dim=1)
    f0 = fa.gather(1, ((i - 1) % a)[:, None]).squeeze(1)
    f2 = fa.gather(1, ((i + 1) % a)[:, None]).squeeze(1)
    sign0 = torch.sign(f.gather(1, i[:, None]).squeeze(1))
    den = f0 - 2 * best + f2
    delta = torch.where(den < -1e-12, 0.5 * (f0 - f2) / den.clamp(max=-1e-12), 0.0)
    grid_phi = i.to(torch.float64) * step
    phi = grid_phi + delta.clamp(-0.5, 0.5).to(torch.float64) * step
    # exact value at the refined angle (kept only where it beats the grid maximum)
    u = bar_directions(bank.second_r[group], phi[:, None]).squeeze(-1)
    val = (q.to(torch.float64) * u).sum(1).to(torch.float32)
    better = val.abs() > best
    score = torch.where(better, val.abs(), best)
    phi = torch.where(better, phi, grid_phi)
    sign = torch.where(better, torch.sign(val), sign0)
    return score, phi, sign


def score_unit_kernels(
    bank: TemplateBank, x: torch.Tensor, weights: torch.Tensor | None = None
) -> FamilyScores:
    """Score unit kernels ``x`` [B, kh*kw] (float32, zero-mean, unit norm; zero rows allowed).

    ``weights`` is ``bank.weights`` moved to ``x``'s device (the product runs there; the
    cheap per-kernel steering runs on the CPU).
    """
    y = (x @ (bank.weights if weights is None else weights)).cpu()
    nc, n1, n2 = bank.n_center, bank.n_first, bank.n_second
    rows = torch.arange(x.shape[0])

    # centre: best |cosine| over the templates, sign = polarity
    yc = y[:, :nc]
    mx, imx = yc.max(dim=1)
    mn, imn = yc.min(dim=1)
    pos = mx >= -mn
    c_score = torch.where(pos, mx, -mn)
    c_idx = torch.where(pos, imx, imn).numpy()

    # first derivative: projection norm onto each steerable plane
    y1 = y[:, nc : nc + 2 * n1].view(-1, n1, 2)
    p1 = y1.square().sum(-1)
    s1, g1 = p1.max(dim=1)
    q1 = y1[rows, g1].to(torch.float64)  # [B, 2]
    coef = (bank.first_rinv[g1] @ q1[:, :, None]).squeeze(-1)  # raw (Gx, Gy) coefficients
    theta1 = torch.rad2deg(torch.atan2(-coef[:, 1], -coef[:, 0])) % 360.0
    g1n = g1.numpy()

    # second derivative: cross (exact, in-plane norm) or bar (cone approx picks the group)
    y2 = y[:, nc + 2 * n1 :].view(-1, n2, 3)
    r = torch.sqrt(y2[..., 0].square() + y2[..., 1].square())
    bar_apx = y2[..., 2].abs() * bank.second_cone[:, 0] + r * bank.second_cone[:, 1]
    _, g2 = torch.maximum(r, bar_apx).max(dim=1)
    q2 = y2[rows, g2]  # [B, 3]
    cross = torch.sqrt(q2[:, 0].square() + q2[:, 1].square())
    bar, phi, bar_sign = _bar_exact(bank, q2, g2)
    is_cross = cross > bar
    cc = (bank.second_rinv2[g2] @ q2[:, :2, None].to(torch.float64)).squeeze(-1)  # (aA, aB)
    theta_cross = 0.5 * torch.rad2deg(torch.atan2(-cc[:, 0], cc[:, 1]))
    theta_bar = 0.5 * torch.rad2deg(phi.to(torch.float64))
    theta2 = torch.where(is_cross, theta_cross, theta_bar) % 180.0
    pol2 = torch.where(is_cross, torch.ones_like(bar_sign), bar_sign)
    pol2 = torch.where(pol2 == 0, torch.ones_like(pol2), pol2)
    g2n = g2.numpy()

    return FamilyScores(
        center=c_score.numpy(),
        center_sigma=bank.center_sigma[c_idx],
        center_polarity=np.where(pos.numpy(), 1, -1).astype(np.int8),
        center_offset=bank.center_offset[c_idx],
        center_shape=bank.center_shape[c_idx],
        first=torch.sqrt(s1).numpy(),
        first_sigma=bank.first_sigma[g1n],
        first_orientation=theta1.numpy(),
        first_offset=bank.first_offset[g1n],
        second=torch.maximum(cross, bar).numpy(),
        second_sigma=bank.second_sigma[g2n],
        second_orientation=theta2.numpy(),
        second_polarity=pol2.numpy().astype(np.int8),
        second_cross=is_cross.numpy(),
        second_offset=bank.second_offset[g2n],
    )
