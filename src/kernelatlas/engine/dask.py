"""The Dask engine: harvest sources and analyse bank partitions on ``dask.distributed``.

The unit of work is a :class:`~kernelatlas.pipeline.Partition` (one Parquet row group of
one bank file). The fitted models are broadcast to every worker once; at most
``max_in_flight`` partitions are submitted at a time, and results are taken back in
partition order, so the driver holds a bounded number of partition tables and the output
is identical, row for row, to the single-process engine (``pipeline.run_local``).

Without a scheduler address a ``LocalCluster`` of worker processes (one thread each, torch
set to one thread) is started and closed afterwards. Workers read the bank from its path,
so on a multi-machine cluster the bank must be on a shared filesystem or an fsspec URL
(``s3://...``).

Examples
--------
>>> from kernelatlas import analyze
>>> analyze(["efficientnet_lite0"], "report", engine="dask", n_workers=2)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import pandas as pd
import pyarrow as pa
from distributed import Client, LocalCluster, WorkerPlugin

from ..errors import KernelAtlasError

__all__ = ["run_dask", "harvest_dask", "dask_client", "TorchThreads"]


class TorchThreads(WorkerPlugin):
    """Worker plugin: set torch's intra-op threads (one per worker thread by default)."""

    def __init__(self, n: int = 1) -> None:
        self.n = int(n)

    def setup(self, worker: Any) -> None:
        import torch

        torch.set_num_threads(self.n)


def _default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@contextlib.contextmanager
def dask_client(
    scheduler: str | None = None,
    n_workers: int | None = None,
    *,
    processes: bool = True,
    client: Client | None = None,
    timeout: float = 30.0,
) -> Iterator[Client]:
    """A ``distributed.Client`` for the analysis, closed (with its cluster) on exit.

    Parameters
    ----------
    scheduler : address of a running scheduler (``tcp://host:8786``); None starts a
        ``LocalCluster``.
    n_workers : workers of the LocalCluster (default: one per available core).
    processes : LocalCluster workers as processes (True) or threads in this process.
    client : an open client to use as is (not closed here).
    timeout : seconds to wait for the scheduler.
    """
    if client is not None:
        yield client
        return
    cluster = None
    try:
        if scheduler:
            try:
                c = Client(scheduler, timeout=timeout)
            except OSError as exc:
                raise KernelAtlasError(
                    f"cannot reach the Dask scheduler at {scheduler} ({exc}): start it "
                    "(`dask scheduler`) or leave --scheduler out for a local cluster"
                ) from None
        else:
            cluster = LocalCluster(
                n_workers=int(n_workers or _default_workers()),
                threads_per_worker=1,
                processes=processes,
                dashboard_address=":0",
                silence_logs=logging.ERROR,
            )
            c = Client(cluster)
    except BaseException:
        if cluster is not None:
            cluster.close()
        raise
    try:
        c.register_plugin(TorchThreads(1), name="kernelatlas-torch-threads")
        yield c
    finally:
        c.close()
        if cluster is not None:
            cluster.close()


def _n_threads(client: Client) -> int:
    info = client.scheduler_info()
    return max(1, sum(int(w.get("nthreads", 1)) for w in info.get("workers", {}).values()))


def _ordered_window(
    client: Client,
    fn: Callable[..., Any],
    items: Sequence[Any],
    args: tuple[Any, ...],
    window: int,
    tag: str,
) -> Iterator[Any]:
    """``fn(item, *args)`` for every item on the cluster, results in item order, at most
    ``window`` tasks submitted and not yet taken back."""
    run = uuid.uuid4().hex[:8]
    pending: deque[Any] = deque()
    todo = iter(enumerate(items))

    def submit() -> None:
        for i, item in todo:
            key = f"kernelatlas-{tag}-{run}-{i}"
            pending.append(client.submit(fn, item, *args, key=key, priority=-i, pure=False))
            return

    try:
        for _ in range(max(1, window)):
            submit()
        while pending:
            fut = pending.popleft()
            result = fut.result()
            fut.release()
            submit()
            yield result
    finally:
        for fut in pending:
            fut.cancel()


def _analyse_one(part: Any, models: dict[tuple[int, int], dict[str, Any]], cfg: Any) -> Any:
    """One partition analysed on a worker: one table (None when it holds no kernel)."""
    from ..pipeline import analyse_partition

    tables = list(analyse_partition(part, models, cfg))
    if not tables:
        return None
    if len(tables) == 1:
        return tables[0]
    return pa.concat_tables(tables, promote_options="permissive")


def run_dask(
    parts: Sequence[Any],
    models: dict[tuple[int, int], dict[str, Any]],
    cfg: Any,
    scheduler: str | None = None,
    *,
    n_workers: int | None = None,
    max_in_flight: int | None = None,
    client: Client | None = None,
) -> Iterator[pa.Table]:
    """Analysed tables of all partitions, one per partition, in partition order, on Dask.

    Parameters
    ----------
    parts : partitions (``pipeline.bank_partitions(bank)``), in output order.
    models : fitted models per kernel size (broadcast to every worker once).
    cfg : the ``AnalysisConfig`` (``cfg.scheduler`` / ``cfg.n_workers`` are the defaults
        of ``scheduler`` / ``n_workers``).
    scheduler : scheduler address; None starts a LocalCluster.
    max_in_flight : partitions submitted and not yet taken back (default: 2 per worker
        thread); bounds the driver's memory to about that many partition tables.
    client : an open client to reuse (then no cluster is started or closed).
    """
    parts = list(parts)
    if not parts:
        return
    scheduler = scheduler if scheduler is not None else getattr(cfg, "scheduler", None)
    n_workers = n_workers if n_workers is not None else getattr(cfg, "n_workers", None)
    with dask_client(scheduler, n_workers, client=client) as c:
        [shared] = c.scatter([models], broadcast=True, hash=False)
        window = max_in_flight or 2 * _n_threads(c)
        for table in _ordered_window(c, _analyse_one, parts, (shared, cfg), window, "analyse"):
            if table is not None:
                yield table


def _harvest_one(
    source: Any, fold_bn: bool, bank_path: str | None, row_group_size: int
) -> tuple[str, int, Any]:
    """Harvest one source on a worker; write it into the bank there (``bank_path``) or
    return its table for the driver to write. Returns (source key, rows, table or None)."""
    from ..bank import KernelBank
    from ..harvest import harvest

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the driver warns for sources with no kernel
        res = harvest(source, fold_bn=fold_bn)
    table = res.to_table()
    if bank_path is not None:  # the driver sends only sources to (re)harvest: replace
        KernelBank(bank_path, row_group_size=row_group_size).add(table, replace=True)
        return res.source, table.num_rows, None
    return res.source, table.num_rows, table


def harvest_dask(
    sources: Iterable[Any] | Any,
    bank: Any,
    *,
    fold_bn: bool = False,
    progress: bool = True,
    scheduler: str | None = None,
    n_workers: int | None = None,
    write_on_workers: bool | None = None,
    client: Client | None = None,
) -> pd.DataFrame:
    """Harvest sources in parallel on Dask workers into ``bank`` (resumable, like
    :func:`kernelatlas.harvest.harvest_to_bank`, whose return value this mirrors).

    Parameters
    ----------
    sources : registry names, ``timm:`` names, paths or ``nn.Module`` objects.
    bank : a :class:`~kernelatlas.bank.KernelBank` or its path/URL.
    write_on_workers : workers write their source file into the bank (each file is atomic);
        default: when the bank is an fsspec URL or the cluster is a LocalCluster started
        here (both share the bank); otherwise tables travel to the driver, which writes.
    """
    from tqdm.auto import tqdm

    from ..harvest.api import bank_status, harvest_arguments, harvested_counts

    sources, bank = harvest_arguments(sources, bank)
    status: dict[str, str] = {}
    todo: list[Any] = []
    for s in sources:
        key, _, state = bank_status(bank, s, fold_bn=fold_bn)
        if key is not None and (state == "reused" or key in status):
            status.setdefault(key, state)
            continue
        if key is not None:
            status[key] = state
        todo.append(s)
    if todo:
        if write_on_workers is None:
            write_on_workers = bank.is_remote or (scheduler is None and client is None)
        target = str(bank.path) if write_on_workers else None
        with (
            dask_client(scheduler, n_workers, client=client) as c,
            tqdm(total=len(todo), desc="harvest", unit="source", disable=None if progress else True,
                 leave=False) as bar,
        ):  # fmt: skip
            window = 2 * _n_threads(c)
            args = (fold_bn, target, bank.row_group_size)
            for key, rows, table in _ordered_window(c, _harvest_one, todo, args, window, "harvest"):
                if table is not None:
                    bank.add(table, replace=status.get(key) == "changed")
                if rows == 0:
                    warnings.warn(
                        f"{key}: no depthwise convolution found; zero kernels", stacklevel=2
                    )
                status.setdefault(key, "harvested")
                bar.update(1)
    return harvested_counts(bank, status)
