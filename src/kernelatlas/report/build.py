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
from ..taxonomy import CENTER, FIRST_DERIVATIVE, PATTERN_FAMILIES, SECOND_DERIVATIVE, UNCLASSIFIED
from . import figures as F

__all__ = [
    "make_figures",
    "read_columns",
    "family_means",
    "family_sums",
    "add_family_sums",
    "means_from_sums",
    "ORIENTATION_BIN",
    "FIGURE_DPI",
]

FIGURE_DPI = 110
_META = ["source", "model", "kh", "kw", "layer_index", "depth", "family", "orientation", "polarity", "scale", "score", "classified"]  # fmt: skip


def read_columns(
    path: Path, columns: list[str], *, max_rows: int = 500_000, seed: int = 0
) -> pd.DataFrame:
    """Selected columns of kernels.parquet (never the weights), row-sampled to ``max_rows``.

    The column ``_row`` holds each row's index in the file (for fetching its weights later).
    """
    from ..results import kernels_dataset

    dataset = kernels_dataset(path)
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


def _save(fig: Any, path: Path) -> str:
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=FIGURE_DPI, bbox_inches="tight")
    os.replace(tmp, path)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path.name


def _align(unit: np.ndarray, family: str, polarity: np.ndarray) -> np.ndarray:
    return unit * polarity[:, None, None] if family in (CENTER, SECOND_DERIVATIVE) else unit


#: Orientation bins (degrees) of the gallery statistic: the mode of an oriented family is
#: taken over 15-degree bins and its mean over +-30 degrees around the mode, both unions
#: of these bins, so the statistic adds up exactly over batches, partitions and workers.
ORIENTATION_BIN = 7.5
_PERIODS = {FIRST_DERIVATIVE: 360.0, SECOND_DERIVATIVE: 180.0}


def _n_bins(family: str) -> int:
    # one bin per ORIENTATION_BIN over the family's period, plus one for NaN orientations
    return int(_PERIODS[family] / ORIENTATION_BIN) + 1 if family in _PERIODS else 1


def family_sums(
    unit: np.ndarray, family: np.ndarray, polarity: np.ndarray, orientation: np.ndarray
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The gallery's mean kernels as a mergeable statistic of one batch.

    Parameters
    ----------
    unit : unit kernels [N, kh, kw] (zero mean, unit norm).
    family, polarity, orientation : the atlas's columns for those kernels.

    Returns
    -------
    family -> (sums [B, kh, kw] float64, counts [B] int64): per orientation bin of
    :data:`ORIENTATION_BIN` degrees (one bin for an unoriented family; the last bin holds
    NaN orientations), the sum of the family's members, sign-aligned (times polarity for
    centre and second-derivative kernels). Add the arrays of any split of the kernels and
    pass them to :func:`means_from_sums`.
    """
    n, kh, kw = unit.shape
    family = np.asarray(family, dtype=object)
    ori = np.asarray(orientation, dtype=np.float64)
    pol = np.asarray(polarity, dtype=np.float64)
    flat = unit.reshape(n, kh * kw).astype(np.float64, copy=False)
    out = {}
    for f in PATTERN_FAMILIES:
        nb = _n_bins(f)
        rows = np.flatnonzero(family == f)
        if f in _PERIODS:
            o = ori[rows] % _PERIODS[f]
            b = np.where(np.isfinite(o), np.floor(np.nan_to_num(o) / ORIENTATION_BIN), nb - 1)
            b = np.clip(b, 0, nb - 1).astype(np.int64)
        else:
            b = np.zeros(len(rows), np.int64)
        x = flat[rows] * pol[rows, None] if f in (CENTER, SECOND_DERIVATIVE) else flat[rows]
        order = np.argsort(b, kind="stable")
        b, x = b[order], x[order]
        counts = np.bincount(b, minlength=nb).astype(np.int64)
        sums = np.zeros((nb, kh * kw))
        starts = np.flatnonzero(np.r_[True, b[1:] != b[:-1]]) if len(b) else np.zeros(0, int)
        if len(starts):
            sums[b[starts]] = np.add.reduceat(x, starts, axis=0)
        out[f] = (sums.reshape(nb, kh, kw), counts)
    return out


def add_family_sums(
    a: dict[str, tuple[np.ndarray, np.ndarray]] | None, b: dict[str, tuple[np.ndarray, np.ndarray]]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The sum of two :func:`family_sums` results (``a`` may be None)."""
    if a is None:
        return {f: (s.copy(), c.copy()) for f, (s, c) in b.items()}
    return {f: (a[f][0] + b[f][0], a[f][1] + b[f][1]) for f in b}


def means_from_sums(
    sums: dict[str, tuple[np.ndarray, np.ndarray]],
) -> dict[str, tuple[np.ndarray, int, str]]:
    """Per family, the mean unit kernel of its members (see :func:`family_means`) from
    :func:`family_sums`: family -> (mean, n, label)."""
    out = {}
    for f in PATTERN_FAMILIES:
        s, c = sums[f]
        label_mode = ""
        if f in _PERIODS and c[:-1].sum():
            nb = len(c) - 1
            coarse = c[:-1].reshape(-1, 2).sum(1)  # 15-degree bins
            j = int(np.argmax(coarse))
            mode = 15.0 * j + 7.5
            keep = np.arange(2 * j - 3, 2 * j + 5) % nb  # bins within 30 degrees of the mode
            total, n = s[keep].sum(0), int(c[keep].sum())
            label_mode = f", ~{mode:.0f} deg"
        else:
            total, n = s.sum(0), int(c.sum())
        label = f"{f}\n(n={n}" + label_mode + ")"
        out[f] = (total / max(n, 1), n, label)
    return out


def family_means(
    path: Path, kh: int, kw: int, *, batch_size: int = 65_536
) -> dict[str, tuple[np.ndarray, int, str]]:
    """Per family, the mean unit kernel of its classified members, streamed over the file.

    Centre and second-derivative kernels are sign-aligned (times polarity) before averaging;
    oriented families are averaged within 30 degrees of their most common orientation
    (averaging all orientations would cancel to zero). Returns family -> (mean, n, label).
    The analysis computes the same statistic while it classifies (:func:`family_sums`);
    this reads the kernels again (their weights through
    :func:`kernelatlas.results.kernel_weights`).
    """
    from ..results import kernel_weights, kernels_dataset

    dataset = kernels_dataset(path)
    flt = (ds.field("kh") == kh) & (ds.field("kw") == kw) & ds.field("classified")
    refs = [c for c in ("weights", "bank_file", "bank_row") if c in dataset.schema.names]
    cols = ["family", "orientation", "polarity", "kh", "kw", *refs]
    total = None
    for batch in dataset.to_batches(columns=cols, filter=flt, batch_size=batch_size):
        if not batch.num_rows:
            continue
        w = kernel_weights(path, batch)
        part = family_sums(
            normalize(w).unit,
            batch.column("family").to_numpy(zero_copy_only=False),
            batch.column("polarity").to_numpy(zero_copy_only=False),
            batch.column("orientation").to_numpy(zero_copy_only=False),
        )
        total = add_family_sums(total, part)
    if total is None:
        empty = np.zeros((0, kh, kw), np.float32)
        total = family_sums(empty, np.zeros(0, object), np.zeros(0), np.zeros(0))
    return means_from_sums(total)


def _exemplars(
    path: Path, meta: pd.DataFrame, kh: int, kw: int, n: int, seed: int
) -> dict[str, np.ndarray]:
    """A seeded random sample of real kernels per family (classified) and of unclassified ones."""
    from ..results import kernel_weights

    rng = np.random.default_rng(seed)
    out = {}
    sel_size = (meta["kh"] == kh) & (meta["kw"] == kw)
    for f in (*PATTERN_FAMILIES, UNCLASSIFIED):
        rows = np.flatnonzero(sel_size & (meta["family"] == f))
        if len(rows) > n:
            rows = np.sort(rng.choice(rows, n, replace=False))
        if len(rows) == 0:
            out[f] = np.zeros((0, kh, kw), np.float32)
            continue
        out[f] = normalize(kernel_weights(path, meta["_row"].to_numpy()[rows])).unit
    return out


@F.plain_text
def make_figures(
    run_dir: Path,
    summary: dict[str, Any],
    *,
    spectra: dict[str, Any] | None = None,
    seed: int = 0,
    family_stats: dict[tuple[int, int], dict[str, tuple[np.ndarray, np.ndarray]]] | None = None,
) -> dict[str, list[str]]:
    """Write figures/*.png for one analysis; returns section -> list of file names.

    ``family_stats``: per kernel size, :func:`family_sums` added up over the kernels (the
    analysis computes them while it classifies); sizes without them are read again
    (:func:`family_means`)."""
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
    for f in ("center", "first_derivative", "second_derivative", "unclassified", "degenerate"):
        if len(layers):
            layers[f"share_{f}"] = [s.get(f) for s in layers["family_shares"]]

    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(models) + 2), 3.6))
    F.plot_coverage(ax, models, null=summary["config"]["null"])
    ax.set_title("Coverage at the calibrated threshold, with the null's rate")
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
        if family_stats is not None and (kh, kw) in family_stats:
            means = means_from_sums(family_stats[(kh, kw)])
        else:
            means = family_means(path, kh, kw)
        ex = _exemplars(path, meta, kh, kw, 24, seed)
        fig, axes = plt.subplots(2, 4, figsize=(13, 5.6), gridspec_kw={"height_ratios": [1, 1.6]})
        for j, f in enumerate(PATTERN_FAMILIES):
            mean, n, label = means[f]
            F.plot_kernels(
                axes[0, j],
                mean[None] if n else np.zeros((0, kh, kw)),
                ncols=1,
                title=f"mean {label}",
            )
            F.plot_kernels(axes[1, j], ex[f], ncols=6, title=f"{f}: examples")
        axes[0, 3].axis("off")
        F.plot_kernels(axes[1, 3], ex[UNCLASSIFIED], ncols=6, title="unclassified: examples")
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
    return made


def atlas_diagram(plt: Any, size: int = 15):
    """The atlas: on/off-centre DoG and their first and second derivatives at a few orientations."""
    from ..atlas import functional as AF

    rows = [
        ("centre (DoG)", np.concatenate([
            AF.center_pattern(size, size, np.array([1.2, 2.0, 2.0, 1.2]), polarity=np.array([1, 1, -1, -1])),
        ])),
        ("first derivative", AF.first_derivative_pattern(size, size, 2.0, np.array([0.0, 45.0, 90.0, 135.0]))),
        ("second derivative (bar)", AF.second_derivative_pattern(size, size, 2.0, np.array([0.0, 45.0, 90.0, 135.0]), kind="bar")),
        ("second derivative (cross)", AF.second_derivative_pattern(size, size, 2.0, np.array([0.0, 22.5, 45.0, 67.5]), kind="cross")),
    ]  # fmt: skip
    fig, axes = plt.subplots(len(rows), 1, figsize=(6, 1.7 * len(rows)))
    for ax, (name, k) in zip(axes, rows):
        F.plot_kernels(ax, k, ncols=len(k), title=name)
    fig.tight_layout()
    return fig
