"""What a pattern family is, in one definition: the base classes of the family plugins.

A family is a subclass of :class:`PatternFamily` decorated with
:func:`kernelatlas.atlas.registry.register_family`. From its class attributes and four
methods everything else is derived:

- the taxonomy entry (``name``, ``description``, ``formula``, ``orientation_period``,
  ``has_polarity``) and the report colour (``color``): :meth:`PatternFamily.info`;
- the atlas: :meth:`PatternFamily.basis` returns, for one kernel size, the family's block
  of projection columns and the scorer that turns a batch of projections into the best
  cosine and the best pattern's parameters (:class:`Basis`, :class:`FamilyScore`);
  the classifier concatenates the blocks of every registered family and calibrates one
  threshold per family on the null;
- the fit: :meth:`PatternFamily.fit_model` returns a :class:`FitModel` with bounded
  parameters (:class:`Param`) started from the atlas's best template;
- the initialisers: :meth:`PatternFamily.generate` renders unit patterns with given (or
  random) parameters; ``kernelatlas.train.init`` draws its ``dog`` and ``atlas`` banks
  from it;
- the report: :meth:`PatternFamily.diagram` (the atlas figure), colour and period;
- the summary schema's family names (``kernelatlas.report.summary_schema``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from ..errors import KernelAtlasError
from ..taxonomy import FamilyInfo

__all__ = [
    "PatternFamily",
    "Basis",
    "DenseBasis",
    "FamilyScore",
    "Param",
    "FitModel",
    "centred_unit_columns",
    "take_rows",
    "row_argmax",
    "wrap_angle",
]


# --------------------------------------------------------------------------- scores


@dataclass
class FamilyScore:
    """A family's best cosine per kernel and its best pattern's parameters (length B each).

    ``shape`` indexes the family's ``shapes`` labels; ``extra`` holds family-specific
    values its fit model starts from (e.g. the centre's surround ratio).
    """

    score: np.ndarray  # float32 [B]
    orientation: np.ndarray  # float64 [B], NaN where the family has no orientation
    polarity: np.ndarray  # int8 [B]
    scale: np.ndarray  # float64 [B]
    offset: np.ndarray  # float64 [B, 2]: (dx, dy) of the best pattern, px
    shape: np.ndarray  # int16 [B]
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.score.shape[0])

    def take(self, idx: np.ndarray) -> FamilyScore:
        """The scores of the kernels ``idx``."""
        return FamilyScore(
            score=self.score[idx],
            orientation=self.orientation[idx],
            polarity=self.polarity[idx],
            scale=np.take(self.scale, idx),
            offset=np.take(self.offset, idx, axis=0),
            shape=np.take(self.shape, idx),
            extra={k: np.take(v, idx, axis=0) for k, v in self.extra.items()},
        )

    @staticmethod
    def concat(parts: list[FamilyScore]) -> FamilyScore:
        if len(parts) == 1:
            return parts[0]
        keys = parts[0].extra.keys()
        return FamilyScore(
            score=np.concatenate([p.score for p in parts]),
            orientation=np.concatenate([p.orientation for p in parts]),
            polarity=np.concatenate([p.polarity for p in parts]),
            scale=np.concatenate([p.scale for p in parts]),
            offset=np.concatenate([p.offset for p in parts]),
            shape=np.concatenate([p.shape for p in parts]),
            extra={k: np.concatenate([p.extra[k] for p in parts]) for k in keys},
        )


#: Relative distance below the period at which a wrapped angle is the period's start.
_WRAP_EPS = 1e-12


def wrap_angle(x: Any, period: float) -> Any:
    """``x`` (numpy or torch) modulo ``period``, in ``[0, period)``, with the angles a
    rounding error below ``period`` at 0: ``x % period`` turns a forward difference's
    ``-1e-14`` degrees into ``359.99999999999994`` (or ``360.0`` itself), and keeps ``-0.0``."""
    top = period * (1.0 - _WRAP_EPS)
    if isinstance(x, torch.Tensor):
        r = torch.remainder(x, period)
        return torch.where(r >= top, torch.zeros_like(r), r) + 0.0
    r = np.mod(x, period)
    return np.where(r >= top, 0.0, r) + 0.0


def take_rows(a: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``a[arange(len(idx)), idx]`` for a 2-D array [B, C] whose rows (C-ordered) or columns
    (F-ordered: a block of the column-major product, :func:`.scoring.score_unit_kernels`)
    are contiguous, with any step between them: one ``np.take`` on its flat buffer, several
    times faster than fancy indexing (which also holds the GIL longer)."""
    item = a.itemsize
    if a.ndim != 2 or not len(idx) or a.strides[0] % item or a.strides[1] % item:
        return a[np.arange(len(idx)), idx]
    s0, s1 = a.strides[0] // item, a.strides[1] // item
    if s1 == 1:  # contiguous rows
        flat = (a.shape[0] - 1) * s0 + a.shape[1]
        at = np.arange(len(idx)) * s0 + idx
    elif s0 == 1 and s1 > 0:  # contiguous columns
        flat = (a.shape[1] - 1) * s1 + a.shape[0]
        at = idx * s1 + np.arange(len(idx))
    else:
        return a[np.arange(len(idx)), idx]
    buf = np.lib.stride_tricks.as_strided(a, shape=(flat,), strides=(item,), writeable=False)
    return np.take(buf, at)


#: Candidates per block of :func:`row_argmax`'s two-level search on column-major arrays,
#: and the number of candidates from which it pays (measured: 1.1-1.4x at 216-450 rows of
#: 2048 kernels, slower below ~150).
ARGMAX_BLOCK = 8
ARGMAX_BLOCKED_FROM = 200


def row_argmax(a: np.ndarray) -> np.ndarray:
    """``a.argmax(axis=1)`` of a 2-D array [B, C] (kernels x candidates): the first maximum
    of each row, ties and NaN included, exactly as numpy's.

    On a C-ordered array that is numpy's row argmax. On an F-ordered one (a block of the
    column-major product) numpy's would copy the array into rows first; here each kernel's
    maximum is found by vertical passes over contiguous candidate rows instead
    (:func:`_column_argmax`).
    """
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] <= 1 or a.strides[0] != a.itemsize:
        return a.argmax(axis=1)
    return _column_argmax(a.T)


def _column_argmax(t: np.ndarray) -> np.ndarray:
    """First argmax along axis 0 of ``t`` [C, B] with contiguous rows.

    The maximum over candidates is one vertical reduction; the candidate attaining it is
    found among the (almost always B) positions equal to it. From
    :data:`ARGMAX_BLOCKED_FROM` candidates, blocks of :data:`ARGMAX_BLOCK` rows are reduced
    first and only each kernel's first best block is searched.
    """
    c, b = t.shape
    s = ARGMAX_BLOCK
    if c >= ARGMAX_BLOCKED_FROM and t.flags.c_contiguous:
        nb, rest = divmod(c, s)
        blocks = np.max(t[: nb * s].reshape(nb, s, b), axis=1)
        if rest:
            blocks = np.concatenate([blocks, np.max(t[nb * s :], axis=0)[None]])
        k = _column_argmax(blocks)  # each kernel's first block holding its maximum
        first = k * s
        # [s, B] rows of each kernel's block; past the end of a short last block, copies
        # of the last row (after it, so never its first maximum)
        rows = np.minimum(first + np.arange(s)[:, None], c - 1)
        vals = np.take(t.reshape(-1), rows * b + np.arange(b))
        return first + _column_argmax(vals)
    mx = np.max(t, axis=0)
    if np.isnan(mx).any():  # numpy's argmax returns the first NaN: let it decide
        return np.ascontiguousarray(t.T).argmax(axis=1)
    hits = np.flatnonzero(t == mx)  # row-major: by candidate, then kernel
    g, k = np.divmod(hits, b)
    if hits.size == b:  # every kernel has one maximum (each has at least one)
        out = np.empty(b, dtype=np.intp)
        out[k] = g
        return out
    out = np.full(b, c, dtype=np.intp)  # ties (e.g. a zero kernel): the first candidate
    np.minimum.at(out, k, g)
    return out


# --------------------------------------------------------------------------- atlas bases


def centred_unit_columns(
    patterns: torch.Tensor, eps: float = 1e-6
) -> tuple[torch.Tensor, np.ndarray]:
    """Centre and unit-normalise patterns [C, kh, kw] (float64) -> columns [K, C'] and the
    kept mask [C] (patterns that are constant at this size are dropped)."""
    p = patterns.reshape(patterns.shape[0], -1).to(torch.float64)
    p = p - p.mean(dim=1, keepdim=True)
    n = torch.linalg.vector_norm(p, dim=1)
    ok = n > eps * max(float(n.max()) if n.numel() else 0.0, 1e-300)
    return (p[ok] / n[ok, None]).T.contiguous(), ok.numpy()


class Basis:
    """One family's block of the atlas for one kernel size.

    ``columns`` [kh*kw, C] (float64, each column zero-mean) is multiplied with the unit
    kernels; :meth:`score` turns the block of projections [B, C] (float32, CPU; in the
    Atlas a column-major view of a buffer the next batch overwrites, :mod:`.scoring`, which
    copies any returned array that points into it) into a :class:`FamilyScore`.
    Subclasses implement closed-form steering (a derivative family) or a dense
    best-template search (:class:`DenseBasis`).
    """

    columns: torch.Tensor

    def score(self, y: torch.Tensor) -> FamilyScore:  # pragma: no cover - interface
        raise NotImplementedError

    @property
    def n_columns(self) -> int:
        return int(self.columns.shape[1])


class DenseBasis(Basis):
    """Best |cosine| over explicit unit templates; the cosine's sign is the polarity
    (``sign="polarity"``) or turns the orientation by 180 degrees (``sign="orientation"``).

    Parameters
    ----------
    patterns : [C, kh, kw] templates (any scale; centred and normalised here).
    orientation, scale : [C] per-template values (NaN where they do not apply).
    offset : [C, 2] (dx, dy) in px.
    shape : [C] index into the family's ``shapes``.
    extra : per-template values handed to the fit (each [C]).
    """

    def __init__(
        self,
        patterns: torch.Tensor | np.ndarray,
        *,
        orientation: np.ndarray,
        scale: np.ndarray,
        offset: np.ndarray,
        shape: np.ndarray | None = None,
        sign: str = "polarity",
        extra: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        if sign not in ("polarity", "orientation"):
            raise ValueError("sign must be 'polarity' or 'orientation'")
        pats = torch.as_tensor(np.asarray(patterns), dtype=torch.float64)
        self.columns, ok = centred_unit_columns(pats)
        self.sign = sign
        self.orientation = np.asarray(orientation, dtype=np.float64)[ok]
        self.scale = np.asarray(scale, dtype=np.float64)[ok]
        self.offset = np.asarray(offset, dtype=np.float64).reshape(-1, 2)[ok]
        c = len(ok)
        self.shape = (np.zeros(c) if shape is None else np.asarray(shape))[ok].astype(np.int16)
        self.extra = {k: np.asarray(v)[ok] for k, v in (extra or {}).items()}

    def score(self, y: torch.Tensor) -> FamilyScore:
        # numpy's argmax is several times faster than torch's max with indices (its first
        # maximum too, so ties go the same way); on the column-major product: row_argmax
        yv = y.detach().cpu().numpy()
        a = np.abs(yv)
        idx = row_argmax(a)
        score = take_rows(a, idx)
        pos = take_rows(yv, idx) >= 0
        orientation = np.take(self.orientation, idx)
        if self.sign == "orientation":
            polarity = np.ones(len(idx), np.int8)
            orientation = wrap_angle(np.where(pos, orientation, orientation + 180.0), 360.0)
        else:
            polarity = np.where(pos, 1, -1).astype(np.int8)
        return FamilyScore(
            score=score.astype(np.float32, copy=False),
            orientation=orientation,
            polarity=polarity,
            scale=np.take(self.scale, idx),
            offset=np.take(self.offset, idx, axis=0),
            shape=np.take(self.shape, idx),
            extra={k: np.take(v, idx, axis=0) for k, v in self.extra.items()},
        )


# --------------------------------------------------------------------------- fit models


@dataclass(frozen=True)
class Param:
    """A bounded nonlinear fit parameter, in natural units.

    ``kind``: ``"linear"`` (``lo + (hi - lo) * sigmoid(q)``), ``"log"`` (the same in log
    space: scales) or ``"angle"`` (radians, free, wrapped into ``[0, period)`` when
    reported; ``lo``/``hi`` are then ``0``/``period``). ``lo == hi`` fixes the parameter
    (e.g. ``y0`` of a ``1 x k`` kernel, or the orientation of a 1-D profile).
    """

    name: str
    lo: float
    hi: float
    kind: str = "linear"
    period: float = 2 * math.pi

    def __post_init__(self) -> None:
        if self.kind not in ("linear", "log", "angle"):
            raise ValueError(f"Param.kind must be linear, log or angle, got {self.kind!r}")
        if self.kind != "angle" and not self.lo <= self.hi:
            raise ValueError(f"Param {self.name}: lo {self.lo} > hi {self.hi}")
        if self.kind == "log" and self.lo <= 0:
            raise ValueError(f"Param {self.name}: a log parameter needs lo > 0")

    @property
    def fixed(self) -> bool:
        """A parameter with ``lo == hi`` is held at that value."""
        return self.lo == self.hi


class FitModel:
    """A family's least-squares model: basis images of bounded nonlinear parameters.

    A subclass sets ``params`` (a tuple of :class:`Param`, possibly depending on the kernel
    size), ``n_amplitudes`` and ``columns`` (the per-family report columns, ``r2`` first),
    and implements :meth:`start`, :meth:`images` and :meth:`report`. The fit engine
    (:mod:`kernelatlas.fit`) solves the amplitudes in closed form (:meth:`amplitudes`;
    override it for constrained amplitudes) and refines the nonlinear parameters inside
    their bounds, every kernel of a batch at once.

    Tensors are *batch last* (``theta`` [P, B], images [m, kh, kw, B]): the fits' many small
    elementwise ops then run over one long contiguous axis.

    ``summary`` maps the common ``fit_*`` columns (``sigma``, ``orientation``,
    ``polarity``, ``x0``, ``y0``, ``amplitude``) to this model's report columns.
    """

    params: tuple[Param, ...] = ()
    n_amplitudes: int = 1
    columns: tuple[str, ...] = ("r2",)
    int_columns: frozenset[str] = frozenset({"polarity"})
    str_columns: frozenset[str] = frozenset()
    summary: ClassVar[dict[str, str]] = {
        "sigma": "sigma",
        "orientation": "orientation",
        "polarity": "polarity",
        "x0": "x0",
        "y0": "y0",
        "amplitude": "amplitude",
    }
    ridge: float = 1e-6

    def __init__(self, kh: int, kw: int) -> None:
        self.kh, self.kw = kh, kw

    def start(self, score: FamilyScore) -> np.ndarray:  # pragma: no cover - interface
        """Natural-unit start parameters [B, P] from the atlas's best template."""
        raise NotImplementedError

    def images(self, theta: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        """Basis images [n_amplitudes, kh, kw, B] of parameters ``theta`` [P, B]."""
        raise NotImplementedError

    def amplitudes(self, gram: torch.Tensor, proj: torch.Tensor) -> torch.Tensor:
        """Least-squares amplitudes [m, B] from the centred Gram [m, m, B] and projections
        [m, B] (a small ridge keeps degenerate bases finite)."""
        m = gram.shape[0]
        trace = sum(gram[i, i] for i in range(m))
        ridge = self.ridge * (trace / m).clamp_min(1e-12)
        if m == 1:
            return proj / (gram[0] + ridge)
        if m == 2:
            g00, g11, g01 = gram[0, 0] + ridge, gram[1, 1] + ridge, gram[0, 1]
            det = (g00 * g11 - g01 * g01).clamp_min(1e-30)
            p0, p1 = proj[0], proj[1]
            return torch.stack([(g11 * p0 - g01 * p1) / det, (g00 * p1 - g01 * p0) / det])
        eye = torch.eye(m, dtype=gram.dtype, device=gram.device)
        a = gram.permute(2, 0, 1) + ridge[:, None, None] * eye
        return torch.linalg.solve(a, proj.T).T

    def report(
        self, theta: torch.Tensor, coef: torch.Tensor
    ) -> dict[str, torch.Tensor | np.ndarray]:  # pragma: no cover - interface
        """The per-family columns (except ``r2``), each [B], from fitted parameters [P, B]
        and amplitudes [m, B]."""
        raise NotImplementedError

    def post_fit(
        self, theta: torch.Tensor, coef: torch.Tensor, u: torch.Tensor, refine: Any
    ) -> dict[str, torch.Tensor | np.ndarray]:
        """Extra report columns computed after the fit (default: none).

        ``refine(model, theta0, u, steps) -> (theta, coef, r2)`` is the fit engine, for
        models that compare constrained variants of themselves.
        """
        return {}

    # helpers shared by the built-in models -------------------------------------
    def centre_params(self, reach: float | None = None) -> tuple[Param, Param]:
        """``x0``, ``y0`` within ``reach`` px of the kernel centre and within the kernel's
        pixel centres (``reach=None``: anywhere in the kernel); fixed on a 1-pixel axis."""
        hx, hy = (self.kw - 1) / 2.0, (self.kh - 1) / 2.0
        if reach is not None:
            hx, hy = min(hx, reach), min(hy, reach)
        return Param("x0", -hx, hx), Param("y0", -hy, hy)

    def index(self, name: str) -> int:
        for i, p in enumerate(self.params):
            if p.name == name:
                return i
        raise KeyError(name)


# --------------------------------------------------------------------------- the family


class PatternFamily:
    """Base of a pattern family plugin (see the module docstring).

    Class attributes: ``name`` (the taxonomy name), ``description``, ``formula``,
    ``orientation_period`` (degrees or None), ``has_polarity``, ``color`` (report colour),
    ``order`` (position among the families: columns, tables and figures follow it),
    ``shapes`` (labels of the sub-shapes the atlas reports in its ``shape`` detail column),
    ``model`` (its :class:`FitModel` subclass, None = not fitted), ``reference`` (where
    the model comes from) and ``diagram_scale`` (the scale the report's diagram draws it at).
    """

    name: ClassVar[str]
    description: ClassVar[str]
    formula: ClassVar[str]
    orientation_period: ClassVar[float | None] = None
    has_polarity: ClassVar[bool] = True
    color: ClassVar[str] = "#999999"
    order: ClassVar[int] = 100
    shapes: ClassVar[tuple[str, ...]] = ("",)
    model: ClassVar[type[FitModel] | None] = None
    reference: ClassVar[str] = ""
    #: The scale the report's atlas diagram draws this family at (None: the diagram's
    #: common sigma; a family of fixed small scale, such as ``shift``, gives its own).
    diagram_scale: ClassVar[float | None] = None

    def info(self) -> FamilyInfo:
        """The taxonomy entry."""
        return FamilyInfo(
            name=self.name,
            description=self.description,
            formula=self.formula,
            orientation_period=self.orientation_period,
            has_polarity=self.has_polarity,
            color=self.color,
            is_pattern=True,
        )

    def basis(self, kh: int, kw: int) -> Basis | None:  # pragma: no cover - interface
        """The atlas block for a ``kh x kw`` kernel (1-D sizes included); None = not defined."""
        raise NotImplementedError

    def fit_model(self, kh: int, kw: int) -> FitModel | None:
        """The bounded least-squares model for this size; None = the family is not fitted."""
        return None if self.model is None else self.model(kh, kw)

    def generate(
        self,
        kh: int,
        kw: int,
        n: int,
        *,
        rng: np.random.Generator,
        scale: np.ndarray | None = None,
        orientation: np.ndarray | None = None,
        polarity: np.ndarray | None = None,
        **options: Any,
    ) -> np.ndarray:  # pragma: no cover - interface
        """``n`` unit patterns [n, kh, kw] (zero mean, unit L2, float32).

        Parameters given as arrays [n] are used (NaN entries drawn at random); the others
        are drawn from ``rng`` over the family's usual range.
        """
        raise NotImplementedError

    def diagram(self, size: int) -> list[tuple[str, np.ndarray]]:
        """Rows of the atlas figure: (label, a few example patterns [k, size, size])."""
        n = 4
        period = self.orientation_period or 360.0
        orient = np.arange(n) * (45.0 if period == 180.0 else 90.0)
        pats = self.generate(
            size, size, n, rng=np.random.default_rng(0), scale=np.full(n, size / 7.5),
            orientation=orient, polarity=np.ones(n),
        )  # fmt: skip
        return [(self.name.replace("_", " "), pats)]

    def __repr__(self) -> str:
        return f"<pattern family {self.name!r}>"


def _check_family_class(cls: type) -> None:
    """Refuse an incomplete definition at registration, with the missing part named."""
    for attr in ("name", "description", "formula", "color"):
        if not isinstance(getattr(cls, attr, None), str) or not getattr(cls, attr):
            raise KernelAtlasError(f"pattern family {cls.__name__} needs a non-empty {attr!r}")
    period = getattr(cls, "orientation_period", None)
    if period not in (None, 180.0, 360.0):
        raise KernelAtlasError(
            f"pattern family {cls.__name__}: orientation_period must be None, 180.0 or 360.0"
        )
    for method in ("basis", "generate"):
        if getattr(cls, method) is getattr(PatternFamily, method):
            raise KernelAtlasError(f"pattern family {cls.__name__} must implement {method}()")
