"""Parametric least-squares fits of each kernel to the atlas's pattern models (batched torch).

Models (pixel-integrated Gaussians from :func:`kernelatlas.atlas.functional.gaussian_basis`,
centre ``(x0, y0)`` in pixels, x right, y up; conventions of :mod:`kernelatlas.taxonomy`):

- ``center``: ``b1 G(s1) + b2 G(s2)``, ``s2 = s1 * ratio > s1`` (a DoG when ``b2 < 0``);
  reported as amplitude ``b1``, polarity ``sign(b1)`` and surround weight ``-b2 / b1``.
- ``first_derivative``: ``bx Gx + by Gy``: orientation ``atan2(-by, -bx)`` (the gradient
  direction, from the negative to the positive lobe), amplitude ``|b|``.
- ``second_derivative``: ``a * bar(t) + c * cross(t)`` (``bar = -d2G/du2``,
  ``cross = d2G/dudv``): orientation ``t`` in [0, 180); polarity ``sign(a)`` for a bar,
  a dominant cross is reported with polarity +1 (``cross(t, -1) == cross(t + 90, +1)``).

Each kernel is centred and unit-normalised first (as the atlas does), so ``R^2`` is the
explained fraction of the centred kernel's energy; amplitudes are in the kernel's own units.
Nonlinear parameters (centre, sigmas, orientation) start from the atlas's best template
and are refined by Adam on the variable-projection residual (amplitudes solved in closed
form at each step), all kernels of a batch at once, on CPU or GPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from .atlas.functional import _coords, _profiles
from .atlas.scoring import score_unit_kernels
from .atlas.templates import CENTER_SHAPES, build_bank
from .errors import KernelAtlasError
from .normalize import as_kernel_array, normalize
from .progress import advance
from .taxonomy import CENTER, DEGENERATE, FIRST_DERIVATIVE, PATTERN_FAMILIES, SECOND_DERIVATIVE

__all__ = ["fit_kernels", "FIT_COLUMNS"]

_PER_FAMILY = {
    CENTER: ("r2", "sigma", "sigma2", "surround_weight", "polarity", "x0", "y0", "amplitude"),
    FIRST_DERIVATIVE: ("r2", "sigma", "orientation", "x0", "y0", "amplitude"),
    SECOND_DERIVATIVE: ("r2", "sigma", "orientation", "polarity", "cross_share", "x0", "y0",
                        "amplitude"),
}  # fmt: skip
FIT_COLUMNS: tuple[str, ...] = (
    "fit_family",
    "fit_r2",
    "fit_sigma",
    "fit_orientation",
    "fit_polarity",
    "fit_x0",
    "fit_y0",
    "fit_amplitude",
    *(f"fit_{p}_{fam}" for fam in PATTERN_FAMILIES for p in _PER_FAMILY[fam]),
)
_RIDGE = 1e-6


class _Terms:
    """Separable basis terms ``py (x) px``: their centred Gram matrix and projections.

    Every model's basis is a (per-kernel) linear mix of separable terms, so inner products
    factor into 1-D dot products and the [N, kh, kw] bases are never built.
    """

    def __init__(self, u: torch.Tensor, terms: list[tuple[torch.Tensor, torch.Tensor]]):
        k = u.shape[1] * u.shape[2]
        t = len(terms)
        self.proj = torch.stack(
            [((u * px[:, None, :]).sum(-1) * py).sum(-1) for py, px in terms], 1
        )
        sums = [py.sum(-1) * px.sum(-1) for py, px in terms]
        gram: list[list[torch.Tensor | None]] = [[None] * t for _ in range(t)]
        for a in range(t):
            for b in range(a, t):
                ya, xa = terms[a]
                yb, xb = terms[b]
                g = (ya * yb).sum(-1) * (xa * xb).sum(-1) - sums[a] * sums[b] / k
                gram[a][b] = gram[b][a] = g
        self.gram = torch.stack([torch.stack(row, -1) for row in gram], -2)  # [N, t, t]


def _solve2(gram: torch.Tensor, proj: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-form 2x2 ridge least squares: (coefficients [N, 2], R^2 [N])."""
    ridge = _RIDGE * 0.5 * (gram[:, 0, 0] + gram[:, 1, 1])
    g00, g11, g01 = gram[:, 0, 0] + ridge, gram[:, 1, 1] + ridge, gram[:, 0, 1]
    det = (g00 * g11 - g01 * g01).clamp_min(1e-30)
    p0, p1 = proj[:, 0], proj[:, 1]
    c0 = (g11 * p0 - g01 * p1) / det
    c1 = (g00 * p1 - g01 * p0) / det
    return torch.stack([c0, c1], 1), c0 * p0 + c1 * p1


class _Model:
    """One family's parametrisation: unconstrained params -> (coefficients, R^2)."""

    def __init__(self, kh: int, kw: int) -> None:
        self.kh, self.kw = kh, kw
        self.smax = 2.0 * max(kh, kw)

    def centre(self, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (self.kw / 2.0) * torch.tanh(p[:, 0]), (self.kh / 2.0) * torch.tanh(p[:, 1])

    def sigma(self, q: torch.Tensor) -> torch.Tensor:
        return torch.exp(q).clamp(0.1, self.smax)

    def profiles(self, p: torch.Tensor, sigma: torch.Tensor):
        x0, y0 = self.centre(p)
        x, y = _coords(self.kh, self.kw, p.dtype, p.device)
        return (
            _profiles(x[None, :] - x0[:, None], sigma[:, None]),
            _profiles(y[None, :] - y0[:, None], sigma[:, None]),
        )

    @staticmethod
    def raw_centre(x0: np.ndarray, y0: np.ndarray, kh: int, kw: int) -> list[np.ndarray]:
        return [np.arctanh(np.clip(x0 / (kw / 2), -0.95, 0.95)),
                np.arctanh(np.clip(y0 / (kh / 2), -0.95, 0.95))]  # fmt: skip


class _Center(_Model):
    n_params = 4  # x0, y0, log s1, log(ratio - 1)

    def sigma2(self, p: torch.Tensor) -> torch.Tensor:
        return self.sigma(p[:, 2]) * (1.0 + torch.exp(p[:, 3]).clamp(0.05, 20.0))

    def solve(self, p: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        (ax, _, _), (ay, _, _) = self.profiles(p, self.sigma(p[:, 2]))
        (bx, _, _), (by, _, _) = self.profiles(p, self.sigma2(p))
        t = _Terms(u, [(ay, ax), (by, bx)])
        return _solve2(t.gram, t.proj)


class _First(_Model):
    n_params = 3  # x0, y0, log s

    def solve(self, p: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        (x0, x1, _), (y0, y1, _) = self.profiles(p, self.sigma(p[:, 2]))
        t = _Terms(u, [(y0, x1), (y1, x0)])  # Gx, Gy
        return _solve2(t.gram, t.proj)


class _Second(_Model):
    n_params = 4  # x0, y0, log s, t (radians)

    def solve(self, p: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        (x0, x1, x2), (y0, y1, y2) = self.profiles(p, self.sigma(p[:, 2]))
        t = _Terms(u, [(y0, x2), (y1, x1), (y2, x0)])  # Gxx, Gxy, Gyy
        c, s = torch.cos(p[:, 3]), torch.sin(p[:, 3])
        # bar = -(c^2 Gxx + 2cs Gxy + s^2 Gyy); cross = -cs Gxx + (c^2 - s^2) Gxy + cs Gyy
        bar = torch.stack([-c * c, -2 * c * s, -s * s], 1)
        cross = torch.stack([-c * s, c * c - s * s, c * s], 1)
        mix = torch.stack([bar, cross], 1)  # [N, 2, 3]
        gram = mix @ t.gram @ mix.transpose(1, 2)
        proj = (mix @ t.proj[:, :, None]).squeeze(-1)
        return _solve2(gram, proj)


_MODELS = {CENTER: _Center, FIRST_DERIVATIVE: _First, SECOND_DERIVATIVE: _Second}


def _refine(model: _Model, p0: torch.Tensor, u: torch.Tensor, steps: int) -> torch.Tensor:
    p = p0.clone().requires_grad_(True)
    opt = torch.optim.Adam([p], lr=0.08)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1), eta_min=0.005)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        _, r2 = model.solve(p, u)
        (-r2.sum()).backward()
        opt.step()
        sched.step()
    return p.detach()


def _init_params(fam: str, sc, kh: int, kw: int) -> np.ndarray:
    """Unconstrained start parameters from the atlas's best template of the family."""
    if fam == CENTER:
        ratio = np.array([r for r, _ in CENTER_SHAPES])[sc.center_shape]
        cols = [*_Model.raw_centre(*sc.center_offset.T, kh, kw), np.log(sc.center_sigma),
                np.log(ratio - 1.0)]  # fmt: skip
    elif fam == FIRST_DERIVATIVE:
        cols = [*_Model.raw_centre(*sc.first_offset.T, kh, kw), np.log(sc.first_sigma)]
    else:
        t = np.deg2rad(sc.second_orientation)
        cols = [*_Model.raw_centre(*sc.second_offset.T, kh, kw), np.log(sc.second_sigma), t]
    return np.stack(cols, axis=1)


def _report(fam: str, model: _Model, p: torch.Tensor, u: torch.Tensor) -> dict[str, np.ndarray]:
    with torch.no_grad():
        coef, r2 = model.solve(p, u)
        x0, y0 = model.centre(p)
        sigma = model.sigma(p[:, 2])
        out = {"r2": r2, "sigma": sigma, "x0": x0, "y0": y0}
        if fam == CENTER:
            out["sigma2"] = model.sigma2(p)
            b1 = coef[:, 0]
            safe = torch.where(b1.abs() > 1e-12, b1, torch.full_like(b1, 1e-12))
            out["surround_weight"] = -coef[:, 1] / safe
            out["polarity"] = torch.where(b1 >= 0, 1.0, -1.0)
            out["amplitude"] = b1.abs()
        elif fam == FIRST_DERIVATIVE:
            out["orientation"] = torch.rad2deg(torch.atan2(-coef[:, 1], -coef[:, 0])) % 360.0
            out["amplitude"] = torch.linalg.vector_norm(coef, dim=1)
        else:
            a, c = coef[:, 0], coef[:, 1]
            t = torch.rad2deg(p[:, 3])
            is_cross = c.abs() > a.abs()
            t = torch.where(is_cross & (c < 0), t + 90.0, t) % 180.0
            out["orientation"] = t
            out["polarity"] = torch.where(is_cross | (a >= 0), 1.0, -1.0)
            out["cross_share"] = c.square() / (a.square() + c.square()).clamp_min(1e-24)
            out["amplitude"] = torch.sqrt(a.square() + c.square())
    return {k: v.detach().cpu().double().numpy() for k, v in out.items()}


def fit_kernels(
    kernels: np.ndarray,
    *,
    families: Sequence[str] = PATTERN_FAMILIES,
    device: str | torch.device | None = None,
    seed: int = 0,
    steps: int = 30,
    batch_size: int = 8192,
) -> pd.DataFrame:
    """Least-squares fits of every kernel to the centre / first / second-derivative models.

    Parameters
    ----------
    kernels : array [N, kh, kw] (kh, kw >= 3).
    families : which models to fit (subset of taxonomy.PATTERN_FAMILIES); the others'
        columns are NaN.
    device : torch device (None: CUDA when available, else CPU).
    seed : seeds torch for the run (the fit itself is deterministic given the inputs).
    steps : Adam refinement steps per model.
    batch_size : kernels fitted together.

    Returns
    -------
    DataFrame, one row per kernel, columns :data:`FIT_COLUMNS`: ``fit_family`` (the model
    with the highest R^2, ``degenerate`` for degenerate kernels), ``fit_r2`` and that
    model's ``fit_sigma, fit_orientation`` (deg, NaN for centre), ``fit_polarity``
    (+1/-1, 0 for first derivatives), ``fit_x0, fit_y0`` (px, x right, y up),
    ``fit_amplitude``; then every model's own parameters ``fit_<param>_<family>``.

    Examples
    --------
    >>> from kernelatlas.atlas import functional as F
    >>> k = F.first_derivative_pattern(7, 7, 1.2, 40.0, offset=(0.3, -0.2))
    >>> df = fit_kernels(k, device="cpu")
    >>> df.loc[0, "fit_family"], round(df.loc[0, "fit_orientation"]), bool(df.loc[0, "fit_r2"] > 0.999)
    ('first_derivative', 40, True)
    """
    arr = as_kernel_array(kernels)
    n, kh, kw = arr.shape
    if kh < 3 or kw < 3:
        raise KernelAtlasError(f"fit_kernels needs kernels of at least 3x3, got {kh}x{kw}")
    fams = tuple(families)
    bad = [f for f in fams if f not in PATTERN_FAMILIES]
    if bad or not fams:
        raise KernelAtlasError(
            f"families must be a non-empty subset of {PATTERN_FAMILIES}, got {bad or fams}"
        )
    if not (isinstance(steps, int) and steps >= 0):
        raise KernelAtlasError(f"steps must be a non-negative int, got {steps!r}")
    dev = (
        torch.device(device)
        if device
        else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    )
    torch.manual_seed(seed)

    cols: dict[str, np.ndarray] = {c: np.full(n, np.nan) for c in FIT_COLUMNS[1:]}
    nz = normalize(arr)
    ok = np.flatnonzero(~nz.degenerate)
    bank = build_bank(kh, kw)
    dtype = torch.float32

    def run(idx: np.ndarray) -> None:
        unit = nz.unit[idx].reshape(idx.size, -1)
        sc = score_unit_kernels(bank, torch.from_numpy(unit))
        u = torch.from_numpy(unit).to(dev, dtype).reshape(-1, kh, kw)
        for fam in fams:
            model = _MODELS[fam](kh, kw)
            p0 = torch.from_numpy(_init_params(fam, sc, kh, kw)).to(dev, dtype)
            p = _refine(model, p0, u, steps)
            res = _report(fam, model, p, u)
            res["amplitude"] = res["amplitude"] * nz.norm[idx]
            for k, v in res.items():
                cols[f"fit_{k}_{fam}"][idx] = v  # disjoint rows per batch
        advance(idx.size, "fit")

    batches = [ok[s : s + batch_size] for s in range(0, ok.size, batch_size)]
    jobs = torch.get_num_threads() if dev.type == "cpu" else 1
    if jobs > 1 and len(batches) > 1:
        # many small ops per step: whole batches side by side, one intra-op thread each
        from concurrent.futures import ThreadPoolExecutor

        torch.set_num_threads(1)
        try:
            with ThreadPoolExecutor(max_workers=jobs) as pool:
                list(pool.map(run, batches))
        finally:
            torch.set_num_threads(jobs)
    else:
        for b in batches:
            run(b)

    r2 = np.stack([cols[f"fit_r2_{f}"] for f in PATTERN_FAMILIES], axis=1)
    best = np.argmax(np.where(np.isnan(r2), -np.inf, r2), axis=1)
    family = np.array(PATTERN_FAMILIES, dtype=object)[best]
    family[nz.degenerate] = DEGENERATE
    rows = np.arange(n)
    for p in ("r2", "sigma", "orientation", "polarity", "x0", "y0", "amplitude"):
        per = np.stack(
            [cols.get(f"fit_{p}_{f}", np.full(n, np.nan)) for f in PATTERN_FAMILIES], axis=1
        )
        cols[f"fit_{p}"] = np.where(nz.degenerate, np.nan, per[rows, best])
    first = (family == FIRST_DERIVATIVE) & ~nz.degenerate
    cols["fit_polarity"] = np.where(first, 1.0, cols["fit_polarity"])
    cols["fit_polarity"] = np.nan_to_num(cols["fit_polarity"], nan=0.0).astype(np.int8)
    for f in (CENTER, SECOND_DERIVATIVE):
        c = f"fit_polarity_{f}"
        cols[c] = np.nan_to_num(cols[c], nan=0.0).astype(np.int8)
    df = pd.DataFrame({"fit_family": pd.Series(family, dtype=object), **cols})
    return df[list(FIT_COLUMNS)]
