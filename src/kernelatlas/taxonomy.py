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
"""

from __future__ import annotations

from dataclasses import dataclass

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
    "PAPER_AE_THRESHOLDS",
    "DEFAULT_NULL_FPR",
]

CENTER = "center"
FIRST_DERIVATIVE = "first_derivative"
SECOND_DERIVATIVE = "second_derivative"
UNCLASSIFIED = "unclassified"
DEGENERATE = "degenerate"

PATTERN_FAMILIES: tuple[str, ...] = (CENTER, FIRST_DERIVATIVE, SECOND_DERIVATIVE)
FAMILIES: tuple[str, ...] = (*PATTERN_FAMILIES, UNCLASSIFIED, DEGENERATE)


@dataclass(frozen=True)
class FamilyInfo:
    """What a family is: its formula, and whether orientation/polarity apply."""

    name: str
    description: str
    formula: str
    orientation_period: float | None  # degrees; None = no orientation
    has_polarity: bool


FAMILY_INFO: dict[str, FamilyInfo] = {
    CENTER: FamilyInfo(
        CENTER,
        "Centre-surround: DoG, Laplacian-of-Gaussian, Gaussian and the near-delta kernel; "
        "on-centre (+1) or off-centre (-1).",
        "p * (G(x - x0, y - y0; s1) - a * G(x - x0, y - y0; s2)), s2 = ratio * s1 > s1, "
        "0 <= a <= 1, G(.; s) = exp(-r^2 / 2s^2) / (2 pi s^2) (integral 1), integrated over "
        "each pixel; a = 0: Gaussian, ratio 1.6 and a = 1: LoG-like DoG, small s: near-delta",
        None,
        True,
    ),
    FIRST_DERIVATIVE: FamilyInfo(
        FIRST_DERIVATIVE,
        "Two opposite lobes (edge detector), any orientation, centred or half a pixel off "
        "centre (the master-key filters 1-4).",
        "-d/du G(x - x0, y - y0; s), u = (cos t, sin t), integrated over each pixel "
        "(positive lobe towards t; tiny s and |x0| = 1/2: a forward difference)",
        360.0,
        False,
    ),
    SECOND_DERIVATIVE: FamilyInfo(
        SECOND_DERIVATIVE,
        "Bar/ridge detectors (d2/du2) and cross shapes (d2/dudv) of a Gaussian.",
        "-p * d2/du2 G(x - x0, y - y0; s) (bar) or p * d2/dudv G(x - x0, y - y0; s) (cross), "
        "u = (cos t, sin t), v = (-sin t, cos t), integrated over each pixel",
        180.0,
        True,
    ),
    UNCLASSIFIED: FamilyInfo(
        UNCLASSIFIED,
        "Nothing in the atlas explains it better than it would explain null (random) kernels.",
        "score below the null-calibrated threshold",
        None,
        False,
    ),
    DEGENERATE: FamilyInfo(
        DEGENERATE,
        "Zero, constant, NaN/Inf or numerically dead kernels.",
        "non-finite, or centred L2 norm ~ 0",
        None,
        False,
    ),
}

# The ICLR 2024 paper's "classified" rule for its autoencoders: cosine distance to the
# reconstruction below this threshold, by kernel size. Other sizes are null-calibrated.
PAPER_AE_THRESHOLDS: dict[int, float] = {7: 0.3, 5: 0.2}

# Default false-positive rate on null kernels for every calibrated threshold.
DEFAULT_NULL_FPR: float = 0.01
