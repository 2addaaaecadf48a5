"""Build the report's figures from an analysis directory (kernels.parquet + summary)."""

from __future__ import annotations

import os
from dataclasses import dataclass
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
    "GalleryStats",
    "gallery_stats",
    "gallery_from_table",
    "sample_keys",
    "EXEMPLARS",
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


def _family_codes(family: np.ndarray, names: tuple[str, ...]) -> np.ndarray:
    """Index of each row's family in ``names`` (-1: another), by hashing (no Python loop)."""
    codes, uniq = pd.factorize(np.asarray(family, dtype=object))
    lut = np.array([names.index(u) if u in names else -1 for u in uniq] + [-1], dtype=np.int64)
    return lut[codes]  # (factorize's -1, a missing value, maps to the last entry: -1)


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
    fam = _family_codes(family, PATTERN_FAMILIES)
    ori = np.asarray(orientation, dtype=np.float64)
    nbins = [_n_bins(f) for f in PATTERN_FAMILIES]
    first = np.concatenate([[0], np.cumsum(nbins)])  # each family's first bin, over all
    b = np.zeros(n, np.int64)
    sign = np.ones(n, np.float32)
    for j, f in enumerate(PATTERN_FAMILIES):
        sel = fam == j
        if f in _PERIODS:
            o = ori[sel] % _PERIODS[f]
            bj = np.where(
                np.isfinite(o), np.floor(np.nan_to_num(o) / ORIENTATION_BIN), nbins[j] - 1
            )
            b[sel] = np.clip(bj, 0, nbins[j] - 1).astype(np.int64)
        if f in (CENTER, SECOND_DERIVATIVE):
            sign[sel] = np.asarray(polarity, dtype=np.float32)[sel]
    code = np.where(fam >= 0, first[np.maximum(fam, 0)] + b, -1).astype(np.int16)
    keep = np.flatnonzero(code >= 0)
    order = keep[np.argsort(code[keep], kind="stable")]  # one (radix) sort for all bins
    code = code[order]
    x = unit.reshape(n, kh * kw)[order].astype(np.float64)
    x *= sign[order, None]
    total = np.zeros((first[-1], kh * kw))
    starts = np.flatnonzero(np.r_[True, code[1:] != code[:-1]]) if len(code) else np.zeros(0, int)
    if len(starts):
        total[code[starts]] = np.add.reduceat(x, starts, axis=0)
    counts = np.bincount(code, minlength=first[-1]).astype(np.int64)
    return {
        f: (total[first[j] : first[j + 1]].reshape(-1, kh, kw), counts[first[j] : first[j + 1]])
        for j, f in enumerate(PATTERN_FAMILIES)
    }


def add_family_sums(
    a: dict[str, tuple[np.ndarray, np.ndarray]] | None, b: dict[str, tuple[np.ndarray, np.ndarray]]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The sum of two :func:`family_sums` results (``a`` may be None)."""
    if a is None:
        return {f: (s.copy(), c.copy()) for f, (s, c) in b.items()}
    return {f: (a[f][0] + b[f][0], a[f][1] + b[f][1]) for f in b}


#: Exemplars per family in the gallery.
EXEMPLARS = 24
_EXEMPLAR_FAMILIES = (*PATTERN_FAMILIES, UNCLASSIFIED)


def sample_keys(bank_file: str | np.ndarray, bank_row: np.ndarray, seed: int) -> np.ndarray:
    """A seeded pseudo-random uint64 per kernel, from its place in the bank (``bank_file``:
    one name for all rows, or one per row): the gallery's exemplars are the kernels with the
    smallest keys (a uniform sample, the same whatever the split of the kernels into
    batches, partitions or workers)."""
    import hashlib

    def salt(name: str) -> int:
        return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little")

    rows = np.asarray(bank_row, dtype=np.uint64)
    if isinstance(bank_file, str):
        z0 = np.full(len(rows), salt(bank_file), dtype=np.uint64)
    else:
        codes, names = pd.factorize(np.asarray(bank_file, dtype=object))
        z0 = np.array([salt(str(n)) for n in names], dtype=np.uint64)[codes]
    with np.errstate(over="ignore"):
        z = z0 + rows * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@dataclass
class GalleryStats:
    """The gallery of one kernel size as a statistic that adds up over any split of the
    kernels: per-family sums for the mean kernels (:func:`family_sums`), and per family
    (and for unclassified kernels) the :data:`EXEMPLARS` kernels with the smallest
    :func:`sample_keys`, as unit kernels."""

    sums: dict[str, tuple[np.ndarray, np.ndarray]]
    samples: dict[str, tuple[np.ndarray, np.ndarray]]  # family -> (keys [m], unit [m, kh, kw])

    def merge(self, other: GalleryStats) -> GalleryStats:
        """The statistic of both sets of kernels."""
        samples = {}
        for f in self.samples:
            keys = np.concatenate([self.samples[f][0], other.samples[f][0]])
            unit = np.concatenate([self.samples[f][1], other.samples[f][1]])
            keep = np.argsort(keys, kind="stable")[:EXEMPLARS]
            samples[f] = (keys[keep], unit[keep])
        return GalleryStats(add_family_sums(self.sums, other.sums), samples)

    def exemplars(self) -> dict[str, np.ndarray]:
        """family -> unit kernels [<= EXEMPLARS, kh, kw], in key order."""
        return {f: u for f, (_, u) in self.samples.items()}


def _unit_fast(k: np.ndarray) -> np.ndarray:
    # unit kernels of non-degenerate rows in float32 (the mean figure's input; normalize()
    # computes the same in float64, for the exemplars)
    flat = k.reshape(len(k), k.shape[1] * k.shape[2])
    c = flat - flat.mean(axis=1, keepdims=True)
    norm = np.sqrt(np.einsum("ij,ij->i", c, c))
    return (c / np.maximum(norm, 1e-30)[:, None]).reshape(k.shape)


def gallery_stats(
    kernels: np.ndarray,
    family: np.ndarray,
    classified: np.ndarray,
    polarity: np.ndarray,
    orientation: np.ndarray,
    keys: np.ndarray,
) -> GalleryStats:
    """The :class:`GalleryStats` of a batch of kernels [N, kh, kw] of one size, from the
    atlas's columns and :func:`sample_keys`."""
    family = np.asarray(family, dtype=object)
    live = np.flatnonzero(np.asarray(classified, dtype=bool))
    sums = family_sums(_unit_fast(kernels[live]), family[live], polarity[live], orientation[live])
    samples = {}
    codes = _family_codes(family, _EXEMPLAR_FAMILIES)
    for j, f in enumerate(_EXEMPLAR_FAMILIES):
        rows = np.flatnonzero(codes == j)
        if len(rows) > EXEMPLARS:
            rows = rows[np.argpartition(keys[rows], EXEMPLARS)[:EXEMPLARS]]
        rows = rows[np.argsort(keys[rows], kind="stable")]
        unit = normalize(kernels[rows]).unit if len(rows) else kernels[:0].astype(np.float32)
        samples[f] = (keys[rows], unit)
    return GalleryStats(sums, samples)


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


def gallery_from_table(
    path: Path, kh: int, kw: int, *, seed: int = 0, batch_size: int = 65_536
) -> GalleryStats:
    """The :class:`GalleryStats` of one size, read again from kernels.parquet (and the
    weights through :func:`kernelatlas.results.kernel_weights`); the analysis computes it
    while it classifies instead."""
    from ..results import kernel_weights, kernels_dataset

    dataset = kernels_dataset(path)
    flt = (ds.field("kh") == kh) & (ds.field("kw") == kw)
    names = dataset.schema.names
    refs = [c for c in ("weights", "bank_file", "bank_row") if c in names]
    cols = ["family", "classified", "orientation", "polarity", "kh", "kw", *refs]
    total: GalleryStats | None = None
    row = 0
    for batch in dataset.to_batches(columns=cols, filter=flt, batch_size=batch_size):
        if not batch.num_rows:
            continue
        if "bank_row" in names:
            keys = sample_keys(
                batch.column("bank_file").to_numpy(zero_copy_only=False),
                batch.column("bank_row").to_numpy(),
                seed,
            )
        else:  # a table of kernelatlas 0.1.0: rows in order
            keys = sample_keys(
                np.full(batch.num_rows, ""), np.arange(row, row + batch.num_rows), seed
            )
        row += batch.num_rows
        part = gallery_stats(
            kernel_weights(path, batch),
            batch.column("family").to_numpy(zero_copy_only=False),
            batch.column("classified").to_numpy(zero_copy_only=False),
            batch.column("polarity").to_numpy(zero_copy_only=False),
            batch.column("orientation").to_numpy(zero_copy_only=False),
            keys,
        )
        total = part if total is None else total.merge(part)
    if total is None:
        empty = np.zeros((0, kh, kw), np.float32)
        total = gallery_stats(
            empty,
            np.zeros(0, object),
            np.zeros(0, bool),
            np.zeros(0),
            np.zeros(0),
            np.zeros(0, np.uint64),
        )
    return total


def family_means(path: Path, kh: int, kw: int) -> dict[str, tuple[np.ndarray, int, str]]:
    """Per family, the mean unit kernel of its classified members, read from kernels.parquet.

    Centre and second-derivative kernels are sign-aligned (times polarity) before averaging;
    oriented families are averaged within 30 degrees of their most common orientation
    (averaging all orientations would cancel to zero). Returns family -> (mean, n, label).
    """
    return means_from_sums(gallery_from_table(path, kh, kw).sums)


@F.plain_text
def make_figures(
    run_dir: Path,
    summary: dict[str, Any],
    *,
    spectra: dict[str, Any] | None = None,
    seed: int = 0,
    family_stats: dict[tuple[int, int], GalleryStats] | None = None,
) -> dict[str, list[str]]:
    """Write figures/*.png for one analysis; returns section -> list of file names.

    ``family_stats``: per kernel size, the :class:`GalleryStats` of its kernels (the
    analysis computes them while it classifies); sizes without them are read again
    (:func:`gallery_from_table`)."""
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

    gallery = []
    sizes = (
        sorted({(int(a), int(b)) for a, b in zip(models["kh"], models["kw"])})
        if len(models)
        else []
    )
    for kh, kw in sizes:
        stats = (family_stats or {}).get((kh, kw)) or gallery_from_table(path, kh, kw, seed=seed)
        means = means_from_sums(stats.sums)
        ex = stats.exemplars()
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

    from ..results import kernels_dataset

    has_fits = "fit_sigma" in kernels_dataset(path).schema.names
    meta = read_columns(path, [*_META, "fit_sigma"], seed=seed) if has_fits else pd.DataFrame()
    if has_fits and len(meta):
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
