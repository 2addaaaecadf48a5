"""Kernel sizes: the one parser and the one supported range (imported everywhere else).

A kernel is ``kh x kw`` (rows x columns). kernelatlas names:

- 2-D kernels with both sides in ``[MIN_PATTERN_SIDE, MAX_SIDE]`` (3x3 .. 128x128, odd or
  even, square or not) with the 2-D atlas;
- 1-D kernels ``1 x k`` and ``k x 1`` with ``k`` in ``[MIN_PATTERN_SIDE, MAX_SIDE]`` with the
  1-D atlas (Gaussian, DoG, derivative and shift profiles along the kernel);

every other size (``1x1``, ``1x2``, ``2x2``, ``2 x k``, sides over 128) has too few taps
along an axis to hold one of the atlas's patterns, or is too large for a depthwise kernel:
an analysis counts and lists such kernels with :func:`unsupported_reason` and analyses
everything else.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from .errors import KernelAtlasError

__all__ = [
    "MIN_SIDE",
    "MIN_PATTERN_SIDE",
    "MAX_SIDE",
    "parse_kernel_size",
    "kernel_geometry",
    "unsupported_reason",
    "check_supported",
    "format_size",
]

MIN_SIDE = 1  # a side of a kernel as harvested
MIN_PATTERN_SIDE = 3  # a pattern needs at least this many taps along the axes it varies on
MAX_SIDE = 128


def format_size(kh: int, kw: int) -> str:
    """``"3x5"``."""
    return f"{kh}x{kw}"


def parse_kernel_size(value: object, *, name: str = "kernel_size") -> tuple[int, int]:
    """``7`` or ``(kh, kw)`` -> ``(kh, kw)``: integers (not bools) in ``[1, 128]``.

    Raises :class:`~kernelatlas.errors.KernelAtlasError` with the fix otherwise. Whether a
    parsed size can be *named* is a separate question: :func:`kernel_geometry`.
    """
    if isinstance(value, bool):
        kh = kw = None
    elif isinstance(value, int | np.integer):
        kh = kw = int(value)
    elif (
        isinstance(value, tuple | list)
        and len(value) == 2
        and all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in value)
    ):
        kh, kw = (int(v) for v in value)
    else:
        kh = kw = None
    if kh is None or kw is None:
        raise KernelAtlasError(f"{name} must be an int or (kh, kw) of ints, got {value!r}")
    if not (MIN_SIDE <= kh <= MAX_SIDE and MIN_SIDE <= kw <= MAX_SIDE):
        raise KernelAtlasError(
            f"{name} sides must be between {MIN_SIDE} and {MAX_SIDE}, got {format_size(kh, kw)}"
        )
    return kh, kw


def kernel_geometry(kh: int, kw: int) -> Literal["2d", "1d"] | None:
    """``"2d"``, ``"1d"`` (``1 x k`` or ``k x 1``), or None when the size cannot be named."""
    lo, hi = min(kh, kw), max(kh, kw)
    if hi > MAX_SIDE or lo < MIN_SIDE:
        return None
    if lo >= MIN_PATTERN_SIDE:
        return "2d"
    if lo == 1 and hi >= MIN_PATTERN_SIDE:
        return "1d"
    return None


def unsupported_reason(kh: int, kw: int) -> str | None:
    """Why kernels of this size are not named (one line), or None when they are."""
    if kernel_geometry(kh, kw) is not None:
        return None
    size = format_size(kh, kw)
    if max(kh, kw) > MAX_SIDE:
        return f"{size}: a side over {MAX_SIDE} taps is not a depthwise kernel the atlas covers"
    if kh == kw == 1:
        return f"{size}: a single tap has no spatial pattern"
    return (
        f"{size}: fewer than {MIN_PATTERN_SIDE} taps along an axis the kernel varies on, "
        "too few to tell a pattern from noise"
    )


def check_supported(kh: int, kw: int) -> Literal["2d", "1d"]:
    """The geometry of a size that can be named; raises with the reason otherwise."""
    geometry = kernel_geometry(kh, kw)
    if geometry is None:
        raise KernelAtlasError(
            f"kernel size {unsupported_reason(kh, kw)}: kernelatlas names 3x3..128x128 "
            "and 1xk / kx1 (k >= 3) kernels"
        )
    return geometry
