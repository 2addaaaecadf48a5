"""The Dask engine: harvest sources and analyse bank partitions on ``dask.distributed``.

The unit of work is a :class:`~kernelatlas.partitions.Partition` (one Parquet row group of
one bank file); one task runs a few consecutive partitions
(:func:`~kernelatlas.partitions.run_partitions`). The job (the fitted models and options)
is broadcast to every worker once. A worker writes each partition's part file of
kernels.parquet itself, under a temporary name, and sends back only its counts, the
gallery statistic and its timings: the driver adds those up and renames the parts into
place (``partitions.PartsMerger``), so its work per task is a few dictionary additions
and the output is identical, row for row, to the local engine's. At most
``2 * worker threads`` tasks are in flight; results are taken back in task order.

Without a scheduler address a ``LocalCluster`` of worker processes (one thread each, torch
set to one thread) is started once for harvesting and analysing, and closed afterwards.
Workers read the bank and write the parts by path: on a multi-machine cluster both must
be on a shared filesystem (the bank may be an fsspec URL, ``s3://...``); when the workers
cannot see the output folder (checked with a probe file), the analysed tables travel back
to the driver, which writes them.

Examples
--------
>>> from kernelatlas import analyze
>>> analyze(["efficientnet_lite0"], "report", engine="dask", n_workers=2)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import queue
import threading
import uuid
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dask
import pandas as pd
from distributed import Client, LocalCluster, WorkerPlugin

from ..errors import KernelAtlasError
from .local import _DONE, _Failed  # the producer thread's protocol, as the local engine's

if TYPE_CHECKING:
    from ..bank import KernelBank
    from ..partitions import Partition, PartitionJob, PartResult

__all__ = ["DaskEngine", "harvest_dask", "dask_client", "TorchThreads", "TASKS_PER_THREAD"]

#: Tasks per worker thread the partitions are grouped into: enough for an even load (the
#: last task is 1/8 of a worker's share), few enough that the driver and the scheduler,
#: whose cost per task is what bounds a large cluster, keep up (docs/scale.md).
TASKS_PER_THREAD = 8


class TorchThreads(WorkerPlugin):
    """Worker plugin: set torch's intra-op threads (one per worker thread by default)."""

    def __init__(self, n: int = 1) -> None:
        self.n = int(n)

    def setup(self, worker: Any) -> None:
        import torch

        torch.set_num_threads(self.n)


def _worker_environ() -> dict[str, Any]:
    """Dask's environment for new worker processes, without ``MALLOC_TRIM_THRESHOLD_``:
    setting it (Dask sets 64 KiB) turns off glibc's adaptive mmap threshold, so every
    large temporary array of a partition is a fresh mmap and its pages fault in again:
    measured here, a 7x7 partition then costs 1.8x the CPU (0.60 s instead of 0.32 s).
    A worker of a cluster started elsewhere should be started without it too."""
    env = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}) or {})
    env.pop("MALLOC_TRIM_THRESHOLD_", None)
    return env


#: Modules the LocalCluster's fork server imports once, before it forks the workers
#: (Dask's own preload plus what a partition needs): each worker then starts with them
#: imported instead of importing them itself (measured here: 2 workers' start 2.9-3.5 ->
#: 1.4-1.5 CPU s, docs/scale.md).
WORKER_PRELOAD = (
    "distributed", "dask", "numpy", "pandas", "pyarrow.parquet", "torch",
    "kernelatlas.partitions", "kernelatlas.atlas", "kernelatlas.bank",
)  # fmt: skip


def _start_method() -> dict[str, Any]:
    """Dask config for the LocalCluster's worker processes: forked by a fork server that
    has imported :data:`WORKER_PRELOAD` (where the platform has one, and unless the user
    configured another method than Dask's default ``spawn``). The fork server is started
    here, before the nanny (so with this process's environment, which a nanny's
    ``pre-spawn-environ`` has not touched yet); :mod:`.worker_env`, imported first, sets
    the worker variables of that config in it."""
    import multiprocessing

    method = dask.config.get("distributed.worker.multiprocessing-method", "spawn")
    if method != "spawn" or "forkserver" not in multiprocessing.get_all_start_methods():
        return {}
    from multiprocessing import forkserver

    from distributed.utils import get_mp_context

    with dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"}):
        get_mp_context().set_forkserver_preload(["kernelatlas.engine.worker_env", *WORKER_PRELOAD])
    forkserver.ensure_running()  # it imports them now, beside the cluster's and driver's start
    return {"distributed.worker.multiprocessing-method": "forkserver"}


def _run_task(parts: list[Partition], job: PartitionJob) -> list[PartResult]:
    """One analysis task on a worker thread: its partitions with torch on one thread (the
    :class:`TorchThreads` plugin sets the worker's main thread, not its executor threads)."""
    from ..partitions import run_partitions
    from ..threads import one_torch_thread

    one_torch_thread()
    return run_partitions(parts, job)


def _default_workers() -> int:
    from .local import available_cores

    return available_cores()


class _ClusterShutdownNoise(logging.Filter):
    """Drops asyncio's "Task exception was never retrieved" records of Dask's own tasks
    (their traceback passes through ``distributed``): a LocalCluster closed while work is
    in flight (^C, an error elsewhere) leaves such tasks, whose tracebacks the driver
    printed after its own one-line error. ``KERNELATLAS_DEBUG=1`` keeps them."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None or os.environ.get("KERNELATLAS_DEBUG", "") not in ("", "0"):
            return True
        tb = exc.__traceback__
        while tb is not None:
            if f"{os.sep}distributed{os.sep}" in tb.tb_frame.f_code.co_filename:
                return False
            tb = tb.tb_next
        return True


_SHUTDOWN_FILTER = _ClusterShutdownNoise()


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
            logging.getLogger("asyncio").addFilter(_SHUTDOWN_FILTER)  # once: a set
            config = {"distributed.nanny.pre-spawn-environ": _worker_environ()}
            with dask.config.set({**config, **(_start_method() if processes else {})}):
                try:
                    cluster = LocalCluster(
                        n_workers=int(n_workers or _default_workers()),
                        threads_per_worker=1,
                        processes=processes,
                        dashboard_address=":0",
                        silence_logs=logging.CRITICAL,  # a task error reaches the driver as one line
                    )
                except RuntimeError as exc:  # e.g. "Nanny failed to start."
                    raise KernelAtlasError(
                        f"the Dask LocalCluster's workers did not start ({exc}): a script that "
                        "analyses with engine='dask' must do it under `if __name__ == "
                        "'__main__':` (each worker process imports the main module first), "
                        "or connect to a running cluster (--scheduler)"
                    ) from None
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
    items: Iterable[Any],
    args: tuple[Any, ...],
    window: int,
    tag: str,
    *,
    star: bool = False,
) -> Iterator[Any]:
    """``fn(item, *args)`` (``fn(*item, *args)`` with ``star``) for every item on the
    cluster, results in item order, at most ``window`` tasks submitted and not yet taken
    back."""
    run = uuid.uuid4().hex[:8]
    pending: deque[Any] = deque()
    todo = iter(enumerate(items))

    def submit() -> None:
        for i, item in todo:
            key = f"kernelatlas-{tag}-{run}-{i}"
            call = (*item, *args) if star else (item, *args)
            pending.append(client.submit(fn, *call, key=key, priority=-i, pure=False))
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


def _sees(path: str) -> bool:
    return os.path.exists(path)


class DaskEngine:
    """The ``dask.distributed`` engine (a context manager: the cluster lives inside it).

    Parameters
    ----------
    scheduler : address of a running scheduler; None starts a LocalCluster.
    n_workers : workers of that LocalCluster (default: one per core).
    client : an open client to use as is (not closed here).
    partitions_per_task : partitions one task runs (default: so that there are about
        :data:`TASKS_PER_THREAD` tasks per worker thread).
    """

    name = "dask"

    def __init__(
        self,
        scheduler: str | None = None,
        n_workers: int | None = None,
        *,
        client: Client | None = None,
        partitions_per_task: int | None = None,
    ) -> None:
        self.scheduler = scheduler
        self.n_workers = n_workers
        self.partitions_per_task = partitions_per_task
        self._given = client
        self._stack: contextlib.ExitStack | None = None
        self._starting: threading.Thread | None = None
        self._start_error: BaseException | None = None
        self._closing: threading.Thread | None = None
        self.client: Client | None = client
        self.tasks = 0  # tasks of the last map_partitions

    def __enter__(self) -> DaskEngine:
        """Start connecting (or the LocalCluster) in the background: the driver's own first
        steps (fingerprinting the sources, calibration) overlap with the cluster's start."""
        self._stack = contextlib.ExitStack()
        stack = self._stack

        def start() -> None:
            try:
                self.client = stack.enter_context(
                    dask_client(self.scheduler, self.n_workers, client=self._given)
                )
            except BaseException as exc:  # raised where the client is first needed
                self._start_error = exc

        self._starting = threading.Thread(target=start, name="kernelatlas-dask-start", daemon=True)
        self._starting.start()
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        """Close the client (and the LocalCluster). After success this runs in a background
        thread (a LocalCluster takes ~1 s to shut down): the driver writes the summary and
        the report meanwhile; :meth:`wait_closed` waits for it (the interpreter also does,
        at exit). After an error it closes here."""
        if self._starting is not None:
            self._starting.join()
            self._starting = None
        stack, self._stack = self._stack, None
        self.client = self._given
        if stack is None:
            return
        if exc_type is not None:
            stack.close()
            return
        self._closing = threading.Thread(target=stack.close, name="kernelatlas-dask-close")
        self._closing.start()

    def wait_closed(self) -> None:
        """Wait until the cluster this engine started is closed."""
        if self._closing is not None:
            self._closing.join()
            self._closing = None

    def _client(self) -> Client:
        if self._starting is not None:
            # the driver's own heavy imports (it calibrates with torch) while the cluster's
            # processes start: they wait on the workers, not on this interpreter
            import torch  # noqa: F401

            from .. import atlas  # noqa: F401

            self._starting.join()
            self._starting = None
        if self._start_error is not None:
            raise self._start_error
        if self.client is None:
            raise RuntimeError("use the DaskEngine as a context manager (with DaskEngine() as e)")
        return self.client

    @property
    def slots(self) -> int:
        return _n_threads(self._client())

    @property
    def local_cluster(self) -> bool:
        """Whether the workers run on this machine (a LocalCluster started here)."""
        return self.scheduler is None and self._given is None

    def shares_folder(self, folder: str | os.PathLike[str]) -> bool:
        """Whether every worker sees local ``folder`` (a LocalCluster does; a remote cluster
        is asked about a probe file written there)."""
        if self.local_cluster:
            return True
        probe = Path(folder) / f".kernelatlas-probe-{uuid.uuid4().hex[:8]}.tmp"
        try:
            probe.write_text("")
            seen = self._client().run(_sees, str(probe))
            return bool(seen) and all(seen.values())
        except OSError:
            return False
        finally:
            probe.unlink(missing_ok=True)

    def harvest(
        self, sources: Sequence[Any], bank: KernelBank, *, fold_bn: bool, progress: bool
    ) -> Iterator[tuple[str, str]]:
        """Harvest the sources in parallel on the workers (one task per source), each
        written into the bank by its worker when the bank is shared, else by the driver;
        while a LocalCluster is still starting, the driver harvests the first sources
        itself (and writes them)."""
        from tqdm.auto import tqdm

        from ..harvest.api import bank_status

        status: dict[str, str] = {}
        todo: list[Any] = []
        for s in sources:
            key, _, state = bank_status(bank, s, fold_bn=fold_bn)
            if key is not None and (state == "reused" or key in status):
                if key not in status:
                    status[key] = state
                    yield key, state
                continue
            if key is not None:
                status[key] = state
            todo.append(s)
        if not todo:
            return

        def results() -> Iterator[tuple[str, int, Any]]:
            rest = list(todo)
            # while a LocalCluster's processes start, the driver harvests sources itself
            while rest and self.local_cluster and self._starting is not None:
                if not self._starting.is_alive():
                    break
                yield _harvest_one(rest.pop(0), fold_bn, None, bank.row_group_size)
            if not rest:
                return
            c = self._client()
            on_workers = bank.is_remote or self.local_cluster
            args = (fold_bn, str(bank.path) if on_workers else None, bank.row_group_size)
            yield from _ordered_window(c, _harvest_one, rest, args, 2 * _n_threads(c), "harvest")

        seen: set[str] = set()
        with tqdm(total=len(todo), desc="harvest", unit="source",
                  disable=None if progress else True, leave=False) as bar:  # fmt: skip
            for key, rows, table in results():
                if table is not None:
                    bank.add(table, replace=status.get(key) == "changed")
                if rows == 0:
                    warnings.warn(
                        f"{key}: no depthwise convolution found; zero kernels", stacklevel=2
                    )
                bar.update(1)
                if key not in seen:
                    seen.add(key)
                    yield key, status.get(key, "harvested")

    def map_partitions(
        self, tasks: Iterable[tuple[Partition, PartitionJob]]
    ) -> Iterator[PartResult]:
        """Run the partitions in groups of consecutive partitions of one job; each job is
        broadcast once; results in the order of ``tasks``.

        ``tasks`` is drawn in a producer thread: when it harvests (the pipeline's streaming
        mode, the sources harvested on the workers), each file's partitions are submitted
        as soon as the file is in the bank, so classifying overlaps with harvesting the
        next sources (as in the local engine). The partitions at hand are grouped into
        about :data:`TASKS_PER_THREAD` tasks per worker thread (see :meth:`_groups`).
        """
        pairs: queue.Queue[Any] = queue.Queue()
        stop = threading.Event()

        def produce() -> None:
            try:
                for pair in tasks:
                    if stop.is_set():
                        return
                    pairs.put(pair)
            except BaseException as exc:  # raised in the consumer
                pairs.put(_Failed(exc))
            else:
                pairs.put(_DONE)

        producer = threading.Thread(target=produce, name="kernelatlas-dask-tasks", daemon=True)
        producer.start()
        try:
            c = self._client()
            threads = _n_threads(c)
            self.tasks = 0
            groups = self._groups(c, pairs, threads)
            for results in _ordered_window(
                c, _run_task, groups, (), 2 * threads, "analyse", star=True
            ):
                yield from results
        finally:
            stop.set()
            producer.join()

    def _groups(
        self, c: Client, pairs: queue.Queue[Any], threads: int
    ) -> Iterator[tuple[list[Partition], Any]]:
        """(partitions, broadcast job) tasks from the producer's pairs: whatever pairs are
        there when a task is wanted (at least one: a harvested file's partitions, or a whole
        linked bank) are cut into runs of consecutive partitions of one job, each run into
        about :data:`TASKS_PER_THREAD` tasks per worker thread. (How partitions are grouped
        into tasks never changes a result: each partition's result is its own.)"""
        shared: dict[int, Any] = {}
        local_parts: dict[int, bool] = {}
        done = False
        while not done:
            items = [pairs.get()]  # wait for one, then take all that are there
            while True:
                try:
                    items.append(pairs.get_nowait())
                except queue.Empty:
                    break
            runs: list[tuple[Any, list[Partition]]] = []
            for item in items:
                if item is _DONE:
                    done = True
                    break
                if isinstance(item, _Failed):
                    raise item.exc
                part, job = item
                key = id(job)
                if key not in shared:
                    if job.parts_dir is not None:
                        if key not in local_parts:
                            local_parts[key] = self.shares_folder(job.parts_dir)
                        if not local_parts[key]:
                            job = replace(job, parts_dir=None)  # tables travel back
                    [shared[key]] = c.scatter([job], broadcast=True, hash=False)
                if runs and runs[-1][0] is shared[key]:
                    runs[-1][1].append(part)
                else:
                    runs.append((shared[key], [part]))
            for job, run in runs:
                per = self.partitions_per_task or max(
                    1, math.ceil(len(run) / (TASKS_PER_THREAD * threads))
                )
                for i in range(0, len(run), per):
                    self.tasks += 1
                    yield run[i : i + per], job


def harvest_dask(
    sources: Iterable[Any] | Any,
    bank: Any,
    *,
    fold_bn: bool = False,
    progress: bool = True,
    scheduler: str | None = None,
    n_workers: int | None = None,
    client: Client | None = None,
) -> pd.DataFrame:
    """Harvest sources in parallel on Dask workers into ``bank`` (resumable, like
    :func:`kernelatlas.harvest.harvest_to_bank`, whose return value this mirrors).

    Parameters
    ----------
    sources : registry names, ``timm:`` names, paths or ``nn.Module`` objects.
    bank : a :class:`~kernelatlas.bank.KernelBank` or its path/URL.
    scheduler, n_workers, client : the cluster (see :class:`DaskEngine`). Workers write
        their source file into the bank (each file is atomic) when the bank is an fsspec
        URL or the cluster is a LocalCluster started here (both share the bank);
        otherwise tables travel to the driver, which writes.
    """
    from ..harvest.api import bank_status, harvest_arguments, harvested_counts

    sources, bank = harvest_arguments(sources, bank)
    states = [bank_status(bank, s, fold_bn=fold_bn) for s in sources]
    if all(state == "reused" for _, _, state in states):  # nothing to do: no cluster needed
        return harvested_counts(bank, {key: "reused" for key, _, _ in states})
    with DaskEngine(scheduler, n_workers, client=client) as engine:
        status = dict(engine.harvest(sources, bank, fold_bn=fold_bn, progress=progress))
    return harvested_counts(bank, status)
