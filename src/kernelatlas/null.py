"""The null: random kernels that any "classified" rule is calibrated against, and the
baselines every coverage figure stands beside.

One place for the null (design rule): the atlas classifier, the autoencoder and the
pipeline draw their null kernels, thresholds, baselines and intervals from here, so a
coverage figure and its null rate always come from the same definition.

Null kinds
----------
A kind is one entry of the registry :data:`NULLS` (add one with :func:`register_null`: one
function that draws ``n`` surrogates). Built in, from the weakest to the strongest:

``gaussian``
    iid N(0, 1) weights (after normalisation: uniform on the sphere of zero-mean kernels).
``init``
    freshly initialised kernels of the same architecture (``timm:NAME@init``), where the
    registry knows it. Finite: split in two seeded halves, one to calibrate, one held out.
``smooth``
    iid N(0, 1) on a ``(kh+2) x (kw+2)`` grid through the fixed low-pass
    :data:`SMOOTH_FILTER` (the mean over a pixel and its 4 neighbours), kept where the
    filter fits (``valid``): a stationary field with correlation 0.4 between 4-neighbours
    and diagonal neighbours, 0.2 at two pixels along a row or column, 0 beyond.
``phase``
    each analysed kernel's amplitude spectrum with random phases (:func:`phase_randomize`):
    the surrogate of kernel ``k`` has exactly the 2-D DFT amplitude ``|fft2(k)|`` of ``k`` at
    every frequency, with the phases of the DFT of real white noise (so Hermitian symmetry
    holds and the surrogate is real; the float32 surrogates keep it to float32 rounding).
    Circular: the kernel is treated as one period.
``covariance``
    a zero-mean Gaussian random field with the second moment ``E[u u^T]`` of the model's own
    unit kernels (centred, unit norm, as the atlas sees them; degenerate ones left out), per
    model and kernel size (Trockman et al., ICLR 2023, initialise from this).
``covariance_layer``
    the same with one second moment per depthwise layer, each surrogate from a layer drawn
    in proportion to the layers' kernel counts. Not a default baseline (``baseline=False``).

Calibration and baselines
-------------------------
:func:`calibration_null` gives the null an :class:`~kernelatlas.atlas.Atlas` is fitted on
for one kernel size (a mixture over the analysed models, in proportion to their kernels);
:func:`measure_baselines` gives, per model and kind, the counts of *held-out* surrogates
(an independent stream, or for a finite kind the other half) under the thresholds in force.
Every draw comes from a stream keyed by (seed, kind, part, model, size), so results are
deterministic given the seed and one model's surrogates do not change when another model is
added. Rates carry Wilson score intervals, differences Newcombe's hybrid score interval.
"""

from __future__ import annotations

import copy
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from statistics import NormalDist
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from .errors import KernelAtlasError
from .limits import max_work_bytes, rows_per_batch

if TYPE_CHECKING:
    from .normalize import Normalized

__all__ = [
    "NULL_KINDS",
    "DEFAULT_BASELINES",
    "DEFAULT_NULL_SIZE",
    "MAX_NULL_SIZE",
    "NULLS",
    "NullKind",
    "NullReference",
    "ReferenceBuilder",
    "register_null",
    "get_null",
    "null_kinds",
    "gaussian_null",
    "smooth_field",
    "phase_randomize",
    "draw_surrogates",
    "calibration_null",
    "calibration_stream",
    "NullStream",
    "iter_surrogates",
    "draw_rows",
    "size_reason",
    "heldout_surrogates",
    "split_halves",
    "measure_baselines",
    "calibrate_threshold",
    "null_rate",
    "wilson_interval",
    "difference_interval",
    "INTERVAL_LEVEL",
    "INTERVAL_METHOD",
    "SMOOTH_FILTER",
]

DEFAULT_NULL_SIZE = 20_000
#: The most null kernels per size (and per baseline kind) an analysis may ask for
#: (``--n-null``): beyond, it only runs out of memory.
MAX_NULL_SIZE = 10_000_000
# Surrogates are drawn (and their float64 intermediates held) this many at a time, fewer
# for large kernels (:func:`draw_rows`: at most ~DRAW_BYTES_PER_TAP bytes a tap of each row
# within the work budget, kernelatlas.limits); 3x3..15x15 always draw DRAW_CHUNK.
DRAW_CHUNK = 16_384
DRAW_BYTES_PER_TAP = 128  # phase randomisation: a few float64/complex128 copies of a row
# Second moments are d x d float64 per model (per layer for covariance_layer): beyond this
# many pixels (64x64) the covariance kinds are not built.
MAX_COVARIANCE_PIXELS = 4096
# The smooth null's low-pass: the mean over a pixel and its four neighbours.
SMOOTH_FILTER = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=np.float64) / 5.0
INTERVAL_LEVEL = 0.95
INTERVAL_METHOD = (
    "Wilson score interval (95%) for each rate; Newcombe's hybrid score interval (method 10, "
    "from the two Wilson intervals) for a difference of two independent rates"
)

Reference = Literal["none", "moments", "layer_moments", "sample", "init"]


# --------------------------------------------------------------------------- references
@dataclass
class NullReference:
    """What the model-dependent null kinds are built from, for one model and kernel size.

    Attributes
    ----------
    kh, kw : kernel size.
    count : non-degenerate analysed kernels of this model and size.
    moment : [d, d] float64 mean of ``u u^T`` over the unit kernels ``u`` (d = kh*kw).
    layer_counts, layer_moments : [L] and [L, d, d], the same per depthwise layer.
    sample : [m, kh, kw] float32, the non-degenerate kernels (where there are more than
        ``sample_size``, each kept with probability ``sample_size / kernels``, by a seeded
        uniform of its row: :class:`ReferenceBuilder`).
    init : [k, kh, kw] float32 freshly initialised kernels of the same architecture.
    """

    kh: int
    kw: int
    count: int = 0
    moment: np.ndarray | None = None
    layer_counts: np.ndarray | None = None
    layer_moments: np.ndarray | None = None
    sample: np.ndarray | None = None
    init: np.ndarray | None = None

    @cached_property
    def factor(self) -> np.ndarray:
        """``L`` with ``L @ L.T == moment``, so ``z @ L.T`` is N(0, moment) for white ``z``."""
        return _psd_factor(self.moment)

    @cached_property
    def layer_factors(self) -> np.ndarray:
        return np.stack([_psd_factor(m) for m in self.layer_moments])

    def amplitude(self, idx: np.ndarray) -> np.ndarray:
        """``|fft2(sample[idx])|`` in float64, each distinct kernel transformed once (a
        kernel's amplitude does not depend on the others transformed with it)."""
        u, inv = np.unique(idx, return_inverse=True)
        return np.abs(np.fft.fft2(self.sample[u].astype(np.float64)))[inv.reshape(-1)]


def _psd_factor(moment: np.ndarray | None) -> np.ndarray:
    if moment is None:
        raise KernelAtlasError("no second moment was collected for this null")
    sym = (moment + moment.T) / 2
    w, v = np.linalg.eigh(sym)
    return v * np.sqrt(np.clip(w, 0.0, None))


def _gram(u: np.ndarray) -> np.ndarray:
    """``u.T @ u`` (float64) on one torch thread: the same bits in every thread and process.

    Not numpy's ``@``: its OpenBLAS is multithreaded, and two of its calls from two
    partition threads at once were measured ~13x slower than one after the other (the
    engines already run torch on one thread per partition). One thread is forced here, for
    the call only, when the caller has more (as the driver has outside the partitions).
    """
    import torch

    t = torch.from_numpy(np.ascontiguousarray(u, dtype=np.float64))
    n = torch.get_num_threads()
    if n == 1:
        return (t.T @ t).numpy()
    torch.set_num_threads(1)
    try:
        return (t.T @ t).numpy()
    finally:
        torch.set_num_threads(n)


@dataclass
class _Piece:
    """The reference of one run of consecutive rows of one model: sums of ``u u^T`` and
    their counts per layer code, and the sampled kernels."""

    rows: int
    sums: dict[int, np.ndarray] = field(default_factory=dict)
    layer_n: dict[int, int] = field(default_factory=dict)
    kept: list[np.ndarray] = field(default_factory=list)

    def fold(self, other: _Piece) -> None:
        """Append ``other`` (the rows right after this piece's)."""
        for code, m in other.sums.items():
            have = self.sums.get(code)
            self.sums[code] = m if have is None else have + m
            self.layer_n[code] = self.layer_n.get(code, 0) + other.layer_n[code]
        self.kept.extend(other.kept)
        self.rows += other.rows


class ReferenceBuilder:
    """Collect :class:`NullReference` s from analysed kernels of one size, in any order.

    Each :meth:`add` covers consecutive rows of one model (``first`` is the row of its first
    kernel among all of that model's kernels of this size, degenerate ones included). The
    result depends only on the rows, never on the order of the calls or on how builders
    fed with disjoint rows are :meth:`merge` d: the second-moment sums are added in row
    order (each call's sum is one term), and a kernel is in the ``phase`` sample when a
    uniform drawn for its row (a seeded stream keyed by seed, model and size, read at
    ``first``) is below ``sample_size / expected[model]``.

    Parameters
    ----------
    kh, kw : kernel size.
    kinds : the null kinds that will be drawn (only what they need is collected).
    expected : model -> number of its kernels of this size (sets the sample rate).
    sample_size : kernels kept per model for the ``phase`` null (at most what four work
        budgets hold at 12 bytes a tap, kernel and amplitude: all of 40,000 up to 28x28).
    seed : seed of the sample.

    Examples
    --------
    >>> import numpy as np
    >>> b = ReferenceBuilder(3, 3, kinds=["covariance"], expected={"m": 100})
    >>> b.add("m", np.zeros(100, int), np.random.default_rng(0).standard_normal((100, 3, 3)))
    >>> b.build()["m"].moment.shape
    (9, 9)
    """

    def __init__(
        self,
        kh: int,
        kw: int,
        *,
        kinds: Iterable[str],
        expected: Mapping[str, int],
        sample_size: int = 2 * DEFAULT_NULL_SIZE,
        seed: int = 0,
    ) -> None:
        self.kh, self.kw = int(kh), int(kw)
        needs = {get_null(k).reference for k in kinds}
        small = self.kh * self.kw <= MAX_COVARIANCE_PIXELS
        self._layers = "layer_moments" in needs and small
        self._moments = ("moments" in needs and small) or self._layers
        self._sample = "sample" in needs
        self._expected = dict(expected)
        self._sample_size = min(
            int(sample_size), max(1, 4 * max_work_bytes() // (12 * self.kh * self.kw))
        )
        self._seed = int(seed)
        self._count: dict[str, int] = {}
        self._head: dict[str, _Piece] = {}  # rows [0, head.rows) of each model, folded
        self._pending: dict[str, dict[int, _Piece]] = {}  # pieces after a gap, by first row
        self._end: dict[str, int] = {}  # where add() without ``first`` goes on
        self._init: dict[str, np.ndarray] = {}

    @property
    def expected(self) -> dict[str, int]:
        """model -> its number of kernels of this size (as given, and merged)."""
        return dict(self._expected)

    @property
    def collects(self) -> bool:
        """Whether any kind needs the analysed kernels (otherwise :meth:`add` is a no-op
        apart from counting)."""
        return self._moments or self._sample

    def add(
        self,
        model: str,
        layer: np.ndarray,
        kernels: np.ndarray,
        *,
        first: int | None = None,
        normalized: Normalized | None = None,
    ) -> None:
        """Add kernels [N, kh, kw] of ``model`` with their layer codes [N] (any ints).

        ``first``: the row of ``kernels[0]`` among all of ``model``'s kernels of this size
        (default: right after the rows added last). ``normalized``: ``normalize(kernels)``
        where the caller has it already (e.g. from the atlas's batch), so that it is not
        computed again.
        """
        from .normalize import normalize

        kernels = np.asarray(kernels)
        if normalized is not None and len(normalized) != len(kernels):
            raise KernelAtlasError(
                f"normalized holds {len(normalized)} kernels, kernels {len(kernels)}: pass "
                "normalize(kernels) of the same kernels"
            )
        first = self._end.get(model, 0) if first is None else int(first)
        self._end[model] = first + len(kernels)
        nz = normalize(kernels) if normalized is None else normalized
        live = ~nz.degenerate
        self._count[model] = self._count.get(model, 0) + int(live.sum())
        piece = _Piece(rows=len(kernels))
        if self._moments:
            u = nz.unit.reshape(-1, self.kh * self.kw)
            codes = np.asarray(layer) if self._layers else np.zeros(len(u), np.int64)
            if not live.all():
                u, codes = u[live], codes[live]
            if len(codes) and codes.min() == codes.max():  # one code: the rows as they are
                groups = [(int(codes[0]), u)]
            else:  # layers, not kernels
                groups = [(int(c), u[codes == c]) for c in np.unique(codes)]
            for code, rows in groups:
                piece.sums[code] = _gram(rows)
                piece.layer_n[code] = len(rows)
        if self._sample:
            keep = min(1.0, self._sample_size / max(1, self._expected.get(model, 1)))
            if keep < 1.0:
                live = live & (self._uniforms(model, first, len(kernels)) < keep)
            piece.kept.append(np.asarray(kernels, dtype=np.float32)[live])
        self._insert(model, first, piece)

    def _uniforms(self, model: str, first: int, n: int) -> np.ndarray:
        """The sample's uniforms of rows ``first .. first + n - 1`` of ``model``."""
        rng = _rng(self._seed, "reference", "sample", model, self.kh, self.kw)
        rng.bit_generator.advance(first)  # one 64-bit draw per double
        return rng.random(n)

    def _insert(self, model: str, first: int, piece: _Piece) -> None:
        head = self._head.setdefault(model, _Piece(rows=0))
        pending = self._pending.setdefault(model, {})
        if first < head.rows or first in pending:
            raise KernelAtlasError(f"rows of {model} from {first} were added twice")
        pending[first] = piece
        while head.rows in pending:  # fold what now follows the head, in row order
            head.fold(pending.pop(head.rows))

    def empty(self) -> ReferenceBuilder:
        """A builder with the same settings and ``expected``, and no rows yet."""
        out = copy.copy(self)
        out._count, out._head, out._pending, out._end, out._init = {}, {}, {}, {}, {}
        out._expected = dict(self._expected)
        return out

    def merge(self, other: ReferenceBuilder) -> ReferenceBuilder:
        """Add the rows collected by ``other`` (disjoint from this builder's); returns self."""
        if (other.kh, other.kw, other._moments, other._layers, other._sample, other._seed) != (
            self.kh, self.kw, self._moments, self._layers, self._sample, self._seed
        ):  # fmt: skip
            raise KernelAtlasError("cannot merge references collected with other settings")
        for model, n in other._count.items():
            self._count[model] = self._count.get(model, 0) + n
        for model, head in other._head.items():
            if head.rows:  # already in row order from row 0: taken whole
                if self._head.get(model, _Piece(rows=0)).rows or 0 in self._pending.get(model, {}):
                    raise KernelAtlasError(f"rows of {model} from 0 were added twice")
                self._head[model] = _Piece(rows=0)
                self._insert(model, 0, head)
        for model, pending in other._pending.items():
            for first, piece in sorted(pending.items()):
                self._insert(model, first, piece)
        for model, end in other._end.items():
            self._end[model] = max(self._end.get(model, 0), end)
        for model, n in other._expected.items():
            self._expected.setdefault(model, n)
        self._init.update(other._init)
        return self

    def set_init(self, model: str, kernels: np.ndarray) -> None:
        """The freshly initialised kernels [k, kh, kw] of ``model``'s architecture."""
        if len(kernels):
            self._init[model] = np.asarray(kernels, dtype=np.float32)

    def build(self) -> dict[str, NullReference]:
        """model -> :class:`NullReference` (every model added or expected)."""
        out = {}
        for model in sorted(set(self._count) | set(self._init) | set(self._expected)):
            ref = NullReference(self.kh, self.kw, count=self._count.get(model, 0))
            whole = _Piece(rows=0)
            whole.fold(self._head.get(model, _Piece(rows=0)))
            for _, piece in sorted(self._pending.get(model, {}).items()):  # rows left unseen
                whole.fold(piece)
            codes = sorted(whole.sums)
            if codes and ref.count:
                n = np.array([whole.layer_n[c] for c in codes], dtype=np.float64)
                sums = np.stack([whole.sums[c] for c in codes])
                ref.moment = sums.sum(0) / n.sum()
                if self._layers:
                    ref.layer_counts = n.astype(np.int64)
                    ref.layer_moments = sums / n[:, None, None]
            if self._sample and whole.kept:
                s = np.concatenate(whole.kept)
                ref.sample = s if len(s) else None
            ref.init = self._init.get(model)
            out[model] = ref
        return out


# --------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class NullKind:
    """One null kind: how its surrogates are drawn and what beating it means.

    ``draw(ref, n, rng)`` returns ``n`` surrogates [n, kh, kw] (for a ``finite`` kind: its
    whole pool, which is split in halves). ``reference`` says what it is built from:
    ``none`` (nothing: one draw per size serves every model), ``moments``,
    ``layer_moments``, ``sample`` (the analysed kernels) or ``init``. ``seed_offsets``
    (calibration, held-out): plain ``default_rng(seed + offset)`` streams instead of the
    keyed ones (the Gaussian null keeps 0.1.0's: ``gaussian_null(seed)`` calibrates, exactly
    as ``Atlas.fit()`` does, and ``seed + 7919`` is held out).
    """

    name: str
    label: str
    keeps: str
    rules_out: str
    leaves_open: str
    reference: Reference
    draw: Callable[[NullReference, int, np.random.Generator], np.ndarray] = field(repr=False)
    finite: bool = False
    baseline: bool = True
    seed_offsets: tuple[int, int] | None = None

    def available(self, ref: NullReference) -> bool:
        """Whether ``ref`` holds what this kind is built from."""
        return {
            "none": True,
            "moments": ref.moment is not None and ref.count > 0,
            "layer_moments": ref.layer_moments is not None and ref.count > 0,
            "sample": ref.sample is not None and len(ref.sample) > 0,
            "init": ref.init is not None and len(ref.init) > 1,
        }[self.reference]


NULLS: dict[str, NullKind] = {}


def register_null(
    name: str,
    *,
    label: str,
    keeps: str,
    rules_out: str,
    leaves_open: str,
    reference: Reference = "none",
    finite: bool = False,
    baseline: bool = True,
    seed_offsets: tuple[int, int] | None = None,
) -> Callable[[Callable[..., np.ndarray]], Callable[..., np.ndarray]]:
    """Register ``draw(ref, n, rng) -> [n, kh, kw]`` as the null kind ``name``.

    Duplicates are refused. ``baseline=True`` makes it one of the baselines every analysis
    measures (:data:`DEFAULT_BASELINES`); any kind can be calibrated on (``--null NAME``).
    """

    def deco(fn: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
        if name in NULLS:
            raise KernelAtlasError(f"null kind {name!r} is already registered")
        NULLS[name] = NullKind(name, label, keeps, rules_out, leaves_open, reference, fn,
                               finite, baseline, seed_offsets)  # fmt: skip
        return fn

    return deco


def size_reason(kind: str, kh: int, kw: int) -> str | None:
    """Why ``kind`` is not built for ``kh x kw`` kernels (one line), or None when it is."""
    if get_null(kind).reference in ("moments", "layer_moments") and kh * kw > MAX_COVARIANCE_PIXELS:
        return (
            f"the {kind} null is not built for {kh}x{kw} kernels: its {kh * kw}x{kh * kw} second "
            f"moment and factorisation grow as the area squared and cubed (limit "
            f"{MAX_COVARIANCE_PIXELS} taps, 64x64); that baseline is left out at this size"
        )
    return None


def get_null(name: str) -> NullKind:
    """The registered null kind ``name`` (a one-line error naming the kinds otherwise)."""
    try:
        return NULLS[name]
    except KeyError:
        raise KernelAtlasError(
            f"unknown null kind {name!r}: choose from {', '.join(NULLS)}"
        ) from None


def null_kinds(*, baseline_only: bool = False) -> tuple[str, ...]:
    """Names of the registered null kinds (registry order), optionally the default baselines."""
    return tuple(k for k, v in NULLS.items() if v.baseline or not baseline_only)


def gaussian_null(n: int, kh: int, kw: int | None = None, *, seed: int = 0) -> np.ndarray:
    """``n`` iid standard-normal kernels [n, kh, kw] (float32), deterministic given ``seed``."""
    kw = kh if kw is None else kw
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, kh, kw), dtype=np.float32)


def smooth_field(n: int, kh: int, kw: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` kernels of iid N(0, 1) noise through :data:`SMOOTH_FILTER` (valid), float64."""
    fh, fw = SMOOTH_FILTER.shape
    z = rng.standard_normal((n, kh + fh - 1, kw + fw - 1))
    out = np.zeros((n, kh, kw))
    for i, j in zip(*np.nonzero(SMOOTH_FILTER)):  # the filter's taps, not kernels
        out += SMOOTH_FILTER[i, j] * z[:, i : i + kh, j : j + kw]
    return out


def phase_randomize(
    kernels: np.ndarray, rng: np.random.Generator, *, amplitude: np.ndarray | None = None
) -> np.ndarray:
    """Each kernel's 2-D DFT amplitude with random phases: real surrogates [N, kh, kw], float64.

    The phases are those of ``fft2`` of real white noise: uniform and independent except for
    the Hermitian symmetry ``phi(-f) = -phi(f)`` (0 or pi where ``f = -f``), so the inverse
    transform is real and ``|fft2(surrogate)| == |fft2(kernel)|`` at every frequency.

    Examples
    --------
    >>> import numpy as np
    >>> k = np.random.default_rng(0).standard_normal((4, 5, 5))
    >>> s = phase_randomize(k, np.random.default_rng(1))
    >>> bool(np.allclose(np.abs(np.fft.fft2(s)), np.abs(np.fft.fft2(k))))
    True
    """
    amp = np.abs(np.fft.fft2(np.asarray(kernels, np.float64))) if amplitude is None else amplitude
    phase = np.fft.fft2(rng.standard_normal(amp.shape))
    mag = np.abs(phase)
    unit = np.where(mag > 0, phase / np.where(mag > 0, mag, 1.0), 1.0)
    return np.fft.ifft2(amp * unit).real


# --------------------------------------------------------------------------- built-in kinds
@register_null(
    "gaussian",
    label="iid Gaussian",
    keeps="nothing: iid N(0, 1) weights, no spatial structure",
    rules_out="chance alignment of unstructured weights with the atlas's templates",
    leaves_open="everything beyond 'not white noise', smoothness alone included",
    seed_offsets=(0, 7919),
)
def _draw_gaussian(ref: NullReference, n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal((n, ref.kh, ref.kw), dtype=np.float32)


@register_null(
    "init",
    label="fresh init (same architecture)",
    keeps="the architecture's initial weights (timm:NAME@init), split in halves",
    rules_out="patterns that the architecture or its initialiser put there before training",
    leaves_open="any structure training adds, generic smoothness included",
    reference="init",
    finite=True,
)
def _draw_init(ref: NullReference, n: int, rng: np.random.Generator) -> np.ndarray:
    return ref.init


@register_null(
    "smooth",
    label="smooth noise (5-point mean)",
    keeps="a fixed short-range correlation: iid noise through the 5-point cross mean",
    rules_out="names that any kernel with that (model-independent) smoothness gets",
    leaves_open="the model's own smoothness, anisotropy and correlation length",
)
def _draw_smooth(ref: NullReference, n: int, rng: np.random.Generator) -> np.ndarray:
    return smooth_field(n, ref.kh, ref.kw, rng).astype(np.float32)


@register_null(
    "phase",
    label="phase-randomised",
    keeps="each kernel's exact 2-D DFT amplitude (its power at every spatial frequency)",
    rules_out="names explained by each kernel's frequency content alone (how smooth, how "
    "oriented); beating it needs phase structure: lobes placed and aligned about the centre",
    leaves_open="that phase structure may itself follow from the population covariance",
    reference="sample",
)
def _draw_phase(ref: NullReference, n: int, rng: np.random.Generator) -> np.ndarray:
    idx = rng.integers(len(ref.sample), size=n)
    return phase_randomize(ref.sample[idx], rng, amplitude=ref.amplitude(idx)).astype(np.float32)


@register_null(
    "covariance",
    label="covariance-matched GRF",
    keeps="the second moment of the model's own unit kernels (all second-order structure: "
    "smoothness, anisotropy, centring, the leading modes)",
    rules_out="names implied by the kernels' second-order statistics, i.e. by what a "
    "covariance initialisation (Trockman et al., 2023) already gives",
    leaves_open="conservative: built from the kernels under test, it keeps the share of the "
    "atlas patterns that lives in the covariance, so a small excess does not mean the "
    "kernels are not DoG-like, only that a Gaussian mix of their own modes is as DoG-like",
    reference="moments",
)
def _draw_covariance(ref: NullReference, n: int, rng: np.random.Generator) -> np.ndarray:
    f = ref.factor
    return (
        (rng.standard_normal((n, f.shape[1])) @ f.T).reshape(n, ref.kh, ref.kw).astype(np.float32)
    )


@register_null(
    "covariance_layer",
    label="covariance-matched GRF per layer",
    keeps="the second moment of each layer's unit kernels (layers drawn by their size)",
    rules_out="names implied by each layer's own second-order statistics",
    leaves_open="more conservative still: few kernels per layer pin the covariance to them",
    reference="layer_moments",
    baseline=False,
)
def _draw_covariance_layer(ref: NullReference, n: int, rng: np.random.Generator) -> np.ndarray:
    counts = ref.layer_counts.astype(np.float64)
    layer = rng.choice(len(counts), size=n, p=counts / counts.sum())
    z = rng.standard_normal((n, ref.kh * ref.kw))
    out = np.empty_like(z)
    for lay in np.unique(layer):  # layers, not kernels
        sel = layer == lay
        out[sel] = z[sel] @ ref.layer_factors[lay].T
    return out.reshape(n, ref.kh, ref.kw).astype(np.float32)


NULL_KINDS: tuple[str, ...] = null_kinds()
DEFAULT_BASELINES: tuple[str, ...] = null_kinds(baseline_only=True)


# --------------------------------------------------------------------------- drawing
def _rng(seed: int, kind: str, part: str, model: str, kh: int, kw: int) -> np.random.Generator:
    key = zlib.crc32(f"{kind}\0{part}\0{model}\0{kh}x{kw}".encode())
    return np.random.default_rng(np.random.SeedSequence([int(seed) % (1 << 64), key]))


def draw_rows(kh: int, kw: int) -> int:
    """Surrogates drawn at a time for ``kh x kw`` kernels: :data:`DRAW_CHUNK`, fewer where a
    chunk's float64 intermediates would exceed the work budget (e.g. 256 for 128x128)."""
    return rows_per_batch(DRAW_BYTES_PER_TAP * int(kh) * int(kw), DRAW_CHUNK)


def draw_surrogates(
    kind: str,
    ref: NullReference,
    n: int,
    *,
    seed: int = 0,
    part: Literal["calibration", "heldout"] = "heldout",
    model: str = "",
) -> np.ndarray:
    """Surrogates [n, kh, kw] (float32) of one null kind for one model, seed-deterministic.

    ``part`` picks an independent stream (``calibration`` or ``heldout``); a finite kind
    returns the matching half of its pool instead (``n`` is then ignored). Kinds built from
    nothing ignore ``model`` (one draw per size serves every model). The concatenation of
    :func:`iter_surrogates`, which streams the same surrogates in chunks.
    """
    chunks = list(iter_surrogates(kind, ref, n, seed=seed, part=part, model=model))
    return np.concatenate(chunks) if chunks else np.zeros((0, ref.kh, ref.kw), np.float32)


def iter_surrogates(
    kind: str,
    ref: NullReference,
    n: int,
    *,
    seed: int = 0,
    part: Literal["calibration", "heldout"] = "heldout",
    model: str = "",
) -> Iterator[np.ndarray]:
    """:func:`draw_surrogates` in chunks of at most :func:`draw_rows` kernels (float32).

    Only one chunk is held at a time, so drawing a null of large kernels stays within the
    work budget; the chunks concatenate to exactly what :func:`draw_surrogates` returns.
    """
    entry = get_null(kind)
    if part not in ("calibration", "heldout"):
        raise KernelAtlasError(f"part must be 'calibration' or 'heldout', got {part!r}")
    if not entry.available(ref):
        raise KernelAtlasError(
            f"the {kind} null needs {entry.reference} for {ref.kh}x{ref.kw} kernels of "
            f"{model or 'this model'}, and none was collected"
        )
    key = "" if entry.reference == "none" else model
    if entry.finite:
        pool = np.asarray(entry.draw(ref, 0, _rng(seed, kind, "pool", key, ref.kh, ref.kw)))
        halves = split_halves(pool, seed=seed, kind=kind)
        yield halves[0 if part == "calibration" else 1].astype(np.float32)
        return
    if entry.seed_offsets is not None:
        offset = entry.seed_offsets[0 if part == "calibration" else 1]
        rng = np.random.default_rng(int(seed) + offset)
    else:
        rng = _rng(seed, kind, part, key, ref.kh, ref.kw)
    step = draw_rows(ref.kh, ref.kw)
    for s in range(0, n, step):  # chunks of a bounded size, not kernels
        yield np.asarray(entry.draw(ref, min(step, n - s), rng), dtype=np.float32)


def split_halves(
    pool: np.ndarray, *, seed: int = 0, kind: str = "init"
) -> tuple[np.ndarray, np.ndarray]:
    """A finite null's seeded split of its pool [k, kh, kw]: (calibration half, held-out half).

    The calibration half takes the odd kernel out. The permutation depends on the seed, the
    kind, the kernel size and the pool's length only.
    """
    pool = np.asarray(pool)
    perm = _rng(seed, kind, "split", "", pool.shape[1], pool.shape[2]).permutation(len(pool))
    half = (len(pool) + 1) // 2
    return pool[perm[:half]], pool[perm[half:]]


def _allocate(n: int, weights: Mapping[str, float]) -> dict[str, int]:
    """``n`` split in proportion to ``weights`` (largest remainder; ties by name)."""
    names = sorted(weights)
    w = np.array([max(0.0, float(weights[k])) for k in names])
    if w.sum() <= 0:
        return dict.fromkeys(names, 0)
    exact = n * w / w.sum()
    base = np.floor(exact).astype(int)
    order = np.argsort(-(exact - base), kind="stable")
    base[order[: n - int(base.sum())]] += 1
    return dict(zip(names, base.tolist()))


def _usable(kind: str, refs: Mapping[str, NullReference]) -> dict[str, NullReference]:
    entry = get_null(kind)
    return {m: r for m, r in refs.items() if entry.available(r)}


@dataclass(frozen=True)
class NullStream:
    """A null of one kernel size, drawn chunk by chunk when iterated (:func:`calibration_stream`).

    ``len()`` is its number of kernels; iterating yields float32 chunks [m, kh, kw] (each
    drawn afresh, the same every time); ``np.asarray`` concatenates them.
    :meth:`kernelatlas.atlas.Atlas.fit` takes it in place of an array and scores it chunk
    by chunk, so the whole null is never in memory at once.
    """

    parts: tuple[Callable[[], Iterator[np.ndarray]], ...] = field(repr=False)
    n: int
    kh: int
    kw: int

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[np.ndarray]:
        for part in self.parts:
            yield from part()

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = np.concatenate([*self, np.zeros((0, self.kh, self.kw), np.float32)])
        return out if dtype is None else out.astype(dtype)


def _mixture(
    kind: str, refs: Mapping[str, NullReference], n: int, seed: int, part: str
) -> np.ndarray:
    return np.asarray(_mixture_stream(kind, refs, n, seed, part))


def _mixture_stream(
    kind: str, refs: Mapping[str, NullReference], n: int, seed: int, part: str
) -> NullStream:
    entry = get_null(kind)
    usable = _usable(kind, refs)
    if not usable:
        any_ref = next(iter(refs.values()), None)
        size = f"{any_ref.kh}x{any_ref.kw} " if any_ref else ""
        hint = {
            "init": "use another --null or analyse sources whose fresh init is known (timm:NAME)",
            "moments": "the kernels are too large or all degenerate",
            "layer_moments": "the kernels are too large or all degenerate",
            "sample": "every kernel is degenerate",
        }.get(entry.reference, "")
        why = any_ref and size_reason(kind, any_ref.kh, any_ref.kw)
        if why:
            raise KernelAtlasError(f"{why.split(';')[0]}: calibrate on another --null")
        raise KernelAtlasError(f"no {size}kernels to build the {kind} null from: {hint}")
    first = next(iter(usable.values()))

    def stream(ref: NullReference, k: int, model: str) -> Callable[[], Iterator[np.ndarray]]:
        return lambda: iter_surrogates(kind, ref, k, seed=seed, part=part, model=model)  # type: ignore[arg-type]

    if entry.reference == "none":
        return NullStream((stream(first, n, ""),), n, first.kh, first.kw)
    if entry.finite:  # the pools are already in memory: their halves, drawn now
        halves = [draw_surrogates(kind, r, 0, seed=seed, part=part, model=m)  # type: ignore[arg-type]
                  for m, r in usable.items()]  # fmt: skip
        parts = tuple((lambda h=h: iter((h,))) for h in halves)
        return NullStream(parts, sum(len(h) for h in halves), first.kh, first.kw)
    alloc = _allocate(n, {m: r.count for m, r in usable.items()})
    parts = tuple(stream(usable[m], k, m) for m, k in alloc.items())
    return NullStream(parts, n, first.kh, first.kw)


def calibration_null(
    kind: str, refs: Mapping[str, NullReference], n: int = DEFAULT_NULL_SIZE, *, seed: int = 0
) -> np.ndarray:
    """The calibration null of one kernel size: ``n`` surrogates of ``kind`` [n, kh, kw].

    A mixture over the models in ``refs`` in proportion to their non-degenerate kernels (a
    single model: its own null); for a finite kind, every model's calibration half.
    """
    return _mixture(kind, refs, n, seed, "calibration")


def calibration_stream(
    kind: str, refs: Mapping[str, NullReference], n: int = DEFAULT_NULL_SIZE, *, seed: int = 0
) -> NullStream:
    """:func:`calibration_null` as a :class:`NullStream`: the same kernels, drawn in chunks
    when :meth:`~kernelatlas.atlas.Atlas.fit` scores them (bounded memory for large kernels)."""
    return _mixture_stream(kind, refs, n, seed, "calibration")


def heldout_surrogates(
    kind: str, refs: Mapping[str, NullReference], n: int = DEFAULT_NULL_SIZE, *, seed: int = 0
) -> np.ndarray:
    """The held-out counterpart of :func:`calibration_null` (independent stream / other half)."""
    return _mixture(kind, refs, n, seed, "heldout")


def _tally(pred: pd.DataFrame) -> dict[str, Any]:
    from .taxonomy import PATTERN_FAMILIES  # the registry's families, read live

    fam = pred["family"].to_numpy(object)
    live = fam != "degenerate"
    cls = pred["classified"].to_numpy(bool) & live
    row: dict[str, Any] = {"surrogates": int(live.sum()), "classified": int(cls.sum())}
    for f in PATTERN_FAMILIES:
        row[f"n_{f}"] = int((cls & (fam == f)).sum())
    return row


def _predict_stream(
    predict: Callable[[np.ndarray], pd.DataFrame], chunks: Iterable[np.ndarray]
) -> pd.DataFrame:
    """``predict`` of each chunk, concatenated (one chunk of surrogates held at a time)."""
    preds = [predict(c) for c in chunks]
    return pd.concat(preds, ignore_index=True) if len(preds) > 1 else preds[0]


def measure_baselines(
    predict: Callable[[np.ndarray], pd.DataFrame],
    refs: Mapping[str, NullReference],
    kinds: Iterable[str],
    n: int = DEFAULT_NULL_SIZE,
    *,
    seed: int = 0,
    calibrated: str | None = None,
) -> tuple[pd.DataFrame, dict[str, Any] | None]:
    """Held-out surrogates of every kind and model, named by ``predict`` (e.g. Atlas.predict).

    Returns
    -------
    rows : DataFrame, one row per (model, kind) that could be built, columns ``model, kind,
        surrogates`` (non-degenerate), ``classified`` and ``n_FAMILY`` per registered
        pattern family.
    pooled : for ``calibrated`` (the kind the thresholds came from), the counts on its
        held-out mixture (as :func:`heldout_surrogates` draws it), or None.
    """
    rows, pooled = [], None
    for kind in kinds:
        entry = get_null(kind)
        usable = _usable(kind, refs)
        if not usable:
            continue
        if entry.reference == "none":  # one draw per size serves every model
            pred = _predict_stream(
                predict, iter_surrogates(kind, next(iter(usable.values())), n, seed=seed)
            )
            tally = _tally(pred)
            rows += [{"model": m, "kind": kind, **tally} for m in usable]
            if kind == calibrated:
                pooled = tally
            continue
        preds = {}
        for m, r in usable.items():
            preds[m] = _predict_stream(predict, iter_surrogates(kind, r, n, seed=seed, model=m))
            rows.append({"model": m, "kind": kind, **_tally(preds[m])})
        if kind == calibrated:
            if entry.finite:
                pooled = _tally(pd.concat(preds.values(), ignore_index=True))
            else:  # the first n_m of each model's iid draw: a sample of the mixture
                alloc = _allocate(n, {m: r.count for m, r in usable.items()})
                pooled = _tally(
                    pd.concat([preds[m].iloc[:k] for m, k in alloc.items()], ignore_index=True)
                )
    from .taxonomy import PATTERN_FAMILIES

    cols = ["model", "kind", "surrogates", "classified", *[f"n_{f}" for f in PATTERN_FAMILIES]]
    return pd.DataFrame(rows, columns=cols), pooled


# --------------------------------------------------------------------------- thresholds
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


# --------------------------------------------------------------------------- intervals
def _z(level: float) -> float:
    if not 0.0 < level < 1.0:
        raise KernelAtlasError(f"interval level must be in (0, 1), got {level}")
    return NormalDist().inv_cdf((1.0 + level) / 2.0)


def wilson_interval(k: Any, n: Any, level: float = INTERVAL_LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval (lo, hi) of the rate ``k / n`` (vectorised; NaN where n == 0).

    Examples
    --------
    >>> lo, hi = wilson_interval(10, 100)
    >>> round(float(lo), 4), round(float(hi), 4)
    (0.0552, 0.1744)
    """
    z = _z(level)
    k = np.asarray(k, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        den = 1.0 + z * z / n
        centre = (p + z * z / (2 * n)) / den
        half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    lo = np.where(n > 0, np.where(k <= 0, 0.0, np.clip(centre - half, 0.0, 1.0)), np.nan)
    hi = np.where(n > 0, np.where(k >= n, 1.0, np.clip(centre + half, 0.0, 1.0)), np.nan)
    return lo, hi


def difference_interval(
    k1: Any, n1: Any, k2: Any, n2: Any, level: float = INTERVAL_LEVEL
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``k1/n1 - k2/n2`` and Newcombe's hybrid score interval (method 10), vectorised.

    Examples
    --------
    >>> d, lo, hi = difference_interval(56, 70, 48, 80)  # Newcombe (1998), Table II
    >>> round(float(d), 2), round(float(lo), 4), round(float(hi), 4)
    (0.2, 0.0524, 0.3339)
    """
    l1, u1 = wilson_interval(k1, n1, level)
    l2, u2 = wilson_interval(k2, n2, level)
    with np.errstate(invalid="ignore", divide="ignore"):
        p1 = np.asarray(k1, np.float64) / np.asarray(n1, np.float64)
        p2 = np.asarray(k2, np.float64) / np.asarray(n2, np.float64)
    d = p1 - p2
    lo = d - np.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    hi = d + np.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return d, lo, hi
