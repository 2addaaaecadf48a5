"""The taxonomy: one vocabulary for every method (atlas, autoencoder, fits, report).

Each kernel gets a ``family`` and, where it applies, an ``orientation`` (degrees),
a ``polarity`` (+1/-1) and a ``scale`` (pixels).

Conventions (used by every module):

- Coordinates: ``x`` grows along columns (rightwards), ``y`` grows *upwards* (against the
  row index), both measured from the kernel's centre ``((kw-1)/2, (kh-1)/2)``.
- ``orientation``: degrees counter-clockwise from +x. For ``first_derivative`` it is the
  direction from the negative to the positive lobe (the gradient direction), in [0, 360).
  For ``second_derivative`` it is the axis along which the profile is a second derivative
  (across the bar), in [0, 180); a cross (xy) shape has its lobes on the diagonals of that
  axis. ``center`` kernels have no orientation (NaN).
- ``polarity``: +1 for an on-centre DoG / positive central bar (``-d2G/du2``), -1 for the
  sign-flipped pattern; first derivatives always have +1 (the sign is in the orientation).
- ``scale``: the Gaussian sigma in pixels (the centre sigma for a DoG).

The pattern families themselves are plugins (:mod:`kernelatlas.atlas.families`, one file
each, registered with :func:`kernelatlas.atlas.registry.register_family`). This module holds
what is common to all of them -- the two non-pattern names, the conventions, the null
false-positive rate, the one definition of coverage -- and *live views* of the registry:
``PATTERN_FAMILIES``, ``FAMILIES``, ``FAMILY_INFO`` and ``FAMILY_COLORS`` always list the
families registered now (a family registered later shows up in every module that reads
them), in registry order, followed by ``unclassified`` and ``degenerate``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "CENTER",
    "FIRST_DERIVATIVE",
    "SECOND_DERIVATIVE",
    "UNCLASSIFIED",
    "DEGENERATE",
    "PATTERN_FAMILIES",
    "FAMILIES",
    "FamilyInfo",
    "FAMILY_INFO",
    "FAMILY_COLORS",
    "PAPER_AE_THRESHOLDS",
    "DEFAULT_NULL_FPR",
    "coverage",
    "coverage_counts",
]

# Names of the built-in pattern families (each defined in kernelatlas/atlas/families/).
CENTER = "center"
FIRST_DERIVATIVE = "first_derivative"
SECOND_DERIVATIVE = "second_derivative"
# The two names every method shares besides the pattern families.
UNCLASSIFIED = "unclassified"
DEGENERATE = "degenerate"


@dataclass(frozen=True)
class FamilyInfo:
    """What a family is: its formula, whether orientation/polarity apply, its report colour."""

    name: str
    description: str
    formula: str
    orientation_period: float | None  # degrees; None = no orientation
    has_polarity: bool
    color: str = "#bdbdbd"
    is_pattern: bool = True


_NON_PATTERN: dict[str, FamilyInfo] = {
    UNCLASSIFIED: FamilyInfo(
        UNCLASSIFIED,
        "Nothing in the atlas explains it better than it would explain null (random) kernels.",
        "score below the null-calibrated threshold",
        None,
        False,
        "#bdbdbd",
        False,
    ),
    DEGENERATE: FamilyInfo(
        DEGENERATE,
        "Zero, constant, NaN/Inf or numerically dead kernels.",
        "non-finite, or centred L2 norm ~ 0",
        None,
        False,
        "#404040",
        False,
    ),
}


def _registered() -> tuple[Any, ...]:
    from .atlas.registry import families

    return families()


class _Names(Sequence[str]):
    """A read-only, live sequence of family names (re-read from the registry on each use)."""

    def __init__(self, with_non_pattern: bool) -> None:
        self._all = with_non_pattern

    def _names(self) -> tuple[str, ...]:
        names = tuple(f.name for f in _registered())
        return (*names, *_NON_PATTERN) if self._all else names

    def __getitem__(self, i):  # type: ignore[override]
        return self._names()[i]

    def __len__(self) -> int:
        return len(self._names())

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __contains__(self, name: object) -> bool:
        return name in self._names()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and tuple(self) == tuple(other)

    def __hash__(self) -> int:
        return hash(self._names())

    def __repr__(self) -> str:
        return repr(self._names())


class _Infos(Mapping[str, FamilyInfo]):
    """Live mapping name -> FamilyInfo of every family (pattern families from the registry)."""

    def _map(self) -> dict[str, FamilyInfo]:
        return {**{f.name: f.info() for f in _registered()}, **_NON_PATTERN}

    def __getitem__(self, name: str) -> FamilyInfo:
        return self._map()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._map())

    def __len__(self) -> int:
        return len(self._map())

    def __repr__(self) -> str:
        return repr(self._map())


class _Colors(Mapping[str, str]):
    """Live mapping name -> report colour (from each family's definition)."""

    def __getitem__(self, name: str) -> str:
        return FAMILY_INFO[name].color

    def __iter__(self) -> Iterator[str]:
        return iter(FAMILY_INFO)

    def __len__(self) -> int:
        return len(FAMILY_INFO)

    def __repr__(self) -> str:
        return repr(dict(self))


PATTERN_FAMILIES: Sequence[str] = _Names(with_non_pattern=False)
FAMILIES: Sequence[str] = _Names(with_non_pattern=True)
FAMILY_INFO: Mapping[str, FamilyInfo] = _Infos()
FAMILY_COLORS: Mapping[str, str] = _Colors()

# The ICLR 2024 paper's "classified" rule for its autoencoders: cosine distance to the
# reconstruction below this threshold, by kernel size. Other sizes are null-calibrated.
PAPER_AE_THRESHOLDS: dict[int, float] = {7: 0.3, 5: 0.2}

# Default false-positive rate on null kernels for every calibrated threshold.
DEFAULT_NULL_FPR: float = 0.01


# --------------------------------------------------------------------------- coverage


def coverage(classified: object, family: object) -> float:
    """The one definition of coverage: the classified fraction of the non-degenerate kernels.

    Degenerate kernels (zero, constant, non-finite) are counted apart and left out of the
    denominator. ``classified`` and ``family`` are per-kernel arrays (or Series); NaN when
    every kernel is degenerate or there are none.
    """
    cls = np.asarray(classified, dtype=bool)
    live = np.asarray(family, dtype=object) != DEGENERATE
    n = int(live.sum())
    return float(np.count_nonzero(cls & live) / n) if n else float("nan")


def coverage_counts(classified: object, kernels: object, degenerate: object) -> np.ndarray:
    """:func:`coverage` from counts (vectorised): ``classified / (kernels - degenerate)``."""
    live = np.asarray(kernels, dtype=np.float64) - np.asarray(degenerate, dtype=np.float64)
    cls = np.asarray(classified, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(live > 0, cls / np.maximum(live, 1.0), np.nan)
