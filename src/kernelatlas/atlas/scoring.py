"""Best cosine of unit kernels to each pattern family, with the best pattern's parameters.

One matrix product per batch against the bank (:mod:`.templates`), then each family's own
closed-form scorer on its slice of the product.

The product is computed column-major: ``bank.weights.T @ x.T``, one row per bank column,
one column per kernel (the same values, bit for bit, as ``x @ bank.weights``: each is the
same dot product). A family's block is then a run of contiguous rows, so its elementwise
work runs over one long contiguous axis instead of many short strided rows (2-3x faster
per pass), and each scorer still sees its block as ``[B, C]`` (a column-major view).
"""

from __future__ import annotations

import torch

from .family import FamilyScore
from .templates import AtlasBank

__all__ = ["score_unit_kernels", "product_columns"]

#: Spare floats at the end of each row of the column-major product. Rows of a power-of-two
#: number of floats (a batch of 2048 kernels) map a block of output rows onto the same
#: cache sets: the product then ran 3x slower at 3x3 on this machine's MKL.
ROW_PAD = 16


def product_columns(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The projections of ``x`` [B, K] on ``weights`` [K, C] as a column-major [B, C]
    (float32, CPU): ``(x @ weights)`` with its columns contiguous."""
    b, c = x.shape[0], weights.shape[1]
    if x.device.type != "cpu":  # the device's own product, as before; transposed there
        return (x @ weights).T.contiguous().cpu().T
    out = torch.empty((c, b + ROW_PAD), dtype=x.dtype)[:, :b]
    torch.mm(weights.T, x.T, out=out)
    return out.T


def score_unit_kernels(
    bank: AtlasBank, x: torch.Tensor, weights: torch.Tensor | None = None
) -> dict[str, FamilyScore]:
    """Score unit kernels ``x`` [B, kh*kw] (float32, zero-mean, unit norm; zero rows allowed).

    ``weights`` is ``bank.weights`` moved to ``x``'s device (the product runs there; the
    cheap per-kernel steering runs on the CPU). Returns family name -> scores, in bank order.
    """
    y = product_columns(x, bank.weights if weights is None else weights)
    return {
        fam.name: basis.score(y[:, sl])
        for fam, basis, sl in zip(bank.families, bank.bases, bank.slices, strict=True)
    }
