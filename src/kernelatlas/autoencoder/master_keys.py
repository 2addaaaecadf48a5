"""Master-key discovery (Babaiee et al., NeurIPS 2025), automated.

The follow-up paper sampled 50 points of a trained autoencoder's latent, decoded them, and
greedily kept the 8 filters that best explain all kernels as ``a * filter + b``.

How a kernel is "explained" (decided here, documented in docs/autoencoder.md): for a
centred unit kernel ``w`` and a centred unit filter ``f``, the least-squares fit of
``a * f + b`` to ``w`` has ``b = 0`` and ``a = <w, f>``, and explains the fraction
``cos(w, f)^2`` of the kernel's (centred) energy; the sign of ``a`` is free, so a filter and
its negative are the same filter. A set of filters explains a kernel by its best member:
``R^2 = max_f cos(w, f)^2``. Two figures are reported for every number of filters:

- ``explained``: mean ``R^2`` over kernels (the greedy objective by default);
- ``covered``: fraction of kernels with ``max_f |cos(w, f)| > 1 - threshold``, i.e. a
  cosine distance (up to sign) below the autoencoder's classified threshold;

each beside the same figure on iid Gaussian null kernels (``null_explained``,
``null_covered``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ..errors import KernelAtlasError
from ..normalize import normalize
from ..null import gaussian_null
from ._data import kernels_from
from .model import KernelAutoencoder, resolve_device

__all__ = ["MasterKeys", "discover_master_keys", "explained_by", "match_filters"]

COVERAGE_COLUMNS: tuple[str, ...] = (
    "n_filters",
    "explained",
    "covered",
    "null_explained",
    "null_covered",
)
MATCH_COLUMNS: tuple[str, ...] = ("published", "best_filter", "cosine", "abs_cosine")


@dataclass(frozen=True)
class MasterKeys:
    """Result of :func:`discover_master_keys`.

    Attributes
    ----------
    filters : float32 [k, kh, kw], the chosen filters (centred, unit norm), greedy order.
    latents : float64 [k], the latent coordinate each filter was decoded from.
    candidates : float32 [n_candidates, kh, kw]; ``candidate_latents`` [n_candidates].
    selected : int64 [k], indices of the chosen filters into ``candidates``.
    coverage : DataFrame (``n_filters, explained, covered, null_explained, null_covered``),
        one row per number of filters 1..k (the first ``m`` filters in greedy order).
    match : DataFrame (``published, best_filter, cosine, abs_cosine``), for each of the
        eight published 7x7 master-key filters the best-matching discovered filter by
        ``|cos|``; None for other kernel sizes.
    threshold : the cosine-distance threshold behind ``covered``.
    autoencoder : the KernelAutoencoder whose latent was sampled.
    n_kernels : kernels the coverage was measured on.
    """

    filters: np.ndarray
    latents: np.ndarray
    candidates: np.ndarray
    candidate_latents: np.ndarray
    selected: np.ndarray
    coverage: pd.DataFrame
    match: pd.DataFrame | None
    threshold: float
    autoencoder: KernelAutoencoder
    n_kernels: int


def _unit_flat(kernels: np.ndarray) -> np.ndarray:
    nz = normalize(kernels)
    u = nz.unit[~nz.degenerate]
    return u.reshape(u.shape[0], -1)


def _cos2(x: np.ndarray, f: np.ndarray, device: torch.device) -> np.ndarray:
    """``cos(x_i, f_j)^2`` [N, M] for unit rows ``x`` [N, d] and unit rows ``f`` [M, d]."""
    ft = torch.from_numpy(np.ascontiguousarray(f, dtype=np.float32)).to(device)
    out = np.empty((x.shape[0], f.shape[0]), dtype=np.float32)
    for s in range(0, x.shape[0], 65_536):
        xb = torch.from_numpy(np.ascontiguousarray(x[s : s + 65_536])).to(device)
        out[s : s + xb.shape[0]] = ((xb @ ft.T) ** 2).clamp(0, 1).cpu().numpy()
    return out


def explained_by(
    kernels: object, filters: object, *, threshold: float, device: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``explained`` and ``covered`` (see module doc) of kernels by the first m filters.

    Returns two float arrays [M], entry ``m-1`` for the first ``m`` filters.
    """
    x = _unit_flat(np.asarray(kernels))
    f = _unit_flat(np.asarray(filters))
    if x.shape[0] == 0 or f.shape[0] == 0:
        raise KernelAtlasError("explained_by needs at least one usable kernel and filter")
    c2 = _cos2(x, f, resolve_device(device))
    best = np.maximum.accumulate(c2, axis=1)  # [N, M]: best over the first m filters
    cut = (1.0 - float(threshold)) ** 2
    return best.mean(0).astype(np.float64), (best > cut).mean(0).astype(np.float64)


def match_filters(found: np.ndarray, reference: np.ndarray) -> pd.DataFrame:
    """For each reference filter, the found filter of highest ``|cos|`` (both centred)."""
    f = _unit_flat(np.asarray(found))
    r = _unit_flat(np.asarray(reference))
    cos = r.astype(np.float64) @ f.astype(np.float64).T
    best = np.abs(cos).argmax(1)
    c = cos[np.arange(r.shape[0]), best]
    return pd.DataFrame(
        {
            "published": np.arange(1, r.shape[0] + 1, dtype=np.int64),
            "best_filter": best.astype(np.int64),
            "cosine": c,
            "abs_cosine": np.abs(c),
        },
        columns=list(MATCH_COLUMNS),
    )


def discover_master_keys(
    bank_or_kernels: object,
    k: int = 8,
    *,
    n_candidates: int = 50,
    kernel_size: int | tuple[int, int] | None = None,
    autoencoder: KernelAutoencoder | None = None,
    objective: str = "explained",
    max_kernels: int = 200_000,
    epochs: int = 20,
    hidden: int = 256,
    seed: int = 0,
    device: str | None = None,
    progress: bool = False,
) -> MasterKeys:
    """Greedy selection of ``k`` filters among ``n_candidates`` decoded latent points.

    Parameters
    ----------
    bank_or_kernels : kernels [N, kh, kw], a :class:`kernelatlas.bank.KernelBank`, or a
        path to a bank / ``.npy`` file.
    k : number of filters to keep.
    n_candidates : evenly spaced latents decoded as candidates, spanning the 0.1%-99.9%
        quantiles of the kernels' latents (the part of the line the kernels use).
    kernel_size : which kernels of a bank to use (default: the most common size; for an
        array, its shape).
    autoencoder : a fitted :class:`KernelAutoencoder` of that size; trained here (with
        ``epochs``, ``hidden``, ``seed``, ``device``) when omitted.
    objective : ``"explained"`` (mean R^2) or ``"covered"`` (fraction under threshold),
        maximised greedily.
    max_kernels : at most this many kernels (a seeded random subset) score the candidates.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).standard_normal((300, 3, 3)).astype(np.float32)
    >>> mk = discover_master_keys(x, k=2, n_candidates=5, epochs=1, hidden=16)
    >>> mk.filters.shape, list(mk.coverage["n_filters"])
    ((2, 3, 3), [1, 2])
    """
    if objective not in ("explained", "covered"):
        raise KernelAtlasError(f"objective must be 'explained' or 'covered', got {objective!r}")
    for name, v in (("k", k), ("n_candidates", n_candidates), ("max_kernels", max_kernels)):
        if not isinstance(v, (int, np.integer)) or v < 1:
            raise KernelAtlasError(f"{name} must be a positive integer, got {v!r}")
    if k > n_candidates:
        raise KernelAtlasError(f"k={k} exceeds n_candidates={n_candidates}: sample more points")
    kernels = kernels_from(bank_or_kernels, kernel_size)
    kh, kw = kernels.shape[1:]
    if autoencoder is None:
        autoencoder = KernelAutoencoder(
            (kh, kw),
            hidden=hidden,
            epochs=epochs,
            seed=seed,
            device=device,
            progress=progress,
            name_spectrum=False,
        ).fit(kernels)
    elif not hasattr(autoencoder, "net_"):
        raise KernelAtlasError("the autoencoder passed is not fitted: call fit() or load() first")
    x = _unit_flat(kernels)
    if x.shape[0] == 0:
        raise KernelAtlasError("no usable (non-degenerate) kernels to discover filters from")
    rng = np.random.default_rng(seed)
    if x.shape[0] > max_kernels:
        x = x[np.sort(rng.choice(x.shape[0], int(max_kernels), replace=False))]
    z = autoencoder.transform(x.reshape(-1, kh, kw))
    lo, hi = np.quantile(z[np.isfinite(z)], [0.001, 0.999])
    cz = np.linspace(float(lo), float(hi), int(n_candidates))
    cand = autoencoder.inverse_transform(cz.astype(np.float32))
    dev = resolve_device(device)
    c2 = _cos2(x, cand.reshape(n_candidates, -1), dev)  # [N, C]
    cut = (1.0 - float(autoencoder.threshold_)) ** 2
    gain_of = (lambda v: v) if objective == "explained" else (lambda v: v > cut)
    best = np.zeros(x.shape[0], dtype=np.float32)
    chosen: list[int] = []
    for _ in range(int(k)):  # greedy: loop over filters, vectorised over kernels
        score = gain_of(np.maximum(best[:, None], c2)).mean(0, dtype=np.float64)
        score[chosen] = -np.inf
        j = int(np.argmax(score))
        chosen.append(j)
        best = np.maximum(best, c2[:, j])
    sel = np.asarray(chosen, dtype=np.int64)
    filters = cand[sel]
    null = gaussian_null(min(x.shape[0], 20_000), kh, kw, seed=seed + 1)
    thr = float(autoencoder.threshold_)
    ex, cov = explained_by(x.reshape(-1, kh, kw), filters, threshold=thr, device=str(dev))
    nex, ncov = explained_by(null, filters, threshold=thr, device=str(dev))
    coverage = pd.DataFrame(
        {
            "n_filters": np.arange(1, int(k) + 1, dtype=np.int64),
            "explained": ex,
            "covered": cov,
            "null_explained": nex,
            "null_covered": ncov,
        },
        columns=list(COVERAGE_COLUMNS),
    )
    match = None
    if (kh, kw) == (7, 7):
        try:
            from ..atlas.functional import master_key_filters
        except ImportError as exc:
            raise KernelAtlasError(
                f"comparing with the published filters needs kernelatlas.atlas.functional ({exc})"
            ) from None
        match = match_filters(filters, np.asarray(master_key_filters(), dtype=np.float32))
    return MasterKeys(
        filters=filters,
        latents=cz[sel],
        candidates=cand,
        candidate_latents=cz,
        selected=sel,
        coverage=coverage,
        match=match,
        threshold=thr,
        autoencoder=autoencoder,
        n_kernels=int(x.shape[0]),
    )
