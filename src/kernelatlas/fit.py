"""Parametric least-squares fits of each kernel to every family's model, inside its bounds.

Each registered pattern family brings a :class:`~kernelatlas.atlas.family.FitModel`: basis
images of a few bounded nonlinear parameters (centre within the kernel, sigmas within the
atlas's sigma grid, the centre family's surround weight in [0, 1], ...), pixel-integrated
exactly like the atlas's templates. For every kernel (centred, unit norm, as the atlas sees
it) and every family:

1. start from the atlas's best template of that family (its scale, offset, orientation);
2. solve the amplitudes in closed form for given nonlinear parameters (variable
   projection; the centre family's on the cone ``0 <= a <= 1``);
3. refine the nonlinear parameters by damped Gauss-Newton (Levenberg-Marquardt, forward
   difference Jacobians) in an unconstrained coordinate that maps onto each parameter's
   range (a sigmoid; log-sigmoid for scales), so no fitted parameter can leave its range;
   all kernels of a batch at once, on CPU or GPU.

``R^2`` is the explained fraction of the centred kernel's energy.

The fitted family (``fit_family``) is the atlas's family for the kernel (its best family by
normalised margin, also when that margin is below the threshold) unless another family's
fit explains more of the kernel's energy by at least :data:`FIT_MARGIN` (``R^2`` units).
The fits thus never contradict the atlas on a close call, and say so where a model clearly
fits better than the atlas's template grid suggested.

Examples
--------
>>> from kernelatlas.atlas import functional as F
>>> k = F.first_derivative_pattern(7, 7, 1.2, 40.0, offset=(0.3, -0.2))
>>> df = fit_kernels(k, device="cpu")
>>> df.loc[0, "fit_family"], round(df.loc[0, "fit_orientation"]), bool(df.loc[0, "fit_r2"] > 0.999)
('first_derivative', 40, True)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from .atlas.family import wrap_angle
from .errors import KernelAtlasError
from .estimator import BaseEstimator, Device, Interval, KernelSize
from .normalize import normalize
from .null import DEFAULT_NULL_SIZE
from .progress import advance
from .sizes import check_supported, parse_kernel_size
from .taxonomy import DEFAULT_NULL_FPR, DEGENERATE

__all__ = ["KernelFitter", "fit_kernels", "fit_columns", "FIT_MARGIN", "COMMON_COLUMNS"]

#: ``fit_family`` differs from the atlas's family only where another family's fit explains
#: at least this much more of the kernel's (centred) energy. On synthetic kernels of known
#: family (noise 0.3) another family's fit beats the true one's by more than 0.006 in under
#: 1% of the kernels, so the margin never fires on clean patterns; on the shipped real 5x5
#: kernels, which no model describes exactly, 0.05 / 0.10 / 0.15 leave 88-99% / 95-99.9% /
#: 97.5-100% of the classified kernels with the atlas's family (docs/atlas.md, "Fits"):
#: 0.15 keeps every shipped model above 97%.
FIT_MARGIN = 0.15

COMMON_COLUMNS: tuple[str, ...] = (
    "fit_family",
    "fit_r2",
    "fit_sigma",
    "fit_orientation",
    "fit_polarity",
    "fit_x0",
    "fit_y0",
    "fit_amplitude",
)
_SUMMARY = ("sigma", "orientation", "polarity", "x0", "y0", "amplitude")
_FD_STEP = 1e-3  # forward-difference step in the unconstrained coordinates
_MAX_STEP = 2.0  # largest Gauss-Newton step per coordinate and iteration
_LANES = 64  # batches are padded to a multiple of this (see KernelFitter.predict)


def _fitted_families(names: Sequence[str] | None = None) -> list[Any]:
    from .atlas.registry import families, get_family

    fams = families() if names is None else [get_family(n) for n in names]
    return [f for f in fams if f.model is not None]


def fit_columns(families: Sequence[str] | None = None) -> tuple[str, ...]:
    """The fit table's columns: the common ``fit_*`` columns, then every fitted family's own
    ``fit_<param>_<family>`` columns, in registry order."""
    per = [f"fit_{c}_{fam.name}" for fam in _fitted_families(families) for c in fam.model.columns]
    return (*COMMON_COLUMNS, *per)


def __getattr__(name: str) -> Any:
    if name == "FIT_COLUMNS":  # live: follows the registry
        return fit_columns()
    raise AttributeError(f"module 'kernelatlas.fit' has no attribute {name!r}")


# --------------------------------------------------------------------------- the engine


class _Coords:
    """Natural parameters [P, B] <-> unconstrained coordinates [Pf, B] of the free ones."""

    def __init__(self, params: Sequence[Any]) -> None:
        self.params = tuple(params)
        self.free = [i for i, p in enumerate(self.params) if not p.fixed]
        self.lo = [math.log(p.lo) if p.kind == "log" else p.lo for p in self.params]
        self.hi = [math.log(p.hi) if p.kind == "log" else p.hi for p in self.params]
        self.kinds = [p.kind for p in self.params]

    def to_q(self, theta: torch.Tensor) -> torch.Tensor:
        rows = []
        for i in self.free:
            v = theta[i]
            if self.kinds[i] != "angle":
                if self.kinds[i] == "log":
                    v = torch.log(v)
                f = ((v - self.lo[i]) / (self.hi[i] - self.lo[i])).clamp(1e-4, 1 - 1e-4)
                v = torch.log(f) - torch.log1p(-f)
            rows.append(v)
        return torch.stack(rows) if rows else theta[:0]

    def to_theta(self, q: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        """Natural parameters [P, ...] from free coordinates [Pf, ...] (fixed ones from
        ``fixed`` [P, ...])."""
        if not self.params:
            return fixed
        rows = list(fixed.unbind(0))
        for j, i in enumerate(self.free):
            v = q[j]
            if self.kinds[i] != "angle":
                v = self.lo[i] + (self.hi[i] - self.lo[i]) * torch.sigmoid(v)
                if self.kinds[i] == "log":
                    v = torch.exp(v)
            rows[i] = v
        return torch.stack(rows)


def _residual(
    model: Any, theta: torch.Tensor, u: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Residuals [K, B] of the best amplitudes at ``theta`` [P, B] for unit kernels ``u``
    [K, B], and the amplitudes [m, B]."""
    imgs = model.images(theta).reshape(model.n_amplitudes, -1, theta.shape[-1])  # [m, K, B]
    imgs = imgs - imgs.mean(dim=1, keepdim=True)
    m = model.n_amplitudes
    gram = torch.stack(
        [torch.stack([(imgs[i] * imgs[j]).sum(0) for j in range(m)]) for i in range(m)]
    )  # [m, m, B]
    proj = (imgs * u[None]).sum(1)  # [m, B]
    coef = model.amplitudes(gram, proj)
    return u - (coef[:, None, :] * imgs).sum(0), coef


def _levenberg_marquardt(
    model: Any, theta0: torch.Tensor, u: torch.Tensor, steps: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Refine ``theta0`` [P, B] for unit kernels ``u`` [K, B]; returns theta, amplitudes, R^2."""
    coords = _Coords(model.params)
    q = coords.to_q(theta0)
    pf, b = q.shape
    r, coef = _residual(model, coords.to_theta(q, theta0), u)
    cost = r.square().sum(0)
    lam = torch.full((b,), 1e-2, dtype=u.dtype, device=u.device)
    if pf:
        eye = torch.eye(pf, dtype=q.dtype, device=q.device)
        fixed_k = theta0.repeat(1, pf)  # [P, Pf*B]
        u_k = u.repeat(1, pf)  # [K, Pf*B]
    for _ in range(steps if pf else 0):
        # forward-difference Jacobian: all perturbed parameter sets in one batched call
        qs = (q[:, None, :] + _FD_STEP * eye[:, :, None]).reshape(pf, pf * b)
        rk, _ = _residual(model, coords.to_theta(qs, fixed_k), u_k)
        jac = ((rk.reshape(-1, pf, b) - r[:, None, :]) / _FD_STEP).unbind(1)  # Pf x [K, B]
        # normal equations per kernel, summed over pixels with elementwise ops (batched
        # matrix products of thousands of tiny matrices are far slower on CPU)
        a = torch.empty((b, pf, pf), dtype=torch.float64, device=q.device)
        for i in range(pf):
            for j in range(i, pf):
                a[:, i, j] = a[:, j, i] = (jac[i] * jac[j]).sum(0).to(torch.float64)
        g = torch.stack([(ji * r).sum(0) for ji in jac], 1).to(torch.float64)  # [B, Pf]
        damp = torch.diagonal(a, dim1=1, dim2=2).clamp_min(1e-12)
        lhs = a + torch.diag_embed(lam.to(torch.float64)[:, None] * damp + 1e-12)
        step = -torch.linalg.solve(lhs, g).T.to(q.dtype).clamp(-_MAX_STEP, _MAX_STEP)
        q_try = q + step
        r_try, coef_try = _residual(model, coords.to_theta(q_try, theta0), u)
        cost_try = r_try.square().sum(0)
        ok = cost_try < cost
        q = torch.where(ok, q_try, q)
        r = torch.where(ok, r_try, r)
        coef = torch.where(ok, coef_try, coef)
        cost = torch.where(ok, cost_try, cost)
        lam = torch.where(ok, lam * 0.3, lam * 4.0).clamp(1e-7, 1e7)
    return coords.to_theta(q, theta0), coef, 1.0 - cost


def _wrap_angles(model: Any, theta: torch.Tensor) -> torch.Tensor:
    if not model.params:
        return theta
    rows = list(theta.unbind(0))
    for i, p in enumerate(model.params):
        if p.kind == "angle":
            rows[i] = wrap_angle(rows[i], p.period)
    return torch.stack(rows)


# --------------------------------------------------------------------------- the estimator


class KernelFitter(BaseEstimator):
    """Fit every kernel to each family's bounded model, starting from the atlas.

    Parameters
    ----------
    kernel_size : int or (kh, kw) (the sizes the atlas names, 1-D included).
    families : names of the families to use, atlas and fits alike (None: every registered
        family; e.g. ``("center", "first_derivative", "second_derivative")`` for the
        receptive-field models of scale-space theory only).
    steps : Levenberg-Marquardt iterations per model.
    margin : ``R^2`` by which another family's fit must beat the atlas family's fit to
        become ``fit_family`` (default :data:`FIT_MARGIN`).
    batch_size : kernels fitted together (2048: the per-step tensors stay in cache; 8192
        is 25% slower on CPU).
    device : torch device (None: CUDA when available, else CPU).
    seed : seeds the default atlas's null (the fits themselves are deterministic).
    null_fpr, n_null : the default atlas's calibration.

    Attributes (after ``fit``)
    --------------------------
    atlas_ : the fitted :class:`~kernelatlas.atlas.Atlas` whose families and templates the
        fits start from.
    families_ : the fitted families' names, in order.
    models_ : family name -> its :class:`~kernelatlas.atlas.family.FitModel` for this size.
    kernel_shape_ : (kh, kw).

    Examples
    --------
    >>> from kernelatlas.atlas import functional as F
    >>> fitter = KernelFitter(kernel_size=7, n_null=2000).fit()
    >>> df = fitter.predict(F.center_pattern(7, 7, 1.0, polarity=-1))
    >>> df.loc[0, "fit_family"], int(df.loc[0, "fit_polarity"])
    ('center', -1)
    """

    _parameter_constraints = {
        "kernel_size": [KernelSize()],
        "families": [None, tuple, list],
        "steps": [Interval(int, 0, None)],
        "margin": [Interval(float, 0.0, 1.0)],
        "batch_size": [Interval(int, 1, None)],
        "device": [None, Device()],
        "seed": [int],
        "null_fpr": [Interval(float, 0.0, 1.0, closed="left")],
        "n_null": [Interval(int, 100, None)],
    }

    def __init__(
        self,
        kernel_size: int | tuple[int, int] = 7,
        families: Sequence[str] | None = None,
        steps: int = 10,
        margin: float = FIT_MARGIN,
        batch_size: int = 2048,
        device: str | None = None,
        seed: int = 0,
        null_fpr: float = DEFAULT_NULL_FPR,
        n_null: int = DEFAULT_NULL_SIZE,
    ) -> None:
        self.kernel_size = kernel_size
        self.families = families
        self.steps = steps
        self.margin = margin
        self.batch_size = batch_size
        self.device = device
        self.seed = seed
        self.null_fpr = null_fpr
        self.n_null = n_null

    def fit(self, atlas: Any = None) -> KernelFitter:
        """Take the atlas the fits start from (fitted here when None) and build the models.

        Parameters
        ----------
        atlas : a fitted :class:`~kernelatlas.atlas.Atlas` of this kernel size (e.g. the one
            an analysis already calibrated), or None for one with this fitter's ``families``,
            ``null_fpr``, ``n_null`` and ``seed`` (cached per process).
        """
        kh, kw = parse_kernel_size(self.kernel_size)
        check_supported(kh, kw)
        names = None if self.families is None else tuple(self.families)
        if names is not None and (not names or not all(isinstance(n, str) for n in names)):
            raise KernelAtlasError(f"KernelFitter: families must be family names, got {names!r}")
        _fitted_families(names)  # unknown names fail here, with the known ones listed
        if atlas is None:  # keyed by the families registered now, so the cache follows them
            from .atlas.registry import list_families

            key = names or tuple(list_families())
            atlas = _default_atlas(kh, kw, key, float(self.null_fpr), int(self.n_null),
                                   int(self.seed))  # fmt: skip
        else:
            atlas._check_fitted()
            if tuple(atlas.kernel_shape_) != (kh, kw):
                raise KernelAtlasError(
                    f"the atlas is for {atlas.kernel_shape_[0]}x{atlas.kernel_shape_[1]} kernels, "
                    f"the fitter for {kh}x{kw}: pass an atlas of the same size"
                )
        wanted = atlas.families_ if names is None else names
        missing = [n for n in wanted if n not in atlas.families_]
        if missing:
            raise KernelAtlasError(
                f"the atlas has no {', '.join(missing)} family at {kh}x{kw}: "
                "fit the atlas with those families"
            )
        from .atlas.registry import get_family

        self.atlas_ = atlas
        self.models_ = {}
        for name in wanted:
            model = get_family(name).fit_model(kh, kw)
            if model is not None:
                self.models_[name] = model
        self.families_ = tuple(self.models_)
        self.kernel_shape_ = (kh, kw)
        self._device = (
            torch.device(self.device)
            if self.device
            else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        )
        return self

    def predict(self, kernels: object) -> pd.DataFrame:
        """Fit every kernel; one row per kernel, columns :func:`fit_columns` (every
        registered family's; NaN for the families this fitter does not use).

        ``fit_family`` (see the module docstring; ``degenerate`` for degenerate kernels),
        ``fit_r2`` and that family's ``fit_sigma, fit_orientation`` (deg, NaN where the
        family has none), ``fit_polarity`` (+1/-1, 0 where none applies), ``fit_x0,
        fit_y0`` (px, x right, y up), ``fit_amplitude`` (in the kernel's own units); then
        every family's own parameters ``fit_<param>_<family>``.
        """
        self._check_fitted()
        arr = self._check_kernels(kernels, self.kernel_shape_)
        n = arr.shape[0]
        kh, kw = self.kernel_shape_
        nz = normalize(arr)
        scores, atlas_family, _ = self.atlas_.scores(arr)
        ok = np.flatnonzero(~nz.degenerate)
        cols: dict[str, np.ndarray] = {}
        for fam, model in self.models_.items():
            for c in model.columns:
                key = f"fit_{c}_{fam}"
                cols[key] = (
                    np.full(n, None, object) if c in model.str_columns else np.full(n, np.nan)
                )
        dev, dtype = self._device, torch.float32
        steps = int(self.steps)

        def run(idx: np.ndarray) -> None:
            # pad to whole SIMD blocks: every kernel then takes the same vectorised code
            # path whatever the batch, so results do not depend on the batch composition
            pad = np.concatenate([idx, np.repeat(idx[-1:], (-idx.size) % _LANES)])
            u = torch.from_numpy(nz.unit[pad].reshape(pad.size, -1).T.copy()).to(dev, dtype)
            for fam, model in self.models_.items():
                sc = scores[fam].take(pad)
                theta0 = torch.from_numpy(model.start(sc).T.copy()).to(dev, dtype)
                with torch.no_grad():
                    theta, coef, r2 = _levenberg_marquardt(model, theta0, u, steps)
                    theta = _wrap_angles(model, theta)
                    rep = model.report(theta, coef)
                    rep.update(model.post_fit(theta, coef, u, _levenberg_marquardt))
                rep["r2"] = r2
                for c in model.columns:
                    v = rep[c]
                    v = v.detach().cpu().double().numpy() if isinstance(v, torch.Tensor) else v
                    v = v[: idx.size]
                    if c == "amplitude":
                        v = v * nz.norm[idx]
                    cols[f"fit_{c}_{fam}"][idx] = v  # disjoint rows per batch
            advance(idx.size, "fit")

        jobs = torch.get_num_threads() if dev.type == "cpu" else 1
        # at least one batch per core (each on one intra-op thread: many small ops
        # split over several threads stall, most of all on a busy machine)
        n_batches = max(math.ceil(ok.size / int(self.batch_size)), min(jobs, ok.size // _LANES))
        batches = [b for b in np.array_split(ok, max(n_batches, 1)) if b.size]
        if dev.type == "cpu":
            from .threads import torch_thread_pool

            torch.set_num_threads(1)
            try:
                with torch_thread_pool(min(jobs, len(batches)), "kernelatlas-fit") as pool:
                    list(pool.map(run, batches))
            finally:
                torch.set_num_threads(jobs)
        else:
            for b in batches:
                run(b)
        return self._assemble(cols, atlas_family, nz.degenerate)

    def _assemble(
        self, cols: dict[str, np.ndarray], atlas_family: np.ndarray, degenerate: np.ndarray
    ) -> pd.DataFrame:
        names = self.families_
        n = degenerate.shape[0]
        rows = np.arange(n)
        r2 = np.stack([cols[f"fit_r2_{f}"] for f in names], axis=1) if names else np.zeros((n, 0))
        r2z = np.where(np.isnan(r2), -np.inf, r2)
        best = r2z.argmax(axis=1) if names else np.zeros(n, np.int64)
        index = {f: i for i, f in enumerate(names)}
        prior = np.array([index.get(f, -1) for f in atlas_family], dtype=np.int64)
        prior_r2 = np.where(prior >= 0, r2z[rows, np.maximum(prior, 0)], -np.inf)
        override = (prior < 0) | (r2z[rows, best] > prior_r2 + float(self.margin))
        choice = np.where(override, best, prior)
        family = np.array(names, dtype=object)[choice] if names else np.full(n, None, object)
        family = np.where(degenerate, DEGENERATE, family).astype(object)
        out: dict[str, np.ndarray] = {"fit_family": family}
        for p in ("r2", *_SUMMARY):
            per = []
            for f in names:
                src = "r2" if p == "r2" else self.models_[f].summary.get(p)
                col = cols.get(f"fit_{src}_{f}") if src else None
                per.append(np.full(n, np.nan) if col is None else col.astype(np.float64))
            stacked = np.stack(per, axis=1) if per else np.full((n, 1), np.nan)
            out[f"fit_{p}"] = np.where(degenerate, np.nan, stacked[rows, choice])
        out["fit_polarity"] = np.nan_to_num(out["fit_polarity"], nan=0.0).astype(np.int8)
        for fam, model in self.models_.items():
            for c in model.int_columns & set(model.columns):
                key = f"fit_{c}_{fam}"
                cols[key] = np.nan_to_num(cols[key].astype(np.float64), nan=0.0).astype(np.int8)
        columns = fit_columns()  # every registered family's columns: one schema for all
        for c in columns:
            if c not in out and c not in cols:
                cols[c] = (
                    np.zeros(n, np.int8) if c.startswith("fit_polarity_") else np.full(n, np.nan)
                )
        df = pd.DataFrame({**out, **cols})
        df["fit_family"] = df["fit_family"].astype(object)
        return df[list(columns)]


@functools.lru_cache(maxsize=16)
def _default_atlas(
    kh: int, kw: int, families: tuple[str, ...] | None, null_fpr: float, n_null: int, seed: int
) -> Any:
    from .atlas import Atlas

    return Atlas(kernel_size=(kh, kw), families=families, null_fpr=null_fpr, n_null=n_null,
                 seed=seed).fit()  # fmt: skip


def fit_kernels(
    kernels: np.ndarray,
    *,
    families: Sequence[str] | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
    steps: int = 10,
    batch_size: int = 2048,
    margin: float = FIT_MARGIN,
    atlas: Any = None,
) -> pd.DataFrame:
    """Fit kernels [N, kh, kw] to every family's bounded model (:class:`KernelFitter`).

    ``atlas``: a fitted :class:`~kernelatlas.atlas.Atlas` of the kernels' size to start
    from and to take the family decision from (None: a default one, cached per size).
    Returns the DataFrame of :meth:`KernelFitter.predict`.
    """
    from .normalize import as_kernel_array

    arr = as_kernel_array(kernels)
    kh, kw = int(arr.shape[1]), int(arr.shape[2])
    dev = None if device is None else str(device)
    fams = None if families is None else tuple(families)
    fitter = KernelFitter(kernel_size=(kh, kw), families=fams, steps=steps, margin=margin,
                          batch_size=batch_size, device=dev, seed=seed)  # fmt: skip
    return fitter.fit(atlas).predict(arr)
