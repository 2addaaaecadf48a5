"""The null: random kernels that any "classified" rule is calibrated against.

One place for the null (design rule): the atlas classifier and the autoencoder both draw
their null kernels and their thresholds from here, so a coverage figure and its null rate
always come from the same definition.

- ``gaussian``: iid N(0, 1) weights (after normalisation: uniform on the sphere of
  zero-mean kernels).
- ``init``: freshly initialised kernels of a real architecture (e.g. ``timm:NAME@init``),
  passed in as an array by the caller.
"""

from __future__ import annotations

import numpy as np

from .errors import KernelAtlasError

__all__ = ["NULL_KINDS", "DEFAULT_NULL_SIZE", "gaussian_null", "calibrate_threshold", "null_rate"]

NULL_KINDS: tuple[str, ...] = ("gaussian", "init")
DEFAULT_NULL_SIZE = 20_000


def gaussian_null(n: int, kh: int, kw: int | None = None, *, seed: int = 0) -> np.ndarray:
    """``n`` iid standard-normal kernels [n, kh, kw] (float32), deterministic given ``seed``."""
    kw = kh if kw is None else kw
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, kh, kw), dtype=np.float32)


def calibrate_threshold(
    null_scores: np.ndarray, fpr: float, *, higher_is_better: bool = True
) -> float:
    """The acceptance threshold that at most a fraction ``fpr`` of null scores pass.

    With ``higher_is_better`` a kernel is accepted when ``score > threshold``; otherwise
    (a distance) when ``score < threshold``. Uses the exact order statistic, so the
    realised null rate on ``null_scores`` is <= ``fpr``.
    """
    if not 0.0 <= fpr < 1.0:
        raise KernelAtlasError(f"null_fpr must be in [0, 1), got {fpr}")
    s = np.asarray(null_scores, dtype=np.float64)
    s = s[np.isfinite(s)]
    if s.size == 0:
        raise KernelAtlasError("cannot calibrate on an empty null: pass at least one null kernel")
    if not higher_is_better:
        return -calibrate_threshold(-s, fpr)
    k = int(np.floor(fpr * s.size))  # number of null kernels allowed to pass
    srt = np.sort(s)[::-1]
    return float(srt[k]) if k < s.size else float(srt[-1])


def null_rate(null_scores: np.ndarray, threshold: float, *, higher_is_better: bool = True) -> float:
    """Fraction of null scores accepted by ``threshold``."""
    s = np.asarray(null_scores, dtype=np.float64)
    s = s[np.isfinite(s)]
    if s.size == 0:
        return float("nan")
    return float(np.mean(s > threshold) if higher_is_better else np.mean(s < threshold))
