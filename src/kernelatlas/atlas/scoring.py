"""Best cosine of unit kernels to each pattern family, with the best pattern's parameters.

One matrix product per batch against the bank (:mod:`.templates`), then each family's own
closed-form scorer on its slice of the product.
"""

from __future__ import annotations

import torch

from .family import FamilyScore
from .templates import AtlasBank

__all__ = ["score_unit_kernels"]


def score_unit_kernels(
    bank: AtlasBank, x: torch.Tensor, weights: torch.Tensor | None = None
) -> dict[str, FamilyScore]:
    """Score unit kernels ``x`` [B, kh*kw] (float32, zero-mean, unit norm; zero rows allowed).

    ``weights`` is ``bank.weights`` moved to ``x``'s device (the product runs there; the
    cheap per-kernel steering runs on the CPU). Returns family name -> scores, in bank order.
    """
    y = (x @ (bank.weights if weights is None else weights)).cpu()
    return {
        fam.name: basis.score(y[:, sl])
        for fam, basis, sl in zip(bank.families, bank.bases, bank.slices, strict=True)
    }
