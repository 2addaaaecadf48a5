"""The comparison: the user's kernels beside published receptive-field statistics.

For every (source, model, kernel size) of a kernels table (``kernels.parquet`` or its
DataFrame) and every statistic of :data:`~kernelatlas.biology.statistics.STATISTICS`:
the kernels' value, the same statistic on the null (iid Gaussian kernels through the same
atlas and fits) and on freshly initialised kernels of the same architecture (where given),
the number of kernels behind each, and the published value or finding it is compared with.

Only classified kernels count (their family is the atlas's); the null and the fresh-init
kernels are named by an :class:`~kernelatlas.atlas.Atlas` calibrated like the analysis's
(iid Gaussian null at ``null_fpr``, ``n_null`` kernels, ``seed``), so "classified" means the
same thing in every column.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from ..errors import KernelAtlasError
from ..null import DEFAULT_NULL_SIZE, gaussian_null, wilson_interval
from ..taxonomy import (
    CENTER,
    DEFAULT_NULL_FPR,
    FIRST_DERIVATIVE,
    SECOND_DERIVATIVE,
)
from . import statistics as S
from .literature import reference

__all__ = [
    "compare",
    "kernel_statistics",
    "label_kernels",
    "null_statistics",
    "null_table",
    "group_statistics",
    "sample_kernels",
    "NULL_SOURCE",
    "COMPARE_COLUMNS",
    "STAT_COLUMNS",
    "FIT_COLUMNS_USED",
    "BIOLOGY_NULL_SIZE",
    "GROUPS",
]

GROUPS: tuple[str, ...] = ("kernels", "null", "init")
BIOLOGY_NULL_SIZE = 50_000  # null kernels drawn for the biology null (about 1% are classified)
_NULL_SEED_OFFSET = 104_729  # the biology null is held out from the calibration null
_KEYS = ["source", "model", "kh", "kw"]
STAT_COLUMNS: tuple[str, ...] = (
    *_KEYS,
    "family",
    "surround_ratio",
    "surround_weight",
    "opponent_ratio",
    "phase",
    "elongation",
    "elongation_at_edge",
    "orientation",
)
COMPARE_COLUMNS: tuple[str, ...] = (
    *_KEYS,
    "statistic",
    "label",
    *(f"{g}_{c}" for g in GROUPS for c in ("value", "lo", "hi", "n")),
    "published_value",
    "published_relation",
    "published_refs",
    "note",
)
# The fit columns read, per family with a biological counterpart (the shift family has
# none). ``sigma_u`` / ``sigma_v``: u = derivative direction, v = along the bar/edge.
FIT_COLUMNS_USED: dict[str, tuple[str, ...]] = {
    CENTER: ("fit_r2_center", "fit_sigma_center", "fit_sigma2_center",
             "fit_surround_weight_center", "fit_x0_center", "fit_y0_center"),
    FIRST_DERIVATIVE: ("fit_r2_first_derivative", "fit_orientation_first_derivative",
                       "fit_x0_first_derivative", "fit_y0_first_derivative",
                       "fit_sigma_u_first_derivative", "fit_sigma_v_first_derivative"),
    SECOND_DERIVATIVE: ("fit_r2_second_derivative", "fit_orientation_second_derivative",
                        "fit_cross_share_second_derivative", "fit_x0_second_derivative",
                        "fit_y0_second_derivative", "fit_sigma_u_second_derivative",
                        "fit_sigma_v_second_derivative"),
}  # fmt: skip
ELONGATION_COLUMNS: dict[str, tuple[str, str]] = {
    f: (f"fit_sigma_u_{f}", f"fit_sigma_v_{f}") for f in (FIRST_DERIVATIVE, SECOND_DERIVATIVE)
}
_R2_OK = (0.0, 1.0 + 1e-6)
_POINT_KINDS = ("mean", "median", "share")  # reference rows that give a comparable number
_SPLIT_FITS = 3000  # above this many kernels of one size, fit each family's kernels apart


# --------------------------------------------------------------------------- inputs
def _read(
    kernels: pd.DataFrame | str | os.PathLike[str],
    max_kernels: int | None,
    seed: int,
    max_per_size: int | None = None,
    *,
    weights: bool = True,
) -> pd.DataFrame:
    """The classified rows of the families with a biological counterpart (the keys of
    ``FIT_COLUMNS_USED``) of a kernels table, sampled per (source, model, size) (see
    :func:`_quotas`).

    From a file only those rows and the columns read here are loaded: the metadata first
    (dictionary-encoded, a few bytes a row: ``kernels.parquet`` can hold millions of rows),
    then the sampled rows' weights and fits. ``weights=False`` (a file only): without the
    weights, with ``_row`` (each row's number in the table) to fetch them elsewhere.
    """
    if isinstance(kernels, pd.DataFrame):
        df = _check(kernels)
        sel = df["classified"].to_numpy(dtype=bool) & np.isin(
            df["family"].to_numpy(object), list(FIT_COLUMNS_USED)
        )
        return _sample(df[sel], max_kernels, seed, max_per_size)
    from ..results import BANK_REF_COLUMNS, kernel_weights, kernels_dataset, kernels_path

    path = Path(kernels)
    try:
        path = kernels_path(kernels)  # an analysis folder, or its kernels.parquet (file or parts)
        dataset = kernels_dataset(path)
        names = dataset.schema.names
        # strings as codes into each file's dictionary: a few bytes a row, file by file
        strings = [c for c in names if _is_text(dataset.schema.field(c).type)]
        files = dataset.files
        cols = [c for c in (*_KEYS, "family", "classified") if c in names]
        metas = [_read_columns(f, cols, strings) for f in files]
    except (OSError, ValueError, pa.ArrowException, KernelAtlasError) as exc:
        raise KernelAtlasError(
            f"cannot read a kernels table from {path}: pass kernels.parquet of "
            f"`kernelatlas analyze` or its DataFrame ({exc})"
        ) from None
    has_weights = "weights" in names or set(BANK_REF_COLUMNS) <= set(names)
    _check(pd.DataFrame(columns=[*names, *(["weights"] if has_weights else [])]))
    starts = np.cumsum([0, *(m.num_rows for m in metas)])
    codes = {c: _FileCodes() for c in cols if c in strings}
    groups: dict[tuple[Any, ...], int] = {}  # (source, model, kh, kw) codes -> group number
    members: list[list[np.ndarray]] = []  # per group: its rows, file after file
    for start, m in zip(starts, metas):  # files, not kernels
        fam = codes["family"].of(m.column("family"))
        ok = m.column("classified").to_numpy() & np.isin(
            fam, codes["family"].wanted(FIT_COLUMNS_USED)
        )
        at = np.flatnonzero(ok)
        key = [codes[c].of(m.column(c))[at] if c in codes else m.column(c).to_numpy()[at]
               for c in _KEYS if c in m.column_names]  # fmt: skip
        if all(c.min() == c.max() for c in key if len(c)):  # one group (a file: one source)
            local = np.zeros(len(at), np.int64)
        else:  # numbered in order of first appearance
            local = _group_codes(key)
        first = np.unique(local, return_index=True)[1]
        for g, i in enumerate(first):  # the file's groups, in order of first appearance
            k = groups.setdefault(tuple(int(c[i]) for c in key), len(groups))
            if k == len(members):
                members.append([])
            members[k].append(start + at[local == g])
    rows = _sample_groups(
        [np.concatenate(m) for m in members],
        [np.array([k[j] for k in groups], np.int64) for j in (-2, -1)],
        max_kernels, seed, max_per_size,
    )  # fmt: skip
    wanted = {*_KEYS, "family", "classified", "orientation", "weights",
              *(c for cols in FIT_COLUMNS_USED.values() for c in cols),
              *(c for cols in ELONGATION_COLUMNS.values() for c in cols)}  # fmt: skip
    if "weights" not in names:  # the table references the run's bank (the default layout)
        wanted |= set(BANK_REF_COLUMNS)
    taken = [c for c in names if c in wanted]
    parts = []
    for i in np.unique(np.searchsorted(starts, rows, side="right") - 1):  # files holding rows
        local = rows[(rows >= starts[i]) & (rows < starts[i + 1])] - starts[i]
        t = _read_columns(files[i], taken, strings).take(pa.array(local))
        parts.append(pa.table([c.cast(pa.string()) if pa.types.is_dictionary(c.type) else c
                               for c in t.columns], names=t.column_names))  # fmt: skip
    df = (
        pa.concat_tables(parts).to_pandas()
        if parts
        else pa.table(
            {c: pa.array([], type=dataset.schema.field(c).type) for c in taken}
        ).to_pandas()
    )
    if not weights:
        return df.assign(_row=rows)
    if "weights" not in df.columns:
        w = np.empty(len(df), dtype=object)
        for _, idx in df.groupby(["kh", "kw"], sort=False).indices.items():  # sizes
            k = kernel_weights(path, df.iloc[idx])
            w[idx] = list(k.reshape(len(idx), -1))
        df = df.drop(columns=list(BANK_REF_COLUMNS)).assign(weights=w)
    return _check(df)


def _read_columns(path: str, columns: list[str], strings: list[str]) -> pa.Table:
    """``columns`` of one Parquet file, the ``strings`` ones as dictionaries; the file is
    closed afterwards (an analysis may have thousands of part files)."""
    import pyarrow.parquet as pq

    with pq.ParquetFile(path, read_dictionary=strings) as f:
        return f.read(columns=columns)


class _FileCodes:
    """Integer codes of a string column read file by file as dictionaries: one code per
    distinct value over all files (nulls get their own), looked up per file's dictionary
    (its distinct values), never per row."""

    def __init__(self) -> None:
        self.code: dict[Any, int] = {}

    def of(self, col: pa.ChunkedArray) -> np.ndarray:
        out = []
        for chunk in col.chunks:
            if not pa.types.is_dictionary(chunk.type):
                chunk = chunk.dictionary_encode()
            values = [*chunk.dictionary.to_pylist(), None]
            lut = np.array([self.code.setdefault(v, len(self.code)) for v in values], np.int64)
            out.append(lut[chunk.indices.fill_null(len(values) - 1).to_numpy()])
        return np.concatenate(out) if out else np.zeros(0, np.int64)

    def wanted(self, values: Any) -> np.ndarray:
        """The codes of ``values`` (those seen so far)."""
        return np.array([self.code[v] for v in values if v in self.code], np.int64)


def sample_kernels(
    kernels: str | os.PathLike[str],
    *,
    max_kernels: int | None = 20_000,
    seed: int = 0,
    max_per_size: int | None = None,
) -> pd.DataFrame:
    """The rows :func:`kernel_statistics` samples from a kernels file (same arguments), with
    the columns it reads but not the weights; ``_row`` is each row's number in the table.
    Add a ``weights`` column (flattened kernels) and pass the frame to
    :func:`kernel_statistics` or :func:`compare`: the same statistics as from the file."""
    return _read(kernels, max_kernels, seed, max_per_size, weights=False)


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_dictionary(t)


def _check(df: pd.DataFrame) -> pd.DataFrame:
    need = ["model", "kh", "kw", "family", "classified", "weights"]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise KernelAtlasError(
            f"the kernels table lacks column(s) {missing}: pass kernels.parquet of "
            "`kernelatlas analyze` (weights included) or a DataFrame with those columns"
        )
    if "source" not in df.columns:
        df = df.assign(source=df["model"])
    return df


def _weights(col: pd.Series, kh: int, kw: int) -> np.ndarray:
    if len(col) == 0:
        return np.zeros((0, kh, kw), np.float32)
    arr = np.stack([np.asarray(w, dtype=np.float32).reshape(-1) for w in col.to_numpy()])
    if arr.shape[1] != kh * kw:
        raise KernelAtlasError(f"weights of {arr.shape[1]} values in rows marked {kh}x{kw}")
    return arr.reshape(-1, kh, kw)


def _quotas(counts: np.ndarray, max_kernels: int | None, max_per_size: int | None) -> np.ndarray:
    """Kernels sampled from each group of one kernel size: all of a group's, at most
    ``max_kernels``, and together at most ``max_per_size``: every group gets the same quota (or
    all it has), the largest one within ``max_per_size`` (None: no bound)."""
    n = np.asarray(counts, dtype=np.int64)
    cap = n if max_kernels is None else np.minimum(n, int(max_kernels))
    if max_per_size is None or cap.sum() <= max_per_size:
        return cap
    lo, hi = 0, int(cap.max())  # the largest q with sum(min(cap, q)) <= max_per_size
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if np.minimum(cap, mid).sum() <= max_per_size:
            lo = mid
        else:
            hi = mid - 1
    return np.minimum(cap, lo)


def _group_codes(key: list[np.ndarray]) -> np.ndarray:
    """Group number of every row (rows sharing all of ``key``), numbered in order of first
    appearance; hashing integer codes, never tuples of objects."""
    code = np.zeros(len(key[0]), np.int64)
    for col in key:
        c, values = pd.factorize(col, use_na_sentinel=False)
        code = pd.factorize(code * len(values) + c)[0]  # stays below (groups * values)
    return code.astype(np.int64)


def _sample_rows(
    key: list[np.ndarray],
    max_kernels: int | None,
    seed: int,
    max_per_size: int | None,
    *,
    size: list[np.ndarray],
) -> np.ndarray:
    """Positions (sorted) of a seeded uniform sample of rows of every group (the rows
    sharing all of ``key``), as many as :func:`_quotas` gives per kernel size (``size``:
    the ``kh, kw`` columns). Groups are visited in order of first appearance."""
    n = len(key[0]) if key else 0
    if n == 0 or (max_kernels is None and max_per_size is None):
        return np.arange(n)
    group = _group_codes(key)
    order = np.argsort(group, kind="stable")
    counts = np.bincount(group)
    starts = np.concatenate([[0], np.cumsum(counts)])
    members = [order[starts[g] : starts[g + 1]] for g in range(len(counts))]  # groups
    return _sample_groups(
        members, [s[order[starts[:-1]]] for s in size], max_kernels, seed, max_per_size
    )


def _sample_groups(
    members: list[np.ndarray],
    size: list[np.ndarray],
    max_kernels: int | None,
    seed: int,
    max_per_size: int | None,
) -> np.ndarray:
    """:func:`_sample_rows` of groups given as their rows (``members``, each in row order,
    groups in order of first appearance) and the ``kh, kw`` of each group (``size``)."""
    if not members:
        return np.zeros(0, np.int64)
    if max_kernels is None and max_per_size is None:
        return np.sort(np.concatenate(members))
    counts = np.array([len(m) for m in members], np.int64)
    sz = _group_codes(size)
    quota = np.zeros(len(counts), np.int64)
    for s in np.unique(sz):  # kernel sizes, not kernels
        quota[sz == s] = _quotas(counts[sz == s], max_kernels, max_per_size)
    rng = np.random.default_rng(seed)
    keep = []
    for g, idx in enumerate(members):  # groups, not kernels
        keep.append(idx if quota[g] >= len(idx) else np.sort(rng.choice(idx, int(quota[g]), replace=False)))  # fmt: skip
    return np.sort(np.concatenate(keep))


def _sample(
    df: pd.DataFrame, max_kernels: int | None, seed: int, max_per_size: int | None = None
) -> pd.DataFrame:
    """At most ``max_kernels`` rows per (source, model, size), and at most ``max_per_size`` per
    size (:func:`_quotas`): a seeded uniform sample."""
    key = [df[c].to_numpy() for c in _KEYS]
    return df.iloc[_sample_rows(key, max_kernels, seed, max_per_size, size=key[-2:])]


def _col(df: pd.DataFrame, name: str) -> np.ndarray:
    return df[name].to_numpy(dtype=np.float64) if name in df.columns else np.full(len(df), np.nan)


def _r2_ok(df: pd.DataFrame, fam: str) -> np.ndarray:
    r2 = _col(df, f"fit_r2_{fam}")
    return np.isfinite(r2) & (r2 >= _R2_OK[0]) & (r2 <= _R2_OK[1])


# --------------------------------------------------------------------------- per kernel
def _size_statistics(
    df: pd.DataFrame, kh: int, kw: int, device: str | None, seed: int, fits: bool
) -> pd.DataFrame:
    """The per-kernel statistics of classified pattern kernels of one size (``df`` rows)."""
    df = df.reset_index(drop=True)
    fam = df["family"].to_numpy(object)
    w = _weights(df["weights"], kh, kw)
    # rows of each family without that family's fit (none in the table, or NaN there)
    need = {f: (fam == f) & ~np.isfinite(_col(df, f"fit_r2_{f}")) for f in FIT_COLUMNS_USED}
    need = {f: m for f, m in need.items() if m.any()}
    if fits and need and min(kh, kw) >= 3:
        from ..fit import fit_kernels

        # Many kernels: each is fitted with its own family's model only (the only one read
        # here). Few: one call for all (each call pays a fixed set-up cost).
        df = df.copy()
        rows_all = np.flatnonzero(np.logical_or.reduce(list(need.values())))
        groups = ([((f,), np.flatnonzero(m)) for f, m in need.items()] if rows_all.size > _SPLIT_FITS
                  else [(tuple(need), rows_all)])  # fmt: skip
        for fams, rows in groups:
            res = fit_kernels(w[rows], families=fams, device=device, seed=seed)
            for g in fams:
                own = fam[rows] == g  # write each row's own family's columns only
                for c in FIT_COLUMNS_USED[g]:
                    if c not in df.columns:
                        df[c] = np.nan
                    df.loc[rows[own], c] = res[c].to_numpy(dtype=np.float64)[own]
    out = pd.DataFrame({k: df[k].to_numpy() for k in _KEYS})
    out["family"] = fam
    n = len(df)
    is_c, is_1, is_2 = (fam == CENTER), (fam == FIRST_DERIVATIVE), (fam == SECOND_DERIVATIVE)

    ok_c = is_c & _r2_ok(df, CENTER)
    s1, s2 = _col(df, "fit_sigma_center"), _col(df, "fit_sigma2_center")
    with np.errstate(invalid="ignore", divide="ignore"):
        out["surround_ratio"] = np.where(ok_c, s2 / s1, np.nan)
    out["surround_weight"] = np.where(ok_c, _col(df, "fit_surround_weight_center"), np.nan)
    opp = np.full(n, np.nan)
    if is_c.any():
        opp[is_c] = S.opponent_ratio(
            w[is_c],
            np.where(ok_c, s1, np.nan)[is_c],
            np.where(ok_c, _col(df, "fit_x0_center"), np.nan)[is_c],
            np.where(ok_c, _col(df, "fit_y0_center"), np.nan)[is_c],
        )
    out["opponent_ratio"] = opp

    oriented = is_1 | is_2
    phase = np.full(n, np.nan)
    if oriented.any():
        phase[oriented] = S.symmetry_phase(w[oriented])
    out["phase"] = phase

    # orientation and centre of the kernel's own family fit; crosses have no bar axis
    ori = np.full(n, np.nan)
    x0 = np.full(n, np.nan)
    y0 = np.full(n, np.nan)
    for f, sel in ((FIRST_DERIVATIVE, is_1), (SECOND_DERIVATIVE, is_2)):
        unfitted = sel & ~np.isfinite(_col(df, f"fit_r2_{f}"))  # fits=False: the atlas's
        ori[unfitted] = _col(df, "orientation")[unfitted]  # orientation, about the centre
        good = sel & _r2_ok(df, f)
        if f == SECOND_DERIVATIVE:
            good &= _col(df, "fit_cross_share_second_derivative") < 0.5
        ori[good] = _col(df, f"fit_orientation_{f}")[good]
        x0[good] = _col(df, f"fit_x0_{f}")[good]
        y0[good] = _col(df, f"fit_y0_{f}")[good]
    out["orientation"] = S.axis_orientation(ori)

    elong = np.full(n, np.nan)
    at_edge = np.zeros(n, dtype=bool)
    fitted = np.zeros(n, dtype=bool)
    for f in (FIRST_DERIVATIVE, SECOND_DERIVATIVE):  # the fits' own sigmas where they hold
        su, sv = (_col(df, c) for c in ELONGATION_COLUMNS[f])
        sel = (fam == f) & np.isfinite(ori) & _r2_ok(df, f) & (su > 0) & np.isfinite(sv)
        elong[sel] = (sv / np.where(sel, su, 1.0))[sel]
        fitted |= sel
    todo = oriented & np.isfinite(ori) & ~fitted
    if todo.any():
        r, e = S.elongation(w[todo], fam[todo], ori[todo], x0[todo], y0[todo])
        elong[todo], at_edge[todo] = r, e
    out["elongation"] = elong
    out["elongation_at_edge"] = at_edge
    return out[list(STAT_COLUMNS)]


def kernel_statistics(
    kernels: pd.DataFrame | str | os.PathLike[str],
    *,
    max_kernels: int | None = 20_000,
    seed: int | None = None,
    device: str | None = None,
    fits: bool = True,
    max_per_size: int | None = None,
) -> pd.DataFrame:
    """Per-kernel dimensionless statistics of the classified kernels of a kernels table.

    Parameters
    ----------
    kernels : DataFrame with ``model, kh, kw, family, classified, weights`` (and ``source``
        and the ``fit_*`` columns where present), or a path to ``kernels.parquet`` or its
        analysis directory.
    max_kernels : at most this many classified kernels per (source, model, size), a seeded
        uniform sample (None: all).
    seed : seed of that sample and of any fit run here (None: the analysis's, for a path
        of one; else 0).
    max_per_size : at most this many per kernel size, all its (source, model) together:
        each gets the same quota (or all it has), the largest that fits (None: no bound).
        The cost of the statistics is then flat in the number of kernels.
    device : torch device for fits computed here (fit columns missing from the table).
    fits : fit the kernels whose fit columns are missing (as ``kernelatlas.fit_kernels``).
        False: no fits run here; without fit columns the surround statistics are NaN and
        orientation and elongation use the atlas's orientation about the kernel centre
        (second-derivative crosses included). Compare like with like: use the same for
        the null (:func:`null_statistics`).

    Returns
    -------
    DataFrame, one row per sampled classified kernel, columns :data:`STAT_COLUMNS`: the
    family and ``surround_ratio, surround_weight, opponent_ratio`` (centre family),
    ``phase, elongation, elongation_at_edge, orientation`` (axis, degrees; oriented
    families); NaN where a statistic does not apply or its fit is unusable
    (R^2 outside [0, 1]).
    """
    seed = _run_settings(kernels, DEFAULT_NULL_FPR, DEFAULT_NULL_SIZE, seed)[2]
    df = _read(kernels, max_kernels, seed, max_per_size)
    parts = []
    for (kh, kw), idx in df.groupby(["kh", "kw"], sort=True).indices.items():
        parts.append(_size_statistics(df.iloc[idx], int(kh), int(kw), device, seed, fits))
    if not parts:
        return pd.DataFrame({c: pd.Series(dtype=object if c in ("source", "model", "family")
                                          else float) for c in STAT_COLUMNS})  # fmt: skip
    return pd.concat(parts, ignore_index=True)


# --------------------------------------------------------------------------- null, init
@lru_cache(maxsize=8)
def _atlas(kh: int, kw: int, null_fpr: float, n_null: int, seed: int):
    """The atlas calibrated on the Gaussian null, as ``analyze`` calibrates it (from the
    user cache when an analysis with the same settings has calibrated it already)."""
    from ..calibration import calibrate

    return calibrate(kh, kw, null_fpr=null_fpr, n_null=n_null, seed=seed).atlas


def label_kernels(
    kernels: np.ndarray,
    *,
    source: str,
    model: str,
    null_fpr: float = DEFAULT_NULL_FPR,
    n_null: int = DEFAULT_NULL_SIZE,
    seed: int = 0,
) -> pd.DataFrame:
    """A kernels table for bare kernels [N, kh, kw]: the atlas's names, calibrated as analyze does.

    Rows carry ``source, model, kh, kw``, the atlas columns and ``weights``; the fits are left
    to :func:`kernel_statistics` (it fits only the classified rows).
    """
    k = np.asarray(kernels, dtype=np.float32)
    if k.ndim != 3:
        raise KernelAtlasError(f"expected kernels [N, kh, kw], got shape {k.shape}")
    n, kh, kw = k.shape
    pred = _atlas(kh, kw, float(null_fpr), int(n_null), int(seed)).predict(k) if n else None
    df = pd.DataFrame({"source": [source] * n, "model": [model] * n, "kh": kh, "kw": kw})
    if pred is not None:
        df = pd.concat([df, pred.reset_index(drop=True)], axis=1)
    else:
        df["family"], df["classified"] = pd.Series(dtype=object), pd.Series(dtype=bool)
    df["weights"] = list(k.reshape(n, -1))
    return df


NULL_SOURCE = "<null>"  # source and model name of the null's rows


def null_table(
    kh: int,
    kw: int,
    *,
    n: int = BIOLOGY_NULL_SIZE,
    null_fpr: float = DEFAULT_NULL_FPR,
    n_null: int = DEFAULT_NULL_SIZE,
    seed: int = 0,
) -> pd.DataFrame:
    """A kernels table of ``n`` iid Gaussian kernels of one size, named by the calibrated atlas.

    The sample is held out from the calibration null (another seed); its rows have source
    and model :data:`NULL_SOURCE`.
    """
    z = gaussian_null(int(n), kh, kw, seed=int(seed) + _NULL_SEED_OFFSET)
    return label_kernels(
        z, source=NULL_SOURCE, model=NULL_SOURCE, null_fpr=null_fpr, n_null=n_null, seed=seed
    )


def null_statistics(
    kh: int,
    kw: int,
    *,
    n: int = BIOLOGY_NULL_SIZE,
    null_fpr: float = DEFAULT_NULL_FPR,
    n_null: int = DEFAULT_NULL_SIZE,
    seed: int = 0,
    device: str | None = None,
    fits: bool = True,
) -> pd.DataFrame:
    """:func:`kernel_statistics` of ``n`` iid Gaussian kernels of one size through the same atlas and fits.

    The sample is held out from the calibration null (another seed); about ``null_fpr`` of
    it is classified, so the null's statistics rest on roughly ``n * null_fpr`` kernels.
    """
    table = null_table(kh, kw, n=n, null_fpr=null_fpr, n_null=n_null, seed=seed)
    return kernel_statistics(table, max_kernels=None, seed=seed, device=device, fits=fits)


def _sizes(stats: pd.DataFrame) -> list[tuple[int, int]]:
    return sorted({(int(a), int(b)) for a, b in zip(stats["kh"], stats["kw"])})


def group_statistics(
    kernels: pd.DataFrame | str | os.PathLike[str] | None,
    *,
    init: pd.DataFrame | None = None,
    null: bool = True,
    sizes: list[tuple[int, int]] | None = None,
    null_fpr: float | None = None,
    n_null: int | None = None,
    n_biology_null: int = BIOLOGY_NULL_SIZE,
    seed: int | None = None,
    max_kernels: int | None = 20_000,
    device: str | None = None,
    fits: bool = True,
    max_per_size: int | None = None,
) -> dict[str, pd.DataFrame]:
    """Per-kernel statistics of each group: ``kernels``, ``null`` (one sample per kernel size)
    and ``init`` (where given); the arguments are :func:`compare`'s.

    The null's statistics depend only on the settings: they come from the user cache when
    computed before (:func:`_null_group`). ``kernels`` None: only the null (for ``sizes``)
    and init groups.
    """
    null_fpr, n_null, seed = _run_settings(kernels, null_fpr, n_null, seed)
    out: dict[str, pd.DataFrame] = {}
    if kernels is not None:
        out["kernels"] = kernel_statistics(
            kernels, max_kernels=max_kernels, seed=seed, device=device, fits=fits,
            max_per_size=max_per_size,
        )  # fmt: skip
    if sizes is None:
        sizes = _sizes(out["kernels"]) if "kernels" in out else []
    sizes = [(kh, kw) for kh, kw in sizes if min(kh, kw) >= 3]  # the atlas's sizes only
    kw_stats = {"max_kernels": max_kernels, "seed": seed, "device": device, "fits": fits,
                "max_per_size": max_per_size}  # fmt: skip
    if null:
        parts = [
            _null_group(kh, kw, n=n_biology_null, null_fpr=null_fpr, n_null=n_null, **kw_stats)
            for kh, kw in sizes
        ]
        if parts:
            out["null"] = pd.concat(parts, ignore_index=True)
    if init is not None:
        out["init"] = kernel_statistics(_check(init), **kw_stats).reset_index(drop=True)
    return out


#: Modules (inside the package) that the cached null statistics depend on beyond the atlas.
_BIOLOGY_CODE = ("fit.py", "calibration.py", "biology/comparison.py", "biology/statistics.py")


def _null_group(
    kh: int, kw: int, *, n: int, null_fpr: float, n_null: int, **kw_stats: Any
) -> pd.DataFrame:
    """:func:`kernel_statistics` of the null sample of one size, from the user cache when
    the same code (:func:`kernelatlas.calibration.code_digest` with the fits and these
    statistics) computed it with the same settings (it depends on nothing else: the null
    is drawn, named and fitted from the seed). The cache is a folder of small
    Parquet files (``<cache>/biology``, ``<cache>`` as for the weights and calibrations);
    an entry that does not read back as this table is recomputed and rewritten."""
    import hashlib
    import json
    import uuid

    from .. import __version__
    from ..calibration import code_digest
    from ..harvest.cache import cache_dir
    from ..taxonomy import FAMILIES

    code = code_digest(_BIOLOGY_CODE)
    key = {"format": 1, "kernelatlas_version": __version__, "kh": int(kh), "kw": int(kw),
           "n": int(n), "null_fpr": float(null_fpr), "n_null": int(n_null),
           "families": list(FAMILIES), "code_sha256": code,
           **{k: v for k, v in kw_stats.items()}}  # fmt: skip
    blob = json.dumps(key, sort_keys=True, default=str).encode()
    path = (
        cache_dir() / "biology" / f"null-{kh}x{kw}-{hashlib.sha256(blob).hexdigest()[:24]}.parquet"
    )
    try:
        got = pd.read_parquet(path)
        if list(got.columns) == list(STAT_COLUMNS) and got.attrs.get("key") == json.loads(blob):
            return got
    except (OSError, ValueError, pa.ArrowException):
        pass  # none yet, or unreadable: computed again
    table = null_table(kh, kw, n=n, null_fpr=null_fpr, n_null=n_null, seed=kw_stats["seed"])
    out = kernel_statistics(table, **kw_stats).reset_index(drop=True)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            out.attrs["key"] = json.loads(blob)
            out.to_parquet(tmp, index=False)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
            out.attrs.pop("key", None)
    except OSError:
        pass  # a read-only or full cache costs the computation next time, nothing else
    return out


def _run_settings(
    kernels: object, null_fpr: float | None, n_null: int | None, seed: int | None
) -> tuple[float, int, int]:
    """``null_fpr, n_null, seed`` with each None taken from the analysis that ``kernels``
    is a path of (its ``summary.json`` config: the null and the fresh init are then named
    as its kernels were), else the defaults (``DEFAULT_NULL_FPR``, ``DEFAULT_NULL_SIZE``, 0)."""
    cfg: dict[str, Any] = {}
    if None in (null_fpr, n_null, seed) and isinstance(kernels, (str, os.PathLike)):
        from ..results import kernels_path

        try:
            summary = kernels_path(kernels).parent / "summary.json"
            cfg = dict(json.loads(summary.read_text()).get("config") or {})
        except (KernelAtlasError, OSError, ValueError, AttributeError, TypeError):
            cfg = {}  # a bare kernels table, or no readable summary: the defaults
    return (
        float(cfg.get("null_fpr", DEFAULT_NULL_FPR)) if null_fpr is None else float(null_fpr),
        int(cfg.get("n_null", DEFAULT_NULL_SIZE)) if n_null is None else int(n_null),
        int(cfg.get("seed", 0)) if seed is None else int(seed),
    )


# --------------------------------------------------------------------------- reduce
def _reduce(stat: S.Statistic, frame: pd.DataFrame) -> tuple[float, float, float, int]:
    v = stat.values(frame)
    n = int(v.size)
    if n == 0:
        return np.nan, np.nan, np.nan, 0
    if stat.reduce == "median":
        q25, q50, q75 = np.quantile(v, [0.25, 0.5, 0.75])
        return float(q50), float(q25), float(q75), n
    # A share (0/1 indicators) or an index (mean of +1/-1 signs = 2 * share of +1 - 1): the
    # Wilson interval of the share, mapped onto the index, so it stays inside [0, 1] / [-1, 1]
    # and never has zero width at 0 or 1 (a normal interval did both on small samples).
    lo, hi = wilson_interval(int((v > 0).sum()), n)
    if stat.signed:
        lo, hi = 2.0 * lo - 1.0, 2.0 * hi - 1.0
    return float(v.mean()), float(lo), float(hi), n


def _published(stat: S.Statistic, ref: pd.DataFrame) -> tuple[float, str, str]:
    """The published value, relation and reference ids a statistic is compared with.

    Only a statistic with a numeric relation (``=``, ``<=``) takes a number, and only from
    rows holding a point estimate (``mean``, ``median``, ``share``); a bound or count stays
    in the reference table. Several numbers: their median (each row keeps its own
    species and cell class in the table; ``published_refs`` lists the numeric rows first).
    """
    rows = ref[ref["statistic"].isin(stat.references)]
    usable = rows["value_kind"].isin(_POINT_KINDS) & np.isfinite(rows["value"].to_numpy(float))
    numeric = rows[usable] if stat.relation != "qualitative" else rows.iloc[:0]
    refs = ";".join(dict.fromkeys([*numeric["ref_id"], *rows["ref_id"]]))
    if len(numeric):
        return float(np.median(numeric["value"].to_numpy(float))), stat.relation, refs
    return np.nan, ("qualitative" if len(rows) else ""), refs


def _note(stat: S.Statistic, frame: pd.DataFrame, kh: int, kw: int) -> str:
    notes = []
    fam = frame["family"].to_numpy(object)
    if stat.quantity not in ("family",):
        in_scope = np.isin(fam, stat.scope)
        usable = np.isfinite(frame[stat.quantity].to_numpy(dtype=np.float64)) & in_scope
        dropped = int(in_scope.sum() - usable.sum())
        if dropped:
            notes.append(f"{dropped} kernel(s) without a usable fit or bar axis left out")
    if stat.name == "elongation" and len(frame):
        edge = frame["elongation_at_edge"].to_numpy(dtype=bool)[np.isin(fam, stat.scope)]
        if edge.size and edge.mean() > 0.2:
            notes.append(f"{100 * edge.mean():.0f}% at the sigma grid's edge ({kh}x{kw} support)")
    if stat.name == "surround_ratio" and len(frame):
        r = frame["surround_ratio"].to_numpy(dtype=np.float64)
        s2 = r[np.isfinite(r)]
        if s2.size:
            notes.append(f"support {kh}x{kw}: a surround wider than the kernel is not measurable")
    return "; ".join(notes)


def compare(
    kernels: pd.DataFrame | str | os.PathLike[str],
    *,
    init: pd.DataFrame | None = None,
    null: bool = True,
    null_fpr: float | None = None,
    n_null: int | None = None,
    n_biology_null: int = BIOLOGY_NULL_SIZE,
    seed: int | None = None,
    max_kernels: int | None = 20_000,
    device: str | None = None,
    fits: bool = True,
    statistics: Mapping[str, pd.DataFrame] | None = None,
    max_per_size: int | None = None,
) -> pd.DataFrame:
    """The tidy table behind the biology figures: per model, size and statistic, the
    kernels' value beside the null's, the fresh initialisation's and the published one.

    Parameters
    ----------
    kernels : a kernels table (DataFrame or path to ``kernels.parquet`` / its directory).
    init : a kernels table of freshly initialised kernels whose ``model`` and ``source``
        name the trained model they are the twin of (e.g. from :func:`label_kernels`, or
        :func:`kernelatlas.biology.init_kernels` for registered sources); None: the init
        columns are NaN (``analyze``'s section, :func:`kernelatlas.biology.report.biology_section`,
        builds them).
    null : compute the null columns (iid Gaussian kernels, one sample per kernel size).
    null_fpr, n_null, seed : the atlas calibration of the null and init kernels; ``seed``
        also seeds samples and fits. None: those of the analysis ``kernels`` is a path of
        (its ``summary.json`` config, so the null is named as its kernels were), else
        ``DEFAULT_NULL_FPR``, ``DEFAULT_NULL_SIZE`` and 0.
    n_biology_null : null kernels drawn per size (about ``null_fpr`` of them classified).
    max_kernels : classified kernels per (source, model, size) at most (seeded sample).
    max_per_size : classified kernels per kernel size at most, its models together (each
        the same quota; see :func:`kernel_statistics`); None: no bound.
    device : torch device for fits computed here.
    fits : run the parametric fits where the table has none, for the null and init too
        (see :func:`kernel_statistics`).
    statistics : precomputed per-kernel tables ``{"kernels": ..., "null": ..., "init": ...}``
        (from :func:`group_statistics`) to reuse; missing groups are computed.

    Returns
    -------
    DataFrame, columns :data:`COMPARE_COLUMNS`, one row per (source, model, kh, kw,
    statistic). ``<group>_value`` is the median (``lo``/``hi``: quartiles) or the mean of an
    indicator or sign (``lo``/``hi``: Wilson 95% interval); ``<group>_n`` the kernels behind it.
    ``published_value`` is set where one published number maps onto the statistic
    (``published_relation``: ``=`` or ``<=`` an upper bound); ``published_refs`` lists the
    reference rows (:func:`kernelatlas.biology.reference`) it is compared with.

    Examples
    --------
    >>> from kernelatlas.biology import compare
    >>> table = compare("report/kernels.parquet")  # doctest: +SKIP
    >>> table.query("statistic == 'cardinal_bias'")[["model", "kh", "kernels_value", "null_value"]]  # doctest: +SKIP
    """
    null_fpr, n_null, seed = _run_settings(kernels, null_fpr, n_null, seed)
    stats = dict(statistics or {})
    if (
        "kernels" not in stats
        or (null and "null" not in stats)
        or (init is not None and "init" not in stats)
    ):
        todo = group_statistics(
            None if "kernels" in stats else kernels,
            init=None if "init" in stats else init,
            null=null and "null" not in stats,
            sizes=None if "kernels" not in stats else _sizes(stats["kernels"]),
            null_fpr=null_fpr, n_null=n_null, n_biology_null=n_biology_null, seed=seed,
            max_kernels=max_kernels, device=device, fits=fits, max_per_size=max_per_size,
        )  # fmt: skip
        stats = {**todo, **stats}
    k = stats["kernels"]
    ref = reference()
    keys = k[_KEYS].drop_duplicates().sort_values(_KEYS).itertuples(index=False)
    rows: list[dict[str, Any]] = []
    for key in keys:
        src, model, kh, kw = key
        frames = {
            "kernels": k[
                (k["source"] == src) & (k["model"] == model) & (k["kh"] == kh) & (k["kw"] == kw)
            ],
        }
        if "null" in stats:
            nf = stats["null"]
            frames["null"] = nf[(nf["kh"] == kh) & (nf["kw"] == kw)]
        if "init" in stats:
            f = stats["init"]
            frames["init"] = f[(f["model"] == model) & (f["kh"] == kh) & (f["kw"] == kw)]
        for stat in S.STATISTICS.values():
            row: dict[str, Any] = {"source": src, "model": model, "kh": int(kh), "kw": int(kw),
                                   "statistic": stat.name, "label": stat.label}  # fmt: skip
            for g in GROUPS:
                v, lo, hi, n = _reduce(stat, frames[g]) if g in frames else (np.nan,) * 3 + (0,)
                row.update({f"{g}_value": v, f"{g}_lo": lo, f"{g}_hi": hi, f"{g}_n": n})
            row["published_value"], row["published_relation"], row["published_refs"] = _published(
                stat, ref
            )
            row["note"] = _note(stat, frames["kernels"], int(kh), int(kw))
            rows.append(row)
    out = pd.DataFrame(rows, columns=list(COMPARE_COLUMNS))
    for g in GROUPS:
        out[f"{g}_n"] = out[f"{g}_n"].astype(np.int64)
    return out
