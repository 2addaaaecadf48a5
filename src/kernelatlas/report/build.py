"""Build the report's figures from an analysis directory (kernels.parquet + summary)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.dataset as ds

from ..atomic import write_marker
from ..normalize import normalize
from ..taxonomy import FAMILIES, FAMILY_INFO, PATTERN_FAMILIES, UNCLASSIFIED
from . import figures as F

__all__ = ["make_figures", "read_columns", "family_means", "FIGURE_DPI"]

FIGURE_DPI = 110
_META = ["source", "model", "kh", "kw", "layer_index", "depth", "family", "orientation", "polarity", "scale", "score", "classified"]  # fmt: skip


def read_columns(
    path: Path, columns: list[str], *, max_rows: int = 500_000, seed: int = 0
) -> pd.DataFrame:
    """Selected columns of kernels.parquet (never the weights), row-sampled to ``max_rows``.

    The column ``_row`` holds each row's index in the file (for fetching its weights later).
    """
    dataset = ds.dataset(path)
    cols = [c for c in columns if c in dataset.schema.names]
    n = dataset.count_rows()
    if n <= max_rows:
        df = dataset.to_table(columns=cols).to_pandas()
        df["_row"] = np.arange(n)
        return df
    idx = np.sort(np.random.default_rng(seed).choice(n, max_rows, replace=False))
    df = dataset.take(idx, columns=cols).to_pandas()
    df["_row"] = idx
    return df


def _baseline_columns(rows: list[dict[str, Any]], kinds: list[str]) -> pd.DataFrame:
    """``coverage_lo/hi`` and ``baseline_KIND`` (+ ``_lo/_hi``) columns of summary model rows."""
    out: dict[str, list[Any]] = {"coverage_lo": [], "coverage_hi": []}
    for r in rows:
        iv = r.get("coverage_interval") or [np.nan, np.nan]
        out["coverage_lo"].append(iv[0])
        out["coverage_hi"].append(iv[1])
        for k in kinds:
            b = (r.get("baselines") or {}).get(k) or {}
            biv = b.get("interval") or [np.nan, np.nan]
            for suffix, v in (("", b.get("coverage")), ("_lo", biv[0]), ("_hi", biv[1])):
                out.setdefault(f"baseline_{k}{suffix}", []).append(np.nan if v is None else v)
    return pd.DataFrame(out, dtype=float)


def _save(fig: Any, path: Path) -> str:
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=FIGURE_DPI, bbox_inches="tight")
    os.replace(tmp, path)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path.name


def _align(unit: np.ndarray, family: str, polarity: np.ndarray) -> np.ndarray:
    return unit * polarity[:, None, None] if FAMILY_INFO[family].has_polarity else unit


def _periods() -> dict[str, float]:
    """Orientation period (degrees) of every oriented family, from its definition."""
    return {
        f: float(FAMILY_INFO[f].orientation_period)
        for f in PATTERN_FAMILIES
        if FAMILY_INFO[f].orientation_period
    }


def family_means(
    path: Path, kh: int, kw: int, *, batch_size: int = 65_536
) -> dict[str, tuple[np.ndarray, int, str]]:
    """Per family, the mean unit kernel of its classified members, streamed over the file.

    Centre and second-derivative kernels are sign-aligned (times polarity) before averaging;
    oriented families are averaged within 30 degrees of their most common orientation
    (averaging all orientations would cancel to zero). Returns family -> (mean, n, label).
    """
    dataset = ds.dataset(path)
    flt = (ds.field("kh") == kh) & (ds.field("kw") == kw) & ds.field("classified")
    cols = ["family", "orientation", "polarity", "weights"]
    meta = dataset.to_table(columns=["family", "orientation"], filter=flt).to_pandas()
    modes: dict[str, float] = {}
    periods = _periods()
    for fam, period in periods.items():
        o = meta.loc[meta["family"] == fam, "orientation"].to_numpy(dtype=float)
        o = o[np.isfinite(o)]
        if len(o):
            h, edges = np.histogram(o % period, bins=int(period // 15), range=(0, period))
            modes[fam] = float(edges[np.argmax(h)] + 7.5)
    sums = {f: np.zeros((kh, kw)) for f in PATTERN_FAMILIES}
    counts = dict.fromkeys(PATTERN_FAMILIES, 0)
    for batch in dataset.to_batches(columns=cols, filter=flt, batch_size=batch_size):
        df = batch.to_pandas()
        w = (
            np.stack(df["weights"].to_numpy()).reshape(-1, kh, kw)
            if len(df)
            else np.zeros((0, kh, kw))
        )
        unit = normalize(w).unit
        fam = df["family"].to_numpy()
        pol = df["polarity"].to_numpy(dtype=float)
        ori = df["orientation"].to_numpy(dtype=float)
        for f in PATTERN_FAMILIES:
            sel = fam == f
            if f in modes:
                period = periods[f]
                d = np.abs((ori - modes[f] + period / 2) % period - period / 2)
                sel &= d <= 30
            if sel.any():
                sums[f] += _align(unit[sel], f, pol[sel]).sum(0)
                counts[f] += int(sel.sum())
    out = {}
    for f in PATTERN_FAMILIES:
        label = f"{f}\n(n={counts[f]}" + (f", ~{modes[f]:.0f} deg" if f in modes else "") + ")"
        out[f] = (sums[f] / max(counts[f], 1), counts[f], label)
    return out


def _exemplars(
    path: Path, meta: pd.DataFrame, kh: int, kw: int, n: int, seed: int
) -> dict[str, np.ndarray]:
    """A seeded random sample of real kernels per family (classified) and of unclassified ones."""
    rng = np.random.default_rng(seed)
    dataset = ds.dataset(path)
    out = {}
    sel_size = (meta["kh"] == kh) & (meta["kw"] == kw)
    for f in (*PATTERN_FAMILIES, UNCLASSIFIED):
        rows = np.flatnonzero(sel_size & (meta["family"] == f))
        if len(rows) > n:
            rows = np.sort(rng.choice(rows, n, replace=False))
        if len(rows) == 0:
            out[f] = np.zeros((0, kh, kw), np.float32)
            continue
        w = dataset.take(meta["_row"].to_numpy()[rows], columns=["weights"]).column("weights")
        out[f] = normalize(np.stack(w.to_numpy(zero_copy_only=False)).reshape(-1, kh, kw)).unit
    return out


@F.plain_text
def make_figures(
    run_dir: Path,
    summary: dict[str, Any],
    *,
    spectra: dict[str, Any] | None = None,
    seed: int = 0,
    biology: Any = None,
) -> dict[str, list[str]]:
    """Write figures/*.png for one analysis; returns section -> list of file names.

    ``biology``: a :class:`kernelatlas.biology.report.BiologySection` to draw (section
    ``biology``), or None.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig_dir = run_dir / "figures"
    fig_dir.mkdir(exist_ok=True)
    write_marker(fig_dir, "figures")
    path = run_dir / "kernels.parquet"
    made: dict[str, list[str]] = {}
    models = pd.DataFrame(summary["models"])
    layers = pd.DataFrame(summary["layers"])
    for f in FAMILIES:
        if len(layers):
            layers[f"share_{f}"] = [s.get(f) for s in layers["family_shares"]]

    kinds = summary.get("nulls", {}).get("kinds", {})
    if len(models):
        models = models.join(_baseline_columns(summary["models"], list(kinds)))
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(models) + 2), 3.6))
    F.plot_coverage(ax, models, baselines={k: v["label"] for k, v in kinds.items()} or None,
                    null=summary["config"]["null"])  # fmt: skip
    null = kinds.get(summary["config"].get("null"), {}).get("label", summary["config"].get("null"))
    ax.set_title(f"Coverage at thresholds calibrated on the {null} null, beside every baseline "
                 "(held-out surrogates; 95% intervals)", fontsize=9)  # fmt: skip
    made["coverage"] = [_save(fig, fig_dir / "coverage.png")]

    panels = list(layers.groupby(["model", "kh", "kw"], sort=True)) if len(layers) else []
    if panels:
        ncols = min(3, len(panels))
        nrows = int(np.ceil(len(panels) / ncols))
        fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 2.9 * nrows), squeeze=False)
        for ax, ((model, kh, kw), df) in zip(axes.flat, panels):
            F.plot_layer_shares(ax, df, title=f"{model} {kh}x{kw}")
        for ax in list(axes.flat)[len(panels) :]:
            ax.axis("off")
        handles, labels = axes.flat[0].get_legend_handles_labels()
        fig.legend(
            handles, labels, loc="lower center", ncol=5, fontsize=8, bbox_to_anchor=(0.5, -0.02)
        )
        fig.tight_layout(rect=(0, 0.04, 1, 1))
        made["layers"] = [_save(fig, fig_dir / "layers.png")]

    meta = read_columns(path, [*_META, "fit_sigma"], seed=seed)
    gallery = []
    sizes = (
        sorted({(int(a), int(b)) for a, b in zip(models["kh"], models["kw"])})
        if len(models)
        else []
    )
    for kh, kw in sizes:
        means = family_means(path, kh, kw)
        ex = _exemplars(path, meta, kh, kw, 24, seed)
        nf = len(PATTERN_FAMILIES)
        fig, axes = plt.subplots(
            2, nf + 1, figsize=(3.25 * (nf + 1), 5.6), gridspec_kw={"height_ratios": [1, 1.6]}
        )
        for j, f in enumerate(PATTERN_FAMILIES):
            mean, n, label = means[f]
            F.plot_kernels(
                axes[0, j],
                mean[None] if n else np.zeros((0, kh, kw)),
                ncols=1,
                title=f"mean {label}",
            )
            F.plot_kernels(axes[1, j], ex[f], ncols=6, title=f"{f}: examples")
        axes[0, nf].axis("off")
        F.plot_kernels(axes[1, nf], ex[UNCLASSIFIED], ncols=6, title="unclassified: examples")
        fig.suptitle(f"Gallery of real {kh}x{kw} kernels (unit norm; red +, blue -)", fontsize=10)
        gallery.append(_save(fig, fig_dir / f"gallery_{kh}x{kw}.png"))
    made["gallery"] = gallery

    made["atlas"] = [_save(atlas_diagram(plt), fig_dir / "atlas.png")]

    if "fit_sigma" in meta.columns and len(meta):
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.4))
        F.plot_fit_by_depth(a1, meta)
        F.plot_orientation_by_depth(a2, meta)
        fig.tight_layout()
        made["fits"] = [_save(fig, fig_dir / "fits_by_depth.png")]

    if spectra:
        lat = read_columns(path, ["kh", "kw", "ae_latent"], seed=seed)
        files = []
        for key, spec in sorted(spectra.items()):
            kh, kw = (int(v) for v in key.split("x"))
            z = lat.loc[(lat["kh"] == kh) & (lat["kw"] == kw), "ae_latent"].to_numpy(dtype=float)
            fig, (a1, a2) = plt.subplots(
                2, 1, figsize=(10, 3.8), gridspec_kw={"height_ratios": [1, 2.2]}
            )
            F.plot_ae_spectrum(
                a1,
                a2,
                pd.DataFrame(spec["spectrum"]),
                np.asarray(spec["decoded"], dtype=np.float32),
                z,
            )
            a1.set_title(
                f"Autoencoder spectrum, {key}: decoded patterns along the latent and their atlas names",
                fontsize=9,
            )
            fig.tight_layout()
            files.append(_save(fig, fig_dir / f"ae_spectrum_{key}.png"))
        made["autoencoder"] = files
    if biology is not None:
        made["biology"] = biology.figures(fig_dir, dpi=FIGURE_DPI)
    return made


def atlas_diagram(plt: Any, size: int = 15):
    """The atlas: a few generated patterns of every registered family (its own diagram)."""
    from ..atlas.registry import families

    rows = [row for fam in families() for row in fam.diagram(size)]
    fig, axes = plt.subplots(len(rows), 1, figsize=(6, 1.7 * len(rows)), squeeze=False)
    for ax, (name, k) in zip(axes[:, 0], rows):
        F.plot_kernels(ax, k, ncols=len(k), title=name)
    fig.tight_layout()
    return fig
