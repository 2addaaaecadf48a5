"""The atlas's bank for one kernel size: every registered family's block, side by side.

Each family builds its own block (:meth:`kernelatlas.atlas.family.PatternFamily.basis`):
a few steerable bases for the derivative families, explicit templates for the centre and
shift families. The bank concatenates the blocks into one float32 matrix, so scoring a
batch is one matrix product followed by each family's cheap closed-form scorer on its own
slice of the product (:mod:`.scoring`).

The grids shared by the families (sigmas, sub-pixel offsets, the pixel-integrated
Gaussian groups) are defined here once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import KernelAtlasError
from ..sizes import check_supported, format_size
from .family import Basis, PatternFamily
from .functional import gaussian_basis

__all__ = [
    "AtlasBank",
    "build_bank",
    "default_sigmas",
    "default_offsets",
    "sigma_range",
    "pattern_side",
    "gaussian_groups",
    "SIGMA_MIN",
]

SIGMA_MIN = 0.25
SIGMA_STEP = 1.4


def pattern_side(kh: int, kw: int) -> int:
    """The side a pattern varies along: the short side of a 2-D kernel, the length of a 1-D one."""
    return max(kh, kw) if min(kh, kw) == 1 else min(kh, kw)


def sigma_range(kh: int, kw: int) -> tuple[float, float]:
    """The atlas's sigma range for a size: 0.25 px (near-delta) to about a third of the side."""
    return SIGMA_MIN, max(0.6, pattern_side(kh, kw) / 3.0)


def default_sigmas(kh: int, kw: int) -> np.ndarray:
    """Geometric sigma grid over :func:`sigma_range`, step 1.4."""
    lo, hi = sigma_range(kh, kw)
    n = 1 + math.ceil(math.log(hi / lo) / math.log(SIGMA_STEP))
    return np.geomspace(lo, hi, n)


def default_offsets(kh: int, kw: int) -> tuple[tuple[float, float], ...]:
    """Sub-pixel centre offsets (dx, dy) in [-0.5, 0.5]^2 pixels (along the kernel if 1-D).

    Steps of 0.5 px (9 offsets) from 6x6 up; steps of 0.25 px (25 offsets) for kernels of
    side <= 5, where a quarter-pixel shift changes a pattern's cosine markedly (on 3x3 the
    coarser grid recovers only about half of the noise-free synthetic patterns).
    """
    step = 0.25 if pattern_side(kh, kw) <= 5 else 0.5
    o = np.arange(-0.5, 0.5 + 1e-9, step)
    o = o[np.argsort(np.abs(o), kind="stable")]  # centre first
    ox = o if kw > 1 else np.zeros(1)
    oy = o if kh > 1 else np.zeros(1)
    return tuple((float(dx), float(dy)) for dy in oy for dx in ox)


def gaussian_groups(
    kh: int, kw: int, order: int = 2
) -> tuple[np.ndarray, np.ndarray, dict[str, torch.Tensor]]:
    """Every (sigma, offset) pair of the default grids and its pixel-integrated Gaussian basis.

    Returns sigma [G], offset [G, 2] and the float64 basis dict of
    :func:`~kernelatlas.atlas.functional.gaussian_basis` ([G, kh, kw] tensors).
    """
    sig = default_sigmas(kh, kw)
    off = np.asarray(default_offsets(kh, kw), dtype=np.float64)
    ss, oo = np.meshgrid(np.arange(len(sig)), np.arange(len(off)), indexing="ij")
    g_sigma, g_off = sig[ss.ravel()], off[oo.ravel()]
    b = gaussian_basis(
        kh,
        kw,
        torch.from_numpy(g_sigma),
        torch.from_numpy(g_off[:, 0].copy()),
        torch.from_numpy(g_off[:, 1].copy()),
        order=order,
    )
    return g_sigma, g_off, b


def flat_centred(t: torch.Tensor) -> torch.Tensor:
    """[G, kh, kw] -> [G, kh*kw], each row minus its mean."""
    t = t.reshape(t.shape[0], -1)
    return t - t.mean(dim=1, keepdim=True)


@dataclass(frozen=True)
class AtlasBank:
    """The blocks of every family for one kernel size and their concatenated columns.

    ``weights`` [kh*kw, C] float32 holds the families' columns in ``families`` order;
    ``slices[i]`` is family i's block.
    """

    kh: int
    kw: int
    families: tuple[PatternFamily, ...]
    bases: tuple[Basis, ...]
    weights: torch.Tensor
    slices: tuple[slice, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.families)


def build_bank(kh: int, kw: int, families: tuple[PatternFamily, ...] | None = None) -> AtlasBank:
    """Build the bank of a ``kh x kw`` kernel from the registered families (float64 inside)."""
    from .registry import families as registered

    check_supported(kh, kw)
    fams, bases = [], []
    for fam in registered() if families is None else families:
        basis = fam.basis(kh, kw)
        if basis is None or basis.n_columns == 0:
            continue
        if basis.columns.shape[0] != kh * kw:
            raise KernelAtlasError(
                f"pattern family {fam.name!r} built {basis.columns.shape[0]} rows for a "
                f"{format_size(kh, kw)} kernel: expected {kh * kw}"
            )
        fams.append(fam)
        bases.append(basis)
    if not bases:
        raise KernelAtlasError(f"no pattern family defines {format_size(kh, kw)} kernels")
    bounds = np.cumsum([0] + [b.n_columns for b in bases])
    slices = tuple(slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True))
    weights = torch.cat([b.columns for b in bases], dim=1).to(torch.float32).contiguous()
    return AtlasBank(kh, kw, tuple(fams), tuple(bases), weights, slices)
