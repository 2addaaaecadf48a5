"""KernelBank: a Parquet dataset with one row per single-channel depthwise kernel.

A bank is a directory. Each harvested source is one Parquet file in it, written to a
hidden temporary name and renamed into place, so an interrupted harvest never leaves a
partial file visible and a re-run simply harvests the sources that are not there yet.
pandas, polars and DuckDB read the directory directly (``pd.read_parquet(path)``).

The directory may be any fsspec URL (``s3://bucket/bank``, ``gs://...``, ``memory://``
for tests; install ``kernelatlas[dask]`` plus ``s3fs``/``gcsfs``), so the workers of a
cluster share one bank. On an object store a source file is written with a single put,
which is atomic (the object appears complete or not at all).

Example
-------
>>> from kernelatlas.bank import KernelBank
>>> bank = KernelBank("bank")                  # doctest: +SKIP
>>> bank.add(harvest("efficientnet_lite0"))    # doctest: +SKIP
>>> bank.kernels(5, 5).shape                   # doctest: +SKIP
(6336, 5, 5)
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from . import __version__
from .atomic import read_marker, write_marker
from .errors import KernelAtlasError
from .sizes import MAX_SIDE

__all__ = [
    "KernelBank",
    "BANK_COLUMNS",
    "BANK_SCHEMA",
    "STORAGE_SCHEMA",
    "weights_array",
    "weight_lists",
    "open_parquet",
    "check_column_range",
    "FINGERPRINT_KEY",
]

#: Columns of a kernel bank, in their fixed order.
BANK_COLUMNS: tuple[str, ...] = (
    "source",
    "model",
    "format",
    "layer",
    "layer_index",
    "depth",
    "channel",
    "kh",
    "kw",
    "stride",
    "dilation",
    "bn_folded",
    "dtype",
    "nonfinite",
    "weights",
)

#: Arrow schema of a kernel bank. ``depth`` = layer_index / (number of kept depthwise
#: layers - 1) (0 for a single layer); ``stride``/``dilation`` are the larger spatial value
#: (0 = unknown); ``dtype`` is the stored dtype; ``nonfinite`` flags NaN/Inf weights;
#: ``weights`` is the kernel, float32, row-major ``kh*kw``.
BANK_SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("model", pa.string()),
        ("format", pa.string()),
        ("layer", pa.string()),
        ("layer_index", pa.int32()),
        ("depth", pa.float32()),
        ("channel", pa.int32()),
        ("kh", pa.int16()),
        ("kw", pa.int16()),
        ("stride", pa.int16()),
        ("dilation", pa.int16()),
        ("bn_folded", pa.bool_()),
        ("dtype", pa.string()),
        ("nonfinite", pa.bool_()),
        ("weights", pa.list_(pa.float32())),
    ]
)
assert tuple(BANK_SCHEMA.names) == BANK_COLUMNS
#: How a bank file stores ``weights``: each kernel's float32 values as one binary value
#: (Parquet decodes a ``list<float>`` value by value from its levels: ~8x slower to write
#: and ~7x slower to read, docs/scale.md). Readers see :data:`BANK_SCHEMA`'s list column,
#: a view of the same buffer; files written before (``list<float>``) read as they are.
STORED_WEIGHTS = pa.large_binary()
STORAGE_SCHEMA = BANK_SCHEMA.set(
    BANK_SCHEMA.get_field_index("weights"), pa.field("weights", STORED_WEIGHTS)
)

_STRING_COLUMNS = ["source", "model", "format", "layer", "dtype"]
_PACKED = [c for c in BANK_COLUMNS if c != "weights"]
#: How bank files (and kernels.parquet parts with weights) are written: strings
#: dictionary-encoded; zstd (level 1) for every column but the weights, which are stored
#: uncompressed: trained float32 weights shrink by ~10% at most, and skipping zstd makes a
#: bank file ~1.4x faster to write and ~1.5x faster to read (docs/scale.md).
PARQUET_OPTIONS: dict[str, Any] = {
    "compression": {"weights": "none", **dict.fromkeys(_PACKED, "zstd")},
    "compression_level": dict.fromkeys(_PACKED, 1),
    "use_dictionary": _STRING_COLUMNS,
}
_ROW_GROUP = 1 << 16
_META_VERSION = b"kernelatlas_version"
_META_SOURCE = b"kernelatlas_source"
#: Schema-metadata key of a harvested table / bank file: JSON ``{source: fingerprint}``, where
#: a fingerprint records what the kernels were read from (``size``, ``mtime_ns`` and
#: ``sha256`` of a file; the registry ``sha256`` of a registered source...).
FINGERPRINT_KEY = b"kernelatlas_fingerprint"
#: Schema-metadata key of a bank file: its kernels per layer (``_LAYER_KEYS`` values and a
#: count per row, JSON), so the bank's counts and shapes read footers, not rows.
_META_LAYERS = b"kernelatlas_layer_counts"
_LAYER_KEYS = ["source", "model", "kh", "kw", "layer_index"]


def check_column_range(column: str, values: Sequence[int], where: str) -> None:
    """Refuse integer ``values`` that the bank's ``column`` cannot hold (one line, naming
    ``where`` they come from), before anything is cast or written."""
    arrow_type = BANK_SCHEMA.field(column).type
    info = np.iinfo(arrow_type.to_pandas_dtype())
    bad = [int(v) for v in values if not info.min <= int(v) <= info.max]
    if bad:
        raise KernelAtlasError(
            f"{where}: {column} {bad[0]} is outside what a kernel bank stores "
            f"({info.min}..{info.max}); this is not a depthwise kernel kernelatlas can analyse"
        )


# fsspec protocols where one put is atomic and a rename would be a copy
_OBJECT_STORES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "memory"})


def _is_url(path: Any) -> bool:
    return isinstance(path, str) and "://" in path and not path.startswith("file://")


def _url_fs(url: str, storage_options: dict[str, Any] | None = None) -> tuple[Any, str]:
    """(fsspec filesystem, path inside it) of a URL; a clear error when its extra is missing."""
    try:
        import fsspec
    except ImportError:
        raise KernelAtlasError(
            f"{url}: a bank on a URL needs fsspec: pip install 'kernelatlas[dask]'"
        ) from None
    try:
        return fsspec.core.url_to_fs(url, **(storage_options or {}))
    except ImportError as exc:
        raise KernelAtlasError(
            f"{url}: this protocol needs {exc.name or 'its fsspec backend'} "
            "(pip install s3fs / gcsfs / adlfs)"
        ) from None
    except ValueError as exc:
        raise KernelAtlasError(f"{url}: not a usable fsspec URL ({exc})") from None


def _arrow_fs(fs: Any) -> pa.fs.FileSystem:
    import pyarrow.fs as pafs

    return pafs.PyFileSystem(pafs.FSSpecHandler(fs))


def open_parquet(
    path: str | os.PathLike[str], storage_options: dict[str, Any] | None = None
) -> pq.ParquetFile:
    """A :class:`pyarrow.parquet.ParquetFile` for a local path or any fsspec URL (its row
    groups' declared sizes checked: :func:`check_row_groups`)."""
    if _is_url(path):
        fs, inner = _url_fs(str(path), storage_options)
        return check_row_groups(pq.ParquetFile(inner, filesystem=_arrow_fs(fs)), path)
    return check_row_groups(pq.ParquetFile(str(path).removeprefix("file://")), path)


#: The most one bank row may hold uncompressed: the largest float32 kernel
#: (:data:`~kernelatlas.sizes.MAX_SIDE` squared taps) and 64 KiB of names (source, layer...);
#: a row group declaring more per row is refused before it is read.
MAX_ROW_BYTES = 4 * MAX_SIDE**2 + 64 * 1024


def check_row_groups(pf: pq.ParquetFile, where: Any) -> pq.ParquetFile:
    """``pf``, once no row group declares more than its rows can hold: values (a list
    column's elements: at most a 128x128 kernel's taps a row) and uncompressed bytes
    (:data:`MAX_ROW_BYTES` a row, + 1 MiB). A 5 kB file whose run-length-encoded pages
    decode to GBs of zeros (a decompression bomb in a bank from elsewhere) is one line,
    not gigabytes allocated or an OOM kill."""
    meta = pf.metadata
    for i in range(meta.num_row_groups):
        rg = meta.row_group(i)
        values = max((rg.column(j).num_values for j in range(rg.num_columns)), default=0)
        if (
            values > rg.num_rows * MAX_SIDE**2
            or rg.total_byte_size > rg.num_rows * MAX_ROW_BYTES + 2**20
        ):
            raise KernelAtlasError(
                f"{where}: row group {i} declares {values:,} values ({rg.total_byte_size:,} "
                f"bytes) for {rg.num_rows:,} kernels, more than any kernel bank holds; not a "
                "bank file kernelatlas wrote: harvest the source again"
            )
    return pf


def _list_to_pandas(arrow_type: pa.DataType) -> Any:
    # list columns stay Arrow-backed in pandas (no Python object per kernel)
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        return pd.ArrowDtype(arrow_type)
    return None


def _is_stored(arrow_type: pa.DataType) -> bool:
    return pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type)


def _chunks(column: pa.Array | pa.ChunkedArray) -> list[pa.Array]:
    return list(column.chunks) if isinstance(column, pa.ChunkedArray) else [column]


def _byte_offsets(chunk: pa.Array) -> np.ndarray:
    """Offsets (int64, relative to the chunk's slice) of a binary chunk's values."""
    width = 8 if pa.types.is_large_binary(chunk.type) else 4
    buf = chunk.buffers()[1]
    raw = np.frombuffer(buf, np.int64 if width == 8 else np.int32)
    return raw[chunk.offset : chunk.offset + len(chunk) + 1].astype(np.int64, copy=False)


def stored_weights(column: pa.Array | pa.ChunkedArray) -> pa.ChunkedArray:
    """A ``list<float>`` weights column as a bank file stores it (:data:`STORED_WEIGHTS`):
    the same float32 buffer as bytes, no per-kernel work."""
    out = []
    for chunk in _chunks(column):
        if _is_stored(chunk.type):
            out.append(chunk.cast(STORED_WEIGHTS))
            continue
        offsets = chunk.offsets.to_numpy(zero_copy_only=False).astype(np.int64)
        values = chunk.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0]))
        if values.type != pa.float32():
            values = values.cast(pa.float32())
        if values.null_count:
            raise KernelAtlasError("weights column has missing values: the bank is damaged")
        data = values.buffers()[1]
        start = values.offset * 4
        data = data.slice(start, int(offsets[-1] - offsets[0]) * 4)
        byte_offsets = (offsets - offsets[0]) * 4
        valid = None
        if chunk.null_count:
            valid = pa.array(chunk.is_valid()).buffers()[1]
        out.append(
            pa.LargeBinaryArray.from_buffers(
                STORED_WEIGHTS,
                len(chunk),
                [valid, pa.py_buffer(byte_offsets), data],
                null_count=chunk.null_count,
            )  # fmt: skip
        )
    return pa.chunked_array(out, type=STORED_WEIGHTS)


def weight_lists(column: pa.Array | pa.ChunkedArray) -> pa.ChunkedArray:
    """A bank file's weights column as ``list<float>`` (:data:`BANK_SCHEMA`): a view of the
    stored bytes (only the offsets are computed); a list column comes back as it is."""
    out = []
    for chunk in _chunks(column):
        if not _is_stored(chunk.type):
            out.append(chunk)
            continue
        offsets = _byte_offsets(chunk)
        if ((offsets - offsets[0]) % 4).any():
            raise KernelAtlasError(
                "weights column holds partial float32 values: the bank is damaged"
            )
        counts = (offsets - offsets[0]) // 4
        data = chunk.buffers()[2]
        n_values = int(counts[-1])
        if n_values >= 2**31:  # list offsets are int32: split the chunk
            half = len(chunk) // 2
            out.extend(weight_lists(chunk.slice(0, half)).chunks)
            out.extend(weight_lists(chunk.slice(half)).chunks)
            continue
        floats = pa.Array.from_buffers(
            pa.float32(), n_values, [None, data.slice(int(offsets[0]), n_values * 4)]
        )
        valid = None if not chunk.null_count else pa.array(chunk.is_valid()).buffers()[1]
        out.append(
            pa.ListArray.from_buffers(
                BANK_SCHEMA.field("weights").type,
                len(chunk),
                [valid, pa.py_buffer(counts.astype(np.int32))],
                null_count=chunk.null_count,
                children=[floats],
            )  # fmt: skip
        )
    return pa.chunked_array(out, type=BANK_SCHEMA.field("weights").type)


def _as_lists(table: pa.Table | pa.RecordBatch) -> pa.Table | pa.RecordBatch:
    """``table`` with a stored (binary) weights column shown as :data:`BANK_SCHEMA`'s list."""
    if "weights" not in table.schema.names:
        return table
    at = table.schema.get_field_index("weights")
    if not _is_stored(table.schema.field(at).type):
        return table
    field = BANK_SCHEMA.field("weights")
    lists = weight_lists(table.column(at))
    if isinstance(table, pa.RecordBatch):
        chunks = lists.chunks or [pa.array([], field.type)]
        one = chunks[0] if len(chunks) == 1 else pa.concat_arrays(chunks)
        return table.set_column(at, field, one)
    return table.set_column(at, field, lists)


def weights_array(list_column: Any, kh: int, kw: int, *, writable: bool = True) -> np.ndarray:
    """Kernels ``[N, kh, kw]`` float32 from a ``weights`` column, via its flat buffer.

    Parameters
    ----------
    list_column : pyarrow list or binary (as stored in a bank file) Array / ChunkedArray,
        or a pandas Series (Arrow-backed, as :meth:`KernelBank.read` returns it, or of
        numpy arrays).
    kh, kw : kernel size; every row must hold ``kh*kw`` values.
    writable : False: a one-chunk column may come back as a read-only view of its Arrow
        buffer (no copy; what the analysis's partitions use); True: always an array of
        one's own.
    """
    k = int(kh) * int(kw)
    if isinstance(list_column, pd.Series):
        if isinstance(list_column.dtype, pd.ArrowDtype):
            list_column = pa.chunked_array(list_column.array._pa_array)
        else:
            values = list_column.to_numpy()
            if len(values) == 0:
                return np.zeros((0, kh, kw), np.float32)
            return np.stack(values).astype(np.float32, copy=False).reshape(-1, kh, kw)
    chunks = list_column.chunks if isinstance(list_column, pa.ChunkedArray) else [list_column]
    chunks = [c for c in chunks if len(c)]
    flats = [_flat_weights(c, k, kh, kw) for c in chunks]
    if len(flats) == 1:  # one chunk (a partition's batch): a view of its buffer
        out = flats[0].reshape(-1, kh, kw)
        return out.copy() if writable and not out.flags.writeable else out
    n = sum(len(c) for c in chunks)
    out = np.empty((n, kh, kw), np.float32)
    at = 0
    for flat in flats:
        rows = len(flat) // k
        out[at : at + rows] = flat.reshape(-1, kh, kw)
        at += rows
    return out


def _flat_weights(chunk: pa.Array, k: int, kh: int, kw: int) -> np.ndarray:
    """The float32 values of one list chunk whose every row holds ``k`` values (checked
    on the offsets: no per-row work), without a copy where Arrow's buffer allows."""
    if chunk.null_count:
        raise KernelAtlasError("weights column has missing kernels: the bank is damaged")
    stored = _is_stored(chunk.type)
    offsets = _byte_offsets(chunk) if stored else chunk.offsets.to_numpy(zero_copy_only=False)
    step = 4 * k if stored else k
    if not np.array_equal(np.diff(offsets), np.full(len(chunk), step, offsets.dtype)):
        raise KernelAtlasError(
            f"weights rows are not all {kh}x{kw}={k} values: select one kernel size "
            "(e.g. bank.read(kh=..., kw=...)) before stacking"
        )
    if stored:  # the bytes are the float32 values, row after row
        flat = np.frombuffer(chunk.buffers()[2], np.float32, len(chunk) * k, int(offsets[0]))
        flat.flags.writeable = False  # Arrow's buffer: never written through
        return flat
    values = chunk.values.slice(int(offsets[0]), len(chunk) * k)
    if values.type != pa.float32():
        values = values.cast(pa.float32())
    if values.null_count:
        raise KernelAtlasError("weights column has missing values: the bank is damaged")
    return values.to_numpy(zero_copy_only=False)


def _slug(source: str) -> str:
    digest = hashlib.sha1(source.encode()).hexdigest()[:12]
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", source).strip("._")[-60:] or "source"
    return f"{stem}-{digest}.parquet"


class KernelBank:
    """A directory holding a Parquet dataset of depthwise kernels (columns :data:`BANK_COLUMNS`).

    Parameters
    ----------
    path : directory of the bank (a local path or an fsspec URL such as
        ``s3://bucket/bank``); created by the first :meth:`add`.
    row_group_size : rows per Parquet row group (the unit of work of the analysis engines).
    storage_options : passed to fsspec for a URL (credentials, endpoint...).

    Attributes
    ----------
    path : ``pathlib.Path`` for a local bank, the URL string otherwise.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        row_group_size: int = _ROW_GROUP,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        if int(row_group_size) < 1:
            raise KernelAtlasError(f"row_group_size must be >= 1, got {row_group_size}")
        self.row_group_size = int(row_group_size)
        self.storage_options = storage_options
        self._fs: Any = None
        self._afs: pa.fs.FileSystem | None = None
        if _is_url(path):
            self._fs, root = _url_fs(str(path), storage_options)
            self._root = root.rstrip("/")
            self._afs = _arrow_fs(self._fs)
            self.path: Path | str = str(path).rstrip("/")
            if self._fs.isfile(self._root):
                raise KernelAtlasError(
                    f"{self.path} is a file, not a kernel bank directory: pick another path"
                )
            return
        self.path = Path(str(path).removeprefix("file://"))
        if self.path.exists() and not self.path.is_dir():
            raise KernelAtlasError(
                f"{self.path} is a file, not a kernel bank directory: pick another --out path"
            )

    def __repr__(self) -> str:
        return f"KernelBank({str(self.path)!r})"

    # -- files -------------------------------------------------------------------------
    @property
    def is_remote(self) -> bool:
        """Whether the bank lives on an fsspec URL (not a local directory)."""
        return self._fs is not None

    def _url(self, inner: str) -> str:
        return f"{self.path}/{inner.rsplit('/', 1)[-1]}"

    def _inner(self, f: Path | str) -> str:
        """A file's path as the bank's reader takes it (local path, or path inside the fs)."""
        return f"{self._root}/{str(f).rsplit('/', 1)[-1]}" if self.is_remote else str(f)

    def files(self) -> list[Path] | list[str]:
        """The bank's visible Parquet files (one per source), sorted: paths, or URLs."""
        if self.is_remote:
            self._fs.invalidate_cache(self._root)
            if not self._fs.isdir(self._root):
                return []
            names = sorted(p.rsplit("/", 1)[-1] for p in self._fs.ls(self._root, detail=False))
            return [self._url(n) for n in names if n.endswith(".parquet") and not n.startswith(".")]
        if not self.path.is_dir():
            return []
        files = sorted(p for p in self.path.glob("*.parquet") if not p.name.startswith("."))
        for p in files:  # a FIFO would hang the Parquet reader (past ^C), a device never end
            if not p.is_file():
                raise KernelAtlasError(
                    f"{p} is not a regular file (a FIFO, device, folder or dangling link), "
                    f"not a bank file: move it out of {self.path}"
                )
        return files

    def file_for(self, source: str) -> Path | str:
        """The file that holds (or will hold) ``source`` (a path, or a URL)."""
        if self.is_remote:
            return self._url(_slug(source))
        return self.path / _slug(source)

    def has_source(self, source: str) -> bool:
        """Whether ``source`` (a source key as in the ``source`` column) is in the bank."""
        if self.is_remote:
            inner = self._inner(self.file_for(source))
            self._fs.invalidate_cache(self._root)
            return bool(self._fs.isfile(inner))
        return self.file_for(source).is_file()

    def _read_schema(self, f: Path | str) -> pa.Schema:
        try:
            return pq.read_schema(self._inner(f), filesystem=self._afs)
        except (pa.ArrowInvalid, OSError) as exc:
            raise _unreadable(f, exc) from None

    def parquet_file(self, f: Path | str) -> pq.ParquetFile:
        """A :class:`pyarrow.parquet.ParquetFile` of one of :meth:`files`."""
        return check_row_groups(self._open(f), f)

    def _open(self, f: Path | str) -> pq.ParquetFile:
        try:
            return pq.ParquetFile(self._inner(f), filesystem=self._afs)
        except (pa.ArrowInvalid, OSError) as exc:
            raise _unreadable(f, exc) from None

    def sources(self) -> list[str]:
        """Source keys in the bank, read from each file's metadata."""
        out = []
        for f in self.files():
            meta = self._read_schema(f).metadata or {}
            out.append(meta.get(_META_SOURCE, b"").decode())
        return out

    # -- writing -----------------------------------------------------------------------
    def add(self, data: Any, *, replace: bool = False) -> int:
        """Add a :class:`~kernelatlas.harvest.HarvestResult` or an Arrow table in the bank schema.

        Sources already in the bank are skipped (no duplicate rows), or, with ``replace``,
        written again (their file is replaced atomically). A source's fingerprint (schema
        metadata :data:`FINGERPRINT_KEY`, set by ``HarvestResult.to_table``) is kept in its
        file. Returns the number of rows written.
        """
        table = data.to_table() if hasattr(data, "to_table") else data
        if not isinstance(table, pa.Table):
            raise KernelAtlasError(
                f"KernelBank.add takes a HarvestResult or a pyarrow.Table, got {type(data).__name__}"
            )
        missing = [c for c in BANK_COLUMNS if c not in table.column_names]
        if missing:
            raise KernelAtlasError(
                f"table lacks bank columns {missing}: build it with HarvestResult.to_table()"
            )
        prints = _fingerprints(table.schema)
        table = _as_lists(table.select(list(BANK_COLUMNS)))
        if not table.schema.equals(BANK_SCHEMA):  # HarvestResult.to_table's already is
            table = table.cast(BANK_SCHEMA)
        if table.num_rows == 0:
            return 0
        written = 0
        sources = pc.unique(table.column("source")).to_pylist()
        for source in sources:
            if not replace and self.has_source(source):
                continue
            part = (  # one source (a HarvestResult): no copy of its weights
                table
                if len(sources) == 1
                else table.filter(pc.equal(table.column("source"), source))
            )
            self._write(source, part, prints.get(source))
            written += part.num_rows
        return written

    def keep_only(self, sources: Sequence[str] | dict[str, Any]) -> None:
        """Delete the files of every source not in ``sources`` (a run's own bank: a reused
        one may hold sources the run was not asked about)."""
        wanted = set(sources)
        for f, key in zip(self.files(), self.sources(), strict=True):
            if key not in wanted:
                if self.is_remote:
                    self._fs.rm(self._inner(f))
                else:
                    Path(f).unlink()

    def fingerprint(self, source: str) -> dict[str, Any] | None:
        """The fingerprint recorded for ``source`` (None: not in the bank, or none recorded)."""
        if not self.has_source(source):
            return None
        try:
            return _fingerprints(self._read_schema(self.file_for(source))).get(source)
        except (pa.ArrowInvalid, OSError, KernelAtlasError):
            return None

    def _write(self, source: str, table: pa.Table, fingerprint: Any = None) -> None:
        meta = {_META_VERSION: __version__.encode(), _META_SOURCE: source.encode()}
        layers = table.group_by(_LAYER_KEYS).aggregate([([], "count_all")]).to_pydict()
        meta[_META_LAYERS] = json.dumps(
            {"columns": _LAYER_KEYS, "rows": [layers[c] for c in [*_LAYER_KEYS, "count_all"]]}
        ).encode()
        if fingerprint is not None:
            meta[FINGERPRINT_KEY] = json.dumps({source: fingerprint}).encode()
        at = table.schema.get_field_index("weights")
        table = table.set_column(at, STORAGE_SCHEMA.field(at), stored_weights(table.column(at)))
        table = table.replace_schema_metadata(meta)
        options = {"row_group_size": self.row_group_size, **PARQUET_OPTIONS}
        if self.is_remote:
            self._write_remote(source, table, options)
            return
        self.path.mkdir(parents=True, exist_ok=True)
        if read_marker(self.path) is None:
            write_marker(self.path, "bank")
        final = self.file_for(source)
        tmp = self.path / f".{final.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            pq.write_table(table, tmp, **options)
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _write_remote(self, source: str, table: pa.Table, options: dict[str, Any]) -> None:
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, **options)
        data = sink.getvalue().to_pybytes()
        final = self._inner(self.file_for(source))
        protocols = self._fs.protocol
        protocols = {protocols} if isinstance(protocols, str) else set(protocols)
        self._fs.makedirs(self._root, exist_ok=True)
        if protocols & _OBJECT_STORES:
            self._fs.pipe_file(final, data)  # one put: atomic on an object store
        else:
            name = final.rsplit("/", 1)[-1]
            tmp = f"{self._root}/.{name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
            try:
                self._fs.pipe_file(tmp, data)
                self._fs.mv(tmp, final)
            except BaseException:
                if self._fs.exists(tmp):
                    self._fs.rm(tmp)
                raise
        self._fs.invalidate_cache(self._root)

    # -- reading -----------------------------------------------------------------------
    def _datasets(self) -> list[ds.Dataset]:
        """The bank's files as datasets, in file order: one per run of files that store
        ``weights`` alike (a bank written by kernelatlas < 0.2 stores ``list<float>``)."""
        runs: list[tuple[pa.Schema, list[str]]] = []
        for f in self.files():
            pf = self._open(f)  # one footer read: the columns, then the row groups' sizes
            schema = pf.schema_arrow
            names = schema.names
            if tuple(names) != BANK_COLUMNS:
                raise KernelAtlasError(
                    f"{f} is not a kernel bank file (columns {names[:4]}...); move it out of "
                    f"{self.path}"
                )
            check_row_groups(pf, f)
            stored = STORAGE_SCHEMA if _is_stored(schema.field("weights").type) else BANK_SCHEMA
            if runs and runs[-1][0] is stored:
                runs[-1][1].append(self._inner(f))
            else:
                runs.append((stored, [self._inner(f)]))
        return [
            ds.dataset(files, schema=schema, format="parquet", filesystem=self._afs)
            for schema, files in runs
        ]

    @staticmethod
    def _filter(kh: int | None, kw: int | None) -> ds.Expression | None:
        expr = None
        for name, value in (("kh", kh), ("kw", kw)):
            if value is not None:
                term = ds.field(name) == int(value)
                expr = term if expr is None else expr & term
        return expr

    def _columns(self, columns: Sequence[str] | None) -> list[str]:
        if columns is None:
            return list(BANK_COLUMNS)
        unknown = [c for c in columns if c not in BANK_COLUMNS]
        if unknown:
            raise KernelAtlasError(f"unknown bank columns {unknown}; bank columns: {BANK_COLUMNS}")
        return list(columns)

    def iter_batches(
        self,
        *,
        kh: int | None = None,
        kw: int | None = None,
        columns: Sequence[str] | None = None,
        batch_size: int = 65536,
    ) -> Iterator[pd.DataFrame]:
        """Stream the bank (optionally one kernel size) as DataFrames of <= ``batch_size`` rows.

        The ``weights`` column stays Arrow-backed; turn it into ``[N, kh, kw]`` with
        :func:`weights_array`.
        """
        for dataset in self._datasets():
            scanner = dataset.scanner(
                columns=self._columns(columns), filter=self._filter(kh, kw), batch_size=batch_size
            )
            for batch in scanner.to_batches():
                if batch.num_rows:
                    yield _as_lists(batch).to_pandas(types_mapper=_list_to_pandas)

    def _table(self, kh: int | None, kw: int | None, columns: Sequence[str] | None) -> pa.Table:
        cols = self._columns(columns)
        parts = [
            _as_lists(d.to_table(columns=cols, filter=self._filter(kh, kw)))
            for d in self._datasets()
        ]
        if not parts:
            return BANK_SCHEMA.empty_table().select(cols)
        return parts[0] if len(parts) == 1 else pa.concat_tables(parts)

    def read(
        self,
        *,
        kh: int | None = None,
        kw: int | None = None,
        columns: Sequence[str] | None = None,
    ) -> pd.DataFrame:
        """The selected rows as one DataFrame (``weights`` Arrow-backed)."""
        return self._table(kh, kw, columns).to_pandas(types_mapper=_list_to_pandas)

    def kernels(self, kh: int, kw: int) -> np.ndarray:
        """All ``kh x kw`` kernels, float32 ``[N, kh, kw]``, in bank order."""
        table = self._table(kh, kw, ["weights"])
        return weights_array(table.column("weights"), kh, kw)

    def __len__(self) -> int:
        return int(sum(self.parquet_file(f).metadata.num_rows for f in self.files()))

    def _grouped(self, keys: list[str]) -> pa.Table | None:
        """Row counts per distinct ``keys`` (a subset of ``_LAYER_KEYS``): from each file's
        layer counts (its footer), or streamed batch by batch from files written without
        them (memory ~ groups)."""
        if not self._datasets():  # (also checks every file is a bank file)
            return None
        parts: list[pa.Table] = []
        for f in self.files():
            layers = self._layer_counts(f)
            if layers is not None:
                parts.append(layers.group_by(keys).aggregate([("count_all", "sum")]))
                parts[-1] = parts[-1].rename_columns([*keys, "count_all"])
                continue
            for batch in self.parquet_file(f).iter_batches(batch_size=1 << 16, columns=keys):
                if batch.num_rows:
                    table = pa.Table.from_batches([batch])
                    parts.append(table.group_by(keys).aggregate([([], "count_all")]))
                if len(parts) >= 64:
                    parts = [_regroup(parts, keys)]
        parts = [p for p in parts if p.num_rows]
        return _regroup(parts, keys) if parts else None

    def _layer_counts(self, f: Path | str) -> pa.Table | None:
        """The kernels per layer recorded in ``f``'s footer (``_LAYER_KEYS`` + ``count_all``);
        None when absent or not adding up to the file's rows (then its rows are counted)."""
        pf = self.parquet_file(f)
        raw = (pf.schema_arrow.metadata or {}).get(_META_LAYERS)
        if raw is None:
            return None
        try:
            doc = json.loads(raw)
            if doc["columns"] != _LAYER_KEYS:
                return None
            types = [BANK_SCHEMA.field(c).type for c in _LAYER_KEYS] + [pa.int64()]
            cols = [pa.array(v, type=t) for v, t in zip(doc["rows"], types, strict=True)]
            table = pa.table(dict(zip([*_LAYER_KEYS, "count_all"], cols, strict=True)))
        except (ValueError, KeyError, TypeError, RecursionError, pa.ArrowException):
            return None
        total = pc.sum(table.column("count_all")).as_py() or 0
        if total != pf.metadata.num_rows or (
            table.num_rows and pc.min(table.column("count_all")).as_py() < 1
        ):
            return None
        return table

    def shapes(self) -> list[tuple[int, int]]:
        """Kernel sizes present, sorted."""
        uniq = self._grouped(["kh", "kw"])
        if uniq is None:
            return []
        return sorted(
            zip(uniq.column("kh").to_pylist(), uniq.column("kw").to_pylist(), strict=True)
        )

    def counts(self) -> pd.DataFrame:
        """Layers and kernels per source, model and kernel size.

        Columns ``source, model, kh, kw, layers, kernels``.
        """
        cols = ["source", "model", "kh", "kw", "layers", "kernels"]
        # streamed: kernels per layer first (memory ~ number of layers, not of kernels)
        per_layer = self._grouped(["source", "model", "kh", "kw", "layer_index"])
        if per_layer is None:
            return pd.DataFrame(
                {c: pd.Series(dtype="int64" if c in cols[2:] else object) for c in cols}
            )
        agg = per_layer.group_by(["source", "model", "kh", "kw"]).aggregate(
            [("layer_index", "count"), ("count_all", "sum")]
        )
        df = agg.to_pandas().rename(
            columns={"layer_index_count": "layers", "count_all_sum": "kernels"}
        )
        df = df[cols].astype({"kh": "int64", "kw": "int64", "layers": "int64", "kernels": "int64"})
        return df.sort_values(["source", "kh", "kw"], ignore_index=True)


def _fingerprints(schema: pa.Schema) -> dict[str, Any]:
    raw = (schema.metadata or {}).get(FINGERPRINT_KEY)
    try:
        doc = json.loads(raw) if raw else {}
    except (ValueError, RecursionError):  # unparsable: unrecorded (harvested again)
        return {}
    return doc if isinstance(doc, dict) else {}


def _unreadable(f: Path | str, exc: BaseException) -> KernelAtlasError:
    """The one line for a bank file that Parquet cannot read."""
    detail = " ".join(str(exc).split())[:160]
    return KernelAtlasError(
        f"{f}: unreadable bank file ({detail}); delete it and harvest that source again"
    )


def _regroup(parts: list[pa.Table], keys: list[str]) -> pa.Table:
    """Merge per-batch group counts (``count_all``) into one count per distinct key."""
    table = pa.concat_tables(parts)
    out = table.group_by(keys).aggregate([("count_all", "sum")])
    return out.rename_columns([*keys, "count_all"])
