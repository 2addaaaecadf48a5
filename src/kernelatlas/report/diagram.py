"""The seed's diagram, generated: on- and off-centre DoG and their derivatives, beside the
mean of the user's own kernels in each panel.

"The complete diagram of the On and Off DoG filters and their derivatives": one row of
on (+) patterns and one of off (-) patterns; one column per family, sub-shape (bars and
crosses) and orientation, every panel labelled with its sigma and angle. Below it, for each
kernel size of the run, the same grid filled with the mean of the run's classified kernels
that fall in that panel (same family and shape, same polarity, orientation within half a
bin), with the number of kernels averaged. On- and off-centre kernels are never averaged
together; kernels are centred and unit-normalised first (never sign-flipped).

The columns come from the family registry (orientation period, polarity, sub-shapes), so
a family registered later gets its columns without a change here.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow.dataset as ds

from ..taxonomy import FAMILY_INFO, PATTERN_FAMILIES

if TYPE_CHECKING:
    from ..normalize import Normalized

__all__ = [
    "Panel", "PanelStats", "diagram_columns", "diagram_patterns", "panel_stats", "panel_means",
    "unit_kernels", "plot_diagram",
]  # fmt: skip

ROWS = ((1, "on (+)"), (-1, "off (-)"))
DIAGRAM_SIZE = 15
DIAGRAM_SIGMA = 2.0


@dataclass(frozen=True)
class Panel:
    """One panel: which kernels it holds (family, shape, orientation, polarity)."""

    family: str
    shape: str | None  # a sub-shape told apart (bar / cross), or None
    orientation: float | None  # degrees, or None for unoriented families
    polarity: int  # +1 / -1 where the family has a polarity, else 0
    half_width: float  # orientation tolerance, degrees

    def title(self, sigma: float | None = None) -> str:
        bits = []
        if sigma is not None:
            bits.append(f"σ={sigma:g} px")
        if self.orientation is not None:
            bits.append(f"θ={self.orientation:g}°")
        return "\n".join(bits)  # one per line: a narrow column's title never overprints the next


# ----------------------------------------------------------------- family generators


def panel_sigma(family: str, sigma: float) -> float:
    """The scale a family's panels are drawn at: its own ``diagram_scale``, else ``sigma``."""
    from ..atlas.registry import get_family

    own = getattr(get_family(family), "diagram_scale", None)
    return float(sigma if own is None else own)


def _generator(family: str) -> tuple[tuple[str | None, ...], Callable[..., np.ndarray]]:
    """(the sub-shapes the diagram tells apart, generate(size, sigma, theta, polarity, shape))."""
    from ..atlas.registry import get_family

    fam = get_family(family)
    takes_kind = "kind" in inspect.signature(fam.generate).parameters
    shapes: tuple[str | None, ...] = (
        tuple(fam.shapes) if takes_kind and len(getattr(fam, "shapes", ())) > 1 else (None,)
    )

    def gen(size: int, sigma: float, theta: float | None, polarity: int, shape: str | None):
        kw: dict[str, Any] = {"kind": shape} if shape is not None else {}
        return fam.generate(
            size,
            size,
            1,
            rng=np.random.default_rng(0),
            scale=np.array([sigma]),
            orientation=np.array([np.nan if theta is None else theta]),
            polarity=np.array([polarity or 1.0]),
            **kw,
        )[0]

    return shapes, gen


# ----------------------------------------------------------------- layout


def _orientations(period: float | None, has_polarity: bool) -> list[float | None]:
    if not period:
        return [None]
    if period == 360.0 and not has_polarity:  # the off row holds the opposite direction
        return [0.0, 90.0]
    return [float(t) for t in np.arange(4) * period / 4]


def diagram_columns(families: list[str] | None = None) -> list[list[Panel | None]]:
    """Columns of the diagram: for each, the on-row and off-row :class:`Panel` (None: no
    such panel, e.g. the off row of a family with neither polarity nor direction)."""
    cols = []
    for f in PATTERN_FAMILIES if families is None else families:
        info = FAMILY_INFO[f]
        period, pol = info.orientation_period, bool(info.has_polarity)
        half = (period or 360.0) / 8
        shapes, _ = _generator(f)
        for shape in shapes:
            for theta in _orientations(period, pol):
                col: list[Panel | None] = []
                for sign, _label in ROWS:
                    if pol:
                        col.append(Panel(f, shape, theta, sign, half))
                    elif period == 360.0 and theta is not None:
                        t = theta if sign > 0 else (theta + 180.0) % 360.0
                        col.append(Panel(f, shape, t, 0, half))
                    else:
                        col.append(Panel(f, shape, theta, 0, half) if sign > 0 else None)
                cols.append(col)
    return cols


def diagram_patterns(
    columns: list[list[Panel | None]], size: int = DIAGRAM_SIZE, sigma: float = DIAGRAM_SIGMA
) -> list[list[np.ndarray | None]]:
    """The generated pattern of every panel (unit norm), same layout as ``columns``."""
    out = []
    for col in columns:
        row = []
        for panel in col:
            if panel is None:
                row.append(None)
                continue
            _, gen = _generator(panel.family)
            row.append(
                gen(
                    size,
                    panel_sigma(panel.family, sigma),
                    panel.orientation,
                    panel.polarity,
                    panel.shape,
                )
            )
        out.append(row)
    return out


# ----------------------------------------------------------------- the user's means


def _near(panel: Panel, ori: np.ndarray) -> np.ndarray:
    """Orientations within the panel's half width of its own (modulo the family's period)."""
    period = FAMILY_INFO[panel.family].orientation_period or 360.0
    d = np.abs((ori - panel.orientation + period / 2) % period - period / 2)
    return d <= panel.half_width


def _members(
    flat: list[Panel], fam: np.ndarray, shape: np.ndarray | None, ori: np.ndarray, pol: np.ndarray
) -> list[tuple[int, np.ndarray]]:
    """(panel index, rows in it) of every non-empty panel: same family and shape, same
    polarity, orientation within the half width (a row on the boundary of two orientation
    bins is in both). Each family's rows are found once and each test (shape, polarity,
    orientation bin) is made once, on those rows only."""
    rows_of = {f: np.flatnonzero(fam == f) for f in dict.fromkeys(p.family for p in flat)}
    tests: dict[tuple[Any, ...], np.ndarray] = {}  # (test, family, value) -> on its rows
    out = []
    for k, p in enumerate(flat):
        rows = rows_of[p.family]
        if not rows.size:
            continue
        sel = np.ones(rows.size, bool)
        if p.shape is not None and shape is not None:
            key: tuple[Any, ...] = ("shape", p.family, p.shape)
            if key not in tests:
                tests[key] = shape[rows] == p.shape
            sel &= tests[key]
        if p.polarity:
            key = ("polarity", p.family, p.polarity)
            if key not in tests:
                tests[key] = pol[rows] == p.polarity
            sel &= tests[key]
        if p.orientation is not None:
            key = ("orientation", p.family, p.orientation, p.half_width)
            if key not in tests:
                tests[key] = _near(p, ori[rows])
            sel &= tests[key]
        if sel.any():
            out.append((k, rows[sel]))
    return out


def unit_kernels(kernels: np.ndarray) -> np.ndarray:
    """Centred, unit-norm kernels [N, kh, kw] in float32 (the panel means' input; rows that
    are all zero stay zero): :func:`kernelatlas.normalize.normalize`'s ``unit``, as the atlas
    sees them (classified kernels are never degenerate)."""
    from ..normalize import normalize

    return normalize(kernels).unit


@dataclass
class PanelStats:
    """The panel means of one kernel size as a statistic that adds up over any split of the
    kernels (batches, partitions, workers): per panel of :func:`diagram_columns` (flattened,
    column by column, on row then off row; None panels left out), the float64 sum of the
    unit kernels in it and their number."""

    sums: np.ndarray  # [P, kh, kw] float64
    counts: np.ndarray  # [P] int64

    def merge(self, other: PanelStats) -> PanelStats:
        """The statistic of both sets of kernels."""
        return PanelStats(self.sums + other.sums, self.counts + other.counts)

    def means(
        self, columns: list[list[Panel | None]]
    ) -> tuple[list[list[np.ndarray | None]], list[list[int]]]:
        """(mean unit kernel, count) of every panel, laid out as ``columns``."""
        means: list[list[np.ndarray | None]] = []
        ns: list[list[int]] = []
        k = 0
        for col in columns:
            mrow: list[np.ndarray | None] = []
            nrow: list[int] = []
            for panel in col:
                if panel is None:
                    mrow.append(None)
                    nrow.append(0)
                    continue
                mrow.append(self.sums[k] / max(int(self.counts[k]), 1))
                nrow.append(int(self.counts[k]))
                k += 1
            means.append(mrow)
            ns.append(nrow)
        return means, ns


def panel_stats(
    kernels: np.ndarray | Normalized,
    family: np.ndarray,
    shape: np.ndarray | None,
    orientation: np.ndarray,
    polarity: np.ndarray,
    columns: list[list[Panel | None]],
) -> PanelStats:
    """The :class:`PanelStats` of classified kernels [N, kh, kw] from their atlas columns
    (``shape`` None: a table without the atlas's ``shape`` column).

    ``kernels`` may be their :func:`kernelatlas.normalize.normalize` already (an analysis
    normalises each batch once, for the atlas and for this); otherwise they are normalised
    here (:func:`unit_kernels`). Vectorised over the kernels: each family's rows are found
    once and every panel's sum is one float64 reduction over its rows (a few dozen panels).
    """
    from ..normalize import Normalized

    given = kernels.unit if isinstance(kernels, Normalized) else None
    n, kh, kw = np.shape(kernels if given is None else given)
    flat = [p for col in columns for p in col if p is not None]
    sums = np.zeros((len(flat), kh, kw))
    counts = np.zeros(len(flat), np.int64)
    if n:
        fam = np.asarray(family, dtype=object)
        shp = None if shape is None else np.asarray(shape, dtype=object)
        ori = np.asarray(orientation, dtype=float)
        pol = np.asarray(polarity, dtype=float)
        members = _members(flat, fam, shp, ori, pol)
        if members:
            unit = (unit_kernels(kernels) if given is None else given).reshape(n, kh * kw)
            for k, rows in members:  # a few dozen panels, not kernels
                sums[k] = unit[rows].sum(0, dtype=np.float64).reshape(kh, kw)
                counts[k] = rows.size
    return PanelStats(sums, counts)


def panel_means(
    path: Path, kh: int, kw: int, columns: list[list[Panel | None]], *, batch_size: int = 65_536
) -> tuple[list[list[np.ndarray | None]], list[list[int]]]:
    """Mean unit kernel and count of the classified ``kh x kw`` kernels in every panel.

    Streams ``path`` (kernels.parquet, a file or a folder of parts) in batches, the weights
    through :func:`kernelatlas.results.kernel_weights`; kernels are centred and
    unit-normalised, never sign-flipped, so on- and off-polarity kernels stay apart. (An
    analysis computes the same :class:`PanelStats` while it classifies.)
    """
    from ..results import BANK_REF_COLUMNS, kernel_weights, kernels_dataset

    dataset = kernels_dataset(path)
    names = dataset.schema.names
    has_shape = "shape" in names
    refs = ["weights", "kh", "kw"] if "weights" in names else list(BANK_REF_COLUMNS)
    cols = ["family", "orientation", "polarity", *refs] + (["shape"] if has_shape else [])
    flt = (ds.field("kh") == kh) & (ds.field("kw") == kw) & ds.field("classified")
    total = panel_stats(np.zeros((0, kh, kw)), [], None, [], [], columns)
    for batch in dataset.to_batches(columns=cols, filter=flt, batch_size=batch_size):
        if batch.num_rows == 0:
            continue
        col = {c: batch.column(c).to_numpy(zero_copy_only=False) for c in cols if c in ("family", "shape", "orientation", "polarity")}  # fmt: skip
        part = panel_stats(
            kernel_weights(path, batch), col["family"], col.get("shape"), col["orientation"],
            col["polarity"], columns,
        )  # fmt: skip
        total = total.merge(part)
    return total.means(columns)


# ----------------------------------------------------------------- the figure


def _col_header(panel: Panel) -> str:
    name = panel.family.replace("_", "\n")
    return f"{name}\n({panel.shape})" if panel.shape else name


def plot_diagram(
    plt: Any,
    columns: list[list[Panel | None]],
    patterns: list[list[np.ndarray | None]],
    means: dict[str, tuple[list[list[np.ndarray | None]], list[list[int]]]],
    *,
    sigma: float = DIAGRAM_SIGMA,
    size: int = DIAGRAM_SIZE,
) -> Any:
    """The labelled figure: the generated on/off rows, then the user's on/off means per size."""
    from .figures import kernel_colorbar, kernel_grid

    blocks = [(f"atlas {size}x{size}", patterns, None)] + [
        (f"your {key} kernels (mean)", m, n) for key, (m, n) in means.items()
    ]
    cells, titles, empty, labels = [], [], [], []
    for b, (label, pats, counts) in enumerate(blocks):
        for r, (_sign, row_label) in enumerate(ROWS):
            row: list[tuple[np.ndarray | None, str, bool]] = []
            for c, col in enumerate(columns):
                panel = col[r]
                if panel is None:
                    row.append((None, "", False))
                elif counts is None:
                    title = panel.title(panel_sigma(panel.family, sigma))
                    if b == 0 and r == 0:
                        title = f"{_col_header(panel)}\n{title}"
                    row.append((pats[c][r], title, False))
                else:
                    n = counts[c][r]
                    sub = (
                        f"{panel.title()}\nn={n:,}" if panel.orientation is not None else f"n={n:,}"
                    )
                    row.append((pats[c][r] if n else None, sub, not n))
            cells.append([k for k, _, _ in row])
            titles.append([t for _, t, _ in row])
            empty.append([e for _, _, e in row])
            labels.append(f"{label}\n{row_label}")
    ncols = len(columns)
    fig = plt.figure(figsize=(1.05 * ncols + 1.2, 1.25 * len(cells) + 0.4))
    ax = fig.add_axes((0.08, 0.02, 0.86, 0.9))
    ax.set_anchor("N")  # the grid right under the title (no band of white between)
    kernel_grid(ax, cells, titles=titles, row_labels=labels, empty=empty, fontsize=7)
    kernel_colorbar(fig, [ax], label="weight / max |weight| (each panel)")
    fig.suptitle(
        "On- and off-centre DoG and their first and second derivatives (generated), beside the mean "
        "of your classified kernels in each panel (n kernels; on and off never averaged together)",
        fontsize=9, y=0.925, va="bottom",
    )  # fmt: skip
    return fig
