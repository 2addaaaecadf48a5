"""Pure pattern generators and metrics of the atlas (torchvision ``functional`` style).

Every generator returns zero-mean, unit-L2 float32 patterns ``[N, kh, kw]`` for any kernel
size (odd or even, 1..128 per side, :mod:`kernelatlas.sizes`), with parameters that broadcast (scalars or 1-D arrays of one
common length ``N``) and sub-pixel centre offsets ``(dx, dy)`` in pixels. Conventions
(``x`` right, ``y`` *up*, orientation counter-clockwise from +x, polarity) are those of
:mod:`kernelatlas.taxonomy`.

Patterns are *pixel-integrated*: each pixel holds the integral of the continuous pattern
over its unit square, so a Gaussian of tiny sigma is an exact delta, a first derivative of
tiny sigma centred on a pixel is the central difference ``[-1, 0, 1] / 2`` and one centred
half a pixel off is the forward difference ``[-1, 1]`` (the master-key filters 1-4).
Pixel integration is linear and shift invariant, so the derivative families stay exactly
steerable: ``d/du G = cos t * Gx + sin t * Gy`` and
``d2/du2 G = c^2 Gxx + 2 c s Gxy + s^2 Gyy`` hold pixel by pixel.

The torch primitive :func:`gaussian_basis` is shared with :mod:`kernelatlas.fit` (it is
differentiable in the centre and sigma), so the atlas and the fits use one formula.

Examples
--------
>>> from kernelatlas.atlas import functional as F
>>> p = F.first_derivative_pattern(7, 7, 1.0, [0.0, 90.0])
>>> p.shape, p.dtype
((2, 7, 7), dtype('float32'))
>>> float(abs(p.sum())) < 1e-5
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from importlib import resources

import numpy as np
import torch

from ..errors import KernelAtlasError
from ..sizes import MAX_SIDE, MIN_SIDE, parse_kernel_size

__all__ = [
    "MIN_SIZE",
    "MAX_SIZE",
    "gaussian_basis",
    "affine_gaussian_basis",
    "affine_gaussian_edges",
    "edges_to_pixels",
    "center_pattern",
    "first_derivative_pattern",
    "second_derivative_pattern",
    "unit_patterns",
    "cosine_similarity",
    "angular_difference",
    "master_key_filters",
    "discrete_gaussian",
]

MIN_SIZE = MIN_SIDE  # the one range (kernelatlas.sizes)
MAX_SIZE = MAX_SIDE
_SQRT2 = math.sqrt(2.0)
_INV_SQRT2PI = 1.0 / math.sqrt(2.0 * math.pi)

ArrayLike = float | int | Sequence[float] | np.ndarray


# --------------------------------------------------------------------------- primitives


def _check_size(kh: int, kw: int) -> tuple[int, int]:
    try:
        size = (int(kh), int(kw))
    except (TypeError, ValueError):
        raise KernelAtlasError(f"kernel size must be integers, got {kh!r} x {kw!r}") from None
    return parse_kernel_size(size, name="kernel size")


def _coords(kh: int, kw: int, dtype: torch.dtype, device: torch.device | str | None = None):
    """Pixel-centre coordinates: x [kw] (rightwards), y [kh] (upwards), origin at the centre."""
    x = torch.arange(kw, dtype=dtype, device=device) - (kw - 1) / 2.0
    y = (kh - 1) / 2.0 - torch.arange(kh, dtype=dtype, device=device)
    return x, y


def _profiles(u: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Pixel-integrated 1-D Gaussian and its first two derivatives.

    ``u`` [..., K] are pixel centres relative to the pattern centre, ``sigma`` [..., 1].
    Returns ``g0, g1, g2``: the integrals over ``[u - 1/2, u + 1/2]`` of the normalised
    Gaussian ``n(u; s)``, of ``n'`` and of ``n''``.
    """
    hi = (u + 0.5) / sigma
    lo = (u - 0.5) / sigma
    g0 = 0.5 * (torch.special.erf(hi / _SQRT2) - torch.special.erf(lo / _SQRT2))
    n_hi = torch.exp(-0.5 * hi * hi) * (_INV_SQRT2PI / sigma)
    n_lo = torch.exp(-0.5 * lo * lo) * (_INV_SQRT2PI / sigma)
    g1 = n_hi - n_lo
    g2 = -(hi * n_hi - lo * n_lo) / sigma  # n'(u) = -(u / s^2) n(u)
    return g0, g1, g2


def gaussian_basis(
    kh: int,
    kw: int,
    sigma: torch.Tensor,
    x0: torch.Tensor,
    y0: torch.Tensor,
    *,
    order: int = 2,
) -> dict[str, torch.Tensor]:
    """Pixel-integrated Gaussian and its derivatives, batched and differentiable.

    Parameters
    ----------
    kh, kw : kernel size.
    sigma, x0, y0 : tensors [N] (one dtype/device): Gaussian sigma and centre (pixels,
        ``x`` right, ``y`` up, from the kernel centre).
    order : 0, 1 or 2: highest derivative order returned.

    Returns
    -------
    dict of [N, kh, kw] tensors: ``G`` (integral 1 over the plane), and with ``order >= 1``
    ``Gx, Gy``, with ``order >= 2`` ``Gxx, Gxy, Gyy`` (derivatives along +x and +y).
    Not centred or normalised.
    """
    x, y = _coords(kh, kw, sigma.dtype, sigma.device)
    s = sigma[:, None]
    gx0, gx1, gx2 = _profiles(x[None, :] - x0[:, None], s)  # [N, kw]
    gy0, gy1, gy2 = _profiles(y[None, :] - y0[:, None], s)  # [N, kh]

    def outer(py: torch.Tensor, px: torch.Tensor) -> torch.Tensor:
        return py[:, :, None] * px[:, None, :]

    out = {"G": outer(gy0, gx0)}
    if order >= 1:
        out["Gx"] = outer(gy0, gx1)
        out["Gy"] = outer(gy1, gx0)
    if order >= 2:
        out["Gxx"] = outer(gy0, gx2)
        out["Gxy"] = outer(gy1, gx1)
        out["Gyy"] = outer(gy2, gx0)
    return out


def edges_to_pixels(h: torch.Tensor) -> torch.Tensor:
    """Pixel values [kh, kw, ...] from an edge grid [kh+1, kw+1, ...] (rows from the top,
    columns from the left): the second difference ``H(x1, y1) - H(x0, y1) - H(x1, y0) +
    H(x0, y0)`` over each pixel's corners."""
    dx = h[:, 1:] - h[:, :-1]
    return dx[:-1] - dx[1:]  # rows run downwards, y upwards


def affine_gaussian_edges(
    kh: int,
    kw: int,
    sigma_u: torch.Tensor,
    sigma_v: torch.Tensor,
    theta: torch.Tensor,
    x0: torch.Tensor,
    y0: torch.Tensor,
    *,
    order: int = 2,
) -> dict[str, torch.Tensor]:
    """Edge grids [kh+1, kw+1, N] (batch last) whose pixel second differences
    (:func:`edges_to_pixels`) are the pixel-integrated derivatives of an affine Gaussian.

    ``hx`` -> ``Gx``, ``hy`` -> ``Gy`` (``order >= 1``); ``g`` -> ``Gxy`` and the
    pixel-axis factors ``ex``, ``ey`` [kw+1 or kh+1, N] with ``Gxx`` from
    ``qr * g - ex * hx`` and ``Gyy`` from ``qp * g - ey * hy`` (``order == 2``; ``qr``,
    ``qp`` [N] are returned too). The second difference is linear, so a steered mix of
    derivatives costs one difference of the mixed grids. Terms constant along an axis are
    dropped (their second difference is zero).
    """
    dtype, dev = sigma_u.dtype, sigma_u.device
    c, s = torch.cos(theta), torch.sin(theta)
    au, av = 1.0 / sigma_u.square(), 1.0 / sigma_v.square()
    p = c * c * au + s * s * av  # precision matrix [[p, q], [q, r]]
    q = c * s * (au - av)
    r = s * s * au + c * c * av
    det = au * av
    wx, wy = r / det, p / det  # marginal variances of x and y
    ex = (torch.arange(kw + 1, dtype=dtype, device=dev) - kw / 2.0)[:, None] - x0[None, :]
    ey = (kh / 2.0 - torch.arange(kh + 1, dtype=dtype, device=dev))[:, None] - y0[None, :]
    # half the marginal densities: Phi = (1 + erf) / 2, and the 1/2 alone cancels
    nx = torch.exp(-0.5 * ex * ex / wx) * (0.5 * torch.rsqrt(2 * math.pi * wx))  # [kw+1, N]
    ny = torch.exp(-0.5 * ey * ey / wy) * (0.5 * torch.rsqrt(2 * math.pi * wy))  # [kh+1, N]
    qr, qp = q / r, q / p
    # conditional standardised coordinates / sqrt(2): y given x, x given y
    wyx = (ey[:, None, :] + (qr * ex)[None]).mul_(torch.sqrt(0.5 * r))
    wxy = (ex[None] + (qp * ey)[:, None, :]).mul_(torch.sqrt(0.5 * p))
    out: dict[str, torch.Tensor] = {}
    if order >= 2:
        # G at the corners: the x marginal times the conditional density of y
        g = torch.exp(wyx.square().neg_()).mul_((nx * torch.sqrt(r) * (2.0 * _INV_SQRT2PI))[None])
        out.update(g=g, ex=ex / wx, ey=ey / wy, qr=qr, qp=qp)
    out["hx"] = torch.special.erf(wyx).mul_(nx[None])  # int_{-inf}^y G dy' (+ y-constants)
    out["hy"] = torch.special.erf(wxy).mul_(ny[:, None])  # int_{-inf}^x G dx'
    return out


def affine_gaussian_last(
    kh: int,
    kw: int,
    sigma_u: torch.Tensor,
    sigma_v: torch.Tensor,
    theta: torch.Tensor,
    x0: torch.Tensor,
    y0: torch.Tensor,
    *,
    order: int = 2,
) -> dict[str, torch.Tensor]:
    """:func:`affine_gaussian_basis` with the batch as the *last* axis ([kh, kw, N])."""
    e = affine_gaussian_edges(kh, kw, sigma_u, sigma_v, theta, x0, y0, order=order)
    out = {"Gx": edges_to_pixels(e["hx"]), "Gy": edges_to_pixels(e["hy"])}
    if order >= 2:
        out["Gxx"] = edges_to_pixels(e["qr"] * e["g"] - e["ex"][None] * e["hx"])
        out["Gxy"] = edges_to_pixels(e["g"])
        out["Gyy"] = edges_to_pixels(e["qp"] * e["g"] - e["ey"][:, None] * e["hy"])
    return out


def affine_gaussian_basis(
    kh: int,
    kw: int,
    sigma_u: torch.Tensor,
    sigma_v: torch.Tensor,
    theta: torch.Tensor,
    x0: torch.Tensor,
    y0: torch.Tensor,
    *,
    order: int = 2,
) -> dict[str, torch.Tensor]:
    """Pixel-integrated derivatives of an anisotropic (affine) Gaussian, exact, batched.

    The Gaussian has scale ``sigma_u`` along ``u = (cos theta, sin theta)`` (``theta`` in
    radians, counter-clockwise from +x, y up) and ``sigma_v`` across it, centred at
    ``(x0, y0)``; all tensors [N]. A derivative integrated over a pixel reduces to line
    integrals of the Gaussian along the pixel's edges, and each of those is closed-form
    (a 1-D Gaussian times a normal CDF, from the Gaussian's factorisation into a marginal
    and a conditional), so no pixel is sampled or approximated; with
    ``sigma_u == sigma_v`` this equals :func:`gaussian_basis`'s derivatives.

    Returns
    -------
    dict of [N, kh, kw] tensors: ``Gx, Gy`` (``order >= 1``) and ``Gxx, Gxy, Gyy``
    (``order == 2``), derivatives along +x and +y; not centred or normalised.
    """
    out = affine_gaussian_last(kh, kw, sigma_u, sigma_v, theta, x0, y0, order=order)
    return {k: v.permute(2, 0, 1).contiguous() for k, v in out.items()}


def gaussian_last(
    kh: int, kw: int, sigma: torch.Tensor, x0: torch.Tensor, y0: torch.Tensor
) -> torch.Tensor:
    """Pixel-integrated isotropic Gaussians [kh, kw, N] (integral 1), batch last."""
    x, y = _coords(kh, kw, sigma.dtype, sigma.device)
    gx = _profiles(x[:, None] - x0[None, :], sigma[None, :])[0]  # [kw, N]
    gy = _profiles(y[:, None] - y0[None, :], sigma[None, :])[0]  # [kh, N]
    return gy[:, None, :] * gx[None, :, :]


def _centre_unit(p: torch.Tensor, what: str) -> np.ndarray:
    """Subtract each pattern's mean, scale to unit L2 norm; float32 numpy."""
    p = p - p.mean(dim=(1, 2), keepdim=True)
    norm = torch.linalg.vector_norm(p, dim=(1, 2), keepdim=True)
    if not bool(torch.all(norm > 1e-12 * p.shape[1] * p.shape[2])):
        raise KernelAtlasError(
            f"{what}: some parameters give a constant pattern at this kernel size "
            "(sigma too small for the offset, or too large for the window): change sigma"
        )
    return (p / norm).to(torch.float32).numpy()


def _broadcast(**params: object) -> tuple[int, dict[str, torch.Tensor]]:
    """Broadcast scalar / 1-D parameters to one length N; float64 tensors."""
    arrs: dict[str, np.ndarray] = {}
    n = 1
    for name, value in params.items():
        try:
            a = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            raise KernelAtlasError(f"{name} must be a number or a 1-D array of numbers") from None
        if a.ndim > 1:
            raise KernelAtlasError(f"{name} must be a scalar or 1-D array, got shape {a.shape}")
        if not np.all(np.isfinite(a)):
            raise KernelAtlasError(f"{name} must be finite, got {value!r}")
        if a.ndim == 1:
            if n != 1 and a.size not in (1, n):
                raise KernelAtlasError(
                    f"parameters must be scalars or 1-D arrays of one common length; "
                    f"{name} has length {a.size}, others {n}"
                )
            n = max(n, a.size) if a.size != 1 else n
        arrs[name] = a
    if n == 0 or any(a.size == 0 for a in arrs.values()):
        raise KernelAtlasError("pattern parameters must not be empty arrays")
    out = {
        k: torch.from_numpy(np.broadcast_to(a.reshape(-1), (n,)).copy()) for k, a in arrs.items()
    }
    return n, out


def _split_offset(offset: object) -> tuple[object, object]:
    if isinstance(offset, np.ndarray) and offset.ndim == 2 and offset.shape[1] == 2:
        return offset[:, 0], offset[:, 1]
    try:
        dx, dy = offset  # type: ignore[misc]
    except (TypeError, ValueError):
        raise KernelAtlasError(
            f"offset must be (dx, dy) in pixels (scalars or 1-D arrays) or an array [N, 2], "
            f"got {offset!r}"
        ) from None
    return dx, dy


def _check_sigma(sigma: torch.Tensor, name: str = "sigma") -> None:
    if not bool(torch.all(sigma > 0)):
        raise KernelAtlasError(f"{name} must be > 0 (pixels)")


def _check_polarity(polarity: torch.Tensor) -> None:
    if not bool(torch.all((polarity == 1) | (polarity == -1))):
        raise KernelAtlasError("polarity must be +1 or -1")


# --------------------------------------------------------------------------- generators


def center_pattern(
    kh: int,
    kw: int,
    sigma: ArrayLike,
    *,
    surround_ratio: ArrayLike = 1.6,
    surround_weight: ArrayLike = 1.0,
    polarity: ArrayLike = 1,
    offset: tuple[ArrayLike, ArrayLike] | np.ndarray = (0.0, 0.0),
) -> np.ndarray:
    """Centre-surround patterns: DoG, LoG-like, Gaussian and near-delta.

    ``p * (G(s1) - a * G(s1 * surround_ratio))`` with normalised Gaussians ``G`` (integral
    1) centred at ``offset``; ``a = surround_weight`` in [0, 1] (``a = 0``: a Gaussian,
    which is centre-surround once centred; ``a = 1``, ratio 1.6: the classic DoG
    approximation of a Laplacian of Gaussian; a small ``sigma`` such as 0.25: near-delta).

    Parameters
    ----------
    kh, kw : kernel size (1..128 per side, odd or even).
    sigma : centre sigma in pixels (> 0); scalar or [N].
    surround_ratio : surround sigma / centre sigma (> 1).
    surround_weight : ``a`` in [0, 1].
    polarity : +1 on-centre, -1 off-centre.
    offset : ``(dx, dy)`` centre offset in pixels (x right, y up).

    Returns
    -------
    float32 array [N, kh, kw], zero mean, unit L2 norm.
    """
    kh, kw = _check_size(kh, kw)
    dx, dy = _split_offset(offset)
    n, p = _broadcast(
        sigma=sigma, ratio=surround_ratio, weight=surround_weight, pol=polarity, dx=dx, dy=dy
    )
    _check_sigma(p["sigma"])
    _check_polarity(p["pol"])
    if not bool(torch.all(p["ratio"] > 1)):
        raise KernelAtlasError("surround_ratio must be > 1 (surround wider than centre)")
    if not bool(torch.all((p["weight"] >= 0) & (p["weight"] <= 1))):
        raise KernelAtlasError("surround_weight must be in [0, 1]")
    g1 = gaussian_basis(kh, kw, p["sigma"], p["dx"], p["dy"], order=0)["G"]
    g2 = gaussian_basis(kh, kw, p["sigma"] * p["ratio"], p["dx"], p["dy"], order=0)["G"]
    pat = p["pol"][:, None, None] * (g1 - p["weight"][:, None, None] * g2)
    return _centre_unit(pat, "center_pattern")


def first_derivative_pattern(
    kh: int,
    kw: int,
    sigma: ArrayLike,
    theta_deg: ArrayLike,
    *,
    offset: tuple[ArrayLike, ArrayLike] | np.ndarray = (0.0, 0.0),
) -> np.ndarray:
    """First derivatives of a Gaussian (edge detectors): ``-d/du G``, ``u = (cos t, sin t)``.

    The positive lobe lies in the direction ``theta_deg`` (counter-clockwise from +x, y up):
    ``theta`` is the gradient direction, from the negative to the positive lobe.

    Parameters
    ----------
    kh, kw : kernel size.
    sigma : Gaussian sigma (pixels, > 0); scalar or [N].
    theta_deg : orientation in degrees; scalar or [N].
    offset : ``(dx, dy)`` centre offset in pixels (``(0, -0.5)`` on an odd kernel: a
        difference between the centre pixel and the one below it).

    Returns
    -------
    float32 array [N, kh, kw], zero mean, unit L2 norm.
    """
    kh, kw = _check_size(kh, kw)
    dx, dy = _split_offset(offset)
    n, p = _broadcast(sigma=sigma, theta=theta_deg, dx=dx, dy=dy)
    _check_sigma(p["sigma"])
    b = gaussian_basis(kh, kw, p["sigma"], p["dx"], p["dy"], order=1)
    t = torch.deg2rad(p["theta"])[:, None, None]
    pat = -(torch.cos(t) * b["Gx"] + torch.sin(t) * b["Gy"])
    return _centre_unit(pat, "first_derivative_pattern")


def second_derivative_pattern(
    kh: int,
    kw: int,
    sigma: ArrayLike,
    theta_deg: ArrayLike,
    *,
    kind: str = "bar",
    polarity: ArrayLike = 1,
    offset: tuple[ArrayLike, ArrayLike] | np.ndarray = (0.0, 0.0),
) -> np.ndarray:
    """Second derivatives of a Gaussian: bars/ridges and cross shapes.

    ``kind="bar"``: ``-p * d2/du2 G`` -- a bar perpendicular to ``u = (cos t, sin t)``,
    positive in the middle for ``p = +1``. ``kind="cross"``: ``p * d2/dudv G`` with
    ``v = (-sin t, cos t)``: four lobes, the positive ones on the diagonals ``t + 45`` and
    ``t + 225`` degrees for ``p = +1`` (``cross(t + 90, p) == cross(t, -p)``).

    Parameters
    ----------
    kh, kw : kernel size.
    sigma : Gaussian sigma (pixels, > 0); scalar or [N].
    theta_deg : the axis across the bar, degrees (period 180).
    kind : "bar" or "cross".
    polarity : +1 or -1.
    offset : ``(dx, dy)`` centre offset in pixels.

    Returns
    -------
    float32 array [N, kh, kw], zero mean, unit L2 norm.
    """
    kh, kw = _check_size(kh, kw)
    if kind not in ("bar", "cross"):
        raise KernelAtlasError(f"kind must be 'bar' or 'cross', got {kind!r}")
    dx, dy = _split_offset(offset)
    n, p = _broadcast(sigma=sigma, theta=theta_deg, pol=polarity, dx=dx, dy=dy)
    _check_sigma(p["sigma"])
    _check_polarity(p["pol"])
    b = gaussian_basis(kh, kw, p["sigma"], p["dx"], p["dy"], order=2)
    t = torch.deg2rad(p["theta"])[:, None, None]
    c, s = torch.cos(t), torch.sin(t)
    if kind == "bar":
        pat = -(c * c * b["Gxx"] + 2 * c * s * b["Gxy"] + s * s * b["Gyy"])
    else:
        pat = c * s * (b["Gyy"] - b["Gxx"]) + (c * c - s * s) * b["Gxy"]
    pat = p["pol"][:, None, None] * pat
    return _centre_unit(pat, "second_derivative_pattern")


# --------------------------------------------------------------------------- metrics


def unit_patterns(kernels: np.ndarray) -> np.ndarray:
    """Centre and unit-normalise kernels [N, kh, kw] (degenerate ones become zeros)."""
    from ..normalize import normalize

    return normalize(kernels).unit


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of the *centred* kernels ``a`` and ``b`` [N, kh, kw] -> [N].

    Degenerate (constant, zero, non-finite) kernels give 0.
    """
    ua, ub = unit_patterns(a), unit_patterns(b)
    if ua.shape != ub.shape:
        raise KernelAtlasError(f"shapes differ: {list(ua.shape)} vs {list(ub.shape)}")
    return np.einsum("nij,nij->n", ua.astype(np.float64), ub.astype(np.float64))


def angular_difference(a: ArrayLike, b: ArrayLike, period: float = 360.0) -> np.ndarray:
    """Absolute circular difference of angles in degrees, in ``[0, period / 2]``."""
    d = np.mod(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64), period)
    return np.minimum(d, period - d)


def discrete_gaussian(sigma: float, radius: int) -> np.ndarray:
    """Lindeberg's discrete analogue of the Gaussian, ``T(n; s) = exp(-s) I_n(s)``,
    ``s = sigma^2``, for ``n = -radius..radius`` (float64 [2 * radius + 1]).

    The kernel of discrete scale-space theory (its variance is exactly ``sigma^2``; sums
    to 1 over all ``n``), the model Lindeberg, Babaiee and Kiasari fit to the master-key
    filters. Computed from ``I_n(s) exp(-s) = (1/pi) int_0^pi exp(s (cos t - 1)) cos(n t) dt``
    (the trapezoidal rule is spectrally accurate for this periodic integrand).
    """
    if not sigma > 0 or int(radius) < 0:
        raise KernelAtlasError("discrete_gaussian needs sigma > 0 and radius >= 0")
    s = float(sigma) ** 2
    m = max(64, int(16 * (1 + math.sqrt(s))) + 2 * int(radius))
    t = np.linspace(0.0, math.pi, 2 * m + 1)
    n = np.arange(-int(radius), int(radius) + 1)
    f = np.exp(s * (np.cos(t) - 1.0))[None] * np.cos(n[:, None] * t[None])
    w = np.full(t.shape, t[1] - t[0])
    w[[0, -1]] *= 0.5
    return (f @ w) / math.pi


def master_key_filters() -> np.ndarray:
    """The eight published 7x7 master-key filters, float32 [8, 7, 7] (package data).

    From Babaiee, Kiasari, Rus and Grosu (NeurIPS 2025), as published in
    tonylindeberg/masterfiltmodel (CC BY 4.0); see ``kernelatlas/data/README.md``.
    Lindeberg et al. model 1-4 as half-pixel-offset first differences, 5-6 as centred
    first derivatives, 7 as a Gaussian minus a scaled Laplacian and 8 as a Gaussian.
    """
    text = resources.files("kernelatlas").joinpath("data", "master_key_filters_7x7.txt").read_text()
    rows: list[list[float]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or line.lower().startswith("filter"):
            continue
        rows.append([float(v) for v in line.split()])
    arr = np.asarray(rows, dtype=np.float32)
    if arr.shape != (56, 7):
        raise KernelAtlasError(
            f"master_key_filters_7x7.txt is corrupt (got {arr.shape[0]} rows): reinstall kernelatlas"
        )
    return arr.reshape(8, 7, 7)
