"""Stage: normalisation as in the paper (centre each kernel, scale it to unit L2 norm)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import KernelAtlasError

__all__ = ["Normalized", "normalize", "as_kernel_array"]

# A kernel whose centred norm is below REL_TOL * its raw norm (or below ABS_TOL) is
# numerically constant ("dead") and goes to the degenerate family.
ABS_TOL = 1e-12
REL_TOL = 1e-5
#: Bytes of float64 intermediates :func:`normalize` works on at a time (a block of rows).
BLOCK_BYTES = 2 * 1024**2


@dataclass(frozen=True)
class Normalized:
    """Unit kernels and what normalisation learned about each input kernel.

    Attributes
    ----------
    unit : float32 array [N, kh, kw]; zero-mean, unit L2 norm (all zeros where degenerate).
    norm : float32 array [N]; L2 norm of the centred kernel (0 where non-finite).
    degenerate : bool array [N]; zero, constant, NaN/Inf or numerically dead kernels.

    ``len(nz)`` is N and ``nz[rows]`` (a slice, indices or a boolean mask) is the
    ``Normalized`` of those kernels, e.g. to hand one normalisation to several consumers
    (:meth:`kernelatlas.atlas.Atlas.predict_normalized`, the null references, the diagram).
    """

    unit: np.ndarray
    norm: np.ndarray
    degenerate: np.ndarray

    def __len__(self) -> int:
        return len(self.norm)

    def __getitem__(self, rows: slice | np.ndarray) -> Normalized:
        if isinstance(rows, (int, np.integer)):
            raise TypeError(
                "index a Normalized with a slice, indices or a mask (rows stay [N, ...])"
            )
        return Normalized(self.unit[rows], self.norm[rows], self.degenerate[rows])


def as_kernel_array(kernels: object) -> np.ndarray:
    """Validate ``kernels`` as an array [N, kh, kw] (a single [kh, kw] kernel is allowed)."""
    try:
        arr = np.asarray(kernels)
    except Exception as exc:  # e.g. ragged lists
        raise KernelAtlasError(f"kernels must be an array [N,kh,kw]: {exc}") from None
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim == 4 and arr.shape[1] == 1:
        raise KernelAtlasError(
            f"expected [N,kh,kw], got {list(arr.shape)}: squeeze the channel axis "
            "(kernels[:, 0]) or harvest the model with kernelatlas.harvest"
        )
    if arr.ndim != 3:
        raise KernelAtlasError(f"expected kernels of shape [N,kh,kw], got {list(arr.shape)}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise KernelAtlasError(f"kernels must be numeric, got dtype {arr.dtype}")
    return arr


def normalize(kernels: object) -> Normalized:
    """Centre each kernel (subtract its mean) and scale it to unit L2 norm.

    Vectorised over the batch; computed in float64 and returned as float32, a block of
    rows at a time (:data:`BLOCK_BYTES` of float64 intermediates: they stay in cache, about
    twice as fast on 65,536 7x7 kernels as one pass over the whole batch, and the
    intermediates of a large batch stay small). Each row's result depends on that row
    only, so any split of a batch gives the same bits.

    Examples
    --------
    >>> import numpy as np
    >>> n = normalize(np.arange(18, dtype=np.float32).reshape(2, 3, 3))
    >>> bool(np.allclose((n.unit ** 2).sum((1, 2)), 1.0))
    True
    """
    arr = as_kernel_array(kernels)
    n, d = arr.shape[0], arr.shape[1] * arr.shape[2]
    x = arr.reshape(n, d)
    unit = np.empty((n, d), dtype=np.float32)
    norm = np.empty(n, dtype=np.float32)
    degenerate = np.empty(n, dtype=bool)
    step = max(1, BLOCK_BYTES // (8 * max(d, 1)))
    for s in range(0, n, step):  # blocks of rows, not kernels
        _normalize_rows(x[s : s + step], unit[s : s + step], norm[s : s + step],
                        degenerate[s : s + step])  # fmt: skip
    return Normalized(unit=unit.reshape(arr.shape), norm=norm, degenerate=degenerate)


def _normalize_rows(x: np.ndarray, unit: np.ndarray, norm: np.ndarray, dead: np.ndarray) -> None:
    """:func:`normalize` of the rows ``x`` [n, d], written into ``unit``, ``norm``, ``dead``."""
    n, d = x.shape
    if x.dtype != np.float32:  # float32 input (the usual case) is scaled without a copy
        x = x.astype(np.float64, copy=False)
    # the peak |w| of the input is exact in either precision; NaN or Inf make it non-finite
    peak = np.abs(x).max(axis=1).astype(np.float64) if d else np.zeros(n)
    finite = np.isfinite(peak)
    if not finite.all():
        x = np.where(finite[:, None], x, 0.0)
        peak = np.where(finite, peak, 0.0)
    # Scale by the max |w| first so huge and denormal weights neither overflow nor vanish
    # (in float64: the division converts float32 input exactly).
    y = np.divide(x, np.where(peak > 0, peak, 1.0)[:, None], dtype=np.float64)
    raw = np.sqrt(np.einsum("ij,ij->i", y, y))
    yc = np.subtract(y, y.mean(axis=1, keepdims=True), out=y)
    rel = np.sqrt(np.einsum("ij,ij->i", yc, yc))
    with np.errstate(over="ignore"):
        full = rel * peak
    ok = finite & (peak > 0) & (full > ABS_TOL) & (rel > REL_TOL * raw)
    np.divide(yc, np.where(ok, rel, 1.0)[:, None], out=unit, casting="same_kind")
    if not ok.all():
        unit[~ok] = 0.0
    np.minimum(full, np.finfo(np.float32).max, out=norm, casting="same_kind")
    np.logical_not(ok, out=dead)
