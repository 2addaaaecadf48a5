"""Figures of the biology comparison: plain functions that draw on an ``ax``, never ``show()``.

They take the tables of :func:`kernelatlas.biology.compare` (one row per model, size and
statistic) and :func:`kernelatlas.biology.kernel_statistics` (one row per kernel; a
``group`` column, ``kernels`` / ``null`` / ``init``, when several are drawn together).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.axes import Axes

from .statistics import CARDINAL_HALF_WIDTH, STATISTICS, elongation_grid

__all__ = [
    "GROUP_STYLE",
    "PUBLISHED_COLOR",
    "plot_statistic",
    "plot_distribution",
    "plot_orientation_axes",
    "plot_family_orders",
    "plot_distribution_row",
]

GROUP_STYLE: dict[str, dict[str, str]] = {
    "kernels": {"color": "#2166ac", "marker": "o", "label": "trained kernels"},
    "null": {"color": "#b2182b", "marker": "x", "label": "null (iid Gaussian)"},
    "init": {"color": "#f4a582", "marker": "^", "label": "fresh init"},
}
PUBLISHED_COLOR = "#1b7837"
_RANGES = {
    "surround_ratio": (1.0, 4.0),
    "surround_weight": (-3.0, 5.0),
    "opponent_ratio": (0.0, 2.0),
    "phase": (0.0, 90.0),
    "elongation": (0.25, 4.0),
}


def _row_labels(table: pd.DataFrame) -> list[str]:
    """``model KxK``, with the source where two sources share a model name."""
    from ..report.labels import source_labels

    src = table["source"] if "source" in table else table["model"]
    names = source_labels([{"source": s, "model": m} for s, m in zip(src, table["model"])])
    return [f"{names[s]} {kh}x{kw}" for s, kh, kw in zip(src, table["kh"], table["kw"])]


def plot_statistic(ax: Axes, table: pd.DataFrame, statistic: str, *, labels: bool = True) -> None:
    """One statistic for every model and size: trained kernels (value, quartiles or 95% interval,
    n beside the marker), the null and the fresh init, and the published value as a line.

    ``table`` is :func:`~kernelatlas.biology.compare`'s output (any subset of rows).
    """
    rows = table[table["statistic"] == statistic].reset_index(drop=True)
    stat = STATISTICS[statistic]
    y = np.arange(len(rows))[::-1].astype(float)
    offsets = {"kernels": 0.0, "null": -0.22, "init": 0.22}
    for g, style in GROUP_STYLE.items():
        v = rows[f"{g}_value"].to_numpy(dtype=float)
        if not np.isfinite(v).any():
            continue
        lo = rows[f"{g}_lo"].to_numpy(dtype=float)
        hi = rows[f"{g}_hi"].to_numpy(dtype=float)
        yy = y + offsets[g]
        ax.errorbar(v, yy, xerr=[np.abs(v - lo), np.abs(hi - v)], fmt=style["marker"], ms=4,
                    color=style["color"], elinewidth=1, capsize=0, label=style["label"])  # fmt: skip
        if g == "kernels":
            for vi, yi, n in zip(v, yy, rows["kernels_n"]):
                if np.isfinite(vi):
                    ax.annotate(f"n={n}", (vi, yi), xytext=(3, 3), textcoords="offset points",
                                fontsize=5.5, color=style["color"])  # fmt: skip
    pub = rows["published_value"].dropna()
    if len(pub):
        rel = rows["published_relation"].iloc[0]
        ax.axvline(float(pub.iloc[0]), color=PUBLISHED_COLOR, ls="--", lw=1.2,
                   label=f"published ({'upper bound' if rel == '<=' else 'mean'})")  # fmt: skip
    elif (rows["published_relation"] == "qualitative").any():
        ax.text(0.99, 0.01, "published: qualitative only", transform=ax.transAxes, ha="right",
                va="bottom", fontsize=6, color=PUBLISHED_COLOR)  # fmt: skip
    if statistic == "cardinal_bias":
        ax.axvline(0.0, color="#888888", lw=0.8)
    if statistic in ("phase_purity", "odd_share"):
        ax.axvline(0.5, color="#888888", lw=0.8, ls=":")
    if statistic == "surround_weight":  # unbounded fits (today): keep the bulk in view
        lo_, hi_ = _RANGES[statistic]
        ax.set_xlim(max(ax.get_xlim()[0], lo_), min(ax.get_xlim()[1], hi_))
    ax.set_yticks(y, _row_labels(rows) if labels else [""] * len(rows), fontsize=7)
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.set_xlabel(stat.label, fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    ax.grid(axis="x", alpha=0.3)


def plot_distribution(
    ax: Axes,
    stats: pd.DataFrame,
    quantity: str,
    *,
    published: float | None = None,
    published_label: str = "published",
    bins: int = 30,
    log_step: float | None = None,
) -> None:
    """Histograms (density) of one per-kernel quantity for each ``group`` in ``stats``, n in the legend.

    ``elongation`` is drawn on a log axis; its values are ratios of grid sigmas, powers of
    the grid's step: give ``log_step`` (:func:`~kernelatlas.biology.statistics.elongation_grid`'s
    ratio of neighbours) to centre one bin on each.
    """
    lo, hi = _RANGES.get(quantity, (None, None))
    groups = (
        stats["group"].to_numpy(object)
        if "group" in stats.columns
        else np.full(len(stats), "kernels")
    )
    log = quantity == "elongation"
    if log and log_step:
        k = int(np.ceil(np.log(hi) / np.log(log_step)))
        edges = log_step ** (np.arange(-k, k + 1) + 0.5)
        lo, hi = edges[0] * 1.0001, edges[-1] * 0.9999
    elif log:
        edges = np.geomspace(lo, hi, bins + 1)
    else:
        edges = np.linspace(lo, hi, bins + 1) if lo is not None else bins
    for g, style in GROUP_STYLE.items():
        v = stats.loc[groups == g, quantity].to_numpy(dtype=float)
        v = v[np.isfinite(v)]
        if v.size == 0:
            continue
        if lo is not None:
            v = np.clip(v, lo, hi)
        ax.hist(v, bins=edges, density=True, histtype="step", lw=1.4, color=style["color"],
                label=f"{style['label']} (n={v.size})")  # fmt: skip
    if published is not None and np.isfinite(published):
        ax.axvline(published, color=PUBLISHED_COLOR, ls="--", lw=1.2, label=published_label)
    if log:
        from matplotlib.ticker import FixedLocator, NullFormatter, ScalarFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_locator(FixedLocator([0.25, 0.5, 1.0, 2.0, 4.0]))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(quantity.replace("_", " "), fontsize=8)
    ax.set_ylabel("density", fontsize=8)
    ax.tick_params(labelsize=7)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6, loc="upper right", framealpha=0.9)
    else:
        ax.text(0.5, 0.5, "no kernels", transform=ax.transAxes, ha="center", fontsize=8)


def plot_orientation_axes(ax: Axes, stats: pd.DataFrame, *, bin_width: float = 7.5) -> None:
    """Orientation axes (0-180 deg) of oriented kernels per group, cardinal bands shaded."""
    groups = (
        stats["group"].to_numpy(object)
        if "group" in stats.columns
        else np.full(len(stats), "kernels")
    )
    w = CARDINAL_HALF_WIDTH
    for c in (0.0, 90.0, 180.0):
        ax.axvspan(max(c - w, 0.0), min(c + w, 180.0), color="#eeeeee", lw=0)
    edges = np.arange(0.0, 180.0 + bin_width, bin_width)
    for g, style in GROUP_STYLE.items():
        v = stats.loc[groups == g, "orientation"].to_numpy(dtype=float)
        v = v[np.isfinite(v)]
        if v.size:
            ax.hist(v, bins=edges, density=True, histtype="step", lw=1.4, color=style["color"],
                    label=f"{style['label']} (n={v.size})")  # fmt: skip
    ax.set_xlim(0, 180)
    ax.set_xticks([0, 45, 90, 135, 180])
    ax.set_xlabel("orientation axis (deg; shaded: cardinal)", fontsize=8)
    ax.set_ylabel("density", fontsize=8)
    ax.tick_params(labelsize=7)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6, loc="upper center", framealpha=0.9)


def plot_family_orders(ax: Axes, table: pd.DataFrame, *, labels: bool = True) -> None:
    """Derivative order of the classified kernels: shares of centre (0), first (1, odd) and
    second (2, even) derivatives, trained kernels beside the null, per model and size."""
    from ..report.figures import FAMILY_COLORS

    by = ["source", "model", "kh", "kw"] if "source" in table else ["model", "kh", "kw"]
    keys = table[by].drop_duplicates().reset_index(drop=True)  # sources apart, names may collide
    y = np.arange(len(keys))[::-1].astype(float)
    names = (("share_center", "center"), ("share_first", "first_derivative"),
             ("share_second", "second_derivative"))  # fmt: skip
    for g, dy, h in (("kernels", 0.15, 0.45), ("null", -0.3, 0.25)):
        left = np.zeros(len(keys))
        for stat, fam in names:
            sub = table[table["statistic"] == stat].set_index(by)
            v = np.array([sub.loc[tuple(k), f"{g}_value"] if tuple(k) in sub.index else np.nan
                          for k in keys.itertuples(index=False)], dtype=float)  # fmt: skip
            v = np.nan_to_num(v)
            ax.barh(y + dy, v, h, left=left, color=FAMILY_COLORS[fam], alpha=1.0 if g == "kernels" else 0.45,
                    label=fam.replace("_", " ") if g == "kernels" else None)  # fmt: skip
            left += v
    ax.set_yticks(y, _row_labels(keys) if labels else [""] * len(keys), fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.7, len(keys) - 0.3)
    ax.set_xlabel("share of classified (upper: trained, lower pale: null)", fontsize=8)
    ax.tick_params(axis="x", labelsize=7)


def plot_distribution_row(
    axes, stats: pd.DataFrame, *, published_opponent: float | None = None
) -> None:
    """Five panels (a row of ``axes``) for one kernel size: opponent ratio, surround ratio,
    symmetry phase, elongation and orientation axes, per ``group`` of ``stats``."""
    sizes = stats[["kh", "kw"]].drop_duplicates().to_numpy()
    if len(sizes) > 1:
        raise ValueError("plot_distribution_row draws one kernel size: select it first")
    plot_distribution(axes[0], stats, "opponent_ratio", published=published_opponent,
                      published_label="Croner & Kaplan 1995 (upper bound)")  # fmt: skip
    plot_distribution(axes[1], stats, "surround_ratio")
    plot_distribution(axes[2], stats, "phase")
    step = None
    if len(sizes):
        grid = elongation_grid(int(sizes[0][0]), int(sizes[0][1]))
        step = float(grid[1] / grid[0])
    plot_distribution(axes[3], stats, "elongation", log_step=step)
    plot_orientation_axes(axes[4], stats)
