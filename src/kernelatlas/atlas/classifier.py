"""``Atlas``: the null-calibrated classifier (a thin scikit-learn-style class over the scorers).

How a kernel is named
---------------------
1. It is centred and scaled to unit norm (:func:`kernelatlas.normalize.normalize`);
   degenerate kernels are named ``degenerate``.
2. For each registered pattern family (:mod:`kernelatlas.atlas.registry`) it gets the
   best cosine to that family's patterns over all scales, sub-pixel offsets, orientations
   and polarities (:mod:`.scoring`).
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
calibration keeps the union of the families' acceptances at ``null_fpr``.

Why per kernel size: the null's scores depend strongly on the number of pixels. On 3x3
kernels (8 free dimensions) noise matches some pattern with a high cosine, so the
thresholds are high; on 7x7 (48 dimensions) they are low. One Atlas serves one size;
``1 x k`` and ``k x 1`` kernels get the 1-D atlas (each family's 1-D profiles), calibrated
on a null of the same size in the same way.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import pandas as pd
import torch

from ..errors import KernelAtlasError
from ..estimator import BaseEstimator, Device, Interval, KernelSize
from ..limits import rows_per_batch
from ..normalize import Normalized, as_kernel_array, normalize
from ..null import DEFAULT_NULL_SIZE, NullStream, calibrate_threshold, draw_rows, null_rate
from ..progress import advance
from ..sizes import check_supported, parse_kernel_size
from ..taxonomy import DEFAULT_NULL_FPR, DEGENERATE, UNCLASSIFIED, coverage
from .family import FamilyScore
from .scoring import score_unit_kernels
from .templates import build_bank

__all__ = ["Atlas", "PREDICT_COLUMNS", "DETAIL_COLUMNS"]

PREDICT_COLUMNS: tuple[str, ...] = (
    "family",
    "orientation",
    "polarity",
    "scale",
    "score",
    "classified",
)
# then one ``score_<family>`` column per family, in registry order
DETAIL_COLUMNS: tuple[str, ...] = ("shape", "offset_x", "offset_y")


class Atlas(BaseEstimator):
    """Name depthwise kernels with DoG-family patterns, calibrated against a null.

    Parameters
    ----------
    kernel_size : int or (kh, kw): 3..128 per side (odd or even), or 1 x k / k x 1
        (k >= 3) for the 1-D atlas.
    null_fpr : the fraction of null kernels allowed to be classified (default 0.01).
    n_null : number of iid Gaussian null kernels when ``fit(null=None)``.
    seed : seed of the Gaussian null.
    batch_size : kernels scored per matrix product (streaming; at 2048 a batch's products
        stay in cache and need no fresh memory pages: docs/atlas.md, Speed).
    device : torch device for the products (None: CPU).
    families : names of the registered families to use (None: all of them), e.g.
        ``("center", "first_derivative", "second_derivative")``.

    Attributes (after ``fit``)
    --------------------------
    families_ : names of the families in this atlas, in order (every registered family
        that defines patterns at this size).
    thresholds_ : dict family -> cosine threshold.
    null_rate_ : realised fraction of the null classified (<= null_fpr).
    family_null_rates_ : dict family -> fraction of the null passing that family alone.
    null_kind_ : "gaussian" or "init" (user-supplied null kernels).
    n_null_ : null kernels used (degenerate ones dropped).
    kernel_shape_ : (kh, kw).

    Examples
    --------
    >>> from kernelatlas.atlas import Atlas, functional as F
    >>> atlas = Atlas(kernel_size=7, n_null=2000).fit()
    >>> df = atlas.predict(F.first_derivative_pattern(7, 7, 1.0, [0.0, 90.0]))
    >>> list(df["family"]), [round(o) for o in df["orientation"]]
    (['first_derivative', 'first_derivative'], [0, 90])
    """

    _parameter_constraints = {
        "kernel_size": [KernelSize()],
        "null_fpr": [Interval(float, 0.0, 1.0, closed="left")],
        "n_null": [Interval(int, 100, None)],
        "seed": [int],
        "batch_size": [Interval(int, 1, None)],
        "device": [None, Device()],
        "families": [None, tuple, list],
    }

    def __init__(
        self,
        kernel_size: int | tuple[int, int] = 7,
        null_fpr: float = DEFAULT_NULL_FPR,
        n_null: int = DEFAULT_NULL_SIZE,
        seed: int = 0,
        batch_size: int = 2048,
        device: str | None = None,
        families: tuple[str, ...] | None = None,
    ) -> None:
        self.kernel_size = kernel_size
        self.null_fpr = null_fpr
        self.n_null = n_null
        self.seed = seed
        self.batch_size = batch_size
        self.device = device
        self.families = families

    # ------------------------------------------------------------------ fit / predict
    def fit(self, null: np.ndarray | NullStream | None = None) -> Atlas:
        """Build the bank for ``kernel_size`` and calibrate per-family thresholds on a null.

        Parameters
        ----------
        null : None for ``n_null`` iid Gaussian kernels (``seed``; drawn and scored in
            chunks), an array [M, kh, kw] of null kernels, e.g. freshly initialised kernels
            of the same architecture, or a :class:`~kernelatlas.null.NullStream` (scored
            chunk by chunk: :func:`kernelatlas.null.calibration_stream`).
        """
        kh, kw = parse_kernel_size(self.kernel_size)
        check_supported(kh, kw)
        if null is None:  # gaussian_null(n_null, seed), drawn and scored chunk by chunk
            rng = np.random.default_rng(int(self.seed))
            n, step = int(self.n_null), draw_rows(kh, kw)
            chunks: Iterable[np.ndarray] = (
                rng.standard_normal((min(step, n - s), kh, kw), dtype=np.float32)
                for s in range(0, n, step)
            )
            kind = "gaussian"
        else:
            chunks = null if isinstance(null, NullStream) else (null,)
            kind = "init"
        self._device = torch.device(self.device) if self.device else torch.device("cpu")
        chosen = None
        if self.families is not None:
            from .registry import get_family

            if not self.families or not all(isinstance(f, str) for f in self.families):
                raise KernelAtlasError(
                    f"Atlas: families must be family names, got {self.families!r}"
                )
            chosen = tuple(get_family(f) for f in dict.fromkeys(self.families))
        bank = build_bank(kh, kw, chosen)
        self._bank = bank
        self._weights = bank.weights.to(self._device)
        names = bank.names
        parts = [self._score_all(self._check_null(c, kh, kw)) for c in chunks]
        if not parts:
            raise KernelAtlasError("cannot calibrate on an empty null: pass null kernels")
        scores = {f: FamilyScore.concat([p[0][f] for p in parts]) for f in names}
        degenerate = np.concatenate([p[1] for p in parts])
        s = _stack(scores, names)[~degenerate]
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
        self.families_ = names
        self.thresholds_ = {f: float(t) for f, t in zip(names, thr, strict=True)}
        self.null_rate_ = union(thr)
        self.family_null_rates_ = {f: null_rate(s[:, j], thr[j]) for j, f in enumerate(names)}
        self.null_kind_ = kind
        self.n_null_ = int(m)
        self.kernel_shape_ = (kh, kw)
        return self

    @staticmethod
    def _check_null(null: object, kh: int, kw: int) -> np.ndarray:
        arr = as_kernel_array(null)
        if arr.shape[1:] != (kh, kw):
            raise KernelAtlasError(
                f"null kernels are {arr.shape[1]}x{arr.shape[2]} but the Atlas is "
                f"for {kh}x{kw}: pass null kernels of the same size"
            )
        return arr

    def _score_batch(
        self, batch: np.ndarray | Normalized
    ) -> tuple[dict[str, FamilyScore], np.ndarray]:
        nz = batch if isinstance(batch, Normalized) else normalize(batch)
        x = torch.from_numpy(nz.unit.reshape(len(nz), self._bank.kh * self._bank.kw))
        x = x.to(self._device)
        out = score_unit_kernels(self._bank, x, self._weights), nz.degenerate
        advance(len(nz), "score")
        return out

    def _score_all(
        self, kernels: np.ndarray | Normalized
    ) -> tuple[dict[str, FamilyScore], np.ndarray]:
        """Stream ``kernels`` (raw, normalised batch by batch, or already normalised) in
        batches; on CPU, batches run on ``n_jobs`` worker threads.

        The per-kernel steering is many small tensor ops: running whole batches side by side
        with one intra-op thread each scales much better than splitting every small op.
        """
        n = len(kernels)
        jobs = torch.get_num_threads() if self._device.type == "cpu" else 1
        bs = self._rows_per_batch(jobs)
        batches = [kernels[s : s + bs] for s in range(0, n, bs)]
        if not batches:
            batches = [np.zeros((0, *self._bank_shape()), np.float32)]
        if jobs > 1 and len(batches) > 1:
            from ..threads import torch_thread_pool

            torch.set_num_threads(1)
            try:
                with torch_thread_pool(jobs, "kernelatlas-score") as pool:
                    results = list(pool.map(self._score_batch, batches))
            finally:
                torch.set_num_threads(jobs)
        else:
            results = [self._score_batch(b) for b in batches]
        names = self._bank.names
        merged = {f: FamilyScore.concat([r[0][f] for r in results]) for f in names}
        return merged, np.concatenate([r[1] for r in results])

    def _rows_per_batch(self, jobs: int) -> int:
        """``batch_size``, or fewer rows where ``jobs`` batches of this size's kernels would
        exceed the work budget (:func:`kernelatlas.limits.rows_per_batch`): a row costs about
        40 bytes a tap (normalisation in float64) and 12 bytes a template (the product)."""
        d, c = self._bank.kh * self._bank.kw, int(self._bank.weights.shape[1])
        return rows_per_batch(40 * d + 12 * c, int(self.batch_size), parallel=jobs)

    def _bank_shape(self) -> tuple[int, int]:
        return self._bank.kh, self._bank.kw

    def _decide(
        self, scores: dict[str, FamilyScore], degenerate: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per kernel: the best family's index (largest normalised margin), whether it is
        classified, and the score matrix [N, F] in ``families_`` order."""
        s = _stack(scores, self.families_).astype(np.float64)
        n = s.shape[0]
        thr = np.array([self.thresholds_[f] for f in self.families_])
        margin = (s - thr) / np.maximum(1.0 - thr, 1e-9)
        best = margin.argmax(axis=1) if n else np.zeros(0, dtype=np.int64)
        classified = (margin[np.arange(n), best] > 0) & ~degenerate
        return best, classified, s

    def scores(self, kernels: np.ndarray) -> tuple[dict[str, FamilyScore], np.ndarray, np.ndarray]:
        """Every family's best pattern for each kernel, and the atlas's decision.

        Returns (family name -> :class:`~kernelatlas.atlas.family.FamilyScore`, the best
        family's name per kernel (``degenerate`` for degenerate kernels; the closest family
        also when unclassified), classified [N] bool). Used by the fits, which start from
        these templates.
        """
        self._check_fitted()
        arr = self._check_kernels(kernels, self.kernel_shape_)
        sc, degen = self._score_all(arr)
        best, classified, _ = self._decide(sc, degen)
        names = np.array(self.families_, dtype=object)
        family = names[best] if len(best) else np.zeros(0, dtype=object)
        family = np.where(degen, DEGENERATE, family).astype(object)
        return sc, family, classified

    def predict(self, kernels: np.ndarray, *, details: bool = False) -> pd.DataFrame:
        """Name each kernel.

        Parameters
        ----------
        kernels : array [N, kh, kw] (a single [kh, kw] kernel is allowed).
        details : also return ``shape`` (the best pattern's sub-shape: a centre shape,
            ``first``, ``bar``, ``cross``, ``shift``...), ``offset_x``, ``offset_y`` (best
            pattern's centre, pixels) and one ``score_<family>`` column per family.

        Returns
        -------
        DataFrame with one row per kernel and columns ``family, orientation, polarity,
        scale, score, classified`` (then the detail columns).
        """
        self._check_fitted()
        arr = self._check_kernels(kernels, self.kernel_shape_)
        return self._frame(*self._score_all(arr), details=details)

    def predict_normalized(self, normalized: Normalized, *, details: bool = False) -> pd.DataFrame:
        """:meth:`predict` on kernels already normalised by
        :func:`kernelatlas.normalize.normalize`: the same frame, bit for bit, as
        ``predict(kernels)`` on the kernels they came from, without normalising again.

        For a caller that needs the unit kernels for more than the atlas (an analysis
        partition hands the same ``Normalized`` to the null references and the diagram's
        panel sums), so that a batch is centred and unit-normed once.

        Parameters
        ----------
        normalized : ``normalize(kernels)`` of kernels [N, kh, kw] of the fitted size.
        details : as in :meth:`predict`.

        Examples
        --------
        >>> import numpy as np
        >>> from kernelatlas.atlas import Atlas
        >>> from kernelatlas.normalize import normalize
        >>> atlas = Atlas(kernel_size=3, n_null=500).fit()
        >>> k = np.random.default_rng(0).standard_normal((4, 3, 3)).astype(np.float32)
        >>> atlas.predict_normalized(normalize(k)).equals(atlas.predict(k))
        True
        """
        self._check_fitted()
        return self._frame(*self._score_all(self._check_normalized(normalized)), details=details)

    def _check_normalized(self, normalized: object) -> Normalized:
        if not isinstance(normalized, Normalized):
            raise KernelAtlasError(
                f"predict_normalized takes kernelatlas.normalize.normalize(kernels), got "
                f"{type(normalized).__name__}: pass raw kernels to predict instead"
            )
        unit, (kh, kw) = normalized.unit, self.kernel_shape_
        if unit.ndim != 3 or unit.shape[1:] != (kh, kw) or unit.dtype != np.float32:
            raise KernelAtlasError(
                f"this Atlas is fitted for {kh}x{kw} kernels, got normalised kernels of shape "
                f"{list(unit.shape)} ({unit.dtype}): normalise kernels [N,{kh},{kw}] of its size"
            )
        if not len(normalized.norm) == len(normalized.degenerate) == len(unit):
            raise KernelAtlasError("a Normalized's unit, norm and degenerate differ in length")
        return normalized

    def _frame(
        self, sc: dict[str, FamilyScore], degen: np.ndarray, *, details: bool
    ) -> pd.DataFrame:
        """The prediction frame from the family scores and degenerate flags of N kernels."""
        best, classified, s = self._decide(sc, degen)
        names = self.families_
        fams = [sc[f] for f in names]
        n_fam = len(names)
        # one pass per column: np.choose picks each row's value of its best family
        choice = np.where(classified, best, n_fam)  # n_fam: the fill value

        def pick(attr: str, fill: float, dtype: object) -> np.ndarray:
            values = [getattr(f, attr) for f in fams]
            out = np.choose(choice, [*values, np.full(1, fill, values[0].dtype)])
            return out.astype(dtype, copy=False)

        n = len(degen)
        rows = np.arange(n)
        code = np.where(degen, n_fam + 1, choice)
        family = np.array([*names, UNCLASSIFIED, DEGENERATE], dtype=object)[code]
        best_score = s[rows, best] if n else np.zeros(0)
        columns: dict[str, object] = {
            "family": pd.Series(family, dtype=object, copy=False),
            "orientation": pick("orientation", np.nan, np.float64),
            "polarity": pick("polarity", 0, np.int8),
            "scale": pick("scale", np.nan, np.float64),
            "score": np.where(degen, np.nan, best_score),
            "classified": classified,
        }
        if details:
            labels, base = [], []
            for fam in self._bank.families:
                base.append(len(labels))
                labels.extend(fam.shapes)
            labels.append("")
            shape = pick("shape", 0, np.int64) + np.append(base, len(labels) - 1)[choice]
            off = [f.offset for f in fams]
            offset = np.full((n, 2), np.nan)
            for j in range(n_fam):  # the best family's offset where classified, else NaN
                sel = choice == j
                offset[sel] = off[j][sel]
            # the dtype pandas infers for strings (as assigning an object column would)
            str_dtype = pd.Series(np.array(labels, dtype=object)).dtype
            columns["shape"] = pd.array(np.array(labels, dtype=object), dtype=str_dtype).take(shape)
            columns["offset_x"] = offset[:, 0]
            columns["offset_y"] = offset[:, 1]
            nan_degen = np.where(degen[:, None], np.nan, s)
            for j, f in enumerate(names):
                columns[f"score_{f}"] = nan_degen[:, j]
        return pd.DataFrame(columns, copy=False)

    def coverage(self, kernels: np.ndarray) -> float:
        """Fraction of the non-degenerate ``kernels`` that are classified
        (:func:`kernelatlas.taxonomy.coverage`)."""
        df = self.predict(kernels)
        return coverage(df["classified"], df["family"])


def _stack(scores: dict[str, FamilyScore], names: tuple[str, ...]) -> np.ndarray:
    """Scores [N, F] in ``names`` order."""
    return np.stack([scores[f].score for f in names], axis=1)
