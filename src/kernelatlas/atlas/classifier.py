"""``Atlas``: the null-calibrated classifier (a thin scikit-learn-style class over the scorers).

How a kernel is named
---------------------
1. It is centred and scaled to unit norm (:func:`kernelatlas.normalize.normalize`);
   degenerate kernels are named ``degenerate``.
2. For each pattern family it gets the best cosine to that family's patterns over all
   scales, sub-pixel offsets, orientations and polarities (:mod:`.scoring`).
3. ``fit`` calibrates one threshold per family on null kernels, all at a *common* null tail
   level, chosen so that at most ``null_fpr`` of the null kernels pass *any* family's
   threshold (exact order statistics via :func:`kernelatlas.null.calibrate_threshold`).
4. The kernel's family is the one with the largest normalised margin
   ``(score - threshold) / (1 - threshold)``; it is ``classified`` when that margin is > 0,
   otherwise its family is ``unclassified`` (``score`` then still holds that best family's
   cosine, so one sees how close it came).

Why per family and not one global threshold: the families have different numbers of
degrees of freedom (one template per centre shape vs a 2-D steerable plane vs a 3-D cone),
so on noise their best cosines differ. One global cut would let the family with the most
freedom absorb nearly all false positives, and it would bias the names. Thresholds at a
common null tail level make "significant" mean the same for each family, and the joint
calibration keeps the union of the three acceptances at ``null_fpr``.

Why per kernel size: the null's scores depend strongly on the number of pixels. On 3x3
kernels (8 free dimensions) noise matches some pattern with a high cosine, so the
thresholds are high; on 7x7 (48 dimensions) they are low. One Atlas serves one size.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..errors import KernelAtlasError
from ..normalize import as_kernel_array, normalize
from ..null import DEFAULT_NULL_SIZE, calibrate_threshold, gaussian_null, null_rate
from ..progress import advance
from ..taxonomy import DEFAULT_NULL_FPR, DEGENERATE, PATTERN_FAMILIES, UNCLASSIFIED
from .scoring import FamilyScores, score_unit_kernels
from .templates import CENTER_SHAPES, build_bank

__all__ = ["Atlas", "PREDICT_COLUMNS", "DETAIL_COLUMNS"]

PREDICT_COLUMNS: tuple[str, ...] = (
    "family",
    "orientation",
    "polarity",
    "scale",
    "score",
    "classified",
)
DETAIL_COLUMNS: tuple[str, ...] = (
    "shape",
    "offset_x",
    "offset_y",
    "score_center",
    "score_first_derivative",
    "score_second_derivative",
)
# detail column "shape": the centre shapes, then the derivative kinds, then "" (none)
_CENTER_NAMES = ["gaussian" if w == 0 else f"dog_{r:g}" for r, w in CENTER_SHAPES]
_SHAPE_NAMES = np.array([*_CENTER_NAMES, "first", "bar", "cross", ""], dtype=object)
_I_FIRST, _I_BAR, _I_CROSS, _I_NONE = (len(CENTER_SHAPES) + i for i in range(4))


class Atlas:
    """Name depthwise kernels with DoG-family patterns, calibrated against a null.

    Parameters
    ----------
    kernel_size : int or (kh, kw), 3..128 (odd or even).
    null_fpr : the fraction of null kernels allowed to be classified (default 0.01).
    n_null : number of iid Gaussian null kernels when ``fit(null=None)``.
    seed : seed of the Gaussian null.
    batch_size : kernels scored per matrix product (streaming).
    device : torch device for the products (None: CPU).

    Attributes (after ``fit``)
    --------------------------
    thresholds_ : dict family -> cosine threshold.
    null_rate_ : realised fraction of the null classified (<= null_fpr).
    null_kind_ : "gaussian" or "init" (user-supplied null kernels).
    n_null_ : null kernels used (degenerate ones dropped).

    Examples
    --------
    >>> from kernelatlas.atlas import Atlas, functional as F
    >>> atlas = Atlas(kernel_size=7, n_null=2000).fit()
    >>> df = atlas.predict(F.first_derivative_pattern(7, 7, 1.0, [0.0, 90.0]))
    >>> list(df["family"]), [round(o) for o in df["orientation"]]
    (['first_derivative', 'first_derivative'], [0, 90])
    """

    def __init__(
        self,
        kernel_size: int | tuple[int, int] = 7,
        null_fpr: float = DEFAULT_NULL_FPR,
        n_null: int = DEFAULT_NULL_SIZE,
        seed: int = 0,
        batch_size: int = 8192,
        device: str | None = None,
    ) -> None:
        self.kernel_size = kernel_size
        self.null_fpr = null_fpr
        self.n_null = n_null
        self.seed = seed
        self.batch_size = batch_size
        self.device = device

    # ------------------------------------------------------------------ sklearn plumbing
    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {
            k: getattr(self, k)
            for k in ("kernel_size", "null_fpr", "n_null", "seed", "batch_size", "device")
        }

    def set_params(self, **params: Any) -> Atlas:
        for k, v in params.items():
            if k not in self.get_params():
                raise KernelAtlasError(f"Atlas has no parameter {k!r}")
            setattr(self, k, v)
        return self

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"Atlas({args})"

    def _validate_params(self) -> tuple[int, int]:
        ks = self.kernel_size
        if isinstance(ks, int | np.integer):
            kh = kw = int(ks)
        else:
            try:
                kh, kw = (int(v) for v in ks)  # type: ignore[union-attr]
            except (TypeError, ValueError):
                raise KernelAtlasError(
                    f"kernel_size must be an int or (kh, kw), got {ks!r}"
                ) from None
        if not (3 <= kh <= 128 and 3 <= kw <= 128):
            raise KernelAtlasError(f"kernel_size must be between 3 and 128, got {kh}x{kw}")
        if not (isinstance(self.null_fpr, float | int) and 0.0 <= self.null_fpr < 1.0):
            raise KernelAtlasError(f"null_fpr must be in [0, 1), got {self.null_fpr!r}")
        if not (isinstance(self.n_null, int | np.integer) and self.n_null >= 100):
            raise KernelAtlasError(f"n_null must be an int >= 100, got {self.n_null!r}")
        if not (isinstance(self.batch_size, int | np.integer) and self.batch_size >= 1):
            raise KernelAtlasError(f"batch_size must be a positive int, got {self.batch_size!r}")
        return kh, kw

    # ------------------------------------------------------------------ fit / predict
    def fit(self, null: np.ndarray | None = None) -> Atlas:
        """Build the bank for ``kernel_size`` and calibrate per-family thresholds on a null.

        Parameters
        ----------
        null : None for ``n_null`` iid Gaussian kernels (``seed``), or an array [M, kh, kw]
            of null kernels, e.g. freshly initialised kernels of the same architecture.
        """
        kh, kw = self._validate_params()
        if null is None:
            null_arr = gaussian_null(int(self.n_null), kh, kw, seed=int(self.seed))
            kind = "gaussian"
        else:
            null_arr = as_kernel_array(null)
            kind = "init"
            if null_arr.shape[1:] != (kh, kw):
                raise KernelAtlasError(
                    f"null kernels are {null_arr.shape[1]}x{null_arr.shape[2]} but the Atlas is "
                    f"for {kh}x{kw}: pass null kernels of the same size"
                )
        self._device = torch.device(self.device) if self.device else torch.device("cpu")
        bank = build_bank(kh, kw)
        self._bank = bank
        self._weights = bank.weights.to(self._device)
        scores, degenerate = self._score_all(null_arr)
        s = scores.stack()[~degenerate]
        if s.shape[0] == 0:
            raise KernelAtlasError(
                "every null kernel is degenerate (constant/zero): pass a real null"
            )
        m = s.shape[0]
        # common per-family tail level: largest k (null kernels allowed per family) whose
        # union acceptance stays <= null_fpr
        srt = -np.sort(-s, axis=0)

        def thresholds(k: int) -> np.ndarray:
            return (
                np.array([calibrate_threshold(s[:, j], (k + 0.5) / m) for j in range(s.shape[1])])
                if k < m
                else srt[-1]
            )

        def union(thr: np.ndarray) -> float:
            return float(np.mean((s > thr).any(axis=1)))

        lo, hi = 0, int(math.floor(self.null_fpr * m))
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if union(thresholds(mid)) <= self.null_fpr:
                lo = mid
            else:
                hi = mid - 1
        thr = thresholds(lo)
        self.thresholds_ = {f: float(t) for f, t in zip(PATTERN_FAMILIES, thr, strict=True)}
        self.null_rate_ = union(thr)
        self.family_null_rates_ = {
            f: null_rate(s[:, j], thr[j]) for j, f in enumerate(PATTERN_FAMILIES)
        }
        self.null_kind_ = kind
        self.n_null_ = int(m)
        self.kernel_shape_ = (kh, kw)
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "thresholds_"):
            raise KernelAtlasError("this Atlas is not fitted yet: call atlas.fit() first")

    def _score_batch(self, batch: np.ndarray) -> tuple[FamilyScores, np.ndarray]:
        nz = normalize(batch)
        x = torch.from_numpy(nz.unit.reshape(nz.unit.shape[0], -1)).to(self._device)
        out = score_unit_kernels(self._bank, x, self._weights), nz.degenerate
        advance(batch.shape[0], "score")
        return out

    def _score_all(self, kernels: np.ndarray) -> tuple[FamilyScores, np.ndarray]:
        """Stream ``kernels`` in batches; on CPU, batches run on ``n_jobs`` worker threads.

        The per-kernel steering is many small tensor ops: running whole batches side by side
        with one intra-op thread each scales much better than splitting every small op.
        """
        n = kernels.shape[0]
        bs = int(self.batch_size)
        batches = [kernels[s : s + bs] for s in range(0, n, bs)]
        if not batches:
            x = torch.zeros(0, self._bank.kh * self._bank.kw, dtype=torch.float32)
            return score_unit_kernels(self._bank, x), np.zeros(0, dtype=bool)
        jobs = torch.get_num_threads() if self._device.type == "cpu" else 1
        if jobs > 1 and len(batches) > 1:
            from concurrent.futures import ThreadPoolExecutor

            torch.set_num_threads(1)
            try:
                with ThreadPoolExecutor(max_workers=jobs) as pool:
                    results = list(pool.map(self._score_batch, batches))
            finally:
                torch.set_num_threads(jobs)
        else:
            results = [self._score_batch(b) for b in batches]
        return _concat([r[0] for r in results]), np.concatenate([r[1] for r in results])

    def predict(self, kernels: np.ndarray, *, details: bool = False) -> pd.DataFrame:
        """Name each kernel.

        Parameters
        ----------
        kernels : array [N, kh, kw] (a single [kh, kw] kernel is allowed).
        details : also return ``shape`` (centre shape, "first", "bar" or "cross"),
            ``offset_x``, ``offset_y`` (best pattern's centre, pixels) and the three
            per-family scores.

        Returns
        -------
        DataFrame with one row per kernel and columns ``family, orientation, polarity,
        scale, score, classified`` (then the detail columns).
        """
        self._check_fitted()
        arr = as_kernel_array(kernels)
        if arr.shape[1:] != self.kernel_shape_:
            kh, kw = self.kernel_shape_
            raise KernelAtlasError(
                f"this Atlas is fitted for {kh}x{kw} kernels, got {arr.shape[1]}x{arr.shape[2]}: "
                "fit one Atlas per kernel size"
            )
        sc, degen = self._score_all(arr)
        n = arr.shape[0]
        s = sc.stack().astype(np.float64)
        thr = np.array([self.thresholds_[f] for f in PATTERN_FAMILIES])
        margin = (s - thr) / np.maximum(1.0 - thr, 1e-9)
        best = margin.argmax(axis=1) if n else np.zeros(0, dtype=np.int64)
        classified = (margin[np.arange(n), best] > 0) & ~degen
        score = s[np.arange(n), best]

        fam_names = np.array(PATTERN_FAMILIES, dtype=object)
        family = np.where(classified, fam_names[best], UNCLASSIFIED).astype(object)
        family[degen] = DEGENERATE
        is_c = classified & (best == 0)
        is_1 = classified & (best == 1)
        is_2 = classified & (best == 2)
        orientation = np.full(n, np.nan)
        orientation[is_1] = sc.first_orientation[is_1]
        orientation[is_2] = sc.second_orientation[is_2]
        polarity = np.zeros(n, dtype=np.int8)
        polarity[is_c] = sc.center_polarity[is_c]
        polarity[is_1] = 1
        polarity[is_2] = sc.second_polarity[is_2]
        scale = np.full(n, np.nan)
        scale[is_c] = sc.center_sigma[is_c]
        scale[is_1] = sc.first_sigma[is_1]
        scale[is_2] = sc.second_sigma[is_2]
        score = np.where(degen, np.nan, score)

        df = pd.DataFrame(
            {
                "family": pd.Series(family, dtype=object),
                "orientation": orientation,
                "polarity": polarity,
                "scale": scale,
                "score": score,
                "classified": classified,
            }
        )
        if details:
            shape = np.full(n, _I_NONE)
            shape[is_c] = sc.center_shape[is_c]
            shape[is_1] = _I_FIRST
            shape[is_2] = np.where(sc.second_cross[is_2], _I_CROSS, _I_BAR)
            off = np.full((n, 2), np.nan)
            off[is_c] = sc.center_offset[is_c]
            off[is_1] = sc.first_offset[is_1]
            off[is_2] = sc.second_offset[is_2]
            df["shape"] = _SHAPE_NAMES[shape]
            df["offset_x"] = off[:, 0]
            df["offset_y"] = off[:, 1]
            for j, f in enumerate(PATTERN_FAMILIES):
                df[f"score_{f}"] = np.where(degen, np.nan, s[:, j])
        return df

    def coverage(self, kernels: np.ndarray) -> float:
        """Fraction of the non-degenerate ``kernels`` that are classified."""
        df = self.predict(kernels)
        ok = df["family"] != DEGENERATE
        return float(df.loc[ok, "classified"].mean()) if ok.any() else float("nan")


def _concat(parts: list[FamilyScores]) -> FamilyScores:
    if len(parts) == 1:
        return parts[0]
    fields = FamilyScores.__dataclass_fields__
    return FamilyScores(**{f: np.concatenate([getattr(p, f) for p in parts]) for f in fields})
