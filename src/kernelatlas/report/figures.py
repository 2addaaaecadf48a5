"""Figures: plain matplotlib functions that draw on an ``ax`` and never call ``show()``.

Colours of families come from the family registry (:data:`FAMILY_COLORS`, one place);
legends are built from explicit handles (never from empty artists), so their swatches are
the colours drawn.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import pandas as pd

from ..taxonomy import FAMILIES, FAMILY_COLORS

if TYPE_CHECKING:  # matplotlib is imported when a figure is drawn, not by every command
    from matplotlib.axes import Axes

__all__ = [
    "pyplot",
    "FAMILY_COLORS",
    "KERNEL_CMAP",
    "COVERAGE_COLORS",
    "family_color",
    "family_handles",
    "BASELINE_COLORS",
    "mosaic",
    "plot_kernels",
    "kernel_grid",
    "kernel_colorbar",
    "plot_coverage",
    "coverage_series",
    "plot_layer_shares",
    "plot_fit_by_depth",
    "plot_orientation_by_depth",
    "plot_ae_spectrum",
    "plain_text",
]

_F = TypeVar("_F", bound=Callable[..., Any])


def plain_text(fn: _F) -> _F:
    """Decorator: draw with matplotlib's math-text parser off, so that model and file names
    (``net_$x$.pt``) are shown as written and never parsed."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import matplotlib

        with matplotlib.rc_context({"text.parse_math": False}):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


# FAMILY_COLORS: family -> colour, a live view of each family's definition (taxonomy)
KERNEL_CMAP = "RdBu_r"  # diverging, centred on zero by symmetric limits
# Bars of the coverage chart that are not families.
COVERAGE_COLORS: dict[str, str] = {
    "coverage": "#2166ac",
    "null_coverage": "#b2182b",
    "init_coverage": "#f4a582",
    "ae_coverage": "#92c5de",
}


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (a backend already chosen is kept): the one
    import of every kernelatlas figure, and of the analysis's import thread, which loads it
    while the kernels are classified."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def family_color(family: str) -> str:
    """The report colour of a family (grey for a name the registry does not know)."""
    return FAMILY_COLORS.get(family, "#999999")


def family_handles(families: Sequence[str] | None = None) -> list[Any]:
    """Legend handles (patches in each family's registry colour), one per family."""
    from matplotlib.patches import Patch

    return [
        Patch(facecolor=family_color(f), edgecolor="none", label=f.replace("_", " "))
        for f in (FAMILIES if families is None else families)
    ]


def mosaic(kernels: np.ndarray, ncols: int, *, gap: int = 1) -> np.ndarray:
    """Tile kernels [N,kh,kw] into one image, each scaled to max |w| = 1, NaN gaps between."""
    k = np.asarray(kernels, dtype=np.float32)
    n, kh, kw = k.shape
    ncols = max(1, min(ncols, n))
    nrows = int(np.ceil(n / ncols))
    peak = np.abs(k).reshape(n, -1).max(axis=1)
    k = k / np.where(peak > 0, peak, 1.0)[:, None, None]
    img = np.full((nrows * (kh + gap) - gap, ncols * (kw + gap) - gap), np.nan, np.float32)
    pad = np.full((nrows * ncols, kh + gap, kw + gap), np.nan, np.float32)
    pad[:n, :kh, :kw] = k
    tiled = pad.reshape(nrows, ncols, kh + gap, kw + gap).transpose(0, 2, 1, 3)
    tiled = tiled.reshape(nrows * (kh + gap), ncols * (kw + gap))
    img[:] = tiled[: img.shape[0], : img.shape[1]]
    return img


def _cmap() -> Any:
    import matplotlib

    return matplotlib.colormaps[KERNEL_CMAP].with_extremes(bad="white")


def plot_kernels(
    ax: Axes, kernels: np.ndarray, *, ncols: int = 8, title: str = "", fontsize: float = 9
) -> Any:
    """A grid of kernels (each scaled to its max |w|) with a diverging map centred on zero.

    Returns the image (for :func:`kernel_colorbar`), or None when there are no kernels.
    """
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=fontsize)
    for s in ax.spines.values():
        s.set_visible(False)
    if len(kernels) == 0:
        ax.text(0.5, 0.5, "none", ha="center", va="center", transform=ax.transAxes, color="#777")
        return None
    return ax.imshow(mosaic(kernels, ncols), cmap=_cmap(), vmin=-1, vmax=1, interpolation="nearest")


def kernel_grid(
    ax: Axes,
    cells: Sequence[Sequence[np.ndarray | None]],
    *,
    titles: Sequence[Sequence[str]] | None = None,
    frames: Sequence[Sequence[str | None]] | None = None,
    row_labels: Sequence[str] | None = None,
    fontsize: float = 7,
    label_fontsize: float = 7.5,
    empty: Sequence[Sequence[bool]] | None = None,
) -> Any:
    """Kernels on a grid of cells, all on one ``ax`` (one image per cell, no axes per cell:
    a figure of a hundred kernels draws in a fraction of the time).

    ``cells[r][c]``: a kernel [kh, kw] (scaled to its max |w|, diverging map centred on zero)
    or None (the cell is left blank). ``titles``: text above each cell (lines with
    ``\\n``); ``frames``: a colour to frame each cell with (None: no frame); ``row_labels``:
    text left of each row; ``empty[r][c]``: write "none" in that (blank) cell. Returns the
    last image drawn (for :func:`kernel_colorbar`), or None.
    """
    from matplotlib.patches import Rectangle

    nrows = len(cells)
    ncols = max((len(r) for r in cells), default=0)
    line = fontsize * 1.25 / 72 / 0.8  # a title line, in cell units (a cell is about 0.8 in)
    heights = [
        1.0 + 0.22 + line * max((t.count("\n") + 1 for t in (titles[r] if titles else []) if t), default=0)
        for r in range(nrows)
    ]  # fmt: skip
    tops = np.concatenate([[0.0], np.cumsum(heights)])
    gap = 0.18
    img = None
    cmap = _cmap()
    for r, row in enumerate(cells):
        y1 = tops[r + 1] - 0.06  # the cell's bottom (y grows downwards)
        y0 = y1 - 1.0
        for c, k in enumerate(row):
            x0 = c * (1.0 + gap)
            if titles is not None and titles[r][c]:
                ax.text(x0 + 0.5, y0 - 0.04, titles[r][c], ha="center", va="bottom", fontsize=fontsize)  # fmt: skip
            if k is None:
                if empty is not None and empty[r][c]:
                    ax.text(x0 + 0.5, y0 + 0.5, "none", ha="center", va="center", color="#888", fontsize=8)  # fmt: skip
                continue
            k = np.asarray(k, dtype=np.float32)
            peak = float(np.nanmax(np.abs(k))) if np.isfinite(k).any() else 0.0
            img = ax.imshow(k / (peak if peak > 0 else 1.0), cmap=cmap, vmin=-1, vmax=1,
                            interpolation="nearest", extent=(x0, x0 + 1.0, y1, y0))  # fmt: skip
            if frames is not None and frames[r][c]:
                ax.add_patch(Rectangle((x0, y0), 1.0, 1.0, fill=False, edgecolor=frames[r][c], linewidth=2))  # fmt: skip
        if row_labels is not None and row_labels[r]:
            ax.text(-0.15, (tops[r + 1] - 0.06) - 0.5, row_labels[r], ha="right", va="center", fontsize=label_fontsize)  # fmt: skip
    ax.set_xlim(-0.05, ncols * (1.0 + gap) - gap + 0.05)
    ax.set_ylim(tops[-1], -0.02)
    ax.set_aspect("equal")
    ax.set_axis_off()
    return img


def kernel_colorbar(fig: Any, axes: Any, *, label: str = "weight / max |weight| of the kernel"):
    """A colour bar for kernel images (-1 blue, 0 white, +1 red) beside ``axes``."""
    import matplotlib as mpl

    sm = mpl.cm.ScalarMappable(norm=mpl.colors.Normalize(-1, 1), cmap=_cmap())
    cb = fig.colorbar(sm, ax=axes, fraction=0.02, pad=0.01, ticks=[-1, -0.5, 0, 0.5, 1])
    cb.set_label(label, fontsize=8)
    cb.ax.tick_params(labelsize=7)
    return cb


# Baseline bars, from the weakest null to the strongest (unknown kinds: grey).
BASELINE_COLORS: dict[str, str] = {
    "gaussian": "#b2182b",
    "init": "#f4a582",
    "smooth": "#fddbc7",
    "phase": "#d6604d",
    "covariance": "#67001f",
    "covariance_layer": "#3f0010",
}


def coverage_series(
    models: pd.DataFrame,
    *,
    null_label: str = "null (held out)",
    baselines: Mapping[str, str] | None = None,
    baseline_colors: Mapping[str, str] | None = None,
) -> list[tuple[str, str, str]]:
    """The bars of the coverage chart: (column, legend label, colour), present columns only.

    Without ``baselines``: trained, the null and the fresh init (``null_coverage``,
    ``init_coverage``); with ``baselines`` (null kind -> legend label): one bar per column
    ``baseline_KIND`` instead, coloured from ``baseline_colors`` (default :data:`BASELINE_COLORS`, grey for
    unknown kinds). Then the autoencoder's.
    """
    series = [("coverage", "trained", COVERAGE_COLORS["coverage"])]
    if baselines is None:
        extra = [("null_coverage", null_label, COVERAGE_COLORS["null_coverage"]),
                 ("init_coverage", "same arch., fresh init", COVERAGE_COLORS["init_coverage"])]  # fmt: skip
    else:
        colors = {**BASELINE_COLORS, **(baseline_colors or {})}
        extra = [(f"baseline_{k}", lab, colors.get(k, "#999999")) for k, lab in baselines.items()]
    extra.append(("ae_coverage", "autoencoder (paper rule)", COVERAGE_COLORS["ae_coverage"]))
    for col, name, color in extra:
        if col in models and models[col].notna().any():
            series.append((col, name, color))
    return series


def plot_coverage(
    ax: Axes,
    models: pd.DataFrame,
    *,
    labels: Mapping[str, str] | None = None,
    series: Sequence[tuple[str, str, str]] | None = None,
) -> None:
    """Classified % per (source, size), beside its baselines: horizontal grouped bars.

    One row per model row (labels never overprint, however many), the legend beside the
    axes (it never hides a bar). ``labels`` maps source -> display name (default: model);
    ``series`` is (column, legend label, colour) per bar (default :func:`coverage_series`);
    a column ``COL_lo``/``COL_hi`` beside one draws its interval.
    """
    series = list(series) if series is not None else coverage_series(models)
    names = [
        f"{(labels or {}).get(s, m)}  {kh}x{kw}"
        for s, m, kh, kw in zip(models["source"], models["model"], models["kh"], models["kw"])
    ]
    y = np.arange(len(models))
    h = 0.8 / max(len(series), 1)
    for i, (col, name, color) in enumerate(series):
        vals = 100 * pd.to_numeric(models[col], errors="coerce").astype(float).to_numpy()
        err = None
        if f"{col}_lo" in models and f"{col}_hi" in models:
            lo = 100 * models[f"{col}_lo"].astype(float).to_numpy()
            hi = 100 * models[f"{col}_hi"].astype(float).to_numpy()
            err = np.nan_to_num(np.stack([vals - lo, hi - vals]).clip(0, None))
        ax.barh(
            y + (i - (len(series) - 1) / 2) * h,
            np.nan_to_num(vals),
            h,
            label=name,
            color=color,
            xerr=err,
            error_kw={"elinewidth": 0.6, "capsize": 0},
        )
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()  # first model on top, as in the table
    ax.set_xlim(0, 100)
    ax.set_xlabel("kernels classified (%)")
    ax.grid(axis="x", alpha=0.3)
    handles, texts = ax.get_legend_handles_labels()
    # Beside the axes, never over a bar.
    ax.legend(handles, texts, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)


def plot_layer_shares(ax: Axes, layers: pd.DataFrame, *, title: str = "") -> None:
    """Family shares of each depthwise layer of one source: one bar per layer, in order.

    The x axis is the layer's position among the source's depthwise layers (every size),
    so each layer gets the same width and no bar reaches into another layer; a band under
    the bars shows each layer's kernel size (light to dark grey, smallest to largest).
    """
    import textwrap

    layers = layers.sort_values(["layer_index", "kh", "kw"]).reset_index(drop=True)
    x = np.arange(len(layers))
    bottom = np.zeros(len(layers))
    for f in FAMILIES:
        col = f"share_{f}"
        vals = layers[col].fillna(0).to_numpy(dtype=float) if col in layers else np.zeros(len(x))
        ax.bar(x, vals, 0.8, bottom=bottom, color=family_color(f), linewidth=0, label=f)
        bottom += vals
    sizes = [f"{a}x{b}" for a, b in zip(layers["kh"], layers["kw"])]
    order = sorted(set(sizes), key=lambda k: tuple(int(v) for v in k.split("x")))
    greys = dict(zip(order, np.linspace(0.82, 0.3, max(len(order), 2))[: len(order)]))
    ax.bar(x, 0.05, 0.8, bottom=-0.065, color=[str(greys[k]) for k in sizes], linewidth=0)
    ax.set_xlim(-0.6, max(len(layers), 1) - 0.4)
    ax.set_ylim(-0.07, 1)
    ax.set_yticks(np.linspace(0, 1, 6))
    step = max(1, int(np.ceil(len(layers) / 16)))
    ax.set_xticks(range(0, len(layers), step))
    ax.tick_params(axis="x", labelsize=7)
    shades = ", ".join(f"{k} {'light' if i == 0 else 'dark' if i == len(order) - 1 else 'mid'}" for i, k in enumerate(order))  # fmt: skip
    band = (
        f"; band: kernel size ({shades} grey)"
        if len(order) > 1
        else f"; all {order[0]}"
        if order
        else ""
    )
    ax.set_xlabel(f"depthwise layer, in network order{band}", fontsize=7.5)
    ax.set_ylabel("share of kernels")
    ax.set_title("\n".join(textwrap.wrap(title, 55)) or title, fontsize=9)


def _depth_bins(depth: np.ndarray, nbins: int) -> np.ndarray:
    return np.minimum((np.asarray(depth, dtype=float) * nbins).astype(int), nbins - 1)


def plot_fit_by_depth(ax: Axes, df: pd.DataFrame, *, nbins: int = 5) -> None:
    """Box plots of the fitted Gaussian scale (sigma, px) by relative depth, per kernel size,
    with the number of kernels under each box."""
    df = df[np.isfinite(df["fit_sigma"])]
    bins = _depth_bins(df["depth"], nbins)
    data, pos, colors = [], [], []
    sizes = sorted(set(zip(df["kh"], df["kw"])))
    for j, (kh, kw) in enumerate(sizes):
        sel = (df["kh"].to_numpy() == kh) & (df["kw"].to_numpy() == kw)
        for b in range(nbins):
            v = df["fit_sigma"].to_numpy()[sel & (bins == b)]
            if len(v):
                data.append(v)
                pos.append(b + (j - (len(sizes) - 1) / 2) * 0.8 / max(len(sizes), 1))
                colors.append(f"C{j}")
    if data:
        parts = ax.boxplot(
            data,
            positions=pos,
            widths=0.7 / max(len(sizes), 1),
            showfliers=False,
            patch_artist=True,
        )
        for patch, c in zip(parts["boxes"], colors):
            patch.set_facecolor(c)
            patch.set_alpha(0.6)
        for p, v in zip(pos, data):
            ax.annotate(f"n={len(v):,}", (p, 0), xytext=(0, 2), textcoords="offset points",
                        xycoords=("data", "axes fraction"), fontsize=6, ha="center", color="#444")  # fmt: skip
    ax.set_xticks(range(nbins), [f"{b / nbins:.1f}-{(b + 1) / nbins:.1f}" for b in range(nbins)])
    ax.set_xlabel("relative depth")
    ax.set_ylabel("fitted sigma (px)")
    if sizes:
        from matplotlib.patches import Patch

        ax.legend(
            handles=[Patch(facecolor=f"C{j}", alpha=0.6, label=f"{kh}x{kw}") for j, (kh, kw) in enumerate(sizes)],
            fontsize=7,
        )  # fmt: skip
    else:
        ax.text(0.5, 0.5, "no fitted kernels", ha="center", va="center", transform=ax.transAxes)


def plot_orientation_by_depth(
    ax: Axes, df: pd.DataFrame, *, nbins: int = 3, family: str = "first_derivative"
) -> None:
    """Histograms of the atlas orientation of one family's kernels, by depth tercile."""
    from ..taxonomy import FAMILY_INFO

    period = FAMILY_INFO[family].orientation_period or 360.0
    sel = (df["family"] == family) & np.isfinite(df["orientation"])
    d = df[sel]
    bins = _depth_bins(d["depth"], nbins)
    edges = np.linspace(0, period, 25)
    drawn = 0
    for b in range(nbins):
        v = d["orientation"].to_numpy()[bins == b] % period
        if len(v):
            h, _ = np.histogram(v, edges)
            ax.step(edges[:-1], h / max(h.sum(), 1), where="post",
                    label=f"depth {b / nbins:.2f}-{(b + 1) / nbins:.2f} (n={len(v):,})")  # fmt: skip
            drawn += 1
    ax.set_xlabel(f"orientation of {family.replace('_', ' ')} kernels (deg)")
    ax.set_ylabel("fraction")
    ax.set_xticks(np.linspace(0, period, 5))
    if drawn:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, f"no {family.replace('_', ' ')} kernels", ha="center", va="center",
                transform=ax.transAxes)  # fmt: skip


def plot_ae_spectrum(
    ax_strip: Axes,
    ax_hist: Axes,
    segments: Sequence[Mapping[str, Any]],
    decoded: np.ndarray,
    latents: np.ndarray,
) -> None:
    """The latent histogram, with the decoded row and the atlas name along the latent above.

    ``segments`` are runs of one name along the latent (``start``, ``end``, ``family``;
    :func:`kernelatlas.report.spectra.spectrum_doc`); ``decoded`` a few decoded patterns
    [n, kh, kw] evenly spaced along it. The legend's swatches are the registry colours of
    the families named.
    """
    plot_kernels(ax_strip, np.asarray(decoded, dtype=np.float32), ncols=len(decoded))
    lat = np.asarray(latents, dtype=float)
    ax_hist.hist(lat[np.isfinite(lat)], bins=60, range=(0, 1), color="#555555")
    top = ax_hist.get_ylim()[1]
    for seg in segments:
        ax_hist.barh(top * 1.03, float(seg["end"]) - float(seg["start"]), top * 0.06,
                     left=float(seg["start"]), color=family_color(str(seg["family"])),
                     linewidth=0, clip_on=False)  # fmt: skip
    ax_hist.set_ylim(0, top)
    names = {str(s["family"]) for s in segments}
    named = [f for f in FAMILIES if f in names] + sorted(names - set(FAMILIES))
    ax_hist.set_xlim(0, 1)
    ax_hist.set_xlabel("autoencoder latent")
    ax_hist.set_ylabel("kernels")
    ax_hist.legend(
        handles=family_handles(named), fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1)
    )
