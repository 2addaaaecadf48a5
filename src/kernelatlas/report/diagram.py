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
from typing import Any

import numpy as np
import pyarrow.dataset as ds

from ..normalize import normalize
from ..taxonomy import FAMILY_INFO, PATTERN_FAMILIES

__all__ = ["Panel", "diagram_columns", "diagram_patterns", "panel_means", "plot_diagram"]

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
        return ", ".join(bits)


# ----------------------------------------------------------------- family generators


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
            row.append(gen(size, sigma, panel.orientation, panel.polarity, panel.shape))
        out.append(row)
    return out


# ----------------------------------------------------------------- the user's means


def _in_panel(panel: Panel, fam: np.ndarray, shape: np.ndarray | None, ori: np.ndarray, pol: np.ndarray) -> np.ndarray:  # fmt: skip
    sel = fam == panel.family
    if panel.shape is not None and shape is not None:
        sel &= shape == panel.shape
    if panel.polarity:
        sel &= pol == panel.polarity
    if panel.orientation is not None:
        period = FAMILY_INFO[panel.family].orientation_period or 360.0
        d = np.abs((ori - panel.orientation + period / 2) % period - period / 2)
        sel &= d <= panel.half_width
    return sel


def panel_means(
    path: Path, kh: int, kw: int, columns: list[list[Panel | None]], *, batch_size: int = 65_536
) -> tuple[list[list[np.ndarray | None]], list[list[int]]]:
    """Mean unit kernel and count of the classified ``kh x kw`` kernels in every panel.

    Streams ``path`` (kernels.parquet) in batches; kernels are centred and unit-normalised,
    never sign-flipped, so on- and off-polarity kernels stay apart.
    """
    dataset = ds.dataset(path)
    names = dataset.schema.names
    has_shape = "shape" in names
    cols = ["family", "orientation", "polarity", "weights"] + (["shape"] if has_shape else [])
    flt = (ds.field("kh") == kh) & (ds.field("kw") == kw) & ds.field("classified")
    flat = [(i, j, p) for i, col in enumerate(columns) for j, p in enumerate(col) if p is not None]
    sums = {(i, j): np.zeros((kh, kw)) for i, j, _ in flat}
    counts = {(i, j): 0 for i, j, _ in flat}
    for batch in dataset.to_batches(columns=cols, filter=flt, batch_size=batch_size):
        if batch.num_rows == 0:
            continue
        from ..bank import weights_array

        unit = normalize(weights_array(batch.column("weights"), kh, kw)).unit
        fam = batch.column("family").to_numpy(zero_copy_only=False).astype(object)
        ori = batch.column("orientation").to_numpy(zero_copy_only=False).astype(float)
        pol = batch.column("polarity").to_numpy(zero_copy_only=False).astype(float)
        shape = (
            batch.column("shape").to_numpy(zero_copy_only=False).astype(object)
            if has_shape
            else None
        )
        for i, j, panel in flat:  # a few dozen panels, not kernels
            sel = _in_panel(panel, fam, shape, ori, pol)
            if sel.any():
                sums[(i, j)] += unit[sel].sum(0)
                counts[(i, j)] += int(sel.sum())
    means = [
        [None if p is None else sums[(i, j)] / max(counts[(i, j)], 1) for j, p in enumerate(col)]
        for i, col in enumerate(columns)
    ]
    ns = [
        [0 if p is None else counts[(i, j)] for j, p in enumerate(col)]
        for i, col in enumerate(columns)
    ]
    return means, ns


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
    from .figures import kernel_colorbar, plot_kernels

    blocks = [(f"atlas {size}x{size}", patterns, None)] + [
        (f"your {key} kernels (mean)", m, n) for key, (m, n) in means.items()
    ]
    nrows, ncols = 2 * len(blocks), len(columns)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(1.05 * ncols + 1.2, 1.25 * nrows + 0.4), squeeze=False
    )
    for b, (label, pats, counts) in enumerate(blocks):
        for r, (_sign, row_label) in enumerate(ROWS):
            ax_row = axes[2 * b + r]
            for c, col in enumerate(columns):
                ax, panel = ax_row[c], col[r]
                if panel is None:
                    ax.axis("off")
                    continue
                k = pats[c][r]
                if counts is None:
                    title = panel.title(sigma)
                    if b == 0 and r == 0:
                        title = f"{_col_header(panel)}\n{title}"
                    plot_kernels(ax, k[None], ncols=1, title=title, fontsize=7)
                else:
                    n = counts[c][r]
                    sub = (
                        f"{panel.title()}\nn={n:,}" if panel.orientation is not None else f"n={n:,}"
                    )
                    img = k[None] if n else np.full((1, *k.shape), np.nan)
                    plot_kernels(ax, img, ncols=1, title=sub, fontsize=7)
                    if not n:
                        ax.text(0.5, 0.5, "none", ha="center", va="center", color="#888",
                                fontsize=8, transform=ax.transAxes)  # fmt: skip
            ax_row[0].annotate(f"{label}\n{row_label}", (-0.12, 0.5), xycoords="axes fraction",
                               fontsize=7.5, ha="right", va="center")  # fmt: skip
    kernel_colorbar(fig, axes.ravel().tolist(), label="weight / max |weight| (each panel)")
    fig.suptitle(
        "On- and off-centre DoG and their first and second derivatives (generated), beside the mean "
        "of your classified kernels in each panel (n kernels; on and off never averaged together)",
        fontsize=9,
    )
    return fig
