"""Best cosine of unit kernels to each pattern family, with the best pattern's parameters.

One matrix product per batch against the bank (:mod:`.templates`), then each family's own
closed-form scorer on its slice of the product.

The product is computed column-major: ``bank.weights.T @ x.T``, one row per bank column,
one column per kernel (the same values, bit for bit, as ``x @ bank.weights``: each is the
same dot product). A family's block is then a run of contiguous rows, so its elementwise
work runs over one long contiguous axis instead of many short strided rows (2-3x faster
per pass), and each scorer still sees its block as ``[B, C]`` (a column-major view).

On the CPU the product is written into a buffer each thread keeps for its next batch
(:func:`_scratch`): a fresh 5-10 MB product per batch cost up to 26,000 page faults a
65,536-kernel 7x7 partition (30-50 ms of CPU, a third of ``predict``). Nothing a scorer
returns may point into that buffer: a score field that does is copied
(:func:`_own_memory`), so a family plugin that returns a view of its block stays correct.
"""

from __future__ import annotations

import threading

import numpy as np
import torch

from .family import FamilyScore
from .templates import AtlasBank

__all__ = ["score_unit_kernels", "product_columns"]

#: Spare floats at the end of each row of the column-major product. Rows of a power-of-two
#: number of floats (a batch of 2048 kernels) map a block of output rows onto the same
#: cache sets: the product then ran 3x slower at 3x3 on this machine's MKL.
ROW_PAD = 16

#: The largest product buffer (floats) a thread keeps between batches; a larger product
#: (a batch_size far above the default 2048) is allocated for its batch only. At 2048
#: kernels a buffer is 1.3M floats (7x7, 624 bank columns) to 2.9M (5x5, 1424).
SCRATCH_MAX_FLOATS = 8 << 20

_local = threading.local()


def _scratch(n: int, dtype: torch.dtype) -> torch.Tensor:
    """``n`` elements of this thread's product buffer (grown on demand, kept up to
    :data:`SCRATCH_MAX_FLOATS`); its contents are overwritten by the next product."""
    buf = getattr(_local, "buf", None)
    if buf is None or buf.dtype != dtype or buf.numel() < n:
        buf = torch.empty(n, dtype=dtype)
        if n <= SCRATCH_MAX_FLOATS:
            _local.buf = buf
    return buf[:n]


def product_columns(x: torch.Tensor, weights: torch.Tensor, *, reuse: bool = False) -> torch.Tensor:
    """The projections of ``x`` [B, K] on ``weights`` [K, C] as a column-major [B, C]
    (float32, CPU): ``(x @ weights)`` with its columns contiguous.

    With ``reuse`` (CPU only) the product is written into this thread's buffer, which the
    next ``reuse`` product in the thread overwrites.
    """
    b, c = x.shape[0], weights.shape[1]
    if x.device.type != "cpu":  # the device's own product, as before; transposed there
        return (x @ weights).T.contiguous().cpu().T
    n = c * (b + ROW_PAD)
    flat = _scratch(n, x.dtype) if reuse else torch.empty(n, dtype=x.dtype)
    out = flat.view(c, b + ROW_PAD)[:, :b]
    torch.mm(weights.T, x.T, out=out)
    return out.T


def _own_memory(score: FamilyScore, y: np.ndarray) -> FamilyScore:
    """``score`` with every field that may point into ``y`` (the product buffer) copied."""

    def own(a: np.ndarray) -> np.ndarray:
        return a.copy() if isinstance(a, np.ndarray) and np.may_share_memory(a, y) else a

    for name in ("score", "orientation", "polarity", "scale", "offset", "shape"):
        setattr(score, name, own(getattr(score, name)))
    score.extra = {k: own(v) for k, v in score.extra.items()}
    return score


def score_unit_kernels(
    bank: AtlasBank, x: torch.Tensor, weights: torch.Tensor | None = None
) -> dict[str, FamilyScore]:
    """Score unit kernels ``x`` [B, kh*kw] (float32, zero-mean, unit norm; zero rows allowed).

    ``weights`` is ``bank.weights`` moved to ``x``'s device (the product runs there; the
    cheap per-kernel steering runs on the CPU). Returns family name -> scores, in bank order.
    """
    y = product_columns(x, bank.weights if weights is None else weights, reuse=True)
    scores = {
        fam.name: basis.score(y[:, sl])
        for fam, basis, sl in zip(bank.families, bank.bases, bank.slices, strict=True)
    }
    if x.device.type != "cpu":
        return scores
    base = y.numpy()
    return {name: _own_memory(s, base) for name, s in scores.items()}
