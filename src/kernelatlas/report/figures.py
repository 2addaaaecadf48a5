"""Figures: plain matplotlib functions that draw on an ``ax`` and never call ``show()``."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import pandas as pd

from ..taxonomy import FAMILIES, FAMILY_COLORS

if TYPE_CHECKING:  # matplotlib is imported when a figure is drawn, not by every command
    from matplotlib.axes import Axes

__all__ = [
    "FAMILY_COLORS",
    "KERNEL_CMAP",
    "BASELINE_COLORS",
    "mosaic",
    "plot_kernels",
    "plot_coverage",
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


def plot_kernels(ax: Axes, kernels: np.ndarray, *, ncols: int = 8, title: str = "") -> None:
    """A grid of kernels with a diverging colour map centred on zero."""
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)
    if len(kernels) == 0:
        ax.text(0.5, 0.5, "none", ha="center", va="center", transform=ax.transAxes)
        return
    import matplotlib

    cmap = matplotlib.colormaps[KERNEL_CMAP].with_extremes(bad="white")
    ax.imshow(mosaic(kernels, ncols), cmap=cmap, vmin=-1, vmax=1, interpolation="nearest")
    for s in ax.spines.values():
        s.set_visible(False)


# Baseline bars, from the weakest null to the strongest (unknown kinds: grey).
BASELINE_COLORS: dict[str, str] = {
    "gaussian": "#b2182b",
    "init": "#f4a582",
    "smooth": "#fddbc7",
    "phase": "#d6604d",
    "covariance": "#67001f",
    "covariance_layer": "#3f0010",
}


def plot_coverage(
    ax: Axes,
    models: pd.DataFrame,
    *,
    baselines: dict[str, str] | None = None,
    null: str = "gaussian",
) -> None:
    """Classified % per model and kernel size, beside every baseline's held-out %.

    ``models`` has ``coverage`` (and optionally ``coverage_lo/hi``, ``ae_coverage``) and, per
    baseline kind ``k`` in ``baselines`` (kind -> legend label), ``baseline_k`` with
    ``baseline_k_lo/hi``; without ``baselines``: the ``null_coverage`` and ``init_coverage``
    columns, the null named after ``null`` (the kind calibrated on). Error bars are the
    intervals given.
    """
    from ..null import NULLS

    null_label = NULLS[null].label if null in NULLS else null
    labels = [f"{m}\n{kh}x{kw}" for m, kh, kw in zip(models["model"], models["kh"], models["kw"])]
    x = np.arange(len(models))
    series = [("coverage", "trained", "#2166ac")]
    if baselines is None:
        series.append(
            ("null_coverage", f"null ({null_label}, held out)", BASELINE_COLORS["gaussian"])
        )
        if "init_coverage" in models and models["init_coverage"].notna().any():
            series.append(("init_coverage", "same arch., fresh init", BASELINE_COLORS["init"]))
    else:
        for kind, label in baselines.items():
            col = f"baseline_{kind}"
            if col in models and models[col].notna().any():
                series.append((col, label, BASELINE_COLORS.get(kind, "#999999")))
    if "ae_coverage" in models and models["ae_coverage"].notna().any():
        series.append(("ae_coverage", "autoencoder (paper rule)", "#92c5de"))
    w = 0.8 / len(series)
    for i, (col, name, color) in enumerate(series):
        vals = 100 * models[col].astype(float).fillna(0).to_numpy()
        err = None
        if f"{col}_lo" in models and f"{col}_hi" in models:
            lo = 100 * models[f"{col}_lo"].astype(float).to_numpy()
            hi = 100 * models[f"{col}_hi"].astype(float).to_numpy()
            err = np.nan_to_num(np.stack([vals - lo, hi - vals]).clip(0, None))
        ax.bar(x + (i - (len(series) - 1) / 2) * w, vals, w, label=name, color=color,
               yerr=err, error_kw={"elinewidth": 0.6, "capsize": 0})  # fmt: skip
    ax.set_xticks(x, labels, fontsize=7, rotation=90 if len(x) > 8 else 0)
    ax.set_ylabel("kernels classified (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7, loc="upper right", framealpha=0.9)
    ax.grid(axis="y", alpha=0.3)


def plot_layer_shares(ax: Axes, layers: pd.DataFrame, *, title: str = "") -> None:
    """The paper's layer-wise figure: stacked family shares against relative depth."""
    layers = layers.sort_values("depth")
    depth = layers["depth"].to_numpy(dtype=float)
    width = 0.8 / max(len(layers), 1) if len(layers) > 1 else 0.5
    bottom = np.zeros(len(layers))
    for f in FAMILIES:
        vals = layers[f"share_{f}"].fillna(0).to_numpy(dtype=float)
        ax.bar(depth, vals, width, bottom=bottom, color=FAMILY_COLORS[f], label=f, linewidth=0)
        bottom += vals
    ax.set_xlim(-0.05, 1.05)
    ax.set_ylim(0, 1)
    ax.set_xlabel("relative depth (layer index / (layers - 1))")
    ax.set_ylabel("share of kernels")
    ax.set_title(title, fontsize=9)


def _depth_bins(depth: np.ndarray, nbins: int) -> np.ndarray:
    return np.minimum((np.asarray(depth, dtype=float) * nbins).astype(int), nbins - 1)


def plot_fit_by_depth(ax: Axes, df: pd.DataFrame, *, nbins: int = 5) -> None:
    """Box plots of the fitted Gaussian scale (sigma, px) by relative depth, per kernel size."""
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
    for j, (kh, kw) in enumerate(sizes):
        ax.plot([], [], color=f"C{j}", lw=6, alpha=0.6, label=f"{kh}x{kw}")
    ax.set_xticks(range(nbins), [f"{b / nbins:.1f}-{(b + 1) / nbins:.1f}" for b in range(nbins)])
    ax.set_xlabel("relative depth")
    ax.set_ylabel("fitted sigma (px)")
    if sizes:
        ax.legend(fontsize=7)


def plot_orientation_by_depth(ax: Axes, df: pd.DataFrame, *, nbins: int = 3) -> None:
    """Histograms of the atlas orientation of first-derivative kernels, by depth tercile."""
    sel = (df["family"] == "first_derivative") & np.isfinite(df["orientation"])
    d = df[sel]
    bins = _depth_bins(d["depth"], nbins)
    edges = np.linspace(0, 360, 25)
    for b in range(nbins):
        v = d["orientation"].to_numpy()[bins == b]
        if len(v):
            h, _ = np.histogram(v, edges)
            ax.step(
                edges[:-1],
                h / max(h.sum(), 1),
                where="post",
                label=f"depth {b / nbins:.2f}-{(b + 1) / nbins:.2f}",
            )
    ax.set_xlabel("orientation of first-derivative kernels (deg)")
    ax.set_ylabel("fraction")
    ax.set_xticks(range(0, 361, 90))
    ax.legend(fontsize=7)


def plot_ae_spectrum(
    ax_strip: Axes, ax_hist: Axes, spectrum: pd.DataFrame, decoded: np.ndarray, latents: np.ndarray
) -> None:
    """The latent histogram, with the decoded spectrum and its named segments above it."""
    idx = np.linspace(0, len(decoded) - 1, min(len(decoded), 16)).astype(int)
    plot_kernels(ax_strip, decoded[idx], ncols=len(idx))
    z = spectrum["z"].to_numpy(dtype=float)
    fam = spectrum["family"].to_numpy()
    colors = [FAMILY_COLORS.get(f, "#bdbdbd") for f in fam]
    ax_hist.hist(latents[np.isfinite(latents)], bins=60, range=(0, 1), color="#555555")
    top = ax_hist.get_ylim()[1]
    dz = (z[1] - z[0]) if len(z) > 1 else 1.0
    ax_hist.bar(z, top * 0.06, dz, bottom=top, color=colors, linewidth=0, clip_on=False)
    for f in dict.fromkeys(fam):
        ax_hist.bar([], [], color=FAMILY_COLORS.get(f, "#bdbdbd"), label=f)
    ax_hist.set_xlim(0, 1)
    ax_hist.set_xlabel("autoencoder latent")
    ax_hist.set_ylabel("kernels")
    ax_hist.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
