"""Reading an analysis: its kernels table, and every kernel's weights through the bank.

``kernels.parquet`` in an analysis folder is a Parquet dataset: a folder of part files
(``part-000000.parquet``...; one per bank partition, in bank order) that pandas, pyarrow,
polars and DuckDB read as one table (``pd.read_parquet("run/kernels.parquet")``,
``duckdb.sql("from 'run/kernels.parquet/*.parquet'")``). Each row references its kernel in
the run's bank instead of copying it: ``bank_file`` (a file of ``run/bank/``) and
``bank_row`` (its row in that file). The weights themselves are in the table only when the
analysis ran with ``with_weights=True`` (``--with-weights``).

:func:`kernel_weights` is the one way to get the weights of analysed kernels, whichever
of the two layouts a run has; the report uses it, and so should any reader.

Examples
--------
>>> from kernelatlas.results import read_kernels, kernel_weights
>>> df = read_kernels("report", columns=["family", "kh", "kw", "bank_file", "bank_row"])  # doctest: +SKIP
>>> w = kernel_weights("report", df[df["kh"] == 3].head(10))  # [10, 3, 3]  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from .errors import KernelAtlasError

__all__ = [
    "KERNELS_NAME",
    "BANK_REF_COLUMNS",
    "kernels_path",
    "kernels_dataset",
    "read_kernels",
    "kernel_weights",
]

#: Name of the kernels table in an analysis folder.
KERNELS_NAME = "kernels.parquet"
#: Columns of kernels.parquet that reference a kernel's row in the run's bank.
BANK_REF_COLUMNS: tuple[str, str] = ("bank_file", "bank_row")


def kernels_path(run: str | os.PathLike[str]) -> Path:
    """The kernels table of ``run`` (an analysis folder, or its kernels.parquet itself)."""
    p = Path(run).expanduser()
    if p.name != KERNELS_NAME and (p / KERNELS_NAME).exists():
        p = p / KERNELS_NAME
    if not p.exists():
        raise KernelAtlasError(
            f"{p}: no kernels table; pass a folder written by `kernelatlas analyze`"
        )
    return p


def kernels_dataset(run: str | os.PathLike[str]) -> ds.Dataset:
    """The kernels table of ``run`` as a :class:`pyarrow.dataset.Dataset` (part files in order).

    Refuses (one :class:`KernelAtlasError`) anything that is not an analysis's table: a
    kernel bank (its rows have no atlas names), other files, other Parquet data.
    """
    path = kernels_path(run)
    try:
        dataset = ds.dataset(path, format="parquet")
    except (OSError, pa.ArrowInvalid):
        raise KernelAtlasError(
            f"{path} is not an analysis's kernels table (not Parquet data): pass a folder "
            "written by `kernelatlas analyze`"
        ) from None
    if "family" not in dataset.schema.names:
        what = "a kernel bank" if "weights" in dataset.schema.names else "Parquet data"
        raise KernelAtlasError(
            f"{path} holds {what}, not an analysis's kernels table (no atlas names): pass a "
            "folder written by `kernelatlas analyze`, or analyze this one first "
            "(`kernelatlas analyze BANK --out DIR`)"
        )
    return dataset


def read_kernels(
    run: str | os.PathLike[str],
    columns: Sequence[str] | None = None,
    filter: ds.Expression | None = None,
) -> pd.DataFrame:
    """Rows of the kernels table of ``run`` (``columns``; ``filter``: a dataset expression)."""
    table = kernels_dataset(run).to_table(
        columns=None if columns is None else list(columns), filter=filter
    )
    return table.to_pandas()


def _sizes(kh: np.ndarray, kw: np.ndarray) -> tuple[int, int]:
    pairs = set(zip(np.asarray(kh).tolist(), np.asarray(kw).tolist()))
    if len(pairs) != 1:
        raise KernelAtlasError(
            f"kernel_weights takes rows of one kernel size, got {sorted(pairs) or 'none'}: "
            "select one size (kh, kw) first"
        )
    (kh0, kw0) = pairs.pop()
    return int(kh0), int(kw0)


def _columns(rows: Any) -> dict[str, Any]:
    if isinstance(rows, pd.DataFrame):
        return {c: rows[c] for c in rows.columns}
    if isinstance(rows, pa.Table | pa.RecordBatch):
        return {c: rows.column(c) for c in rows.column_names}
    raise TypeError


def _to_numpy(col: Any) -> np.ndarray:
    if isinstance(col, pd.Series):
        return col.to_numpy()
    return col.to_numpy(zero_copy_only=False) if hasattr(col, "to_numpy") else np.asarray(col)


def _from_bank(bank_dir: Path, files: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Weights of (bank file, row) pairs, in the given order: each needed row group of each
    file is read once (its ``kh, kw, weights`` columns)."""
    from .bank import weights_array

    out: np.ndarray | None = None
    size: tuple[int, int] | None = None
    for name in pd.unique(files):
        if not isinstance(name, str) or "/" in name or name.startswith("."):
            raise KernelAtlasError(f"bank_file {name!r} is not a file of the run's bank")
        sel = np.flatnonzero(files == name)
        path = bank_dir / name
        try:
            pf = pq.ParquetFile(path)
        except (OSError, pa.ArrowInvalid) as exc:
            raise KernelAtlasError(
                f"{path}: cannot read the bank file these kernels reference ({exc}); the "
                "run's bank/ folder must stay beside kernels.parquet"
            ) from None
        meta = pf.metadata
        starts = np.cumsum([0] + [meta.row_group(i).num_rows for i in range(meta.num_row_groups)])
        want = rows[sel].astype(np.int64)
        if len(want) and (want.min() < 0 or want.max() >= starts[-1]):
            raise KernelAtlasError(
                f"{path}: bank_row out of range; the bank changed since the analysis"
            )
        group = np.searchsorted(starts, want, side="right") - 1
        for g in np.unique(group):
            at = np.flatnonzero(group == g)
            t = pf.read_row_group(int(g), columns=["kh", "kw", "weights"])
            t = t.take(pa.array(want[at] - starts[g]))
            s = _sizes(t.column("kh").to_numpy(), t.column("kw").to_numpy())
            if size is not None and s != size:
                _sizes(np.array([size[0], s[0]]), np.array([size[1], s[1]]))
            size = s
            if out is None:
                out = np.empty((len(files), *s), np.float32)
            out[sel[at]] = weights_array(t.column("weights"), *s)
    return out if out is not None else np.zeros((0, 0, 0), np.float32)


def kernel_weights(run: str | os.PathLike[str], rows: Any) -> np.ndarray:
    """The weights ``[N, kh, kw]`` (float32) of analysed kernels, in the order of ``rows``.

    Parameters
    ----------
    run : the analysis folder (or its kernels.parquet).
    rows : row numbers of the kernels table (ints), or rows of it (a DataFrame, Arrow table
        or record batch holding ``bank_file, bank_row``, or ``weights, kh, kw``). All rows
        of one kernel size.

    Reads only the bank row groups that hold the rows (or the table's own ``weights``
    column when the analysis kept one).
    """
    from .bank import weights_array

    path = kernels_path(run)
    try:
        cols = _columns(rows)
    except TypeError:
        idx = np.asarray(rows, dtype=np.int64).reshape(-1)
        dataset = kernels_dataset(path)
        names = dataset.schema.names
        wanted = ["kh", "kw", *(["weights"] if "weights" in names else BANK_REF_COLUMNS)]
        if len(idx) and (idx.min() < 0 or idx.max() >= dataset.count_rows()):
            raise KernelAtlasError(f"{path}: row numbers out of range") from None
        cols = _columns(dataset.take(pa.array(idx), columns=wanted))
    if "weights" in cols and "kh" in cols and "kw" in cols:
        n = len(cols["weights"])
        if n == 0:
            return np.zeros((0, 0, 0), np.float32)
        return weights_array(cols["weights"], *_sizes(_to_numpy(cols["kh"]), _to_numpy(cols["kw"])))
    if not all(c in cols for c in BANK_REF_COLUMNS):
        raise KernelAtlasError(
            "kernel_weights needs rows with bank_file and bank_row (or weights, kh and kw): "
            "select those columns of kernels.parquet"
        )
    files = _to_numpy(cols["bank_file"]).astype(object)
    return _from_bank(path.parent / "bank", files, _to_numpy(cols["bank_row"]))
