"""The atlas's template bank for one kernel size: a few steerable bases, not a dense bank.

- ``center``: individual unit templates (DoG shapes x sigmas x sub-pixel offsets); the sign
  of the cosine gives the polarity.
- ``first_derivative``: per (sigma, offset) group, an orthonormal basis of span{Gx, Gy}.
  Every direction in that plane *is* a first derivative at some orientation (steerability),
  so the best cosine over all orientations is the norm of the projection, and the
  orientation follows in closed form from the two coefficients.
- ``second_derivative``: per group, an orthonormal basis of span{A, B, L} with
  ``A = Gxx - Gyy``, ``B = 2 Gxy``, ``L = Gxx + Gyy`` (orthonormalised in that order).
  Crosses fill the (A, B) plane exactly (best cosine = in-plane norm, orientation in closed
  form); bars ``-(L + cos 2t A + sin 2t B) / 2`` form a cone around the L axis, scored
  exactly on a fine grid of ``2t`` (only for each kernel's best group) after a closed-form
  cone approximation picks the group.

Everything here is built once per kernel size from :mod:`.functional`'s pixel-integrated
Gaussian basis, in float64, and stored as float32 for the matrix products.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .functional import gaussian_basis

__all__ = [
    "TemplateBank",
    "build_bank",
    "default_sigmas",
    "default_offsets",
    "CENTER_SHAPES",
]

# Centre-surround shapes (surround_ratio, surround_weight): Gaussian, LoG-like DoG, wide DoG.
CENTER_SHAPES: tuple[tuple[float, float], ...] = ((1.6, 0.0), (1.6, 1.0), (3.0, 1.0))
SIGMA_MIN = 0.25
SIGMA_STEP = 1.4
N_BAR_ANGLES = 72  # grid over 2t in [0, 360): 2.5 degrees in t, refined by a parabola


def default_offsets(kh: int, kw: int) -> tuple[tuple[float, float], ...]:
    """Sub-pixel centre offsets (dx, dy) in [-0.5, 0.5]^2 pixels.

    Steps of 0.5 px (9 offsets) from 6x6 up; steps of 0.25 px (25 offsets) for kernels of
    side <= 5, where a quarter-pixel shift changes a pattern's cosine markedly (on 3x3 the
    coarser grid recovers only about half of the noise-free synthetic patterns).
    """
    step = 0.25 if min(kh, kw) <= 5 else 0.5
    o = np.arange(-0.5, 0.5 + 1e-9, step)
    o = o[np.argsort(np.abs(o), kind="stable")]  # centre first
    return tuple((float(dx), float(dy)) for dy in o for dx in o)


def default_sigmas(kh: int, kw: int) -> np.ndarray:
    """Geometric sigma grid from 0.25 px (near-delta) to about a third of the kernel side."""
    smax = max(0.6, min(kh, kw) / 3.0)
    n = 1 + math.ceil(math.log(smax / SIGMA_MIN) / math.log(SIGMA_STEP))
    return np.geomspace(SIGMA_MIN, smax, n)


@dataclass(frozen=True)
class TemplateBank:
    """All projection columns for one kernel size, and what each column means.

    ``weights`` [kh*kw, C] float32 (torch) holds, in order: ``n_center`` unit centre
    templates, ``2 * n_first`` first-derivative basis columns, ``3 * n_second``
    second-derivative basis columns.
    """

    kh: int
    kw: int
    weights: torch.Tensor
    center_sigma: np.ndarray  # [n_center]
    center_offset: np.ndarray  # [n_center, 2]
    center_shape: np.ndarray  # [n_center] index into CENTER_SHAPES
    first_sigma: np.ndarray  # [n_first]
    first_offset: np.ndarray  # [n_first, 2]
    first_rinv: torch.Tensor  # [n_first, 2, 2] float64: raw coefficients = rinv @ q
    second_sigma: np.ndarray  # [n_second]
    second_offset: np.ndarray  # [n_second, 2]
    second_r: torch.Tensor  # [n_second, 3, 3] float64 (raw -> orthonormal coordinates)
    second_rinv2: torch.Tensor  # [n_second, 2, 2] float64 (cross plane)
    second_cone: torch.Tensor  # [n_second, 2] float32: (cos a, sin a) of the bar cone
    bar_grid: torch.Tensor  # [n_second, 3, N_BAR_ANGLES] float32 unit bar directions

    @property
    def n_center(self) -> int:
        return len(self.center_sigma)

    @property
    def n_first(self) -> int:
        return len(self.first_sigma)

    @property
    def n_second(self) -> int:
        return len(self.second_sigma)


def _flat_centred(t: torch.Tensor) -> torch.Tensor:
    t = t.reshape(t.shape[0], -1)
    return t - t.mean(dim=1, keepdim=True)


def bar_directions(r: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
    """Unit bar directions (polarity +1) in orthonormal coordinates.

    ``r`` [..., 3, 3] upper-triangular factors, ``phi`` [..., A] angles ``2t`` in radians;
    returns [..., 3, A].
    """
    c = -0.5 * torch.stack([torch.cos(phi), torch.sin(phi), torch.ones_like(phi)], dim=-2)
    u = r @ c
    return u / torch.linalg.vector_norm(u, dim=-2, keepdim=True)


def build_bank(
    kh: int,
    kw: int,
    sigmas: np.ndarray | None = None,
    offsets: tuple[tuple[float, float], ...] | None = None,
) -> TemplateBank:
    """Build the template bank for a ``kh x kw`` kernel (float64 construction)."""
    sig = default_sigmas(kh, kw) if sigmas is None else np.asarray(sigmas, dtype=np.float64)
    off = np.asarray(default_offsets(kh, kw) if offsets is None else offsets, dtype=np.float64)
    ss, oo = np.meshgrid(np.arange(len(sig)), np.arange(len(off)), indexing="ij")
    g_sigma = sig[ss.ravel()]
    g_off = off[oo.ravel()]
    ts = torch.from_numpy(g_sigma)
    tx, ty = torch.from_numpy(g_off[:, 0].copy()), torch.from_numpy(g_off[:, 1].copy())
    b = gaussian_basis(kh, kw, ts, tx, ty, order=2)
    k = kh * kw
    eps = 1e-6

    # centre templates
    cols, c_sigma, c_off, c_shape = [], [], [], []
    for i, (ratio, weight) in enumerate(CENTER_SHAPES):
        g2 = gaussian_basis(kh, kw, ts * ratio, tx, ty, order=0)["G"]
        p = _flat_centred(b["G"] - weight * g2)
        n = torch.linalg.vector_norm(p, dim=1)
        ok = n > eps * n.max()
        cols.append((p[ok] / n[ok, None]).T)
        c_sigma.append(g_sigma[ok.numpy()])
        c_off.append(g_off[ok.numpy()])
        c_shape.append(np.full(int(ok.sum()), i))
    center_w = torch.cat(cols, dim=1)

    # first derivative groups: QR of [Gx, Gy]
    raw1 = torch.stack([_flat_centred(b["Gx"]), _flat_centred(b["Gy"])], dim=2)  # [G, k, 2]
    q1, r1 = torch.linalg.qr(raw1)
    d1 = torch.diagonal(r1, dim1=1, dim2=2).abs()
    ok1 = (d1.min(dim=1).values > eps * d1.max()).numpy()
    q1, r1 = q1[ok1], r1[ok1]

    # second derivative groups: QR of [A, B, L]
    gxx, gxy, gyy = (_flat_centred(b[n]) for n in ("Gxx", "Gxy", "Gyy"))
    raw2 = torch.stack([gxx - gyy, 2 * gxy, gxx + gyy], dim=2)  # [G, k, 3]
    q2, r2 = torch.linalg.qr(raw2)
    d2 = torch.diagonal(r2, dim1=1, dim2=2).abs()
    ok2 = (d2.min(dim=1).values > eps * d2.max()).numpy()
    q2, r2 = q2[ok2], r2[ok2]
    # fix signs so that R has a positive diagonal (QR is unique up to column signs)
    sgn = torch.sign(torch.diagonal(r2, dim1=1, dim2=2))
    q2, r2 = q2 * sgn[:, None, :], r2 * sgn[:, :, None]
    sgn1 = torch.sign(torch.diagonal(r1, dim1=1, dim2=2))
    q1, r1 = q1 * sgn1[:, None, :], r1 * sgn1[:, :, None]

    phi = torch.arange(N_BAR_ANGLES, dtype=torch.float64) * (2 * math.pi / N_BAR_ANGLES)
    grid = bar_directions(r2, phi.expand(r2.shape[0], -1))  # [G2, 3, A]
    cone = torch.stack(
        [grid[:, 2].abs().mean(1), torch.linalg.vector_norm(grid[:, :2], dim=1).mean(1)], dim=1
    )
    cone = cone / torch.linalg.vector_norm(cone, dim=1, keepdim=True)

    weights = torch.cat(
        [center_w, q1.permute(1, 0, 2).reshape(k, -1), q2.permute(1, 0, 2).reshape(k, -1)], dim=1
    )
    return TemplateBank(
        kh=kh,
        kw=kw,
        weights=weights.to(torch.float32).contiguous(),
        center_sigma=np.concatenate(c_sigma),
        center_offset=np.concatenate(c_off),
        center_shape=np.concatenate(c_shape),
        first_sigma=g_sigma[ok1],
        first_offset=g_off[ok1],
        first_rinv=torch.linalg.inv(r1),
        second_sigma=g_sigma[ok2],
        second_offset=g_off[ok2],
        second_r=r2,
        second_rinv2=torch.linalg.inv(r2[:, :2, :2]),
        second_cone=cone.to(torch.float32),
        bar_grid=grid.to(torch.float32).contiguous(),
    )
