"""The unit of work of an analysis: one bank partition -> one part of kernels.parquet + counts.

A :class:`Partition` is one Parquet row group of one bank file (<= 65,536 kernels). An
engine (:mod:`kernelatlas.engine`) calls :func:`run_partition` on each, in any process
and in any order: it classifies (and fits) the partition's kernels with the
:class:`SizeModels` of their size, writes the analysed rows as one part file of
kernels.parquet under a temporary name, and returns a small :class:`PartResult`: the
part's temporary path, exact integer counts per layer (:class:`PartCounts`), the atlas
diagram's panel sums (``report.diagram.PanelStats``, so the report's means read no weights
again), the null references of its rows (``null.ReferenceBuilder``: second-moment sums and
a seeded sample, so the baselines read no weights again either) and the seconds spent per
stage. The driver adds
the counts up and renames the parts into place (:class:`PartsMerger`); it never sees a row.

This module imports neither :mod:`kernelatlas.pipeline` nor an engine.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import __version__
from .report.summary import LAYER_KEYS, MODEL_KEYS, count_matrix, merge_counts

if TYPE_CHECKING:
    from .atlas import Atlas
    from .autoencoder import KernelAutoencoder
    from .fit import KernelFitter
    from .normalize import Normalized
    from .null import ReferenceBuilder
    from .report.diagram import Panel, PanelStats

__all__ = [
    "CARRY_COLUMNS",
    "STAGES",
    "Partition",
    "SizeModels",
    "PartitionJob",
    "PartCounts",
    "PartResult",
    "PartsMerger",
    "bank_partitions",
    "file_partitions",
    "analyse_batch",
    "run_partition",
    "run_partitions",
]

#: Provenance columns carried from the bank into kernels.parquet, then the bank reference.
CARRY_COLUMNS: tuple[str, ...] = (
    "source", "model", "format", "layer", "layer_index", "depth", "channel",
    "kh", "kw", "stride", "dilation", "bn_folded", "dtype", "nonfinite",
)  # fmt: skip
#: Per-partition stages timed by :func:`run_partition` (seconds in ``PartResult.seconds``;
#: ``cpu`` is the thread's CPU time for the whole partition).
STAGES: tuple[str, ...] = (
    "read", "classify", "fits", "autoencoder", "stats", "references", "write", "cpu",
)  # fmt: skip
_PART_META = {b"kernelatlas_version": __version__.encode()}


def _write_part(table: pa.Table, where: str | os.PathLike[str]) -> None:
    """Write one part of kernels.parquet: zstd (level 1); dictionary pages for the string
    columns only (a float score column has a value per kernel: trying a dictionary first
    only costs), the float columns byte-stream split (their bytes by significance, which
    zstd compresses better and faster) and the row-ordered integer columns
    (:data:`_DELTA_COLUMNS`: ``bank_row`` counts up by one) delta-encoded. The values and
    the Arrow schema are those of ``table``; ~0.6x the write time and ~2/3 of the size of
    dictionary-everything zstd."""
    schema = table.schema
    encoding = {f.name: "BYTE_STREAM_SPLIT" for f in schema if pa.types.is_floating(f.type)}
    encoding.update({c: "DELTA_BINARY_PACKED" for c in _DELTA_COLUMNS if c in schema.names})
    pq.write_table(
        table, where, compression="zstd", compression_level=1,
        use_dictionary=[f.name for f in schema if pa.types.is_string(f.type)],
        column_encoding=encoding,
    )  # fmt: skip


#: Integer columns of kernels.parquet in runs or steps along the rows (delta-encoded parts).
_DELTA_COLUMNS = ("bank_row", "channel", "layer_index", "polarity")


@dataclass(frozen=True)
class Partition:
    """One unit of work: a row group of one bank file (a local path or an fsspec URL).

    ``sizes``: per kernel size in the row group, ``(kh, kw, first, total)``: the rows of that
    size in the file before this row group, and in the whole file (where the null
    references' rows are, :class:`kernelatlas.null.ReferenceBuilder`; empty: not known,
    no reference is collected).
    """

    path: str
    row_group: int
    sizes: tuple[tuple[int, int, int, int], ...] = ()

    @property
    def file_name(self) -> str:
        """The bank file's name (what ``bank_file`` holds in kernels.parquet)."""
        return self.path.rsplit("/", 1)[-1]

    @property
    def sort_key(self) -> tuple[str, int]:
        """The partition's place in bank order (file name, row group)."""
        return self.file_name, self.row_group


@dataclass(frozen=True)
class SizeModels:
    """The fitted models of one kernel size: everything a partition of that size needs.

    Attributes
    ----------
    atlas : the calibrated :class:`~kernelatlas.atlas.Atlas`.
    autoencoder : the trained (or reference) :class:`~kernelatlas.autoencoder.KernelAutoencoder`,
        when the analysis runs one (``method`` autoencoder or both).
    fitter : the :class:`~kernelatlas.fit.KernelFitter` fitted from ``atlas`` (None: the
        partition fits one from ``atlas`` when the job fits).
    """

    atlas: Atlas
    autoencoder: KernelAutoencoder | None = None
    fitter: KernelFitter | None = None


@dataclass(frozen=True)
class PartitionJob:
    """What every partition of an analysis is run with (sent to each worker once).

    Attributes
    ----------
    models : fitted models per kernel size; rows of other sizes are dropped.
    fit : run the parametric fits (each size's ``SizeModels.fitter``).
    seed, device : of the fits.
    batch_size : kernels analysed at a time (bounds memory).
    with_weights : copy each kernel's weights into kernels.parquet (otherwise only its
        bank reference ``bank_file, bank_row``).
    parts_dir : folder the part files are written into (under temporary names); None:
        the analysed table travels back in the result instead.
    references : the null kinds whose references (``kernelatlas.null.ReferenceBuilder``)
        each partition collects from its kernels (None: none), with ``reference_sample``
        (its ``sample_size``) and ``seed``; the driver merges them, so the baselines need
        no second pass over the bank.
    stats : compute the panel sums of the atlas diagram (``report.diagram.PanelStats``)
        over ``panels`` (``report.diagram.diagram_columns()``, made by the driver from the
        family registry; None: no statistic).
    """

    models: Mapping[tuple[int, int], SizeModels]
    fit: bool = False
    seed: int = 0
    device: str | None = None
    batch_size: int = 65_536
    with_weights: bool = False
    parts_dir: str | None = None
    stats: bool = True
    panels: tuple[tuple[Panel | None, ...], ...] | None = None
    references: tuple[str, ...] | None = None
    reference_sample: int = 40_000


@dataclass
class PartCounts:
    """Exact integer counts of analysed kernels per layer (``LAYER_KEYS`` values -> counts).

    Attributes
    ----------
    names : count columns (``report.summary.count_matrix``'s).
    keys : one ``LAYER_KEYS`` tuple per row of ``counts``.
    counts : int64 [len(keys), len(names)].
    """

    names: list[str]
    keys: list[tuple[Any, ...]]
    counts: np.ndarray


@dataclass
class PartResult:
    """What a partition sends back to the driver (no kernel rows unless ``table`` is set)."""

    partition: Partition
    rows: int
    tmp_path: str | None
    table: pa.Table | None
    counts: PartCounts | None
    panel_stats: dict[tuple[int, int], PanelStats]
    seconds: dict[str, float] = field(default_factory=dict)
    references: dict[tuple[int, int], ReferenceBuilder] = field(default_factory=dict)


# --------------------------------------------------------------------------- partitions
def file_partitions(path: str, storage_options: dict[str, Any] | None = None) -> list[Partition]:
    """The partitions of one bank file, in row-group order (with their ``sizes``)."""
    from .bank import open_parquet

    pf = open_parquet(path, storage_options)
    meta = pf.metadata
    rows = np.array([meta.row_group(i).num_rows for i in range(meta.num_row_groups)], np.int64)
    group = np.repeat(np.arange(len(rows)), rows)
    t = pf.read(columns=["kh", "kw"])
    kh, kw = t.column("kh").to_numpy(), t.column("kw").to_numpy()
    per: list[list[tuple[int, int, int, int]]] = [[] for _ in rows]
    sizes = t.group_by(["kh", "kw"]).aggregate([])
    for a, b in sorted(zip(sizes["kh"].to_pylist(), sizes["kw"].to_pylist())):  # not kernels
        n = np.bincount(group[(kh == a) & (kw == b)], minlength=len(rows))
        before = np.cumsum(n) - n
        for g in np.flatnonzero(n):
            per[g].append((int(a), int(b), int(before[g]), int(n.sum())))
    return [Partition(str(path), rg, tuple(per[rg])) for rg in range(len(rows))]


def bank_partitions(bank: Any) -> list[Partition]:
    """Every (file, row group) of a bank, in bank order (the order of kernels.parquet)."""
    return [p for f in bank.files() for p in file_partitions(str(f), bank.storage_options)]


# --------------------------------------------------------------------------- analysis
def _arrow(df: pd.DataFrame) -> dict[str, pa.Array]:
    """DataFrame columns as Arrow arrays with fixed types (object and string columns are
    strings; as ``pa.Table.from_pandas``: NaN and None are nulls). A pandas string column
    (the atlas's ``shape``: Arrow-backed) is taken as it is, not through Python objects."""
    out = {}
    for name in df.columns:
        col = df[name]
        if isinstance(col.dtype, pd.StringDtype):
            out[name] = pa.array(col, type=pa.string(), from_pandas=True)
            continue
        v = col.to_numpy()
        out[name] = pa.array(v, type=pa.string() if v.dtype == object else None, from_pandas=True)
    return out


def analyse_batch(
    batch: pa.RecordBatch | pa.Table,
    job: PartitionJob,
    *,
    bank_file: str = "",
    first_row: int = 0,
    seconds: dict[str, float] | None = None,
    stats: dict[tuple[int, int], Any] | None = None,
    counts: dict[tuple[Any, ...], np.ndarray] | None = None,
    references: dict[tuple[int, int], ReferenceBuilder] | None = None,
    rows_before: dict[tuple[int, int], list[int]] | None = None,
) -> pa.Table | None:
    """Analyse one batch of bank rows (any mix of kernel sizes), keeping the row order.

    Returns the kernels.parquet rows: :data:`CARRY_COLUMNS`, ``bank_file, bank_row``
    (``first_row`` is the batch's first row in its bank file), the atlas columns, the fit
    and autoencoder columns, and ``weights`` with ``job.with_weights``; None when no row
    has a model (1x1 rows are never harvested). ``seconds``, ``stats`` (the panel
    statistic per size) and ``counts`` (``LAYER_KEYS`` tuple -> count row) are added to;
    so is ``references`` (per size, the null references of ``job.references``) for the
    sizes in ``rows_before`` (size -> ``[rows of that size before this batch in the bank
    file, rows of that size in the file]``; the first is advanced past the batch's rows).
    """
    from .bank import weight_lists, weights_array
    from .normalize import normalize
    from .report.diagram import panel_stats

    sec = seconds if seconds is not None else {}
    kh_all = batch.column("kh").to_numpy()
    kw_all = batch.column("kw").to_numpy()
    pieces, order = [], []
    sizes = _sizes(kh_all, kw_all)
    for kh, kw in sizes:
        models = job.models.get((kh, kw))
        if models is None:
            continue
        idx = np.flatnonzero((kh_all == kh) & (kw_all == kw))
        whole = len(idx) == batch.num_rows  # one kernel size (the usual case): no copy
        sub = batch if whole else batch.take(pa.array(idx))
        k = weights_array(sub.column("weights"), kh, kw, writable=False)  # no copy
        t = time.perf_counter()
        nz = normalize(k)  # once: the atlas, the panel sums and the references share it
        pred = models.atlas.predict_normalized(nz, details=True)
        sec["classify"] = sec.get("classify", 0.0) + time.perf_counter() - t
        frames = [pred]
        if job.fit:
            t = time.perf_counter()
            fitter = models.fitter
            if fitter is None:  # models built by hand: fit from this size's atlas
                from .fit import KernelFitter

                fitter = KernelFitter((kh, kw), device=job.device, seed=job.seed)
                fitter = fitter.fit(models.atlas)
            frames.append(fitter.predict(k))
            sec["fits"] = sec.get("fits", 0.0) + time.perf_counter() - t
        if models.autoencoder is not None:
            t = time.perf_counter()
            frames.append(models.autoencoder.predict(k))
            sec["autoencoder"] = sec.get("autoencoder", 0.0) + time.perf_counter() - t
        t = time.perf_counter()
        family = pred["family"].to_numpy(object)
        live = pred["classified"].to_numpy(bool)
        if counts is not None:
            ae = frames[-1] if models.autoencoder is not None else None
            _add_layer_counts(
                counts, sub.select(list(LAYER_KEYS)), family, live,
                None if ae is None else ae["ae_family"].to_numpy(object),
                None if ae is None else ae["ae_classified"].to_numpy(bool),
            )  # fmt: skip
        if stats is not None and job.panels is not None:
            sel = np.flatnonzero(live)
            shape = pred["shape"].to_numpy(object)[sel] if "shape" in pred.columns else None
            part = panel_stats(
                nz[sel], family[sel], shape, pred["orientation"].to_numpy()[sel],
                pred["polarity"].to_numpy()[sel], [list(c) for c in job.panels],
            )  # fmt: skip
            have = stats.get((kh, kw))
            stats[(kh, kw)] = part if have is None else have.merge(part)
        sec["stats"] = sec.get("stats", 0.0) + time.perf_counter() - t
        if references is not None and rows_before is not None and (kh, kw) in rows_before:
            t = time.perf_counter()
            _add_references(references, rows_before[(kh, kw)], sub, k, nz, kh, kw, job)
            sec["references"] = sec.get("references", 0.0) + time.perf_counter() - t
        t = time.perf_counter()
        cols: dict[str, pa.Array | pa.ChunkedArray] = {c: sub.column(c) for c in CARRY_COLUMNS}
        n = len(idx)
        cols["bank_file"] = pa.DictionaryArray.from_arrays(
            pa.array(np.zeros(n, np.int32)), pa.array([bank_file])
        ).cast(pa.string())
        cols["bank_row"] = pa.array((first_row + idx).astype(np.int64))
        for frame in frames:
            cols.update(_arrow(frame))
        if job.with_weights:
            cols["weights"] = weight_lists(sub.column("weights"))  # a list<float> view
        pieces.append(pa.table(cols))
        order.append(idx)
        sec["write"] = sec.get("write", 0.0) + time.perf_counter() - t
    if not pieces:
        return None
    if len(pieces) == 1 and len(order[0]) == batch.num_rows:
        return pieces[0]  # rows already in bank order
    table = pa.concat_tables(pieces)
    return table.take(pa.array(np.argsort(np.concatenate(order), kind="stable")))


def _add_references(
    into: dict[tuple[int, int], ReferenceBuilder],
    at: list[int],
    rows: pa.Table | pa.RecordBatch,
    kernels: np.ndarray,
    normalized: Normalized,
    kh: int,
    kw: int,
    job: PartitionJob,
) -> None:
    """Add one size's rows of a batch (``kernels``: their weights, ``normalized``: their
    ``normalize(kernels)``) to its null references;
    ``at``: [their first row among the file's rows of that size, rows of that size in the
    file] (a bank file holds one source; ``at[0]`` is advanced)."""
    from .null import ReferenceBuilder

    if not len(kernels):
        return
    source = str(rows.column("source")[0].as_py())
    builder = into.get((kh, kw))
    if builder is None:
        builder = into[(kh, kw)] = ReferenceBuilder(
            kh, kw, kinds=job.references or (), expected={source: at[1]},
            sample_size=job.reference_sample, seed=job.seed,
        )  # fmt: skip
    if builder.collects:
        layer = rows.column("layer_index").to_numpy()
        builder.add(source, layer, kernels, first=at[0], normalized=normalized)
    at[0] += len(kernels)


def _sizes(kh: np.ndarray, kw: np.ndarray) -> list[tuple[int, int]]:
    """The distinct (kh, kw) of a batch, sorted (one size, the usual case: no sort)."""
    if not len(kh):
        return []
    if kh.min() == kh.max() and kw.min() == kw.max():
        return [(int(kh[0]), int(kw[0]))]
    codes = np.unique(kh.astype(np.int64) << 32 | kw.astype(np.int64))
    return [(int(c >> 32), int(c & 0xFFFFFFFF)) for c in codes]


def _add_layer_counts(
    into: dict[tuple[Any, ...], np.ndarray],
    keys: pa.Table | pa.RecordBatch,
    family: np.ndarray,
    classified: np.ndarray,
    ae_family: np.ndarray | None,
    ae_classified: np.ndarray | None,
) -> None:
    """Add the counts of analysed rows per layer (``keys``: their ``LAYER_KEYS`` columns)
    into ``into``: one reduction per run of equal keys (layers are contiguous in a bank
    file); runs with the same key add up."""
    names, rows = count_matrix(family, classified, ae_family, ae_classified)
    n = len(rows)
    if n == 0:
        return
    change = np.zeros(n, bool)
    change[0] = True
    for c in LAYER_KEYS:
        col = keys.column(c)
        col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
        if n > 1:
            neq = pc.fill_null(pc.not_equal(col.slice(1), col.slice(0, n - 1)), True)
            change[1:] |= neq.to_numpy(zero_copy_only=False)
    starts = np.flatnonzero(change)
    sums = np.add.reduceat(rows, starts, axis=0)
    firsts = keys.take(pa.array(starts)).to_pydict()
    for i, s in enumerate(sums):
        key = (*(firsts[c][i] for c in LAYER_KEYS), tuple(names))
        have = into.get(key)
        into[key] = s if have is None else have + s


def run_partition(part: Partition, job: PartitionJob) -> PartResult:
    """Analyse one partition: write its part file (or keep its table) and count it."""
    from .bank import open_parquet

    cpu0 = time.thread_time()
    sec: dict[str, float] = dict.fromkeys(STAGES, 0.0)
    stats: dict[tuple[int, int], Any] | None = {} if job.stats else None
    counted: dict[tuple[Any, ...], np.ndarray] = {}
    refs: dict[tuple[int, int], Any] | None = {} if job.references is not None else None
    before = {(a, b): [first, total] for a, b, first, total in part.sizes}
    t = time.perf_counter()
    pf = open_parquet(part.path)
    first = sum(pf.metadata.row_group(i).num_rows for i in range(part.row_group))
    sec["read"] += time.perf_counter() - t
    tables = []
    batches = pf.iter_batches(batch_size=job.batch_size, row_groups=[part.row_group])
    while True:
        t = time.perf_counter()
        batch = next(batches, None)
        sec["read"] += time.perf_counter() - t
        if batch is None:
            break
        if batch.num_rows:
            table = analyse_batch(
                batch, job, bank_file=part.file_name, first_row=first, seconds=sec,
                stats=stats, counts=counted, references=refs, rows_before=before,
            )  # fmt: skip
            if table is not None:
                tables.append(table)
            first += batch.num_rows
    if not tables:
        sec["cpu"] = time.thread_time() - cpu0
        return PartResult(part, 0, None, None, None, {}, sec, refs or {})
    t = time.perf_counter()
    table = tables[0] if len(tables) == 1 else pa.concat_tables(tables)
    names = list(next(iter(counted))[-1])
    counts = PartCounts(
        names,
        [k[:-1] for k in counted],
        np.array(list(counted.values()), np.int64).reshape(-1, len(names)),
    )
    table = table.replace_schema_metadata(_PART_META)
    tmp = None
    if job.parts_dir is not None:
        stem = part.file_name.removesuffix(".parquet")
        tmp = os.path.join(
            job.parts_dir, f".{stem}-{part.row_group:05d}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        )
        _write_part(table, tmp)
    sec["write"] += time.perf_counter() - t
    sec["cpu"] = time.thread_time() - cpu0
    return PartResult(
        part, table.num_rows, tmp, None if tmp else table, counts, stats or {}, sec, refs or {}
    )


def run_partitions(parts: Iterable[Partition], job: PartitionJob) -> list[PartResult]:
    """:func:`run_partition` on several partitions (one engine task), in order."""
    return [run_partition(p, job) for p in parts]


# --------------------------------------------------------------------------- the driver
class PartsMerger:
    """The driver's side: adds up partition results and puts the part files in place.

    ``add`` takes results in partition order (the panel statistic is a float sum, added
    in that order so that every engine gives the same figures); ``finish`` renames the
    parts to ``part-000000.parquet``... in bank order (or writes the returned tables) and
    removes leftover temporary files (a retried task's).
    """

    def __init__(self, parts_dir: Path) -> None:
        self.parts_dir = Path(parts_dir)
        self._counts: dict[tuple[Any, ...], np.ndarray] = {}
        self._names: list[str] | None = None
        self.panel_stats: dict[tuple[int, int], PanelStats] = {}
        self.references: dict[tuple[int, int], ReferenceBuilder] = {}
        self.seconds: dict[str, float] = dict.fromkeys(STAGES, 0.0)
        self.rows = 0
        self._parts: list[tuple[tuple[str, int], str | None, pa.Table | None]] = []

    def add(self, res: PartResult) -> None:
        """Take one partition's result (counts, statistic, seconds, part file)."""
        for k, v in res.seconds.items():
            self.seconds[k] = self.seconds.get(k, 0.0) + v
        for size, b in res.references.items():  # the same whatever the order (row-keyed)
            have = self.references.get(size)
            self.references[size] = (b.empty() if have is None else have).merge(b)
        if not res.rows:
            return
        self.rows += res.rows
        c = res.counts
        assert c is not None
        if self._names is None:
            self._names = list(c.names)
        elif c.names != self._names:
            raise RuntimeError("partitions counted different columns")  # one job, one layout
        for key, row in zip(c.keys, c.counts, strict=True):
            have = self._counts.get(key)
            self._counts[key] = row.copy() if have is None else have + row
        for size, g in res.panel_stats.items():
            have = self.panel_stats.get(size)
            self.panel_stats[size] = g if have is None else have.merge(g)
        self._parts.append((res.partition.sort_key, res.tmp_path, res.table))

    def counts(self) -> dict[str, pd.DataFrame]:
        """The merged counts, as ``report.summary.merge_counts`` returns them."""
        names = self._names or []
        layers = pd.DataFrame(list(self._counts), columns=LAYER_KEYS)
        layers = layers.astype(
            {"kh": "int16", "kw": "int16", "layer_index": "int32", "depth": "float32"}
        )
        mat = np.array(list(self._counts.values()), np.int64).reshape(-1, len(names))
        for j, name in enumerate(names):
            layers[name] = mat[:, j]
        models = layers.drop(columns=["layer", "layer_index", "depth"])
        models = models.groupby(MODEL_KEYS, sort=False, observed=True).sum().reset_index()
        return merge_counts([{"models": models, "layers": layers}])

    def finish(self) -> int:
        """Put the part files in place, in bank order; returns how many."""
        self._parts.sort(key=lambda p: p[0])
        width = max(6, len(str(len(self._parts))))
        for i, (_, tmp, table) in enumerate(self._parts):
            final = self.parts_dir / f"part-{i:0{width}d}.parquet"
            if tmp is not None:
                os.replace(tmp, final)
            else:
                staged = self.parts_dir / f".{final.name}.tmp"
                _write_part(table, staged)
                os.replace(staged, final)
        for p in self.parts_dir.glob(".*.tmp"):  # written by a task whose result was not used
            p.unlink(missing_ok=True)
        return len(self._parts)
