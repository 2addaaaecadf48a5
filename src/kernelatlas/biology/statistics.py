"""Dimensionless per-kernel statistics for the comparison with receptive fields (vectorised).

Kernels are in pixels, receptive fields in degrees of visual angle, so only ratios, shares,
angles and indices are compared. Every function here takes whole arrays (no Python loop
over kernels). Conventions are those of :mod:`kernelatlas.taxonomy` (``x`` right, ``y`` up,
orientation counter-clockwise from +x; ``u`` = the derivative direction, ``v`` along the
bar or edge).

- :func:`opponent_ratio`: on the *raw* kernel (not centred), the summed weight of the sign
  opposite to the centre over the summed weight of the centre's sign. For an untruncated
  continuous DoG ``G(rc) - a G(rs)`` it is at most ``a`` (the integrated surround/centre
  strength) and tends to ``a`` as ``rs / rc`` grows; a kernel's finite support truncates
  the surround and lowers it further.
- :func:`symmetry_phase`: the energy split of the centred kernel into parts even and odd
  under point reflection through the kernel centre (the output pixel), as an angle in
  [0, 90] degrees: 0 = even (bar, centre-surround), 90 = odd (edge). For a Gabor with a
  few cycles it approximates the folded spatial phase.
- :func:`elongation`: ``sigma_v / sigma_u`` of an anisotropic Gaussian-derivative model
  (first or second derivative along ``u``), by a grid search over both sigmas at the
  kernel's fitted orientation and centre: > 1 means elongated along the bar or edge. The
  comparison uses the fits' own ``fit_sigma_u_*`` / ``fit_sigma_v_*`` where a fit holds and
  this grid search only for the kernels without one.
- :func:`axis_orientation` and :func:`cardinal_sign`: the orientation folded to an axis in
  [0, 180) and +1 / -1 for axes within / beyond 22.5 degrees of horizontal or vertical, so
  the mean of :func:`cardinal_sign` is the cardinal-bias index (0 for uniform orientations).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..atlas.functional import gaussian_basis
from ..normalize import as_kernel_array, normalize
from ..taxonomy import CENTER, FIRST_DERIVATIVE, SECOND_DERIVATIVE

__all__ = [
    "Statistic",
    "STATISTICS",
    "ORIENTED",
    "CARDINAL_HALF_WIDTH",
    "PURE_PHASE_WIDTH",
    "opponent_ratio",
    "symmetry_phase",
    "elongation",
    "elongation_grid",
    "anisotropic_pattern",
    "axis_orientation",
    "cardinal_sign",
]

ORIENTED: tuple[str, ...] = (FIRST_DERIVATIVE, SECOND_DERIVATIVE)
CARDINAL_HALF_WIDTH = 22.5  # degrees: cardinal = within this of 0 or 90; the rest is oblique
PURE_PHASE_WIDTH = 22.5  # degrees: "near even" < this, "near odd" > 90 - this


@dataclass(frozen=True)
class Statistic:
    """One compared statistic: what it is computed from and what it is compared with.

    Attributes
    ----------
    name : key in :data:`STATISTICS` and in the comparison table.
    label : short axis label.
    quantity : per-kernel column of :func:`kernelatlas.biology.kernel_statistics` it reduces
        (``family`` for shares).
    scope : families of classified kernels it is computed over.
    reduce : ``median`` (with the inter-quartile range) or ``mean`` (of an indicator or
        a +1/-1 sign, with the Wilson 95% interval of the share, mapped onto the index for
        signs).
    references : ``statistic`` values of reference-table rows it is compared with.
    relation : how a published number relates to this statistic (``=``, ``<=``) or
        ``qualitative``.
    description : one sentence for tables and docs.
    """

    name: str
    label: str
    quantity: str
    scope: tuple[str, ...]
    reduce: str
    references: tuple[str, ...]
    relation: str
    description: str

    @property
    def signed(self) -> bool:
        """Whether :meth:`values` are +1/-1 signs (an index in [-1, 1]), not 0/1 indicators."""
        return self.name == "cardinal_bias"

    def values(self, frame) -> np.ndarray:  # frame: DataFrame of kernel_statistics rows
        """The per-kernel values this statistic reduces (indicators for means)."""
        fam = frame["family"].to_numpy(object)
        sel = np.isin(fam, self.scope)
        if self.quantity == "family":
            target = {"share_center": CENTER, "share_first": FIRST_DERIVATIVE,
                      "share_second": SECOND_DERIVATIVE, "odd_share": FIRST_DERIVATIVE}[self.name]  # fmt: skip
            return (fam[sel] == target).astype(np.float64)
        v = frame[self.quantity].to_numpy(dtype=np.float64)[sel]
        v = v[np.isfinite(v)]
        if self.name == "phase_purity":
            return ((v < PURE_PHASE_WIDTH) | (v > 90.0 - PURE_PHASE_WIDTH)).astype(np.float64)
        if self.signed:
            return cardinal_sign(v)
        return v


def _stat(*args: object) -> Statistic:
    return Statistic(*args)  # type: ignore[arg-type]


_ALL = (CENTER, FIRST_DERIVATIVE, SECOND_DERIVATIVE)
STATISTICS: dict[str, Statistic] = {
    s.name: s
    for s in (
        _stat("surround_ratio", "surround / centre sigma", "surround_ratio", (CENTER,), "median",
              ("surround_ratio",), "=",
              "Surround over centre Gaussian sigma of the DoG fit (fit_sigma2 / fit_sigma)."),
        _stat("surround_weight", "surround weight (fit)", "surround_weight", (CENTER,), "median",
              ("surround_weight",), "=",
              "Integrated surround over integrated centre strength of the DoG fit "
              "(fit_surround_weight_center; Croner & Kaplan's Ks rs^2 / Kc rc^2)."),
        _stat("opponent_ratio", "opponent / centre weight (raw)", "opponent_ratio", (CENTER,),
              "median", ("surround_weight",), "<=",
              "Model-free: summed opposite-sign over summed centre-sign weight of the raw "
              "kernel; at most the integrated surround/centre strength of an untruncated DoG."),
        _stat("share_center", "share centre-surround", "family", _ALL, "mean", (), "qualitative",
              "Share of classified kernels that are centre-surround (DoG family)."),
        _stat("share_first", "share first derivative", "family", _ALL, "mean", (), "qualitative",
              "Share of classified kernels that are first derivatives (order 1, odd)."),
        _stat("share_second", "share second derivative", "family", _ALL, "mean", (),
              "qualitative",
              "Share of classified kernels that are second derivatives (order 2, even)."),
        _stat("odd_share", "odd share of oriented", "family", ORIENTED, "mean", ("symmetry",),
              "qualitative",
              "Among oriented kernels, the share of first derivatives (odd) against second "
              "derivatives (even)."),
        _stat("phase", "symmetry phase (deg)", "phase", ORIENTED, "median", ("symmetry",),
              "qualitative",
              "Even/odd energy split as an angle: 0 even, 90 odd (point reflection through "
              "the kernel centre)."),
        _stat("phase_purity", "near-even or near-odd share", "phase", ORIENTED, "mean",
              ("symmetry",), "qualitative",
              f"Share of oriented kernels within {PURE_PHASE_WIDTH:g} deg of pure even or pure "
              "odd symmetry (0.5 for a uniform phase; above 0.5 = clustered in two classes)."),
        _stat("elongation", "elongation sigma_v / sigma_u", "elongation", ORIENTED, "median",
              ("elongation", "rf_shape"), "qualitative",
              "Length along the bar or edge over width across it, anisotropic "
              "Gaussian-derivative model."),
        _stat("cardinal_bias", "cardinal-bias index", "orientation", ORIENTED, "mean",
              ("cardinal_bias",), "qualitative",
              f"(cardinal - oblique) / all oriented kernels, cardinal = axis within "
              f"{CARDINAL_HALF_WIDTH:g} deg of horizontal or vertical; 0 = no bias."),
    )
}  # fmt: skip


# --------------------------------------------------------------------------- centre family
def opponent_ratio(
    kernels: np.ndarray,
    sigma: np.ndarray | None = None,
    x0: np.ndarray | None = None,
    y0: np.ndarray | None = None,
) -> np.ndarray:
    """Opposite-sign over centre-sign summed weight of each raw kernel, [N] (NaN if no centre).

    Parameters
    ----------
    kernels : [N, kh, kw] raw weights (not centred: the response to a uniform field counts).
    sigma, x0, y0 : [N] centre sigma and position (px) of the DoG fit; they only decide the
        centre's sign (the sign of the kernel weighted by that Gaussian). None or NaN: a
        Gaussian of sigma 0.5 at the kernel centre.
    """
    k = as_kernel_array(kernels).astype(np.float64)
    n, kh, kw = k.shape
    if n == 0:
        return np.zeros(0)

    def col(a: np.ndarray | None, default: float) -> torch.Tensor:
        v = np.full(n, default) if a is None else np.asarray(a, np.float64).copy()
        v[~np.isfinite(v)] = default
        return torch.from_numpy(v)

    g = gaussian_basis(kh, kw, col(sigma, 0.5).clamp_min(0.05), col(x0, 0.0), col(y0, 0.0),
                       order=0)["G"].numpy()  # fmt: skip
    sign = np.sign((k * g).sum(axis=(1, 2)))
    v = (k * sign[:, None, None]).reshape(n, -1)
    centre = np.clip(v, 0.0, None).sum(axis=1)
    opposite = np.clip(-v, 0.0, None).sum(axis=1)  # (no negative zero)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((sign != 0) & (centre > 0), opposite / centre, np.nan)


# --------------------------------------------------------------------------- symmetry
def symmetry_phase(kernels: np.ndarray) -> np.ndarray:
    """Even/odd energy split of each centred kernel as an angle in [0, 90] degrees, [N].

    ``atan(sqrt(E_odd / E_even))`` with the parts taken under point reflection through the
    kernel centre: 0 for a bar or centre-surround kernel, 90 for a centred edge, NaN for a
    degenerate kernel.
    """
    nz = normalize(kernels)
    u = nz.unit.astype(np.float64)
    f = u[:, ::-1, ::-1]
    even = 0.5 * (u + f)
    odd = 0.5 * (u - f)
    e_even = np.sqrt((even * even).sum(axis=(1, 2)))
    e_odd = np.sqrt((odd * odd).sum(axis=(1, 2)))
    out = np.degrees(np.arctan2(e_odd, e_even))
    out[nz.degenerate] = np.nan
    return out


# --------------------------------------------------------------------------- elongation
def elongation_grid(kh: int, kw: int, n: int = 15) -> np.ndarray:
    """The sigmas (px) searched for ``sigma_u`` and ``sigma_v``: log-spaced, 0.35 .. 0.8 * size."""
    return np.geomspace(0.35, 0.8 * max(kh, kw), n)


def _points(kh: int, kw: int, ss: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sub-pixel sample points [kh*kw, ss*ss] (x right, y up, origin at the kernel centre)."""
    sub = (torch.arange(ss, dtype=torch.float64) + 0.5) / ss - 0.5
    x = torch.arange(kw, dtype=torch.float64) - (kw - 1) / 2.0
    y = (kh - 1) / 2.0 - torch.arange(kh, dtype=torch.float64)
    px = (x[None, :, None, None] + sub[None, None, None, :]).expand(kh, kw, ss, ss)
    py = (y[:, None, None, None] - sub[None, None, :, None]).expand(kh, kw, ss, ss)
    return px.reshape(kh * kw, ss * ss), py.reshape(kh * kw, ss * ss)


def _profiles(u: torch.Tensor, v: torch.Tensor, su: torch.Tensor, sv: torch.Tensor,
              second: bool) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Unnormalised u- and v-profiles [B, G, P, S] for every grid sigma."""
    tu = u[:, None] / su[None, :, None, None]
    gu = torch.exp(-0.5 * tu * tu)
    a = (1.0 - tu * tu) * gu if second else tu * gu
    tv = v[:, None] / sv[None, :, None, None]
    return a, torch.exp(-0.5 * tv * tv)


def anisotropic_pattern(
    kh: int,
    kw: int,
    family: str,
    sigma_u: float,
    sigma_v: float,
    orientation: float,
    x0: float = 0.0,
    y0: float = 0.0,
    *,
    supersample: int = 5,
) -> np.ndarray:
    """One anisotropic Gaussian-derivative kernel [kh, kw] as :func:`elongation` models it.

    ``-d/du G`` (first) or ``-d2/du2 G`` (second, a positive bar) of a Gaussian with
    ``sigma_u`` across and ``sigma_v`` along, ``u`` at ``orientation`` degrees, averaged over
    ``supersample**2`` points per pixel. For tests and for seeing what the grid holds.
    """
    px, py = _points(kh, kw, supersample)
    t = math.radians(orientation)
    u = ((px - x0) * math.cos(t) + (py - y0) * math.sin(t))[None]
    v = (-(px - x0) * math.sin(t) + (py - y0) * math.cos(t))[None]
    a, b = _profiles(u, v, torch.tensor([float(sigma_u)], dtype=torch.float64),
                     torch.tensor([float(sigma_v)], dtype=torch.float64),
                     family == SECOND_DERIVATIVE)  # fmt: skip
    return (a[0, 0] * b[0, 0]).mean(-1).reshape(kh, kw).numpy()


def elongation(
    kernels: np.ndarray,
    family: np.ndarray,
    orientation: np.ndarray,
    x0: np.ndarray | None = None,
    y0: np.ndarray | None = None,
    *,
    grid: np.ndarray | None = None,
    supersample: int = 3,
    batch_size: int = 512,
) -> tuple[np.ndarray, np.ndarray]:
    """``sigma_v / sigma_u`` of each oriented kernel by a grid search, and whether it hit the grid's edge.

    For every kernel, all (``sigma_u``, ``sigma_v``) pairs of ``grid`` are tried at its
    ``orientation`` (degrees; the derivative direction ``u``) and centre ``(x0, y0)``; the
    pair with the largest absolute cosine to the centred kernel wins (first derivative:
    ``-d/du G``, second: ``-d2/du2 G``). Pixel integration is approximated by
    ``supersample**2`` points per pixel (the same for every kernel, null and model).

    Parameters
    ----------
    kernels : [N, kh, kw].
    family : [N] ``first_derivative`` or ``second_derivative`` (others give NaN).
    orientation : [N] degrees (NaN gives NaN).
    x0, y0 : [N] centre in px (None or NaN: the kernel centre).
    grid : sigmas to search (default :func:`elongation_grid`).

    Returns
    -------
    (ratio [N], at_edge [N] bool): ``at_edge`` where either sigma is the grid's smallest or
    largest value (the kernel's support or resolution limits the estimate).

    Examples
    --------
    >>> g = elongation_grid(7, 7)
    >>> k = anisotropic_pattern(7, 7, "first_derivative", g[3], g[8], 30.0)
    >>> r, edge = elongation(k[None], ["first_derivative"], [30.0])
    >>> bool(np.isclose(r[0], g[8] / g[3])), bool(edge[0])
    (True, False)
    """
    k = as_kernel_array(kernels)
    n, kh, kw = k.shape
    fam = np.asarray(family, dtype=object).reshape(-1)
    ori = np.asarray(orientation, dtype=np.float64).reshape(-1)
    ratio = np.full(n, np.nan)
    edge = np.zeros(n, dtype=bool)
    if n == 0:
        return ratio, edge
    sig = np.asarray(elongation_grid(kh, kw) if grid is None else grid, np.float64)
    g = sig.size

    def col(a: np.ndarray | None) -> np.ndarray:
        v = np.zeros(n) if a is None else np.asarray(a, np.float64).reshape(-1).copy()
        v[~np.isfinite(v)] = 0.0
        return v

    cx, cy = col(x0), col(y0)
    nz = normalize(k)
    px, py = (p.float() for p in _points(kh, kw, supersample))
    sig32 = torch.from_numpy(sig).float()
    unit = torch.from_numpy(nz.unit.reshape(n, -1).astype(np.float32))
    usable = np.isfinite(ori) & ~nz.degenerate
    for name in ORIENTED:  # the two model forms, each on all its kernels at once
        ok = np.flatnonzero(usable & (fam == name))
        for s in range(0, ok.size, batch_size):
            idx = ok[s : s + batch_size]
            t = torch.from_numpy(np.radians(ori[idx])).float()[:, None, None]
            dx = px[None] - torch.from_numpy(cx[idx]).float()[:, None, None]
            dy = py[None] - torch.from_numpy(cy[idx]).float()[:, None, None]
            u = dx * torch.cos(t) + dy * torch.sin(t)  # [B, P, S]
            v = -dx * torch.sin(t) + dy * torch.cos(t)
            a, b = _profiles(u, v, sig32, sig32, name == SECOND_DERIVATIVE)  # [B, G, P, S]
            # every (sigma_u, sigma_v) template's pixel values: sums over the sub-points
            tmpl = torch.matmul(a.permute(0, 2, 1, 3), b.permute(0, 2, 3, 1))  # [B, P, G, G]
            tmpl = tmpl - tmpl.mean(1, keepdim=True)
            norm = torch.linalg.vector_norm(tmpl, dim=1)  # [B, G, G]
            dot = torch.einsum("bpij,bp->bij", tmpl, unit[idx])
            live = norm > 1e-6 * norm.amax(dim=(1, 2), keepdim=True)
            cos = torch.where(live, dot.abs() / norm.clamp_min(1e-30), -1.0)
            best = cos.reshape(len(idx), -1).argmax(dim=1).numpy()
            iu, iv = best // g, best % g
            ratio[idx] = sig[iv] / sig[iu]
            edge[idx] = (iu == 0) | (iu == g - 1) | (iv == 0) | (iv == g - 1)
    return ratio, edge


# --------------------------------------------------------------------------- orientation
def axis_orientation(orientation: np.ndarray) -> np.ndarray:
    """Orientation folded to an axis in [0, 180) degrees (an edge and its reverse agree)."""
    return np.mod(np.asarray(orientation, dtype=np.float64), 180.0)


def cardinal_sign(orientation: np.ndarray) -> np.ndarray:
    """+1 for an axis within :data:`CARDINAL_HALF_WIDTH` of 0 or 90 degrees, else -1 (NaN stays).

    The set of cardinal axes is invariant under a 90-degree rotation, so the index is the
    same whether the orientation is the derivative direction or the bar/edge direction.
    """
    o = np.mod(np.asarray(orientation, dtype=np.float64), 90.0)
    d = np.minimum(o, 90.0 - o)  # distance to the nearest cardinal axis, [0, 45]
    return np.where(np.isnan(d), np.nan, np.where(d < CARDINAL_HALF_WIDTH, 1.0, -1.0))
