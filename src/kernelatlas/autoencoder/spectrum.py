"""The spectrum: decoded patterns along the latent line, named by the atlas, and its segments.

The paper read its autoencoders' decoders along the one-dimensional latent and named the
clusters by hand. Here every decoded pattern of a fine grid is named by the atlas
classifier (:class:`kernelatlas.atlas.Atlas`), and the line is cut into contiguous segments
of one name; each kernel then gets the segment of its latent coordinate.

A segment's name is its family, with the polarity appended where the family has one
(``center+``, ``center-``, ``second_derivative+``, ...): an on-centre and an off-centre
DoG are different patterns, while a first derivative's sign is in its orientation.
"""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd

from ..errors import KernelAtlasError
from ..taxonomy import FAMILY_INFO

__all__ = [
    "SPECTRUM_COLUMNS",
    "SEGMENT_COLUMNS",
    "name_patterns",
    "segment_label",
    "segment_spectrum",
    "assign_segments",
    "grid_counts",
]

SPECTRUM_COLUMNS: tuple[str, ...] = (
    "z",
    "family",
    "orientation",
    "polarity",
    "scale",
    "score",
    "classified",
    "label",
)
SEGMENT_COLUMNS: tuple[str, ...] = (
    "segment",
    "label",
    "family",
    "polarity",
    "z_start",
    "z_end",
    "orientation_start",
    "orientation_end",
    "scale",
    "score",
    "n_grid",
    "mass",
)


@functools.lru_cache(maxsize=8)
def _fitted_atlas(kh: int, kw: int) -> object:
    try:
        from ..atlas import Atlas
    except ImportError as exc:  # the atlas is a sibling stage; say what is missing
        raise KernelAtlasError(
            f"naming the spectrum needs kernelatlas.atlas.Atlas, which failed to import ({exc}):"
            " install the complete kernelatlas package"
        ) from None
    return Atlas(kernel_size=kh if kh == kw else (kh, kw)).fit()


def name_patterns(unit: np.ndarray) -> pd.DataFrame:
    """Name unit kernels ``[N, kh, kw]`` with the atlas classifier (fitted once per size).

    Returns the atlas's DataFrame (``family, orientation, polarity, scale, score,
    classified``), one row per kernel.
    """
    unit = np.ascontiguousarray(unit, dtype=np.float32)
    if unit.ndim != 3:
        raise KernelAtlasError(f"expected patterns [N,kh,kw], got {list(unit.shape)}")
    atlas = _fitted_atlas(int(unit.shape[1]), int(unit.shape[2]))
    out = atlas.predict(unit)
    return out.reset_index(drop=True)


def segment_label(family: object, polarity: object) -> np.ndarray:
    """Segment names: the family, plus ``+``/``-`` where the family has a polarity."""
    fam = np.asarray(family, dtype=object)
    pol = np.asarray(polarity, dtype=np.float64)
    has_pol = np.array([FAMILY_INFO[f].has_polarity if f in FAMILY_INFO else False for f in fam])
    has_pol = has_pol.astype(bool) & np.isfinite(pol) & (pol != 0)
    sign = np.where(pol > 0, "+", "-")
    return np.where(has_pol, fam.astype(str) + sign, fam.astype(str)).astype(object)


def _runs(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start indices and lengths of the runs of equal consecutive labels."""
    change = np.flatnonzero(labels[1:] != labels[:-1]) + 1
    starts = np.concatenate([[0], change])
    lengths = np.diff(np.concatenate([starts, [labels.size]]))
    return starts, lengths


def _smooth(labels: np.ndarray, min_run: int) -> np.ndarray:
    """Give every run shorter than ``min_run`` grid points to a neighbouring run.

    Runs are few (at most the grid size), so this loops over runs, not kernels: the
    shortest short run is merged first, into the neighbour it is flanked by on both sides
    if the two agree, otherwise into the longer neighbour.
    """
    labels = labels.copy()
    while True:
        starts, lengths = _runs(labels)
        if starts.size <= 1:
            return labels
        short = np.flatnonzero(lengths < min_run)
        if short.size == 0:
            return labels
        i = int(short[np.argmin(lengths[short])])
        left = i - 1 if i > 0 else None
        right = i + 1 if i + 1 < starts.size else None
        if left is not None and right is not None:
            same = labels[starts[left]] == labels[starts[right]]
            j = left if same or lengths[left] >= lengths[right] else right
        else:
            j = left if left is not None else right
        labels[starts[i] : starts[i] + lengths[i]] = labels[starts[j]]


def segment_spectrum(
    spectrum: pd.DataFrame,
    latents: np.ndarray | None = None,
    *,
    min_run: int = 3,
    counts: np.ndarray | None = None,
) -> pd.DataFrame:
    """Cut a named spectrum into contiguous segments of one label.

    Parameters
    ----------
    spectrum : DataFrame with columns ``z`` (increasing grid on [0, 1]), ``family``,
        ``orientation``, ``polarity``, ``scale``, ``score``.
    latents : optional latents [N] of the kernels the autoencoder was fitted on; each
        segment's ``mass`` is the fraction of them that falls into it (NaN without).
    min_run : runs shorter than this many grid points are merged into a neighbour.
    counts : instead of ``latents``, how many kernels fall into each grid point's cell
        [n_grid] (:func:`grid_counts`); gives the same ``mass``.

    Returns
    -------
    DataFrame with columns :data:`SEGMENT_COLUMNS`, one row per segment, in latent order.
    Segment boundaries lie halfway between grid points; the first starts at 0 and the
    last ends at 1.
    """
    z = spectrum["z"].to_numpy(np.float64)
    if z.size == 0:
        raise KernelAtlasError("the spectrum is empty: decode at least one grid point")
    labels = segment_label(spectrum["family"].to_numpy(), spectrum["polarity"].to_numpy())
    labels = _smooth(labels, max(int(min_run), 1))
    starts, lengths = _runs(labels)
    ends = starts + lengths - 1
    mid = (z[1:] + z[:-1]) / 2
    z_start = np.concatenate([[0.0], mid])[starts]
    z_end = np.concatenate([mid, [1.0]])[ends]
    ori = spectrum["orientation"].to_numpy(np.float64)
    scale = spectrum["scale"].to_numpy(np.float64)
    score = spectrum["score"].to_numpy(np.float64)
    seg_of_grid = np.repeat(np.arange(starts.size), lengths)
    # A segment's family/polarity: the label's own (runs merged in by smoothing are renamed).
    seg_label = labels[starts]
    seg_family = np.array([s.rstrip("+-") for s in seg_label], dtype=object)
    seg_pol = np.array(
        [1.0 if s.endswith("+") else -1.0 if s.endswith("-") else np.nan for s in seg_label]
    )

    def _median(v: np.ndarray) -> np.ndarray:
        out = np.full(starts.size, np.nan)
        for s in range(starts.size):  # loops over segments (few), not kernels
            w = v[seg_of_grid == s]
            w = w[np.isfinite(w)]
            if w.size:
                out[s] = np.median(w)
        return out

    if counts is not None:
        c = np.asarray(counts, dtype=np.float64).reshape(-1)
        if c.size != z.size:
            raise KernelAtlasError(f"counts has {c.size} cells for a grid of {z.size} points")
        seg_counts = np.bincount(seg_of_grid, weights=c, minlength=starts.size)
        mass = seg_counts / max(c.sum(), 1.0)
    elif latents is None:
        mass = np.full(starts.size, np.nan)
    else:
        lat = np.asarray(latents, dtype=np.float64)
        lat = lat[np.isfinite(lat)]
        idx = np.clip(np.searchsorted(z_end, lat, side="right"), 0, starts.size - 1)
        counts = np.bincount(idx, minlength=starts.size).astype(np.float64)
        mass = counts / max(lat.size, 1)
    return pd.DataFrame(
        {
            "segment": np.arange(starts.size, dtype=np.int64),
            "label": seg_label.astype(str),
            "family": seg_family.astype(str),
            "polarity": seg_pol,
            "z_start": z_start,
            "z_end": z_end,
            "orientation_start": ori[starts],
            "orientation_end": ori[ends],
            "scale": _median(scale),
            "score": _median(score),
            "n_grid": lengths.astype(np.int64),
            "mass": mass,
        },
        columns=list(SEGMENT_COLUMNS),
    )


def grid_counts(latents: np.ndarray, n_grid: int) -> np.ndarray:
    """How many finite latents fall into each cell of an ``n_grid``-point grid on [0, 1].

    Cell ``i`` holds the latents nearest to grid point ``i / (n_grid - 1)`` (boundaries
    halfway between grid points, as in :func:`segment_spectrum`). int64 [n_grid].
    """
    lat = np.asarray(latents, dtype=np.float64)
    lat = lat[np.isfinite(lat)]
    z = np.linspace(0.0, 1.0, int(n_grid))
    mid = (z[1:] + z[:-1]) / 2
    idx = np.searchsorted(mid, lat, side="right")
    return np.bincount(idx, minlength=int(n_grid)).astype(np.int64)


def assign_segments(latents: np.ndarray, segments: pd.DataFrame) -> np.ndarray:
    """Segment index [N] of each latent (-1 where the latent is NaN)."""
    lat = np.asarray(latents, dtype=np.float64)
    z_end = segments["z_end"].to_numpy(np.float64)
    idx = np.clip(np.searchsorted(z_end, lat, side="right"), 0, z_end.size - 1)
    return np.where(np.isfinite(lat), idx, -1).astype(np.int64)
